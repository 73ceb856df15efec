"""``constellation tiles …`` end to end through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from astropy.table import Table
from typer.testing import CliRunner

from constellation.cli import app
from constellation.sky import AllSkyTiling, SubTileGrid, Tile

runner = CliRunner()


def _run(*args: str) -> object:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result


def test_show_lists_subtiles_with_boxes() -> None:
    out = _run("tiles", "show", "100180360", "--json").stdout  # type: ignore[attr-defined]
    data = json.loads(out)
    assert data["tile_id"] == 100180360
    assert len(data["subtiles"]) == 16
    first = data["subtiles"][0]
    assert first["core_arcmin"] == [-15.0, -7.5, -15.0, -7.5]
    assert first["extended_arcmin"] == [-16.0, -6.5, -16.0, -6.5]
    assert first["center_ra"] > data["ra"]  # column 0 is the east side
    table = _run("tiles", "show", "100180360").stdout  # type: ignore[attr-defined]
    assert "[-15.000, -7.500)" in table


def test_neighbours_of_the_south_pole_tile() -> None:
    data = json.loads(_run("tiles", "neighbours", "100000000", "--json").stdout)  # type: ignore[attr-defined]
    reg = AllSkyTiling().registry()
    decs = {reg.tile(i).dec_deg for i in data["neighbours"]}
    assert len(data["neighbours"]) == 10
    assert decs == {-89.5}


def test_allsky_writes_a_registry_usable_by_other_commands(tmp_path: Path) -> None:
    path = tmp_path / "wide.parquet"
    out = _run("tiles", "allsky", "--wide", "--out", str(path)).stdout  # type: ignore[attr-defined]
    assert "sub-tiles" in out
    assert path.exists()
    n = pq.read_metadata(path).num_rows
    assert 55_000 < n < 65_000
    tid = str(pq.read_table(path).column("tile_id")[0].as_py())
    _run("tiles", "show", tid, "--registry", str(path))


def test_partition_a_mer_like_fits_catalog(tmp_path: Path) -> None:
    tile = Tile(100180360, 180.25, 0.0)
    rng = np.random.default_rng(5)
    ra, dec = tile.to_sky(rng.uniform(-15, 15, 2000), rng.uniform(-15, 15, 2000))
    cat = tmp_path / "EUC_MER_FINAL-CAT_TILE100180360.fits"
    Table(
        {
            "OBJECT_ID": np.arange(2000, dtype=np.int64) + 10**17,
            "RIGHT_ASCENSION": ra,
            "DECLINATION": dec,
        }
    ).write(cat)
    nra, ndec = tile.to_sky(rng.uniform(15, 16.5, 300), rng.uniform(-15, 15, 300))
    nb = tmp_path / "neighbour.parquet"
    Table({"ra": nra, "dec": ndec}).write(nb)
    out_path = tmp_path / "assignment.parquet"
    res = _run(
        "tiles", "partition", str(cat), "--tile", "100180360", "--other", str(nb),
        "--out", str(out_path), "--json",
    )  # fmt: skip
    data = json.loads(res.stdout)  # type: ignore[attr-defined]
    assert data["n_own"] == 2000
    assert data["n_other"] == 300
    assert sum(map(sum, data["core_counts"])) == 2000
    a = pq.read_table(out_path).to_pydict()
    own_core = [
        (i, r, c)
        for cat_i, i, r, c, core in zip(
            a["catalog"], a["index"], a["row"], a["col"], a["in_core"], strict=True
        )
        if cat_i == 0 and core
    ]
    assert sorted(i for i, _, _ in own_core) == list(range(2000))  # each exactly once
    assert {oid for oid, k in zip(a["object_id"], a["catalog"], strict=True) if k == 0} == set(
        range(10**17, 10**17 + 2000)
    )
    others = [c for k, c in zip(a["catalog"], a["col"], strict=True) if k == 1]
    assert others
    assert set(others) == {3}
    assert SubTileGrid().n_cols == 4


def test_clean_errors() -> None:
    res = runner.invoke(app, ["tiles", "show", "123"])
    assert res.exit_code == 2
    assert "not in the registry" in res.output
    assert "Traceback" not in res.output
    res = runner.invoke(app, ["tiles", "show", "1", "--registry", "missing.parquet"])
    assert res.exit_code == 2
    assert "missing.parquet" in res.output
    res = runner.invoke(app, ["tiles", "partition", "nope.fits", "--tile", "100180360"])
    assert res.exit_code == 2
    assert "catalog file not found" in res.output
