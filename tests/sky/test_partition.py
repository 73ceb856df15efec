"""Partitioning sources into sub-tiles, checked against wcslib everywhere on the sphere."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from constellation.sky import SubTileGrid, Tile, grid_edges, partition_sources
from tests.sky.reference import decs, ras, reference_plane, sources_around

EPS = 1e-8  # arcmin: points this close to an edge may fall either way


def _reference_cells(x: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Cell of each coordinate, clamped to the edge cells (nearest cell if outside)."""
    return np.clip(np.searchsorted(edges, x, side="right") - 1, 0, edges.size - 2)


@settings(max_examples=60, deadline=None)
@given(
    ra0=ras,
    dec0=decs,
    n_rows=st.integers(1, 6),
    n_cols=st.integers(1, 6),
    margin=st.one_of(st.just(0.0), st.floats(0.1, 3.0), st.floats(3.0, 9.0)),
    core=st.sampled_from([30.0, 17.0]),
    seed=st.integers(0, 2**32 - 1),
)
def test_partition_matches_brute_force(
    ra0: float,
    dec0: float,
    n_rows: int,
    n_cols: int,
    margin: float,
    core: float,
    seed: int,
) -> None:
    tile = Tile(1, ra0, dec0, core, core + 2.0)
    grid = SubTileGrid(n_rows, n_cols, margin)
    rng = np.random.default_rng(seed)
    # own sources: the core plus a sliver outside it (MER cores are not exact squares)
    own_ra, own_dec = sources_around(rng, ra0, dec0, 3000, 0.5 * core + 0.3)
    oth_ra, oth_dec = sources_around(rng, ra0, dec0, 2000, 0.5 * core + margin + 2.0)
    part = partition_sources(tile, grid, own_ra, own_dec, oth_ra, oth_dec)

    # reference coordinates by wcslib
    ox, oy = reference_plane(tile.ra_deg, dec0, own_ra, own_dec)
    tx, ty = reference_plane(tile.ra_deg, dec0, oth_ra, oth_dec)
    ax, ay = np.concatenate([ox, tx]), np.concatenate([oy, ty])

    # 1. every own source in exactly one core
    assert np.array_equal(np.sort(part.core_index), np.arange(own_ra.size))
    assert part.core_offsets[-1] == own_ra.size
    # 2. its cell is the reference cell (nearest edge cell when outside the core)
    xe, ye = grid_edges(core, n_cols), grid_edges(core, n_rows)
    want = _reference_cells(oy, ye) * n_cols + _reference_cells(ox, xe)
    got = np.empty(own_ra.size, dtype=np.int64)
    for r in range(n_rows):
        for c in range(n_cols):
            got[part.core(r, c)] = r * n_cols + c
    near_edge = (np.abs(ox[:, None] - xe).min(axis=1) < EPS) | (
        np.abs(oy[:, None] - ye).min(axis=1) < EPS
    )
    assert np.array_equal(got[~near_edge], want[~near_edge])
    half = 0.5 * core
    outside = (np.abs(ox) >= half - EPS) | (np.abs(oy) >= half - EPS)
    strictly_outside = (
        (ox < -half - EPS) | (ox >= half + EPS) | (oy < -half - EPS) | (oy >= half + EPS)
    )
    assert strictly_outside.sum() <= part.n_outside_core <= outside.sum()

    # 3. extended lists equal the reference boxes (up to EPS at the edges)
    for s in tile.iter_subtiles(grid):
        ext = part.extended(s.row, s.col)
        assert np.unique(ext).size == ext.size
        got_in = np.zeros(ax.size, dtype=bool)
        got_in[ext] = True
        e = s.extended
        must = (
            (e.x_min + EPS <= ax)
            & (ax < e.x_max - EPS)
            & (e.y_min + EPS <= ay)
            & (ay < e.y_max - EPS)
        )
        may = (
            (e.x_min - EPS <= ax)
            & (ax < e.x_max + EPS)
            & (e.y_min - EPS <= ay)
            & (ay < e.y_max + EPS)
        )
        assert np.all(got_in[must]), "a source inside the extended box is missing"
        assert not np.any(got_in & ~may), "a source outside the extended box is listed"
    # 4. core sources of a sub-tile are modelled by it when inside its core box
    for s in tile.iter_subtiles(grid):
        inside = s.core.contains(ox, oy)[part.core(s.row, s.col)]
        assert set(part.core(s.row, s.col)[inside]).issubset(set(part.extended(s.row, s.col)))


