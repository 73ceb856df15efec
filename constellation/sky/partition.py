"""Assign catalog sources to the sub-tiles of one tile.

Two lists per sub-tile:

* **core** — sources of the tile's *own* catalog that the sub-tile reports.
  Every own source lands in exactly one core. A source slightly outside the
  nominal core square (MER core areas are not exact squares) is clamped into
  the nearest edge cell, so nothing is lost; :attr:`Partition.n_outside_core`
  counts them.
* **extended** — sources of *any* catalog (own and neighbours') inside the
  sub-tile's extended box: what the sub-tile models.

The result is stored as compressed index lists (CSR): for sub-tile ``k`` (row
major), ``core_index[core_offsets[k]:core_offsets[k+1]]`` are indices into the
own catalog and ``extended_index[extended_offsets[k]:extended_offsets[k+1]]``
indices into the own catalog followed by the other catalogs (own indices
``0..n_own-1``, then the others in order). Memory is O(N). Core indices within
a sub-tile are ascending; extended indices are grouped (own catalog first) but
not sorted — the order is deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from constellation.sky.tiling import SubTileGrid, Tile, grid_edges

__all__ = ["Partition", "partition_sources"]

#: Upper bound on the number of (column range x row range) codes of a grid.
_MAX_CODES = 1 << 22


def _extended_span(edges: NDArray[np.float64], margin_arcmin: float) -> int:
    """Largest ``k_hi - k_lo`` along one axis: a point lies in at most span+1 extended boxes."""
    lo = edges[:-1] - margin_arcmin
    hi = edges[1:] + margin_arcmin
    # The number of boxes holding a point peaks just at some lower edge.
    in_boxes = np.searchsorted(lo, lo, side="right") - np.searchsorted(hi, lo, side="right")
    return int(in_boxes.max()) - 1


@dataclass(frozen=True)
class Partition:
    """Per-sub-tile core and extended source indices of one tile (see module doc)."""

    tile: Tile
    grid: SubTileGrid
    n_own: int
    n_other: int
    core_index: NDArray[np.integer]
    core_offsets: NDArray[np.int64]
    extended_index: NDArray[np.integer]
    extended_offsets: NDArray[np.int64]
    n_outside_core: int

    def _cell(self, row: int, col: int) -> int:
        if not (0 <= row < self.grid.n_rows and 0 <= col < self.grid.n_cols):
            raise IndexError(f"({row}, {col}) outside a {self.grid.n_rows}x{self.grid.n_cols} grid")
        return row * self.grid.n_cols + col

    def core(self, row: int, col: int) -> NDArray[np.integer]:
        """Own-catalog indices of the sources that sub-tile ``(row, col)`` reports."""
        k = self._cell(row, col)
        return self.core_index[self.core_offsets[k] : self.core_offsets[k + 1]]

    def extended(self, row: int, col: int) -> NDArray[np.integer]:
        """Indices (own, then others) of the sources sub-tile ``(row, col)`` models."""
        k = self._cell(row, col)
        return self.extended_index[self.extended_offsets[k] : self.extended_offsets[k + 1]]

    @property
    def core_counts(self) -> NDArray[np.int64]:
        """Core source count per sub-tile, shape ``(n_rows, n_cols)``."""
        return np.diff(self.core_offsets).reshape(self.grid.n_rows, self.grid.n_cols)

    @property
    def extended_counts(self) -> NDArray[np.int64]:
        """Extended source count per sub-tile, shape ``(n_rows, n_cols)``."""
        return np.diff(self.extended_offsets).reshape(self.grid.n_rows, self.grid.n_cols)


def _coords(ra: ArrayLike, dec: ArrayLike, what: str) -> tuple[NDArray[np.float64], ...]:
    r = np.ascontiguousarray(ra, dtype=np.float64).reshape(-1)
    d = np.ascontiguousarray(dec, dtype=np.float64).reshape(-1)
    if r.shape != d.shape:
        raise ValueError(f"{what}: RA and Dec lengths differ ({r.size} vs {d.size})")
    return r, d


def partition_sources(
    tile: Tile,
    grid: SubTileGrid,
    ra_deg: ArrayLike,
    dec_deg: ArrayLike,
    other_ra_deg: ArrayLike | None = None,
    other_dec_deg: ArrayLike | None = None,
) -> Partition:
    """Partition a tile's own sources (and optionally other catalogs') into sub-tiles.

    Parameters
    ----------
    tile
        The tile whose sub-tiles receive the sources.
    grid
        Sub-tile grid and margin.
    ra_deg, dec_deg
        The tile's own catalog (float64 degrees). Every source is assigned one
        core cell.
    other_ra_deg, dec_deg
        Sources of other catalogs (e.g. neighbouring tiles), which only enter
        the extended lists. Pass both or neither.

    Returns
    -------
    Partition
        CSR index lists; see the module docstring.
    """
    from constellation.sky import _kernels

    own_ra, own_dec = _coords(ra_deg, dec_deg, "own catalog")
    if (other_ra_deg is None) != (other_dec_deg is None):
        raise ValueError("pass both other_ra_deg and other_dec_deg, or neither")
    if other_ra_deg is not None and other_dec_deg is not None:
        oth_ra, oth_dec = _coords(other_ra_deg, other_dec_deg, "other catalogs")
    else:
        oth_ra = oth_dec = np.empty(0)
    n_own, n_oth = own_ra.size, oth_ra.size
    index_dtype: type[np.integer] = np.int32 if n_own + n_oth < np.iinfo(np.int32).max else np.int64

    xe = grid_edges(tile.core_size_arcmin, grid.n_cols)
    ye = grid_edges(tile.core_size_arcmin, grid.n_rows)
    m = grid.margin_arcmin
    span_x = _extended_span(xe, m)
    span_y = _extended_span(ye, m)
    n_cells = grid.n_subtiles
    n_codes = (grid.n_cols * (span_x + 1) + 1) * (grid.n_rows * (span_y + 1) + 1)
    if n_codes > _MAX_CODES:
        raise ValueError(
            f"margin {m} arcmin is too large for a {grid.n_rows}x{grid.n_cols} grid of "
            f"{tile.core_size_arcmin}' tiles (each point would be in up to "
            f"{(span_x + 1) * (span_y + 1)} extended boxes)"
        )

    def first_pass(
        ra: NDArray[np.float64], dec: NDArray[np.float64]
    ) -> tuple[NDArray[np.int32], NDArray[np.int64], NDArray[np.integer], NDArray[np.int64], int]:
        core_cell = np.empty(ra.size, dtype=np.int32)
        ext_code = np.empty(ra.size, dtype=np.int32)
        core_counts = np.zeros(n_cells, dtype=np.int64)
        code_counts = np.zeros(n_codes, dtype=np.int64)
        outside = _kernels.bin_points(
            ra, dec, tile.ra_deg, tile.dec_deg, tile.core_size_arcmin, grid.n_cols, grid.n_rows,
            m, span_x, span_y,
            core_cell, ext_code, core_counts, code_counts,
        )  # fmt: skip
        code_offsets = np.zeros(n_codes + 1, dtype=np.int64)
        np.cumsum(code_counts, out=code_offsets[1:])
        by_code = np.empty(ra.size, dtype=index_dtype)
        _kernels.counting_sort(ext_code, code_offsets, by_code)
        del ext_code
        return core_cell, core_counts, by_code, code_offsets, int(outside)

    def cell_counts(code_offsets: NDArray[np.int64]) -> NDArray[np.int64]:
        counts = np.zeros(n_cells, dtype=np.int64)
        _kernels.expand_code_counts(
            np.diff(code_offsets), grid.n_cols, grid.n_rows, span_x, span_y, counts
        )
        return counts

    core_cell, core_counts, own_by_code, own_code_offsets, outside = first_pass(own_ra, own_dec)
    core_offsets = np.zeros(n_cells + 1, dtype=np.int64)
    np.cumsum(core_counts, out=core_offsets[1:])
    core_index = np.empty(n_own, dtype=index_dtype)
    _kernels.counting_sort(core_cell, core_offsets, core_index)
    del core_cell

    ext_counts = cell_counts(own_code_offsets)
    if n_oth:
        _, _, oth_by_code, oth_code_offsets, _ = first_pass(oth_ra, oth_dec)
        ext_counts += cell_counts(oth_code_offsets)
    ext_offsets = np.zeros(n_cells + 1, dtype=np.int64)
    np.cumsum(ext_counts, out=ext_offsets[1:])
    ext_index = np.empty(int(ext_offsets[-1]), dtype=index_dtype)
    cursor = ext_offsets[:-1].copy()
    expand = (grid.n_cols, grid.n_rows, span_x, span_y, cursor)
    _kernels.expand_codes(own_by_code, own_code_offsets, *expand, 0, ext_index)
    if n_oth:
        _kernels.expand_codes(oth_by_code, oth_code_offsets, *expand, n_own, ext_index)

    return Partition(
        tile=tile,
        grid=grid,
        n_own=n_own,
        n_other=n_oth,
        core_index=core_index,
        core_offsets=core_offsets,
        extended_index=ext_index,
        extended_offsets=ext_offsets,
        n_outside_core=outside,
    )
