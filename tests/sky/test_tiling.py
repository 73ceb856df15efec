"""Tiles, sub-tiles and boxes: construction checks and exact coverage."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from constellation.sky import Box, SubTile, SubTileGrid, Tile, grid_edges
from tests.sky.reference import decs, ras


def test_box_rejects_empty_and_nonfinite() -> None:
    with pytest.raises(ValueError, match="x_min < x_max"):
        Box(1.0, 1.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="finite"):
        Box(0.0, float("inf"), 0.0, 1.0)


def test_box_is_half_open() -> None:
    b = Box(-1.0, 1.0, -2.0, 2.0)
    inside = b.contains([-1.0, 1.0, 0.0, 0.0, np.nan], [0.0, 0.0, -2.0, 2.0, 0.0])
    assert inside.tolist() == [True, False, True, False, False]


def test_subtile_checks_extended_covers_core() -> None:
    tile = Tile(1, 10.0, 20.0)
    with pytest.raises(ValueError, match="does not cover core"):
        SubTile(tile, 0, 0, Box(0, 2, 0, 2), Box(0.5, 3, -1, 3))


def test_tile_validation() -> None:
    with pytest.raises(ValueError, match="core_size_arcmin <= extended_size_arcmin"):
        Tile(1, 0.0, 0.0, core_size_arcmin=33.0, extended_size_arcmin=32.0)
    with pytest.raises(ValueError, match="outside"):
        Tile(1, 0.0, 91.0)
    assert Tile(1, -0.5, 0.0).ra_deg == 359.5
    assert Tile(1, 360.0, 0.0).ra_deg == 0.0


def test_grid_validation() -> None:
    with pytest.raises(ValueError, match="cells a side"):
        SubTileGrid(0, 4)
    with pytest.raises(ValueError, match="margin"):
        SubTileGrid(4, 4, -1.0)


@pytest.mark.parametrize("n", [1, 3, 4, 7])
def test_grid_edges_are_exact_at_the_ends(n: int) -> None:
    e = grid_edges(30.0, n)
    assert e[0] == -15.0
    assert e[-1] == 15.0
    assert np.all(np.diff(e) > 0)


def test_default_subtiles_match_the_design() -> None:
    """30' cores cut 4x4 give 7.5' cores and 9.5' extended boxes."""
    subs = Tile(102018211, 57.9990741, -51.5).subtiles(SubTileGrid(4, 4, 1.0))
    assert len(subs) == 16
    for s in subs:
        assert s.core.width_arcmin == pytest.approx(7.5)
        assert s.extended.width_arcmin == pytest.approx(9.5)
        assert s.extended.height_arcmin == pytest.approx(9.5)
    assert (subs[0].row, subs[0].col) == (0, 0)
    assert subs[0].core.x_min == -15.0
    assert subs[0].core.y_min == -15.0


@settings(max_examples=50, deadline=None)
@given(
    n_rows=st.integers(1, 8),
    n_cols=st.integers(1, 8),
    core=st.sampled_from([30.0, 17.0, 10.0, 29.999]),
    margin=st.floats(0.0, 5.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_cores_cover_the_tile_core_exactly_once(
    n_rows: int, n_cols: int, core: float, margin: float, seed: int
) -> None:
    tile = Tile(7, 0.0, 0.0, core, core + 2.0)
    subs = tile.subtiles(SubTileGrid(n_rows, n_cols, margin))
    rng = np.random.default_rng(seed)
    xe, ye = grid_edges(core, n_cols), grid_edges(core, n_rows)
    # random points plus every edge value (the half-open boundaries)
    x = np.concatenate([rng.uniform(-core / 2, core / 2, 2000), np.repeat(xe[:-1], len(ye) - 1)])
    y = np.concatenate([rng.uniform(-core / 2, core / 2, 2000), np.tile(ye[:-1], len(xe) - 1)])
    hits = np.zeros(x.size, dtype=int)
    for s in subs:
        hits += s.core.contains(x, y)
        assert s.extended.covers(s.core)
        assert tile.reach_box(margin).covers(s.extended)
    assert np.all(hits == 1)


@settings(max_examples=30, deadline=None)
@given(ra0=ras, dec0=decs)
def test_sky_polygons_and_centres_round_trip(ra0: float, dec0: float) -> None:
    tile = Tile(1, ra0, dec0)
    s = tile.subtile(SubTileGrid(), 1, 2)
    ra, dec = s.extended_polygon()
    x, y = tile.to_plane(ra, dec)
    np.testing.assert_allclose(x, s.extended.corners()[:, 0], atol=1e-9)
    np.testing.assert_allclose(y, s.extended.corners()[:, 1], atol=1e-9)
    cra, cdec = s.center_sky
    assert s.in_core([cra], [cdec])[0]
    assert s.in_extended([cra], [cdec])[0]


def test_subtile_index_checked() -> None:
    with pytest.raises(IndexError):
        Tile(1, 0.0, 0.0).subtile(SubTileGrid(4, 4), 4, 0)
