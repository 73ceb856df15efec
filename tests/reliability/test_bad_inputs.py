"""Bad inputs through the real CLI: each is refused with one line naming the input and the
problem, a non-zero exit code, no traceback, and nothing left that looks complete; within
a run, one bad file or tile is reported and skipped and the others go on.

The cases and what the user sees are listed in ``docs/reliability_inputs.md``.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml
from astropy.io import fits
from typer.testing import CliRunner

from constellation.cli import app
from constellation.io.quadrant_index import read_quadrant_index
from constellation.io.storage import Storage
from constellation.manifest import layout
from tests.reliability.checks import error_line

runner = CliRunner()


@dataclass(frozen=True)
class Field:
    """A simulated 3x1-tile light field and its tile registry (no quadrant index)."""

    data: Path
    registry: Path
    tiles: tuple[int, int, int]  # west to east: tiles[0] and tiles[2] are not neighbours

    def config(self, base: Path, *, data: Path | None = None) -> Path:
        """A config on a fresh work root holding a copy of the registry and an empty
        quadrant index (2x2 sub-tiles)."""
        import pyarrow.parquet as pq

        from constellation.manifest.quadrant_index import QUADRANT_INDEX_SCHEMA

        work = base / "work"
        work.mkdir(parents=True, exist_ok=True)
        shutil.copy(self.registry, layout.registry_url(str(work)))
        pq.write_table(QUADRANT_INDEX_SCHEMA.empty_table(), layout.quadrant_index_url(str(work)))
        doc = {
            "science": {"backend": {"name": "mock"}, "tiling": {"n_rows": 2, "n_cols": 2}},
            "runtime": {"storage": {"data_uri": str(data or self.data), "work_uri": str(work)}},
        }
        path = base / "config.yaml"
        path.write_text(yaml.safe_dump(doc), encoding="utf-8")
        return path

    def copy_catalogs(self, dest: Path) -> Path:
        """A data root holding only a copy of the MER catalogs (all prepare reads there)."""
        src = self.data / "q1" / "catalogs"
        shutil.copytree(src, dest / "q1" / "catalogs")
        return dest

    def catalog(self, data: Path, tile: int) -> Path:
        return next((data / "q1" / "catalogs" / "MER_FINAL_CATALOG" / str(tile)).glob("*.fits"))


@pytest.fixture(scope="module")
def field(tmp_path_factory: pytest.TempPathFactory) -> Field:
    """The MER mosaics and catalogs of a 3x1-tile field, and its first two VIS exposures
    (writing every exposure would cost seconds that no test here needs)."""
    from constellation.io.registry import write_registry
    from constellation.simulate import FieldSpec
    from constellation.simulate.field import plan_field
    from constellation.simulate.sources import draw_sources
    from constellation.simulate.writers import write_field_files

    root = tmp_path_factory.mktemp("badfield")
    spec = FieldSpec(ra_deg=150.1, dec_deg=2.2, n_tiles_ra=3, n_tiles_dec=1,
                     density_per_arcmin2=1.0, light_binning=64, seed=3)  # fmt: skip
    plan = plan_field(spec)
    sources = draw_sources(plan)
    plan = dataclasses.replace(plan, exposures=plan.exposures[:2])
    write_field_files(plan, sources, Storage(), str(root / "data"))
    path = write_registry(plan.tiles, root / "registry.parquet")
    order = np.argsort(plan.tiles.ra)  # west to east; the field does not straddle RA 0
    tiles = tuple(int(plan.tiles.tile_id[i]) for i in order)
    assert len(tiles) == 3
    return Field(root / "data", path, tiles)  # type: ignore[arg-type]


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


# ------------------------------------------------------------------ configuration


def test_mistyped_config_key_names_file_key_and_closest_valid_key(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("science:\n  tiling:\n    n_rowz: 3\n", encoding="utf-8")
    res = runner.invoke(app, ["-c", str(path), "config", "show"])
    line = error_line(res, str(path), "science.tiling.n_rowz: unknown key", code=2)
    assert "did you mean 'n_rows'?" in line
    assert res.stdout == ""


def test_unknown_config_key_from_the_environment_names_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CONSTELLATION_RUNTIME__MAX_IN_FLIGT", "3")
    res = runner.invoke(app, ["config", "hash"])
    line = error_line(res, "runtime.max_in_fligt: unknown key", code=2)
    assert "did you mean 'max_in_flight'?" in line
    assert "CONSTELLATION_RUNTIME__MAX_IN_FLIGT" in line


def test_several_config_problems_on_one_line(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("science:\n  tiling: {n_rows: 0, margn_arcmin: 1}\n", encoding="utf-8")
    res = runner.invoke(app, ["-c", str(path), "prepare"])
    line = error_line(res, str(path), "science.tiling.n_rows", "margn_arcmin", code=2)
    assert "did you mean 'margin_arcmin'?" in line
    assert len(res.stderr.strip().splitlines()) == 1


# ------------------------------------------------------------------ tile registry


@pytest.mark.parametrize(
    ("command", "needles"),
    [
        (["prepare", "--tile", "999"], ("999", "not in the tile registry", "registry.parquet")),
        (["tiles", "show", "999"], ("tile 999 is not in the registry", "registry.parquet")),
        (["infer", "--tile", "999"], ("no manifests for tile 999",)),
        (["stage", "-d", "STAGED", "--tile", "999"], ("no manifests for tile 999",)),
        (["plan", "--tile", "999"], ("999", "not in the tile registry")),
        (["assemble", "--tile", "999"], ("999", "not in the tile registry")),
        (["validate", "--tile", "999", "--strict"], ("999", "not in the tile registry")),
        (["report", "--tile", "999"], ("999", "not in the tile registry")),
    ],
)
def test_tile_missing_from_the_registry(
    field: Field, tmp_path: Path, command: list[str], needles: tuple[str, ...]
) -> None:
    config = field.config(tmp_path)
    args = [str(tmp_path / "staged") if a == "STAGED" else a for a in command]
    res = runner.invoke(app, ["-c", str(config), *args])
    error_line(res, *needles)
    assert not (tmp_path / "work" / "tiles").exists()
    assert not (tmp_path / "staged").exists()
    assert not (tmp_path / "work" / "catalog").exists()
    assert not (tmp_path / "work" / "report").exists()


@pytest.mark.parametrize(
    "command",
    [["catalog", "status"], ["validate"], ["report"], ["assemble"], ["plan"], ["prepare"]],
)
def test_a_work_root_that_does_not_exist_is_named_and_not_created(
    tmp_path: Path, command: list[str]
) -> None:
    work = tmp_path / "nowhere"
    config = tmp_path / "c.yaml"
    config.write_text(
        f"runtime:\n  storage:\n    data_uri: {tmp_path / 'data'}\n    work_uri: {work}\n",
        encoding="utf-8",
    )
    res = runner.invoke(app, ["-c", str(config), *command])
    assert res.exit_code == 1, res.output
    assert str(work) in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert not work.exists()


# ------------------------------------------------------------------ VIS prefix and FITS files


@pytest.mark.parametrize("kind", ["empty", "absent"])
def test_empty_vis_prefix(field: Field, tmp_path: Path, kind: str) -> None:
    vis = tmp_path / "VIS"
    if kind == "empty":
        (vis / "2681").mkdir(parents=True)
    out = tmp_path / "index.parquet"
    res = runner.invoke(
        app, ["-c", str(field.config(tmp_path)), "index", "--vis", str(vis), "--out", str(out)]
    )
    error_line(res, f"no DET file under {vis}")
    assert not out.exists()


def _truncated(data: bytes) -> bytes:
    return data[:5000]  # inside the first extension header


def _garbled(data: bytes) -> bytes:
    start = data.index(b"XTENSION", 2880)  # the first extension header's first card
    return data[:start] + b"\x00garbage!" * 300 + data[start + 2700 :]


def _not_fits(data: bytes) -> bytes:
    return b"<html><body>503 Service Unavailable</body></html>\n" * 100


def _no_xtension(data: bytes) -> bytes:
    start = data.index(b"XTENSION", 2880)
    return data[:start] + b"XXXXXXXX" + data[start + 8 :]


@pytest.fixture
def vis_prefix(field: Field, tmp_path: Path) -> tuple[Path, Path, Path]:
    """A VIS prefix with the DET files of two exposures (without their BKG and PSF files,
    which the index does not need): the good one and the one a test will spoil."""
    src = next((field.data / "q1" / "VIS").iterdir())
    dest = tmp_path / "VIS" / src.name
    dest.mkdir(parents=True)
    dets = sorted(src.glob("EUC_VIS_SWL-DET-*.fits"))[:2]
    for f in dets:
        shutil.copy(f, dest / f.name)
    return tmp_path / "VIS", dest / dets[0].name, dest / dets[1].name


@pytest.mark.parametrize(
    ("spoil", "problem"),
    [
        (_truncated, "truncated"),
        (_garbled, "expected 'XTENSION='"),
        (_not_fits, "not a FITS file"),
        (_no_xtension, "expected 'XTENSION='"),
    ],
    ids=["truncated", "garbled-header", "not-fits", "no-xtension"],
)
def test_bad_fits_file_is_reported_and_skipped_by_index(
    field: Field,
    tmp_path: Path,
    vis_prefix: tuple[Path, Path, Path],
    spoil: Callable[[bytes], bytes],
    problem: str,
) -> None:
    vis, good, bad = vis_prefix
    original = bad.read_bytes()
    bad.write_bytes(spoil(original))
    out = tmp_path / "index.parquet"
    args = ["-c", str(field.config(tmp_path)), "index", "--vis", str(vis), "--out", str(out)]
    res = runner.invoke(app, args)
    assert res.exit_code == 1, res.output
    error_line(res, "not indexed", bad.name, problem)
    assert "indexed 1 of 2 exposures" in res.stdout
    assert "1 exposure(s) not indexed" in res.stdout
    index = read_quadrant_index(Storage(), str(out))
    assert set(index.column("det_url").to_pylist()) == {str(good)}
    assert index.num_rows == 144

    if spoil is _truncated:  # once fixed, the next run reads it (it was not recorded)
        bad.write_bytes(original)
        res = runner.invoke(app, args)
        assert res.exit_code == 0, res.output
        assert "DET 1 read (1 unchanged)" in res.stdout
        assert read_quadrant_index(Storage(), str(out)).num_rows == 288


def test_index_writes_nothing_when_no_exposure_is_readable(
    field: Field, tmp_path: Path, vis_prefix: tuple[Path, Path, Path]
) -> None:
    vis, good, bad = vis_prefix
    for det in (good, bad):
        det.write_bytes(_not_fits(b""))
    out = tmp_path / "index.parquet"
    res = runner.invoke(
        app, ["-c", str(field.config(tmp_path)), "index", "--vis", str(vis), "--out", str(out)]
    )
    error_line(res, "none of the 2 exposures", "not written")
    error_line(res, "not indexed", good.name, "not a FITS file")
    assert not out.exists()


def _header_cut(data: bytes) -> bytes:
    return data[:1000]  # the file ends inside the primary header


@pytest.mark.parametrize("spoil", [_header_cut, _not_fits], ids=["truncated", "not-fits"])
def test_bad_mosaic_header_stops_registry_resolution_and_writes_nothing(
    field: Field, tmp_path: Path, spoil: Callable[[bytes], bytes]
) -> None:
    mer = tmp_path / "MER"
    shutil.copytree(field.data / "q1" / "MER", mer)
    mosaic = next((mer / str(field.tiles[1]) / "VIS").glob("*.fits"))
    mosaic.write_bytes(spoil(mosaic.read_bytes()))
    out = tmp_path / "registry.parquet"
    res = runner.invoke(app, ["tiles", "resolve", "--mer", str(mer), "--out", str(out)])
    error_line(res, "could not resolve 1 tile(s)", str(field.tiles[1]), mosaic.name)
    assert not out.exists()


# ------------------------------------------------------------------ MER catalogs


TableEdit = Callable[[fits.FITS_rec, fits.ColDefs], fits.ColDefs]


def _rewrite_table(path: Path, change: TableEdit) -> None:
    with fits.open(path) as hdul:
        primary = hdul[0].copy()
        cols = change(hdul[1].data, hdul[1].columns)
        table = fits.BinTableHDU.from_columns(cols)
    fits.HDUList([primary, table]).writeto(path, overwrite=True)


def _drop_declination(path: Path) -> None:
    _rewrite_table(path, lambda d, cols: fits.ColDefs([c for c in cols if c.name != "DECLINATION"]))


def _ra_as_text(path: Path) -> None:
    def change(data: fits.FITS_rec, cols: fits.ColDefs) -> fits.ColDefs:
        text = np.array([f"{v:.6f}" for v in data["RIGHT_ASCENSION"]])
        ra = fits.Column(name="RIGHT_ASCENSION", format="16A", array=text)
        return fits.ColDefs([ra if c.name == "RIGHT_ASCENSION" else c for c in cols])

    _rewrite_table(path, change)


def _nan_coordinates(path: Path) -> None:
    def change(data: fits.FITS_rec, cols: fits.ColDefs) -> fits.ColDefs:
        data["RIGHT_ASCENSION"][5] = np.nan
        data["DECLINATION"][9] = np.nan
        return fits.ColDefs(data)

    _rewrite_table(path, change)


def _duplicate_ids(path: Path) -> None:
    def change(data: fits.FITS_rec, cols: fits.ColDefs) -> fits.ColDefs:
        data["OBJECT_ID"][7] = data["OBJECT_ID"][3]
        return fits.ColDefs(data)

    _rewrite_table(path, change)


def _truncate_file(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:20000])


def _text_file(path: Path) -> None:
    path.write_bytes(b"OBJECT_ID,RIGHT_ASCENSION,DECLINATION\n1,150.0,2.0\n")


@pytest.mark.parametrize(
    ("spoil", "problem"),
    [
        (_drop_declination, "missing column(s) ['DECLINATION']"),
        (_ra_as_text, "column RIGHT_ASCENSION has type <U16, expected numbers"),
        (_nan_coordinates, "2 row(s) with non-finite or out-of-range RIGHT_ASCENSION/DECLINATION"),
        (_duplicate_ids, "1 duplicate OBJECT_ID(s)"),
        (_truncate_file, "cannot read catalog: File may have been truncated"),
        (_text_file, "cannot read catalog: No SIMPLE card found"),
    ],
    ids=["missing-column", "wrong-dtype", "nan-coordinates", "duplicate-ids", "truncated",
         "not-fits"],
)  # fmt: skip
def test_bad_mer_catalog_is_refused(
    field: Field, tmp_path: Path, spoil: Callable[[Path], None], problem: str
) -> None:
    data = field.copy_catalogs(tmp_path / "data")
    tile = field.tiles[0]
    catalog = field.catalog(data, tile)
    spoil(catalog)
    config = field.config(tmp_path, data=data)
    res = runner.invoke(app, ["-c", str(config), "prepare", "--tile", str(tile)])
    assert res.exit_code == 1, res.output
    error_line(res, f"tile {tile}: ", catalog.name, problem)
    assert f"1 tile(s) not prepared: {tile}" in res.stdout
    assert _files(tmp_path / "work" / "tiles") == []


def test_one_bad_catalog_does_not_stop_the_field(field: Field, tmp_path: Path) -> None:
    data = field.copy_catalogs(tmp_path / "data")
    west, middle, east = field.tiles
    catalog = field.catalog(data, west)
    _nan_coordinates(catalog)
    config = field.config(tmp_path, data=data)
    res = runner.invoke(app, ["-c", str(config), "prepare"])
    assert res.exit_code == 1, res.output
    error_line(res, f"tile {west}: ", catalog.name, "non-finite")
    # the middle tile models sources of its west neighbour: it cannot be prepared either
    error_line(res, f"tile {middle}: catalog of neighbour tile {west}: ", "non-finite")
    assert f"2 tile(s) not prepared: {west} (" in res.stdout
    assert f"; {middle} (" in res.stdout
    assert "prepared 1 tiles (4 sub-tiles)" in res.stdout
    work = tmp_path / "work"
    for tile in (west, middle):
        assert not (work / "tiles" / str(tile)).exists()
    done = sorted(work.glob(f"tiles/{east}/subtiles/*/{layout.DONE_NAME}"))
    assert len(done) == 4

    # once the catalog is fixed, the rerun prepares the two and leaves the third alone
    shutil.copy(field.catalog(field.data, west), catalog)
    res = runner.invoke(app, ["-c", str(config), "prepare"])
    assert res.exit_code == 0, res.output
    assert "(1 tiles already done)" in res.stdout


# ------------------------------------------------------------------ manifests


@pytest.fixture(scope="module")
def prepared(field: Field, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding a data root (catalogs only) and a work root where the east tile
    is prepared."""
    base = tmp_path_factory.mktemp("prepared")
    data = field.copy_catalogs(base / "data")
    res = runner.invoke(
        app, ["-c", str(field.config(base, data=data)), "prepare", "--tile", str(field.tiles[2])]
    )
    assert res.exit_code == 0, res.output
    return base


