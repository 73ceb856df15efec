"""The quadrant index built from simulated fields (local, S3, sparse true geometry)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from constellation.io.fits import read_extension_headers
from constellation.io.observations import list_observations
from constellation.io.quadrant_index import (
    build_quadrant_index,
    read_quadrant_index,
)
from constellation.io.storage import Storage
from constellation.manifest.quadrant_index import (
    FOOTPRINT_VERTICES,
    METADATA_KEYS,
    QUADRANT_INDEX_SCHEMA,
)
from constellation.simulate import FieldSpec
from constellation.simulate.run import FieldSummary, simulate_field
from tests.fixtures.fields import LIGHT_1X1, FieldFactory


@pytest.fixture(scope="module")
def light_index(fields: FieldFactory) -> tuple[pa.Table, object]:
    """The light field's quadrant index, as the session's field factory built it."""
    indexed = fields.indexed(LIGHT_1X1)
    summary = indexed.summary
    assert indexed.progress[-1] == (summary.exposures, summary.exposures)
    return read_quadrant_index(Storage(), str(indexed.index)), summary


def test_rows_and_schema(
    light_field: tuple[Path, FieldSummary], light_index: tuple[pa.Table, object]
) -> None:
    table, summary = light_index
    n_exp = len(light_field[1].plan.exposures)
    assert table.num_rows == 144 * n_exp
    assert table.schema.remove_metadata() == QUADRANT_INDEX_SCHEMA
    meta = table.schema.metadata
    assert meta[METADATA_KEYS["healpix_order"]] == b"29"
    assert meta[METADATA_KEYS["version"]] == b"1"
    hp = table["healpix"].to_numpy()
    assert np.all(np.diff(hp) >= 0)
    assert summary.det_read == n_exp  # type: ignore[attr-defined]
    assert summary.psf_read == 1  # type: ignore[attr-defined]
    assert len(table["footprint_ra"][0].as_py()) == FOOTPRINT_VERTICES


def test_short_and_nominal(light_index: tuple[pa.Table, object]) -> None:
    table, _ = light_index
    expnum = table["expnum"].to_numpy()
    exptime = table["exptime"].to_numpy()
    assert set(expnum.tolist()) == {1, 2}
    np.testing.assert_allclose(exptime[expnum == 1], 560.52)
    assert np.all(np.abs(exptime[expnum == 2] - 89.5) < 0.1)


def test_magzerop_float_even_from_strings(light_index: tuple[pa.Table, object]) -> None:
    table, _ = light_index
    rows = table.select(["det_url", "quadrant", "magzerop"]).to_pylist()
    strings = 0
    by_url: dict[str, list[dict[str, object]]] = {}
    for r in rows:
        by_url.setdefault(str(r["det_url"]), []).append(r)
    url, some = next(iter(by_url.items()))
    with fits.open(url) as hdul:
        for r in some:
            raw = hdul[f"{r['quadrant']}.SCI"].header["MAGZEROP"]
            strings += isinstance(raw, str)
            assert isinstance(r["magzerop"], float)
            assert r["magzerop"] == pytest.approx(float(raw))
    assert strings > 0  # the simulator writes ~15 % as strings


def _check_offsets(table: pa.Table, n: int = 12) -> None:
    rows = table.to_pylist()
    rng = np.random.default_rng(1)
    storage = Storage()
    for i in rng.choice(len(rows), size=n, replace=False):
        r = rows[i]
        q = r["quadrant"]
        for prefix, url, extname in (
            ("sci", r["det_url"], f"{q}.SCI"),
            ("rms", r["det_url"], f"{q}.RMS"),
            ("flg", r["det_url"], f"{q}.FLG"),
            ("bkg", r["bkg_url"], q),
            ("psf", r["psf_url"], q),
        ):
            off, nbytes = r[f"{prefix}_data_offset"], r[f"{prefix}_data_bytes"]
            assert off == r[f"{prefix}_header_offset"] + r[f"{prefix}_header_bytes"]
            raw = storage.read_range(url, off, off + nbytes)
            with fits.open(url) as hdul:
                data = hdul[extname].data
            got = np.frombuffer(raw, dtype=data.dtype.newbyteorder(">")).reshape(data.shape)
            np.testing.assert_array_equal(got, data)


@pytest.mark.slow  # ~18 s on 2 cores
def test_byte_offsets(light_index: tuple[pa.Table, object]) -> None:
    _check_offsets(light_index[0])


def _tangent(ra: np.ndarray, dec: np.ndarray, ra0: float, dec0: float) -> np.ndarray:
    ra, dec, ra0, dec0 = map(np.radians, (ra, dec, ra0, dec0))
    cosc = np.sin(dec0) * np.sin(dec) + np.cos(dec0) * np.cos(dec) * np.cos(ra - ra0)
    x = np.cos(dec) * np.sin(ra - ra0) / cosc
    y = (np.cos(dec0) * np.sin(dec) - np.sin(dec0) * np.cos(dec) * np.cos(ra - ra0)) / cosc
    return np.stack([x, y], axis=-1)


def _inside(points: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Even-odd ray casting (points (n, 2), polygon (m, 2))."""
    x, y = points[:, 0:1], points[:, 1:2]
    x0, y0 = poly[:, 0], poly[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    crosses = (y0 > y) != (y1 > y)
    with np.errstate(divide="ignore", invalid="ignore"):
        xi = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
    return np.asarray((crosses & (x < xi)).sum(axis=1) % 2 == 1)


def test_footprint_contains_quadrant(light_index: tuple[pa.Table, object]) -> None:
    table, _ = light_index
    rows = table.to_pylist()
    for r in rows[:: max(1, len(rows) // 40)]:
        wcs = WCS(fits.Header.fromstring(r["wcs_header"], sep="\n"))
        nx, ny = r["naxis1"], r["naxis2"]
        yy, xx = np.mgrid[-0.5 : ny - 0.5 : 25j, -0.5 : nx - 0.5 : 25j]
        ra, dec = wcs.all_pix2world(xx.ravel(), yy.ravel(), 0)
        ra0, dec0 = r["center_ra"], r["center_dec"]
        poly = _tangent(np.array(r["footprint_ra"]), np.array(r["footprint_dec"]), ra0, dec0)
        assert _inside(_tangent(ra, dec, ra0, dec0), poly).all()
        cra, cdec = wcs.all_pix2world([(nx - 1) / 2], [(ny - 1) / 2], 0)
        assert (cra[0], cdec[0]) == pytest.approx((ra0, dec0))


@pytest.mark.slow  # ~17 s on 2 cores
def test_incremental(light_field: tuple[Path, FieldSummary], tmp_path: Path) -> None:
    root, summary = light_field
    vis = tmp_path / "VIS"
    shutil.copytree(root / "q1" / "VIS", vis)
    out = str(tmp_path / "idx.parquet")
    storage = Storage()
    first = build_quadrant_index(storage, str(vis), out)
    n_exp = len(summary.plan.exposures)
    assert first.det_read == n_exp
    before = read_quadrant_index(storage, out)

    mtime = Path(out).stat().st_mtime_ns
    second = build_quadrant_index(storage, str(vis), out)
    assert second.files_read == 0
    assert second.det_skipped == n_exp
    assert second.quadrant_exposures == first.quadrant_exposures
    assert (second.bkg_skipped, second.psf_skipped) == (
        first.bkg_read,
        first.psf_read,
    )  # files counted once, as read
    assert second.requests <= 3  # listing, index: no FITS file opened, no rebuild to compare
    assert Path(out).stat().st_mtime_ns == mtime  # not rewritten
    assert read_quadrant_index(storage, out).equals(before)

    det = sorted(vis.glob("*/EUC_VIS_SWL-DET-*"))[0]
    data = det.read_bytes()
    det.unlink()
    det.write_bytes(data)  # rewritten: a new version
    third = build_quadrant_index(storage, str(vis), out)
    assert (third.det_read, third.bkg_read, third.psf_read) == (1, 0, 0)
    assert (
        read_quadrant_index(storage, out)
        .drop_columns(["det_etag"])
        .equals(before.drop_columns(["det_etag"]))
    )

    gone = sorted(vis.glob("*/EUC_VIS_SWL-DET-*"))[-1]
    gone.unlink()
    fourth = build_quadrant_index(storage, str(vis), out)
    assert fourth.files_read == 0
    assert fourth.det_removed == 1
    after = read_quadrant_index(storage, out)
    assert after.num_rows == 144 * (n_exp - 1)
    assert str(gone) not in set(after["det_url"].to_pylist())

    full = build_quadrant_index(storage, str(vis), out, full=True)
    assert full.det_read == n_exp - 1


def test_s3_anonymous(
    s3_light_field: tuple[str, FieldSummary], anon_s3_storage: Storage, tmp_path: Path
) -> None:
    root, summary = s3_light_field
    local_out = str(tmp_path / "idx.parquet")
    s = build_quadrant_index(anon_s3_storage, f"{root}/q1/VIS", local_out)
    n_exp = len(summary.plan.exposures)
    assert s.det_read == n_exp
    table = read_quadrant_index(Storage(), local_out)
    assert table.num_rows == 144 * n_exp
    assert all(u.startswith("s3://") for u in table["det_url"].to_pylist())
    assert all(t for t in table["det_etag"].to_pylist())
    ra = np.array([x for f in table["footprint_ra"].to_pylist() for x in f])
    assert ra.min() < 1.0
    assert ra.max() > 359.0  # the field straddles RA = 0
    # the offsets read back through S3 match astropy
    r = table.slice(0, 1).to_pylist()[0]
    start = r["sci_data_offset"]
    raw = anon_s3_storage.read_range(r["det_url"], start, start + r["sci_data_bytes"])
    with fits.open(anon_s3_storage.open(r["det_url"])) as hdul:
        data = hdul[f"{r['quadrant']}.SCI"].data
        np.testing.assert_array_equal(np.frombuffer(raw, ">f4").reshape(data.shape), data)
    again = build_quadrant_index(anon_s3_storage, f"{root}/q1/VIS", local_out)
    assert again.files_read == 0


def test_sparse_det_rounds_and_bytes(tmp_path: Path) -> None:
    spec = FieldSpec(mode="sparse", n_tiles_ra=1, n_tiles_dec=1, density_per_arcmin2=1)
    simulate_field(spec, Storage(), str(tmp_path))
    index = list_observations(Storage(), str(tmp_path / "q1" / "VIS"))
    det = index.exposures[0].det
    assert det is not None
    assert det.size > 7e9
    storage = Storage()
    scan = read_extension_headers(storage, det.url, size=det.size)
    assert len(scan.extensions) == 432
    assert scan.rounds <= 3
    assert scan.bytes_read <= 1.3 * scan.header_bytes_total
    assert storage.stats.requests == scan.requests
    sci = scan.by_name()["3-4.F.SCI"]
    assert sci.data_bytes == 2048 * 2066 * 4
