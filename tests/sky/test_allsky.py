"""The generated Euclid-like all-sky tiling."""

from __future__ import annotations

import numpy as np
from astropy.coordinates import SkyCoord

from constellation.sky import (
    AllSkyTiling,
    SubTileGrid,
    TileRegistry,
    subtile_centres,
    wide_footprint_mask,
)
from tests.sky.reference import reference_plane


def test_shape_of_the_tiling(allsky_registry: TileRegistry) -> None:
    reg = allsky_registry
    area = 4 * np.pi * (180 / np.pi) ** 2
    assert abs(len(reg) - area / 0.25) / (area / 0.25) < 0.02  # ~one tile per 0.25 deg²
    assert np.unique(reg.tile_id).size == len(reg)
    assert reg.tile_id.min() >= 100_000_000
    assert reg.tile_id.max() < 1_000_000_000
    assert np.count_nonzero(reg.dec == 90.0) == 1
    assert np.count_nonzero(reg.dec == -90.0) == 1
    assert np.any(reg.ra == 0.0)  # tiles centred on RA = 0 ...
    assert np.any((reg.ra > 359.0) & (np.abs(reg.dec) < 1))  # ... and just west of it


def test_every_position_has_an_owner_whose_core_holds_it(allsky_registry: TileRegistry) -> None:
    sky = AllSkyTiling()
    rng = np.random.default_rng(42)
    n = 200_000
    ra = np.concatenate([rng.uniform(0, 360, n), rng.uniform(-1e-6, 1e-6, 1000) % 360])
    dec = np.concatenate([np.degrees(np.arcsin(rng.uniform(-1, 1, n))), rng.uniform(-90, 90, 1000)])
    owner = sky.tile_of(ra, dec)
    rows = allsky_registry.rows_of(owner)  # raises if an owner id does not exist
    worst = 0.0
    for row in np.unique(rows)[:: max(1, np.unique(rows).size // 3000)]:
        sel = rows == row
        x, y = reference_plane(allsky_registry.ra[row], allsky_registry.dec[row], ra[sel], dec[sel])
        worst = max(worst, float(np.max(np.maximum(np.abs(x), np.abs(y)))) - 15.0)
    # the band cell lies in the core square up to slivers (<= 40" next to the poles)
    assert worst < 1.0


def test_centres_are_owned_by_their_tile(allsky_registry: TileRegistry) -> None:
    owner = AllSkyTiling().tile_of(allsky_registry.ra, allsky_registry.dec)
    assert np.array_equal(owner, allsky_registry.tile_id)


def test_subtile_centres(allsky_registry: TileRegistry) -> None:
    sub = allsky_registry.subset(allsky_registry.tile_id[::5000])
    grid = SubTileGrid(4, 4, 1.0)
    c = subtile_centres(sub, grid)
    assert len(c) == 16 * len(sub)
    for i in range(0, len(c), 97):
        tile = sub.tile(int(sub.tile_id[c.tile_row[i]]))
        want = tile.subtile(grid, int(c.row[i]), int(c.col[i])).center_sky
        assert np.allclose([c.ra[i], c.dec[i]], want, atol=1e-10)


def test_wide_footprint_matches_astropy_frames() -> None:
    rng = np.random.default_rng(3)
    ra, dec = rng.uniform(0, 360, 5000), np.degrees(np.arcsin(rng.uniform(-1, 1, 5000)))
    c = SkyCoord(ra, dec, unit="deg")
    b = c.galactic.b.deg
    beta = c.barycentrictrueecliptic.lat.deg
    want = (np.abs(b) >= 28) & (np.abs(beta) >= 15)
    got = wide_footprint_mask(ra, dec)
    # frames differ by < 0.01 deg (ecliptic of date vs J2000 mean); ignore the borders
    border = (np.abs(np.abs(b) - 28) < 0.01) | (np.abs(np.abs(beta) - 15) < 0.01)
    assert np.array_equal(got[~border], want[~border])


def test_wide_footprint_area(allsky_registry: TileRegistry) -> None:
    n = int(wide_footprint_mask(allsky_registry.ra, allsky_registry.dec).sum())
    assert 55_000 < n < 65_000  # ~15,000 deg² of 0.25 deg² tiles


def test_other_tile_sizes() -> None:
    deep = AllSkyTiling(core_size_arcmin=17.0, extended_size_arcmin=17.0)
    reg = deep.registry()
    assert np.unique(reg.tile_id).size == len(reg)
    assert np.array_equal(deep.tile_of(reg.ra, reg.dec), reg.tile_id)
