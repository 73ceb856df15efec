"""Staging a prepared sub-tile into a self-contained folder (local and from S3)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from astropy.io import fits

from constellation.io.storage import Storage
from constellation.manifest import layout
from constellation.manifest.subtile import SubTileManifest, dump_manifest, load_manifest
from constellation.stages.stage import rename_extension, stage_subtile
from tests.fixtures.fields import LIGHT_2X2, FieldFactory


@dataclass(frozen=True)
class Prepared:
    root: Path
    work: Path
    tile_id: int


@pytest.fixture(scope="module")
def prepared(fields: FieldFactory, tmp_path_factory: pytest.TempPathFactory) -> Prepared:
    """The first tile of the session's prepared 2x2 field, on a private copy of its work
    root (the ``stage`` command is given that work root)."""
    field = fields.prepared(LIGHT_2X2)
    work = field.copy_work(tmp_path_factory.mktemp("stagework") / "work")
    return Prepared(field.root, work, field.tile_ids[0])


def _manifest_url(p: Prepared, row: int = 1, col: int = 2) -> str:
    return layout.manifest_url(str(p.work), p.tile_id, row, col)


class _Files:
    """Opened FITS files, each opened once (the source DET files have hundreds of HDUs)."""

    def __init__(self) -> None:
        self.open: dict[str, Any] = {}

    def data(self, path: str, name: str) -> Any:
        if path not in self.open:
            self.open[path] = fits.open(path, memmap=False)
        return self.open[path][name].data

    def close(self) -> None:
        for hdul in self.open.values():
            hdul.close()


def _check_staged(original: SubTileManifest, original_url: str, dest: Path) -> None:
    files = _Files()
    try:
        _compare(original, original_url, dest, files)
    finally:
        files.close()


def _compare(original: SubTileManifest, original_url: str, dest: Path, files: _Files) -> None:
    staged = load_manifest(str(dest / layout.MANIFEST_NAME))
    assert staged.identity == original.identity
    assert staged.sources.uri == layout.SOURCES_NAME
    assert len(staged.exposures) == len(original.exposures) > 0
    for new, old in zip(staged.exposures, original.exposures, strict=True):
        assert (new.exposure, new.quadrant) == (old.exposure, old.quadrant)
        assert new.bkg is not None
        assert new.psf is not None
        assert old.bkg is not None
        assert old.psf is not None
        for uri in (new.det.uri, new.bkg.uri, new.psf.uri):
            assert not uri.startswith("/")
            assert "://" not in uri
            assert (dest / uri).is_file()
        path = str(dest / new.det.uri)
        raw = (dest / new.det.uri).read_bytes()
        with fits.open(path, memmap=False) as hdul:
            hdul.verify("exception")
            assert hdul[0].header["OBS_ID"] == old.obs_id
            assert hdul[0].header["EXPNUM"] == old.expnum
        pairs = [
            (new.det.sci, old.det.uri, old.det.sci),
            (new.det.rms, old.det.uri, old.det.rms),
            (new.det.flg, old.det.uri, old.det.flg),
            (new.bkg.extension, old.bkg.uri, old.bkg.extension),
            (new.psf.extension, old.psf.uri, old.psf.extension),
        ]
        for ext_new, src_uri, ext_old in pairs:
            src = layout.resolve_relative(original_url, src_uri)
            assert ext_new.data_bytes == ext_old.data_bytes
            np.testing.assert_array_equal(
                files.data(path, ext_new.name), files.data(src, ext_old.name)
            )
            assert raw[ext_new.header_offset : ext_new.header_offset + 9] == b"XTENSION="
        assert new.bkg.extension.name == f"{new.quadrant}.BKG"
        assert new.psf.extension.name == f"{new.quadrant}.PSF"
    assert (dest / layout.SOURCES_NAME).read_bytes() == (
        Path(original_url).parent / layout.SOURCES_NAME
    ).read_bytes()


@pytest.mark.slow  # ~14 s on 2 cores (astropy reads hundreds of HDUs per exposure)
def test_stage_local_and_rerun_writes_nothing(prepared: Prepared, tmp_path: Path) -> None:
    url = _manifest_url(prepared)
    original = load_manifest(url)
    storage = Storage()
    result = stage_subtile(url, str(tmp_path), storage)
    assert result.exposures == len({e.exposure for e in original.exposures})
    assert result.quadrant_exposures == len(original.exposures)
    assert result.files_written == result.exposures + 2
    assert result.extension_bytes_moved <= 1.05 * result.needed_bytes
    assert result.ratio <= 1.05
    size_inputs = Path(url).stat().st_size + (Path(url).parent / layout.SOURCES_NAME).stat().st_size
    assert result.bytes_moved == result.extension_bytes_moved + size_inputs
    _check_staged(original, url, tmp_path)

    mtimes = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    again = stage_subtile(url, str(tmp_path), Storage())
    assert again.files_written == 0
    assert again.files_unchanged == result.files_written
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()} == mtimes


def test_psf_and_bkg_fetched_once_per_subtile(prepared: Prepared, tmp_path: Path) -> None:
    url = _manifest_url(prepared, 0, 0)
    m = load_manifest(url)
    distinct = set()
    for e in m.exposures:
        assert e.bkg is not None
        assert e.psf is not None
        for uri, ext in [(e.det.uri, e.det.sci), (e.det.uri, e.det.rms), (e.det.uri, e.det.flg),
                         (e.bkg.uri, e.bkg.extension), (e.psf.uri, e.psf.extension)]:  # fmt: skip
            distinct.add((uri, ext.header_offset))
    result = stage_subtile(url, str(tmp_path), Storage())
    assert result.extensions_fetched == len(distinct)
    assert result.extension_bytes_moved == result.needed_bytes


def test_rename_extension_keeps_length() -> None:
    h = fits.Header()
    h["XTENSION"] = "IMAGE"
    h["BITPIX"] = 8
    h["NAXIS"] = 0
    raw = h.tostring().encode("ascii")
    inserted = rename_extension(raw, "3-4.F.PSF")
    assert len(inserted) == len(raw)
    assert fits.Header.fromstring(inserted.decode())["EXTNAME"] == "3-4.F.PSF"
    h["EXTNAME"] = "3-4.F"
    replaced = rename_extension(h.tostring().encode("ascii"), "3-4.F.BKG")
    parsed = fits.Header.fromstring(replaced.decode())
    assert parsed["EXTNAME"] == "3-4.F.BKG"
    assert list(parsed) == list(h)
    with pytest.raises(ValueError, match="multiple"):
        rename_extension(raw[:100], "x")


def test_stage_from_s3(
    prepared: Prepared,
    tmp_path: Path,
    s3_bucket: str,
    upload_tree: Any,
    anon_s3_storage: Storage,
) -> None:
    """Prepared locally; the field and the manifest (URIs rewritten) are put on S3."""
    url = _manifest_url(prepared)
    original = load_manifest(url)
    upload_tree(prepared.root, s3_bucket, "field")
    root = str(prepared.root)
    s3_root = f"s3://{s3_bucket}/field"

    def move(uri: str) -> str:
        assert uri.startswith(root)
        return s3_root + uri[len(root) :]

    exposures = []
    for e in original.exposures:
        assert e.bkg is not None
        assert e.psf is not None
        exposures.append(e.model_copy(update={
            "det": e.det.model_copy(update={"uri": move(e.det.uri)}),
            "bkg": e.bkg.model_copy(update={"uri": move(e.bkg.uri)}),
            "psf": e.psf.model_copy(update={"uri": move(e.psf.uri)}),
        }))  # fmt: skip
    on_s3 = original.model_copy(update={"exposures": exposures})
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / layout.MANIFEST_NAME).write_bytes(dump_manifest(on_s3))
    (sub / layout.SOURCES_NAME).write_bytes((Path(url).parent / layout.SOURCES_NAME).read_bytes())
    upload_tree(sub, s3_bucket, "prepared")
    s3_manifest = f"s3://{s3_bucket}/prepared/{layout.MANIFEST_NAME}"

    dest = tmp_path / "staged"
    result = stage_subtile(s3_manifest, str(dest), anon_s3_storage)
    assert result.ratio <= 1.05
    assert result.extension_bytes_moved == result.needed_bytes
    _check_staged(original, url, dest)


def test_cli_stage_manifest_and_tile(prepared: Prepared, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from constellation.cli import app

    config = tmp_path / "c.yaml"
    config.write_text(
        f"runtime:\n  storage:\n    data_uri: {prepared.root}\n    work_uri: {prepared.work}\n"
    )
    runner = CliRunner()
    dest = tmp_path / "staged"
    url = _manifest_url(prepared)
    result = runner.invoke(app, ["-c", str(config), "stage", url, "--dest", str(dest)])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("staged 1 sub-tiles, ")
    assert (dest / str(prepared.tile_id) / "r1_c2" / layout.MANIFEST_NAME).is_file()
    result = runner.invoke(
        app, ["-c", str(config), "stage", "--tile", str(prepared.tile_id), "--dest", str(dest)]
    )
    assert result.exit_code == 0, result.output
    assert result.output.startswith("staged 16 sub-tiles, ")
    assert "ratio 1.000" in result.output
    staged = sorted(
        p.parent.name for p in dest.glob(f"{prepared.tile_id}/*/{layout.MANIFEST_NAME}")
    )
    assert len(staged) == 16
    result = runner.invoke(app, ["-c", str(config), "stage", "--dest", str(dest)])
    assert result.exit_code != 0
