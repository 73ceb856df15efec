"""Tile registries resolved from MER VIS mosaic headers, locally and from a local S3 server."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from constellation.io.registry import (
    MissingMosaicError,
    MosaicHeaderError,
    RegistryResolveError,
    list_tile_ids,
    load_or_resolve_registry,
    mosaic_geometry,
    read_registry,
    resolve_registry,
    resolve_tile,
)
from constellation.io.storage import Storage
from constellation.sky import AllSkyTiling, Tile, TileRegistry
from constellation.sky.projection import plane_to_sky
from tests.fixtures.mer import (
    mosaic_header,
    mosaic_name,
    write_header_only,
    write_mer_tree,
)

TOL_DEG = 1e-9
HEADER_BYTES = len(mosaic_header(0.0, 0.0).tostring())  # 5 blocks


@pytest.fixture(scope="module")
def truth() -> list[Tile]:
    """Tiles on both sides of RA = 0, at Dec +66 (EDF-N), on the south pole, at Dec -51.5."""
    sky = AllSkyTiling().registry()
    edfn = np.flatnonzero(np.abs(sky.dec - 66.0) < 0.26)
    near_edfn = int(sky.tile_id[edfn[np.argmin(np.abs(sky.ra[edfn] - 269.7))]])
    ids = [100180000, 100180719, 100312000, near_edfn, 100000000, 100077100]
    tiles = [sky.tile(i) for i in ids]
    assert tiles[0].ra_deg < 1  # straddling RA = 0 ...
    assert tiles[1].ra_deg > 359  # ... with this one
    assert tiles[2].dec_deg == tiles[3].dec_deg == 66.0
    assert tiles[4].dec_deg == -90.0
    return tiles


def _separation_deg(ra1: float, dec1: float, ra2: float, dec2: float) -> float:
    r1, d1, r2, d2 = np.radians([ra1, dec1, ra2, dec2])
    h = np.sin((d2 - d1) / 2) ** 2 + np.cos(d1) * np.cos(d2) * np.sin((r2 - r1) / 2) ** 2
    return float(np.degrees(2 * np.arcsin(np.sqrt(h))))


def _assert_matches(registry: TileRegistry, tiles: list[Tile]) -> None:
    assert sorted(registry.tile_id.tolist()) == sorted(t.tile_id for t in tiles)
    for t in tiles:
        got = registry.tile(t.tile_id)
        assert abs(got.dec_deg - t.dec_deg) < TOL_DEG, t.tile_id
        assert _separation_deg(got.ra_deg, got.dec_deg, t.ra_deg, t.dec_deg) < TOL_DEG
        if abs(t.dec_deg) < 90:
            d_ra = (got.ra_deg - t.ra_deg + 180.0) % 360.0 - 180.0
            assert abs(d_ra) < TOL_DEG, (t.tile_id, got.ra_deg, t.ra_deg)
        assert abs(got.extended_size_arcmin - 32.0) < TOL_DEG
        assert abs(got.core_size_arcmin - 30.0) < TOL_DEG


def test_resolve_locally(tmp_path: Path, truth: list[Tile]) -> None:
    mer = tmp_path / "q1" / "MER"
    write_mer_tree(mer, truth)
    (mer / "README").write_text("not a tile")
    (mer / "catalogs").mkdir()
    storage = Storage()
    calls: list[tuple[int, int]] = []
    registry = resolve_registry(storage, str(mer), progress=lambda d, n: calls.append((d, n)))
    _assert_matches(registry, truth)
    n = len(truth)
    assert calls[0] == (0, n)
    assert calls[-1] == (n, n)
    assert len(calls) == n + 1
    # one listing of the root; per tile one listing + 3 ranged reads (2, 2, then 4 blocks
    # asked for), which stop at the end of these header-only files
    assert storage.stats.requests == 1 + 4 * n
    assert storage.stats.bytes_read == n * HEADER_BYTES


def test_resolve_through_anonymous_s3(
    tmp_path: Path,
    truth: list[Tile],
    s3_bucket: str,
    upload_tree: Callable[..., list[str]],
    anon_s3_storage: Storage,
) -> None:
    write_mer_tree(tmp_path / "MER", truth)
    upload_tree(tmp_path / "MER", s3_bucket, "q1/MER")
    root = f"s3://{s3_bucket}/q1/MER"
    assert list_tile_ids(anon_s3_storage, root) == sorted(t.tile_id for t in truth)
    registry = resolve_registry(anon_s3_storage, root, max_workers=4)
    _assert_matches(registry, truth)
    one = resolve_tile(anon_s3_storage, root, truth[3].tile_id)
    assert one.url == f"{root}/{truth[3].tile_id}/VIS/{mosaic_name(truth[3].tile_id)}"
    assert one.requests == 4
    assert one.bytes_read == HEADER_BYTES
    assert one.geometry.naxis1 == one.geometry.naxis2 == 19200
    assert one.geometry.pixel_scale_arcsec == pytest.approx(0.1, rel=1e-12)


def test_centre_is_the_central_pixel_not_crval(tmp_path: Path) -> None:
    # CRVAL (270, 66) sits at CRPIX, which is not the central pixel (9600.5, 9600.5):
    # the central pixel is 100 px lower in x (x grows west, CD1_1 < 0), i.e. 10" east of
    # CRVAL, and 50 px higher in y, i.e. 5" north.
    crpix = (9600.5 + 100, 9600.5 - 50)
    header = mosaic_header(270.0, 66.0, crpix=crpix)
    g = mosaic_geometry(header, "test")
    x_west_arcmin, y_north_arcmin = -10.0 / 60.0, 5.0 / 60.0
    ra, dec = plane_to_sky(x_west_arcmin, y_north_arcmin, 270.0, 66.0)
    assert _separation_deg(g.ra_deg, g.dec_deg, float(ra), float(dec)) < TOL_DEG
    assert _separation_deg(g.ra_deg, g.dec_deg, 270.0, 66.0) > 10.0 / 3600 * 0.99


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"ctype": ("RA---SIN", "DEC--SIN")}, r"m\.fits: CTYPE1/CTYPE2 = 'RA---SIN'/'DEC--SIN'"),
        ({"ctype": ("GLON-TAN", "GLAT-TAN")}, r"expected a TAN projection in RA/Dec"),
        ({"naxis": (19200, 19000)}, r"m\.fits: mosaic is 19200 x 19000 pixels"),
    ],
)
def test_bad_mosaics_are_rejected(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(MosaicHeaderError, match=match):
        mosaic_geometry(mosaic_header(10.0, 10.0, **kwargs), "m.fits")  # type: ignore[arg-type]
    ok = mosaic_geometry(mosaic_header(10.0, 10.0, naxis=(19200, 19201)), "m.fits")
    assert ok.extended_size_arcmin == pytest.approx(32.0)
    with pytest.raises(MosaicHeaderError, match="no core"):
        mosaic_geometry(mosaic_header(10.0, 10.0), "m.fits", core_margin_arcmin=16.0)


def test_non_tan_tile_fails_resolution_naming_the_file(tmp_path: Path) -> None:
    tile = Tile(101, 45.0, 10.0)
    write_mer_tree(tmp_path, [tile], ctype=("RA---ZEA", "DEC--ZEA"))
    with pytest.raises(RegistryResolveError, match=r"101: .*TILE101-.*\.fits: CTYPE1") as exc:
        resolve_registry(Storage(), str(tmp_path), [101], skip_missing=True)
    assert list(exc.value.failures) == [101]


def test_newest_of_several_mosaics_is_used(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    vis = tmp_path / "202" / "VIS"
    write_header_only(vis / mosaic_name(202, "20240101T000000.000000Z"), mosaic_header(1.0, 1.0))
    write_header_only(vis / mosaic_name(202, "20241018T142710.276838Z"), mosaic_header(2.0, 2.0))
    write_header_only(vis / mosaic_name(202, "20230505T101010.000000Z"), mosaic_header(3.0, 3.0))
    # other products in the same directory are ignored
    write_header_only(vis / "EUC_MER_MOSAIC-VIS-RMS_TILE202-X_1_00.00.fits", mosaic_header(9, 9))
    with caplog.at_level(logging.WARNING, logger="constellation"):
        got = resolve_tile(Storage(), str(tmp_path), 202)
    assert (got.geometry.ra_deg, got.geometry.dec_deg) == pytest.approx((2.0, 2.0), abs=1e-12)
    assert "20241018T142710" in got.url
    assert any("3 VIS mosaics" in r.getMessage() for r in caplog.records)


def test_missing_mosaics_are_reported_or_skipped(
    tmp_path: Path, truth: list[Tile], caplog: pytest.LogCaptureFixture
) -> None:
    write_mer_tree(tmp_path, truth[:2])
    (tmp_path / "303" / "VIS").mkdir(parents=True)  # directory without a mosaic
    storage = Storage()
    wanted = [truth[0].tile_id, truth[1].tile_id, 303, 404]
    with pytest.raises(RegistryResolveError) as exc:
        resolve_registry(storage, str(tmp_path), wanted)
    assert sorted(exc.value.failures) == [303, 404]
    message = str(exc.value)
    assert "could not resolve 2 tile(s)" in message
    assert "303: no VIS mosaic EUC_MER_BGSUB-MOSAIC-VIS_TILE303-*.fits" in message
    assert "404: no VIS mosaic:" in message
    with caplog.at_level(logging.WARNING, logger="constellation"):
        registry = resolve_registry(storage, str(tmp_path), wanted, skip_missing=True)
    _assert_matches(registry, truth[:2])
    assert any("skipped 2 tile(s)" in r.getMessage() and "303, 404" in r.getMessage()
               for r in caplog.records)  # fmt: skip
    with pytest.raises(MissingMosaicError):
        resolve_tile(storage, str(tmp_path), 404)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        resolve_registry(storage, str(tmp_path / "nowhere"))


def test_image_in_the_first_extension(tmp_path: Path) -> None:
    primary = fits.Header()
    primary["SIMPLE"] = True
    primary["BITPIX"] = 8
    primary["NAXIS"] = 0
    primary["EXTEND"] = True
    image = mosaic_header(123.0, -45.0)
    image.remove("SIMPLE")
    image.remove("EXTEND")
    image.insert(0, ("XTENSION", "IMAGE"))
    image.insert("NAXIS2", ("PCOUNT", 0), after=True)
    image.insert("PCOUNT", ("GCOUNT", 1), after=True)
    path = tmp_path / "505" / "VIS" / mosaic_name(505)
    path.parent.mkdir(parents=True)
    path.write_bytes((primary.tostring() + image.tostring()).encode())
    got = resolve_tile(Storage(), str(tmp_path), 505)
    assert (got.geometry.ra_deg, got.geometry.dec_deg) == pytest.approx((123.0, -45.0), abs=1e-12)
    assert got.requests == 1 + 1 + 3  # listing, primary (1 block), extension (3 reads)


def test_core_margin(tmp_path: Path, truth: list[Tile]) -> None:
    write_mer_tree(tmp_path, truth[:1])
    registry = resolve_registry(Storage(), str(tmp_path), core_margin_arcmin=0.5, max_workers=1)
    assert registry.core_size_arcmin[0] == pytest.approx(31.0, abs=TOL_DEG)


def test_cache_is_reused_extended_and_refreshed(tmp_path: Path, truth: list[Tile]) -> None:
    mer = tmp_path / "MER"
    write_mer_tree(mer, truth)
    cache = tmp_path / "work" / "registry.parquet"
    first = Storage()
    registry = load_or_resolve_registry(cache, first, str(mer))
    _assert_matches(registry, truth)
    _assert_matches(read_registry(cache), truth)
    assert first.stats.requests > 0
    # reused: no header read, only the cache (exists + read, twice)
    again = Storage()
    _assert_matches(load_or_resolve_registry(cache, again, str(mer)), truth)
    sub = load_or_resolve_registry(cache, again, str(mer), [truth[1].tile_id])
    _assert_matches(sub, truth[1:2])
    assert again.stats.requests == 4
    assert again.stats.bytes_read == 2 * cache.stat().st_size
    # a tile not in the cache is resolved and added; the others are not read again
    extra = Tile(100099999, 123.4, -12.5)
    write_mer_tree(mer, [extra])
    more = Storage()
    got = load_or_resolve_registry(cache, more, str(mer), [truth[0].tile_id, extra.tile_id])
    _assert_matches(got, [truth[0], extra])
    # the new tile's 4 requests, and the cache's exists, read and write
    assert more.stats.requests == 4 + 3
    _assert_matches(read_registry(cache), [*truth, extra])
    # refresh: headers read again, so a moved mosaic shows up
    moved = Tile(truth[0].tile_id, 10.0, 20.0)
    write_mer_tree(mer, [moved])
    assert load_or_resolve_registry(cache, Storage(), str(mer)).tile(moved.tile_id).ra_deg != 10.0
    refreshed = load_or_resolve_registry(cache, Storage(), str(mer), refresh=True)
    _assert_matches(refreshed, [moved, *truth[1:], extra])
    one = load_or_resolve_registry(cache, Storage(), str(mer), [moved.tile_id], refresh=True)
    _assert_matches(one, [moved])
    assert len(read_registry(cache)) == len(truth) + 1
