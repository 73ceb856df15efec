"""HEALPix helpers."""

from __future__ import annotations

import healpy as hp
import numpy as np
import pytest

from constellation.sky import SubTileGrid, Tile, healpix


def test_coarsening_is_a_bit_shift_of_the_fine_index() -> None:
    rng = np.random.default_rng(0)
    ra, dec = rng.uniform(0, 360, 10000), np.degrees(np.arcsin(rng.uniform(-1, 1, 10000)))
    fine = healpix.radec_to_index(ra, dec)
    assert fine.dtype == np.int64
    assert fine.max() < 12 * 4**29
    for order in (0, 5, 7, 12, 20):
        direct = hp.ang2pix(2**order, ra, dec, nest=True, lonlat=True)
        assert np.array_equal(healpix.coarsen(fine, 29, order), direct)


def test_pixel_ranges_merge_adjacent_pixels() -> None:
    r = healpix.pixel_ranges([5, 3, 4, 9], order=1, target_order=2)
    assert r.tolist() == [[12, 24], [36, 40]]
    assert healpix.pixel_ranges([], 3).shape == (0, 2)


def test_select_sorted_equals_scan() -> None:
    rng = np.random.default_rng(1)
    idx = np.sort(rng.integers(0, 12 * 4**10, 100_000))
    ranges = healpix.pixel_ranges(rng.integers(0, 12 * 4**4, 50), order=4, target_order=10)
    fast = healpix.select_sorted(idx, ranges)
    assert np.array_equal(fast, np.flatnonzero(healpix.in_ranges(idx, ranges)))


@pytest.mark.parametrize(("ra0", "dec0"), [(0.0, 0.0), (359.9999, -45.0), (10.0, 89.9), (0, -90.0)])
def test_polygon_and_disc_ranges_are_conservative(ra0: float, dec0: float) -> None:
    tile = Tile(1, ra0, dec0)
    sub = tile.subtile(SubTileGrid(), 3, 0)
    rng = np.random.default_rng(2)
    e = sub.extended
    ra, dec = tile.to_sky(rng.uniform(e.x_min, e.x_max, 5000), rng.uniform(e.y_min, e.y_max, 5000))
    idx = healpix.radec_to_index(ra, dec)
    pra, pdec = sub.extended_polygon()
    for order in (6, 9, 11):
        assert healpix.in_ranges(idx, healpix.polygon_ranges(pra, pdec, order)).all()
    ra_c, dec_c = sub.center_sky
    disc = healpix.disc_ranges(ra_c, dec_c, 9.5 / 60 * 0.75, 10)
    assert healpix.in_ranges(idx, disc).all()


def test_order_validation() -> None:
    with pytest.raises(ValueError, match="order"):
        healpix.nside(30)
    with pytest.raises(ValueError, match="finer"):
        healpix.coarsen([1], 5, 6)