def test_other_catalogs_only_in_extended_lists() -> None:
    tile = Tile(1, 0.0, 0.0)
    grid = SubTileGrid()
    ra, dec = tile.to_sky(np.array([0.0, 14.0]), np.array([0.0, 14.0]))
    ora, odec = tile.to_sky(np.array([15.5, -15.5, 40.0]), np.array([0.0, 15.5, 0.0]))
    part = partition_sources(tile, grid, ra, dec, ora, odec)
    assert part.n_own == 2
    assert part.n_other == 3
    assert part.core_counts.sum() == 2
    ext = np.concatenate([part.extended(r, c) for r in range(4) for c in range(4)])
    # x is west: x=+15.5 lies beyond the westmost column (col 3); 40' away is in no box
    assert sorted(set(ext.tolist())) == [0, 1, 2, 3]
    assert 2 in part.extended(2, 3).tolist()
    assert 3 in part.extended(3, 0).tolist()


def test_clamping_counts_sources_outside_the_core() -> None:
    tile = Tile(5, 200.0, -30.0)
    grid = SubTileGrid(2, 2, 0.5)
    x = np.array([-15.2, 15.2, 0.1, 40.0])
    y = np.array([-15.2, 0.1, 15.0, -40.0])
    ra, dec = tile.to_sky(x, y)
    part = partition_sources(tile, grid, ra, dec)
    assert part.n_outside_core == 4 - 0  # 15.0 sits on the open upper edge: outside too
    assert part.core(0, 0).tolist() == [0]  # south-east beyond the corner
    assert part.core(0, 1).tolist() == [3]  # far south-west -> the south-west cell
    assert part.core(1, 1).tolist() == [1, 2]
    assert part.core(1, 0).tolist() == []


def test_empty_and_invalid_inputs() -> None:
    tile = Tile(1, 10.0, 10.0)
    part = partition_sources(tile, SubTileGrid(), np.empty(0), np.empty(0))
    assert part.core_counts.sum() == 0
    assert part.extended_counts.sum() == 0
    with pytest.raises(ValueError, match="lengths differ"):
        partition_sources(tile, SubTileGrid(), [1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="both"):
        partition_sources(tile, SubTileGrid(), [10.0], [10.0], other_ra_deg=[1.0])


def test_nan_positions_are_counted_not_lost() -> None:
    tile = Tile(1, 10.0, 10.0)
    part = partition_sources(tile, SubTileGrid(), [10.0, np.nan], [10.0, 10.0])
    assert np.sort(part.core_index).tolist() == [0, 1]
    assert part.n_outside_core == 1
    # the valid source sits on the centre, in the 4 central extended boxes; the nan in none
    assert part.extended_counts.sum() == 4
    assert 1 not in part.extended_index.tolist()


def test_precision_is_float64() -> None:
    """Positions 1e-7 deg (0.36 mas) apart either side of a sub-tile edge separate."""
    tile = Tile(1, 270.0, 66.0)
    edge_ra, edge_dec = tile.to_sky(np.array([0.0]), np.array([0.0]))
    ra = np.array([edge_ra[0], edge_ra[0]])
    dec = np.array([edge_dec[0] - 1e-7, edge_dec[0] + 1e-7])
    part = partition_sources(tile, SubTileGrid(2, 2, 0.0), ra, dec)
    assert part.core(0, 0).tolist() + part.core(0, 1).tolist() == [0]
    assert part.core(1, 0).tolist() + part.core(1, 1).tolist() == [1]
