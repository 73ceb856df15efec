"""Format checklist: the simulated files, opened with astropy alone, look like Q1."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from astropy.utils.exceptions import AstropyUserWarning
from astropy.wcs import WCS

from constellation.simulate.run import FieldSummary
from constellation.simulate.sources import CATALOG_COLUMNS, object_ids
from constellation.sky import AllSkyTiling

SWL = re.compile(
    r"^EUC_VIS_SWL-(DET|BKG|WGT)-(\d{6})-(\d{2})-(\d)-0000000__(\d{8}T\d{6}\.\d{6}Z)\.fits$"
)
PSF = re.compile(r"^EUC_VIS_GRD-PSF-000-000000-0000000__\d{8}T\d{6}\.\d{6}Z\.fits$")
MOSAIC = re.compile(
    r"^EUC_MER_BGSUB-MOSAIC-VIS_TILE(\d{9})-[0-9A-F]{6}_\d{8}T\d{6}\.\d{6}Z_00\.00\.fits$"
)
CATALOG = re.compile(
    r"^EUC_MER_FINAL-CAT_TILE(\d{9})-[0-9A-F]{6}_\d{8}T\d{6}\.\d{6}Z_00\.00\.fits$"
)
QID = re.compile(r"^[1-6]-[1-6]\.[EFGH]$")


def _files(root: Path, pattern: str) -> list[Path]:
    return sorted(root.glob(pattern))


def test_file_names_match_the_q1_patterns(light_field: tuple[Path, FieldSummary]) -> None:
    root, summary = light_field
    vis = _files(root, "q1/VIS/*/*.fits")
    assert vis
    for p in vis:
        assert SWL.match(p.name) or PSF.match(p.name), p.name
        assert p.parent.name == str(int(p.parent.name))  # obs directory not zero padded
    swl = [SWL.match(p.name) for p in vis if SWL.match(p.name)]
    # one DET, BKG and WGT per exposure; their timestamps differ
    by_exp: dict[tuple[str, str, str], dict[str, str]] = {}
    for m in swl:
        assert m is not None
        by_exp.setdefault((m[2], m[3], m[4]), {})[m[1]] = m[5]
    assert len(by_exp) == len(summary.plan.exposures) == 6  # 4 nominal + 2 short
    for kinds in by_exp.values():
        assert set(kinds) == {"DET", "BKG", "WGT"}
        assert len(set(kinds.values())) == 3
    assert {k[2] for k in by_exp} == {"1", "2"}
    for p in _files(root, "q1/MER/*/VIS/*.fits"):
        m = MOSAIC.match(p.name)
        assert m
        assert m[1] == p.parent.parent.name
    cats = _files(root, "q1/catalogs/MER_FINAL_CATALOG/*/*.fits")
    assert len(cats) == len(summary.plan.tiles)
    for p in cats:
        m = CATALOG.match(p.name)
        assert m
        assert m[1] == p.parent.name


def test_det_file_structure_and_headers(light_field: tuple[Path, FieldSummary]) -> None:
    root, _ = light_field
    det = _files(root, "q1/VIS/*/EUC_VIS_SWL-DET-*-00-1-*.fits")[0]
    with fits.open(det) as hdul:
        prim = hdul[0].header
        ints, floats = ("OBS_ID", "DITHOBS", "EXPNUM"), ("RA", "DEC", "PA", "EXPTIME")
        for key in ints:
            assert isinstance(prim[key], int), key
        for key in floats:
            assert isinstance(prim[key], float), key
        assert prim["EXPNUM"] == 1
        assert prim["DITHOBS"] == 0
        names = [h.name for h in hdul[1:]]
        assert len(names) == 432
        suffixes = {n.rsplit(".", 1)[1] for n in names}
        assert suffixes == {"SCI", "RMS", "FLG"}
        qids = {n.rsplit(".", 1)[0] for n in names}
        assert len(qids) == 144
        assert all(QID.match(q) for q in qids)
        assert names != sorted(names)  # real files are not in sorted order
        zps: set[type] = set()
        for h in hdul[1:]:
            hdr = h.header
            assert hdr["CTYPE1"] == "RA---TPV"
            assert hdr["CTYPE2"] == "DEC--TPV"
            assert any(k.startswith("PV1_") for k in hdr)
            for key in ("GAIN", "RDNOISE", "EXPTIME", "SATURATE"):
                assert isinstance(hdr[key], float), key
            assert isinstance(hdr["DETID"], int)
            assert 0 <= hdr["DETID"] <= 35
            assert isinstance(hdr["CCDID"], str)
            zps.add(type(hdr["MAGZEROP"]))
            kind = h.name.rsplit(".", 1)[1]
            assert h.data.dtype == (np.dtype(">i4") if kind == "FLG" else np.dtype(">f4"))
            scale = np.sqrt(abs(np.linalg.det(WCS(hdr).pixel_scale_matrix))) * 3600
            assert 0.1 * 31 < scale < 0.1 * 33  # light mode: 32x binned 0.1" pixels
        assert zps == {float, str}  # MAGZEROP sometimes a string, as in real headers
        flg = hdul[f"{sorted(qids)[0]}.FLG"].data
        assert (flg & 1).any()  # some INVALID pixels


def test_bkg_wgt_and_psf(light_field: tuple[Path, FieldSummary]) -> None:
    root, summary = light_field
    bkg = _files(root, "q1/VIS/*/EUC_VIS_SWL-BKG-*.fits")[0]
    with fits.open(bkg) as hdul:
        assert len(hdul) == 145
        assert all(QID.match(h.name) for h in hdul[1:])
    psf_files = _files(root, "q1/VIS/*/EUC_VIS_GRD-PSF-*.fits")
    assert len(psf_files) == len(summary.plan.obs_ids)
    with fits.open(psf_files[0]) as hdul:
        assert len(hdul) == 145
        grid = hdul["3-4.F"].data
        assert grid.shape == (189, 189)
        stamps = grid.reshape(9, 21, 9, 21).transpose(0, 2, 1, 3)
        sums = stamps.sum(axis=(2, 3))
        assert np.all((sums > 0.93) & (sums < 0.97))
        assert np.unravel_index(stamps[4, 4].argmax(), (21, 21)) == (10, 10)


def test_mosaic_header(light_field: tuple[Path, FieldSummary]) -> None:
    root, summary = light_field
    path = _files(root, "q1/MER/*/VIS/*.fits")[0]
    with pytest.warns(AstropyUserWarning, match="truncated"):  # the pixels are omitted
        hdr = fits.getheader(path)
    assert (hdr["NAXIS1"], hdr["NAXIS2"]) == (19200, 19200)
    assert hdr["CTYPE1"] == "RA---TAN"
    assert hdr["CD1_1"] == pytest.approx(-0.1 / 3600)
    assert hdr["CD2_2"] == pytest.approx(0.1 / 3600)
    tile = summary.plan.tiles.tile(int(path.parent.parent.name))
    assert (hdr["CRVAL1"], hdr["CRVAL2"]) == (tile.ra_deg, tile.dec_deg)
    assert path.stat().st_size < 20_000  # header only: the 1.4 GB pixel array is omitted


def test_catalogs(light_field: tuple[Path, FieldSummary]) -> None:
    root, _ = light_field
    sky = AllSkyTiling()
    for path in _files(root, "q1/catalogs/MER_FINAL_CATALOG/*/*.fits"):
        tile_id = int(path.parent.name)
        with fits.open(path) as hdul:
            assert hdul[1].header["TILE_INDEX"] == tile_id
            table = Table(hdul[1].data)
        assert list(table.colnames) == list(CATALOG_COLUMNS)
        for name, dtype in CATALOG_COLUMNS.items():
            assert table[name].dtype.newbyteorder("=") == np.dtype(dtype), name
        ra = np.asarray(table["RIGHT_ASCENSION"], dtype=np.float64)
        dec = np.asarray(table["DECLINATION"], dtype=np.float64)
        assert np.array_equal(np.asarray(table["OBJECT_ID"]), object_ids(ra, dec))
        assert np.all(sky.tile_of(ra, dec) == tile_id)  # core-area sources only
        assert np.all(np.asarray(table["SEGMENTATION_MAP_ID"]) // 10**6 == tile_id)
        plf = fits.getdata(path, 1)["POINT_LIKE_FLAG"]
        col = fits.getheader(path, 1)
        tnull = [col[k] for k in col if k.startswith("TNULL")]
        assert tnull, "POINT_LIKE_FLAG needs a null value"
        assert set(np.unique(plf)) <= {1, tnull[0]}
        assert (plf == 1).any()
        assert (plf == tnull[0]).any()


def test_object_id_formula() -> None:
    ra = [57.9990741, 267.3807789, 0.0, 359.99999999]
    dec = [-51.5, 65.4983, 0.5, -0.00000001]
    ids = object_ids(np.array(ra), np.array(dec))
    assert ids.dtype == np.int64
    for i, (r, d) in enumerate(zip(ra, dec, strict=True)):
        sign = -1 if d < 0 else 1
        assert ids[i] == sign * (int(r * 1e7) * 10**9 + int(abs(d) * 1e7))  # DPDD, exactly
    assert ids[1] > 2**53  # beyond float64's exact integers: never routed through float


@pytest.mark.slow  # simulates the light field again: ~9 s on 2 cores
def test_same_seed_same_bytes(light_field: tuple[Path, FieldSummary], tmp_path: Path) -> None:
    from constellation.io.storage import Storage
    from constellation.simulate.run import simulate_field

    root, summary = light_field
    again = simulate_field(summary.plan.spec, Storage(), str(tmp_path))
    assert again.bytes_written == summary.bytes_written
    a = _files(root, "q1/catalogs/MER_FINAL_CATALOG/*/*.fits")[0]
    b = tmp_path / a.relative_to(root)
    assert a.read_bytes() == b.read_bytes()
    det = _files(root, "q1/VIS/*/EUC_VIS_SWL-DET-*-01-1-*.fits")[0]
    assert det.read_bytes() == (tmp_path / det.relative_to(root)).read_bytes()