@pytest.fixture
def manifest(field: Field, prepared: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A private copy of the prepared work root: sub-tile (0, 0)'s manifest and a config."""
    shutil.copytree(prepared / "work", tmp_path / "work")
    config = field.config(tmp_path, data=prepared / "data")
    return Path(layout.manifest_url(str(tmp_path / "work"), field.tiles[2], 0, 0)), config


def _exposure(key: str, det: str) -> dict[str, object]:
    ext = {"data_bytes": 2880, "data_offset": 2880, "header_offset": 0}
    return {
        "bkg": None, "psf": None, "dither": 0, "expnum": 1, "exposure": key, "exptime": 560.0,
        "gain": 3.5, "magzerop": 24.6, "naxis1": 32, "naxis2": 32, "obs_id": 2681,
        "quadrant": "3-4.F",
        "det": {"uri": det, **{k: {**ext, "name": f"3-4.F.{k.upper()}"}
                               for k in ("sci", "rms", "flg")}},
    }  # fmt: skip


def _with_exposure(text: str, key: str, det: str = "/data/EUC_VIS_SWL-DET.fits") -> str:
    """Manifest text with its exposure list replaced by one entry."""
    doc = json.loads(text)
    doc["exposures"] = [_exposure(key, det)]
    return json.dumps(doc, indent=1)


def _with_sources_uri(text: str, uri: str) -> str:
    doc = json.loads(text)
    doc["sources"]["uri"] = uri
    return json.dumps(doc, indent=1)


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (lambda t: _with_exposure(t, "../../../../outside"), "exposure key '../../../../outside' "
         "is not a plain file name"),
        (lambda t: _with_exposure(t, "/tmp/abs"), "exposure key '/tmp/abs' is not a plain"),
        (lambda t: _with_sources_uri(t, "../../../../../etc/passwd"),
         "sources.uri '../../../../../etc/passwd' is not a plain relative name"),
        (lambda t: _with_sources_uri(t, "/etc/passwd"),
         "sources.uri '/etc/passwd' is not a plain relative name"),
        (lambda t: _with_exposure(t, "002681-00-1", det="../../../../etc/passwd"),
         "relative URI '../../../../etc/passwd' leaves the manifest's folder"),
    ],
    ids=["exposure-dotdot", "exposure-absolute", "sources-dotdot", "sources-absolute",
         "det-dotdot"],
)  # fmt: skip
def test_manifest_paths_escaping_the_staging_root_are_refused(
    manifest: tuple[Path, Path], tmp_path: Path, edit: Callable[[str], str], problem: str
) -> None:
    url, config = manifest
    url.write_text(edit(url.read_text(encoding="utf-8")), encoding="utf-8")
    dest = tmp_path / "stage" / "root"
    before = _files(tmp_path)
    res = runner.invoke(app, ["-c", str(config), "stage", "-d", str(dest), str(url)])
    assert res.exit_code == 1, res.output
    error_line(res, str(url), problem)
    assert "1 not staged" in res.stdout
    assert _files(tmp_path) == before  # nothing written, inside the root or outside it


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (lambda t: t.replace('"manifest_version": 3', '"manifest_version": 99'),
         "unsupported manifest_version 99 (expected 3)"),
        (lambda t: t.replace('"manifest_version": 3', '"manifest_version": 1'),
         "unsupported manifest_version 1 (expected 3); it was written by an older "
         "constellation: run 'constellation prepare' again"),
        (lambda t: t.replace(' "manifest_version": 3,\n', ""),
         "unsupported manifest_version None (expected 3)"),
        (lambda t: re.sub(r'"n_core": \d+', '"n_core": -5', t),
         "invalid manifest: sources.n_core: Input should be greater than or equal to 0"),
        (lambda t: t[: len(t) // 2] + "\n  - [unclosed\n", "not valid JSON"),
    ],
    ids=["unknown-version", "older-version", "no-version", "schema", "broken-json"],
)  # fmt: skip
@pytest.mark.parametrize("command", ["infer", "stage", "plan"])
def test_unusable_manifest_is_reported_and_nothing_is_written(
    manifest: tuple[Path, Path],
    tmp_path: Path,
    edit: Callable[[str], str],
    problem: str,
    command: str,
) -> None:
    url, config = manifest
    url.write_text(edit(url.read_text(encoding="utf-8")), encoding="utf-8")
    args = {
        "infer": ["infer", "--backend", "mock", str(url)],
        "stage": ["stage", "-d", str(tmp_path / "staged"), str(url)],
        "plan": ["plan", "--tile", url.parts[-4]],
    }[command]
    before = _files(tmp_path)
    res = runner.invoke(app, ["-c", str(config), *args])
    assert res.exit_code == 1, res.output
    error_line(res, str(url), problem)
    assert _files(tmp_path) == before  # no result, no _RESULT.json, nothing staged


def test_prepare_before_index_names_the_missing_index(field: Field, tmp_path: Path) -> None:
    config = field.config(tmp_path)
    Path(layout.quadrant_index_url(str(tmp_path / "work"))).unlink()
    res = runner.invoke(app, ["-c", str(config), "prepare"])
    error_line(res, "no quadrant index", "run 'constellation index' first", sole=True)
    assert not (tmp_path / "work" / "tiles").exists()


def test_a_report_without_rows_replaces_nothing(field: Field, tmp_path: Path) -> None:
    from constellation.catalog.iceberg import open_catalog
    from constellation.config import load_config

    config = field.config(tmp_path)
    open_catalog(load_config(config))  # an (empty) catalog exists
    earlier = tmp_path / "work" / "report" / "report.md"
    earlier.parent.mkdir(parents=True)
    earlier.write_text("an earlier report\n", encoding="utf-8")
    tile = field.tiles[0]
    res = runner.invoke(app, ["-c", str(config), "report", "--tile", str(tile)])
    error_line(res, f"no sub-tile rows for tile(s) {tile}", "constellation assemble", sole=True)
    assert earlier.read_text(encoding="utf-8") == "an earlier report\n"
    assert sorted(p.name for p in earlier.parent.iterdir()) == ["report.md"]
