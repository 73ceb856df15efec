"""``constellation tiles …`` end to end through the CLI."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from astropy.table import Table
from typer.testing import CliRunner

from constellation.cli import app
from constellation.sky import AllSkyTiling, SubTileGrid, Tile
from tests.fixtures.mer import write_mer_tree

runner = CliRunner()


@pytest.fixture(autouse=True)
def _in_tmp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run in an empty directory: the default work_uri (./constellation-data/work) is
    relative, and a registry.parquet left there would replace the all-sky default."""
    monkeypatch.chdir(tmp_path)


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


# --------------------------------------------------------------------------- resolve / list


@pytest.fixture
def mer_tiles() -> list[Tile]:
    sky = AllSkyTiling().registry()
    return [sky.tile(i) for i in (100180000, 100180719, 100312000, 100077100)]


def _rows_match(rows: list[dict[str, float]], tiles: list[Tile]) -> None:
    assert [r["tile_id"] for r in rows] == sorted(t.tile_id for t in tiles)
    by_id = {t.tile_id: t for t in tiles}
    for r in rows:
        t = by_id[int(r["tile_id"])]
        assert abs((r["ra"] - t.ra_deg + 180) % 360 - 180) < 1e-9
        assert abs(r["dec"] - t.dec_deg) < 1e-9
        assert abs(r["core_size_arcmin"] - 30.0) < 1e-9
        assert abs(r["extended_size_arcmin"] - 32.0) < 1e-9


def test_resolve_then_list_and_show_use_the_cached_registry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mer_tiles: list[Tile]
) -> None:
    write_mer_tree(tmp_path / "data" / "q1" / "MER", mer_tiles)
    monkeypatch.setenv("CONSTELLATION_RUNTIME__STORAGE__DATA_URI", str(tmp_path / "data"))
    monkeypatch.setenv("CONSTELLATION_RUNTIME__STORAGE__WORK_URI", "work")
    res = _run("tiles", "resolve")
    out = res.stdout  # type: ignore[attr-defined]
    # 17 header reads, then the cache: exists (no) and the write
    assert "4 tile(s) in work/registry.parquet; 19 request(s), 56.2 KiB read" in out
    assert Path("work/registry.parquet").is_file()
    rows = json.loads(_run("tiles", "list", "--json").stdout)  # type: ignore[attr-defined]
    _rows_match(rows, mer_tiles)
    plain = _run("tiles", "list").stdout  # type: ignore[attr-defined]
    assert "# 4 tile(s) from work/registry.parquet" in plain
    row = ["100312000", "0.608108108", "+66.000000000", "30.000000", "32.000000"]
    assert row in [line.split() for line in plain.splitlines()]
    shown = json.loads(_run("tiles", "show", "100312000", "--json").stdout)  # type: ignore[attr-defined]
    assert shown["dec"] == pytest.approx(66.0, abs=1e-9)
    # a tile of the all-sky tiling that is not in the cached registry
    res = runner.invoke(app, ["tiles", "show", "100180360"])
    assert res.exit_code == 2
    assert "not in the registry (4 tiles, from work/registry.parquet)" in res.output
    # the cache is reused: no header read, only the cache (exists, read)
    size = Path("work/registry.parquet").stat().st_size
    again = _run("tiles", "resolve").stdout  # type: ignore[attr-defined]
    assert f"4 tile(s) in work/registry.parquet; 2 request(s), {size / 1024:.1f} KiB read" in again
    refreshed = _run("tiles", "resolve", "--refresh", "100180000").stdout  # type: ignore[attr-defined]
    # the tile's 4 header reads, and the cache's exists, read and write
    assert "1 tile(s) in work/registry.parquet (4 in all); 7 request(s)" in refreshed


def test_resolve_from_anonymous_s3(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    mer_tiles: list[Tile],
    s3_endpoint: str,
    s3_bucket: str,
    upload_tree: Callable[..., list[str]],
) -> None:
    write_mer_tree(tmp_path / "tree", mer_tiles)
    upload_tree(tmp_path / "tree", s3_bucket, "q1/MER")
    monkeypatch.setenv("CONSTELLATION_RUNTIME__STORAGE__DATA_URI", f"s3://{s3_bucket}")
    monkeypatch.setenv("CONSTELLATION_RUNTIME__STORAGE__ENDPOINT_URL", s3_endpoint)
    ids = [str(t.tile_id) for t in mer_tiles[:2]]
    out = _run("tiles", "resolve", *ids, "--out", "reg.csv", "--workers", "2").stdout  # type: ignore[attr-defined]
    assert out.startswith("2 tile(s) in reg.csv; 10 request(s)")  # 8 + the cache's 2
    rows = json.loads(_run("tiles", "list", "--registry", "reg.csv", "--json").stdout)  # type: ignore[attr-defined]
    _rows_match(rows, mer_tiles[:2])


def test_resolve_missing_tiles(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mer_tiles: list[Tile]
) -> None:
    write_mer_tree(tmp_path / "MER", mer_tiles[:1])
    args = ["tiles", "resolve", "--mer", str(tmp_path / "MER"), "--out", "r.parquet"]
    res = runner.invoke(app, [*args, str(mer_tiles[0].tile_id), "999"])
    assert res.exit_code == 1
    assert "could not resolve 1 tile(s)" in res.output
    assert "999: no VIS mosaic" in res.output
    assert "Traceback" not in res.output
    assert not Path("r.parquet").exists()
    res = runner.invoke(app, [*args, str(mer_tiles[0].tile_id), "999", "--skip-missing"])
    assert res.exit_code == 0, res.output
    assert "1 tile(s) in r.parquet" in res.stdout
    assert "skipped 1 tile(s) without a VIS mosaic: 999" in " ".join(res.stderr.split())
    res = runner.invoke(app, ["tiles", "resolve", "--mer", str(tmp_path / "nowhere")])
    assert res.exit_code == 1
    assert "nowhere" in res.output
    assert "Traceback" not in res.output


def test_list_falls_back_to_the_allsky_tiling() -> None:
    out = _run("tiles", "list").stdout  # type: ignore[attr-defined]
    assert out.startswith("# 165902 tile(s) from the generated all-sky tiling")
