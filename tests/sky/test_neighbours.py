"""Neighbour lookup: HEALPix candidates + exact test equal brute force and sampling."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from constellation.sky import NeighbourIndex, Tile, TileRegistry
from constellation.sky.neighbours import intersecting_rows, quads_intersect_box
from constellation.sky.tiling import Box
from tests.sky.reference import reference_plane, tan_wcs


@pytest.fixture(scope="module")
def index(allsky_registry: TileRegistry) -> NeighbourIndex:
    return NeighbourIndex(allsky_registry, order=9)


def _brute_force(registry: TileRegistry, tile: Tile, margin: float) -> np.ndarray:
    rows = np.arange(len(registry))
    hit = intersecting_rows(registry, rows, tile, tile.reach_box(margin), 0.0)
    ids = registry.tile_id[hit]
    return np.sort(ids[ids != tile.tile_id])


def _interesting_rows(registry: TileRegistry) -> list[int]:
    """Polar caps, rings next to them, tiles at and across RA = 0, the equator."""
    ids = registry.tile_id
    picks = [0, 1, 2, len(ids) - 1, len(ids) - 2]
    picks += np.flatnonzero(registry.ra == 0.0)[::37].tolist()
    picks += np.flatnonzero(np.abs(registry.dec) < 0.3)[:3].tolist()
    return picks


@pytest.mark.slow  # ~17 s on 2 cores; test_against_sampled_cores stays in the fast loop
def test_brute_force_on_interesting_tiles(
    allsky_registry: TileRegistry, index: NeighbourIndex
) -> None:
    for row in _interesting_rows(allsky_registry):
        tile = allsky_registry.tile(int(allsky_registry.tile_id[row]))
        got = index.neighbours(tile, 1.0)
        assert np.array_equal(got, _brute_force(allsky_registry, tile, 1.0)), tile
        assert got.size >= 3


@pytest.mark.slow  # ~23 s on 2 cores
@settings(max_examples=25, deadline=None)
@given(frac=st.floats(0.0, 1.0, exclude_max=True), margin=st.sampled_from([0.0, 1.0, 4.0]))
def test_brute_force_on_random_tiles(
    allsky_registry: TileRegistry, index: NeighbourIndex, frac: float, margin: float
) -> None:
    row = int(frac * len(allsky_registry))
    tile = allsky_registry.tile(int(allsky_registry.tile_id[row]))
    assert np.array_equal(
        index.neighbours(tile, margin), _brute_force(allsky_registry, tile, margin)
    )


@settings(max_examples=25, deadline=None)
@given(frac=st.floats(0.0, 1.0, exclude_max=True))
def test_against_sampled_cores(
    allsky_registry: TileRegistry, index: NeighbourIndex, frac: float
) -> None:
    """Independent check with wcslib: sample each nearby tile's core and look for hits."""
    reg = allsky_registry
    tile = reg.tile(int(reg.tile_id[int(frac * len(reg))]))
    reach = tile.reach_box(1.0)
    got = set(index.neighbours(tile, 1.0).tolist())
    # nearby tiles by great-circle distance of centres (< 2 deg)
    r0, d0 = np.radians(tile.ra_deg), np.radians(tile.dec_deg)
    r, d = np.radians(reg.ra), np.radians(reg.dec)
    cosd = np.sin(d0) * np.sin(d) + np.cos(d0) * np.cos(d) * np.cos(r - r0)
    near = np.flatnonzero((cosd > np.cos(np.radians(2.0))) & (reg.tile_id != tile.tile_id))
    # Convex shapes meet iff a boundary point of one lies in the other, or one
    # contains the other: sample the neighbour's core boundary, and test the
    # reach corners against the neighbour's core.
    step = 0.02  # arcmin between boundary samples
    t = np.arange(-15.0, 15.0, step)
    bx = np.concatenate([t, np.full_like(t, 15.0), -t, np.full_like(t, -15.0)])
    by = np.concatenate([np.full_like(t, -15.0), t, np.full_like(t, 15.0), -t])
    corners_ra, corners_dec = tan_wcs(tile.ra_deg, tile.dec_deg).wcs_pix2world(
        reach.corners()[:, 0], reach.corners()[:, 1], 0
    )
    for row in near:
        other = reg.tile(int(reg.tile_id[row]))
        ra, dec = tan_wcs(other.ra_deg, other.dec_deg).wcs_pix2world(bx, by, 0)
        x, y = reference_plane(tile.ra_deg, tile.dec_deg, ra, dec)
        dx = np.maximum(np.maximum(reach.x_min - x, x - reach.x_max), 0)
        dy = np.maximum(np.maximum(reach.y_min - y, y - reach.y_max), 0)
        dist = np.nanmin(np.hypot(dx, dy))
        cx, cy = reference_plane(other.ra_deg, other.dec_deg, corners_ra, corners_dec)
        contains = bool(np.any((np.abs(cx) <= 15.0) & (np.abs(cy) <= 15.0)))
        if dist == 0.0 or contains:
            assert other.tile_id in got, f"{other.tile_id} overlaps {tile.tile_id} but is missed"
        elif other.tile_id in got:
            assert dist <= step, f"{other.tile_id} reported but {dist} arcmin away"


def test_slack_grows_the_neighbour_set(
    allsky_registry: TileRegistry, index: NeighbourIndex
) -> None:
    tile = allsky_registry.tile(100180360)
    plain = set(index.neighbours(tile, 1.0).tolist())
    slack = set(index.neighbours(tile, 1.0, slack_arcmin=20.0).tolist())
    assert plain <= slack
    assert len(slack) > len(plain)


def test_quads_intersect_box() -> None:
    box = Box(-1.0, 1.0, -1.0, 1.0)
    quads = np.array(
        [
            [[0.5, 0.5], [2.0, 0.5], [2.0, 2.0], [0.5, 2.0]],  # overlaps a corner
            [[1.5, -3.0], [3.0, -3.0], [3.0, 3.0], [1.5, 3.0]],  # to the side
            [[0.0, 2.5], [2.5, 0.0], [5.0, 2.5], [2.5, 5.0]],  # diamond beyond the corner
            [[0.0, 1.9], [1.9, 0.0], [5.0, 2.5], [2.5, 5.0]],  # diamond cutting the corner
            [[-5.0, -5.0], [5.0, -5.0], [5.0, 5.0], [-5.0, 5.0]],  # contains the box
            [[1.0, 0.0], [2.0, 0.0], [2.0, 1.0], [1.0, 1.0]],  # touches an edge
            [[np.nan, 0.0], [2.0, 0.0], [2.0, 1.0], [1.0, 1.0]],  # behind the plane
        ]
    )
    assert quads_intersect_box(quads, box).tolist() == [True, False, False, True, True, True, False]


def test_tile_outside_registry_and_empty_registry() -> None:
    reg = TileRegistry([1, 2], [10.0, 10.5], [0.0, 0.0])
    idx = NeighbourIndex(reg)
    assert idx.neighbours(Tile(99, 10.25, 0.0), 1.0).tolist() == [1, 2]
    empty = NeighbourIndex(TileRegistry(np.empty(0, np.int64), [], []))
    assert empty.neighbours(Tile(1, 0.0, 0.0), 1.0).size == 0
