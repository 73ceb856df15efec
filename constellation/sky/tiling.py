"""Tiles and sub-tiles in the tile's tangent plane.

A :class:`Tile` is defined by its id, centre and sizes. Everything inside it
lives in the gnomonic (TAN) plane tangent at the tile centre, ``x`` west and
``y`` north, in arcmin (see :mod:`constellation.sky.projection`). Because a
gnomonic projection maps great circles to straight lines, a box in that plane
is exactly a spherical quadrilateral with great-circle edges: its four sky
corners describe it completely.

Sub-tile cores partition the tile core square into an ``n_rows x n_cols``
grid of half-open cells ``[x0, x1) x [y0, y1)``; each extended box is its core
grown by the margin on every side. Row 0 is the southernmost row and column 0
the easternmost column, so that ``(row, col)`` follows the mosaic's pixel axes
(``y``, ``x``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from constellation.sky.projection import plane_to_sky, sky_to_plane, wrap_ra

__all__ = ["Box", "SubTile", "SubTileGrid", "Tile", "grid_edges"]


@dataclass(frozen=True, slots=True)
class Box:
    """An axis-aligned box ``[x_min, x_max) x [y_min, y_max)`` in a tangent plane (arcmin)."""

    x_min: float
    x_max: float
    y_min: float
    y_max: float

    def __post_init__(self) -> None:
        values = (self.x_min, self.x_max, self.y_min, self.y_max)
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"box edges must be finite, got {values}")
        if not (self.x_min < self.x_max and self.y_min < self.y_max):
            raise ValueError(f"box must have x_min < x_max and y_min < y_max, got {values}")

    @property
    def width_arcmin(self) -> float:
        return self.x_max - self.x_min

    @property
    def height_arcmin(self) -> float:
        return self.y_max - self.y_min

    @property
    def center(self) -> tuple[float, float]:
        """Box centre ``(x, y)`` in arcmin."""
        return (0.5 * (self.x_min + self.x_max), 0.5 * (self.y_min + self.y_max))

    def contains(self, x: ArrayLike, y: ArrayLike) -> NDArray[np.bool_]:
        """Half-open membership test; nan coordinates are outside."""
        xa = np.asarray(x, dtype=np.float64)
        ya = np.asarray(y, dtype=np.float64)
        return (self.x_min <= xa) & (xa < self.x_max) & (self.y_min <= ya) & (ya < self.y_max)

    def covers(self, other: Box) -> bool:
        """True if ``other`` lies inside this box (edges may coincide)."""
        return (
            self.x_min <= other.x_min
            and other.x_max <= self.x_max
            and self.y_min <= other.y_min
            and other.y_max <= self.y_max
        )

    def grow(self, margin_arcmin: float) -> Box:
        """This box grown by ``margin_arcmin`` on every side."""
        m = margin_arcmin
        return Box(self.x_min - m, self.x_max + m, self.y_min - m, self.y_max + m)

    def corners(self) -> NDArray[np.float64]:
        """The 4 corners ``(x, y)``, counter-clockwise in the plane, from ``(x_min, y_min)``."""
        return np.array(
            [
                [self.x_min, self.y_min],
                [self.x_max, self.y_min],
                [self.x_max, self.y_max],
                [self.x_min, self.y_max],
            ]
        )


def grid_edges(size_arcmin: float, n: int) -> NDArray[np.float64]:
    """Edges of ``n`` equal cells across ``[-size/2, size/2]``; the ends are exact.

    These floats are the single definition of the sub-tile cell boundaries:
    boxes and the partition kernel both use them, so membership tests agree to
    the last bit.
    """
    if n < 1:
        raise ValueError(f"need at least one cell, got n={n}")
    half = 0.5 * size_arcmin
    w = size_arcmin / n
    edges = -half + np.arange(n + 1, dtype=np.float64) * w
    edges[-1] = half  # -half + n * w may differ from half in the last bit
    return edges


@dataclass(frozen=True, slots=True)
class SubTileGrid:
    """How a tile is cut into sub-tiles: ``n_rows x n_cols`` cores plus a margin."""

    n_rows: int = 4
    n_cols: int = 4
    margin_arcmin: float = 1.0

    def __post_init__(self) -> None:
        if not (1 <= self.n_rows <= 64 and 1 <= self.n_cols <= 64):
            raise ValueError(f"grid must be 1..64 cells a side, got {self.n_rows}x{self.n_cols}")
        if not (math.isfinite(self.margin_arcmin) and self.margin_arcmin >= 0):
            raise ValueError(f"margin_arcmin must be finite and >= 0, got {self.margin_arcmin}")

    @property
    def n_subtiles(self) -> int:
        return self.n_rows * self.n_cols


@dataclass(frozen=True, slots=True)
class Tile:
    """A MER-like tile: id, centre and sizes; the frame of all its geometry.

    Parameters
    ----------
    tile_id
        Euclid tile index (9-digit integer). Never derive geometry from it.
    ra_deg, dec_deg
        Tile centre (ICRS degrees); the tangent point of the tile plane.
    core_size_arcmin
        Side of the core square that the tile owns (30' for Wide tiles).
    extended_size_arcmin
        Side of the extended (outer) square, the mosaic footprint (32').
    """

    tile_id: int
    ra_deg: float
    dec_deg: float
    core_size_arcmin: float = 30.0
    extended_size_arcmin: float = 32.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.ra_deg) and math.isfinite(self.dec_deg)):
            raise ValueError(f"tile {self.tile_id}: centre must be finite")
        if not -90.0 <= self.dec_deg <= 90.0:
            raise ValueError(f"tile {self.tile_id}: dec_deg={self.dec_deg} outside [-90, 90]")
        if not 0 < self.core_size_arcmin <= self.extended_size_arcmin:
            raise ValueError(
                f"tile {self.tile_id}: need 0 < core_size_arcmin <= extended_size_arcmin, got "
                f"{self.core_size_arcmin} and {self.extended_size_arcmin}"
            )
        if self.extended_size_arcmin >= 60.0 * 90.0:
            raise ValueError(f"tile {self.tile_id}: extended size must be < 90 deg")
        # Normalise RA into [0, 360) so equal tiles compare equal.
        object.__setattr__(self, "ra_deg", float(wrap_ra(self.ra_deg)))

    @property
    def core_box(self) -> Box:
        h = 0.5 * self.core_size_arcmin
        return Box(-h, h, -h, h)

    @property
    def extended_box(self) -> Box:
        h = 0.5 * self.extended_size_arcmin
        return Box(-h, h, -h, h)

    def to_plane(
        self, ra_deg: ArrayLike, dec_deg: ArrayLike
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Sky (deg) -> tile plane ``(x west, y north)`` in arcmin; nan behind the plane."""
        return sky_to_plane(ra_deg, dec_deg, self.ra_deg, self.dec_deg)

    def to_sky(
        self, x_arcmin: ArrayLike, y_arcmin: ArrayLike
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Tile plane (arcmin) -> sky ``(ra in [0, 360), dec)`` in degrees."""
        return plane_to_sky(x_arcmin, y_arcmin, self.ra_deg, self.dec_deg)

    def box_to_sky(self, box: Box) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Sky corners of a plane box (great-circle edges, see module docstring)."""
        corners = box.corners()
        return self.to_sky(corners[:, 0], corners[:, 1])

    def reach_box(self, margin_arcmin: float) -> Box:
        """Union of the extended boxes of all sub-tiles for a margin: core grown by it."""
        return self.core_box.grow(margin_arcmin)

    def subtiles(self, grid: SubTileGrid) -> list[SubTile]:
        """All sub-tiles of this tile for ``grid``, row-major from the south-east corner."""
        return list(self.iter_subtiles(grid))

    def iter_subtiles(self, grid: SubTileGrid) -> Iterator[SubTile]:
        xe = grid_edges(self.core_size_arcmin, grid.n_cols)
        ye = grid_edges(self.core_size_arcmin, grid.n_rows)
        for row in range(grid.n_rows):
            for col in range(grid.n_cols):
                core = Box(float(xe[col]), float(xe[col + 1]), float(ye[row]), float(ye[row + 1]))
                yield SubTile(self, row, col, core, core.grow(grid.margin_arcmin))

    def subtile(self, grid: SubTileGrid, row: int, col: int) -> SubTile:
        """The sub-tile at ``(row, col)``."""
        if not (0 <= row < grid.n_rows and 0 <= col < grid.n_cols):
            raise IndexError(f"sub-tile ({row}, {col}) outside a {grid.n_rows}x{grid.n_cols} grid")
        xe = grid_edges(self.core_size_arcmin, grid.n_cols)
        ye = grid_edges(self.core_size_arcmin, grid.n_rows)
        core = Box(float(xe[col]), float(xe[col + 1]), float(ye[row]), float(ye[row + 1]))
        return SubTile(self, row, col, core, core.grow(grid.margin_arcmin))


@dataclass(frozen=True, slots=True)
class SubTile:
    """One sub-tile: the core it owns and the extended box it models.

    The constructor checks that the extended box covers the core.
    """

    tile: Tile
    row: int
    col: int
    core: Box
    extended: Box

    def __post_init__(self) -> None:
        if self.row < 0 or self.col < 0:
            raise ValueError(f"sub-tile row/col must be >= 0, got ({self.row}, {self.col})")
        if not self.extended.covers(self.core):
            raise ValueError(
                f"sub-tile {self.tile.tile_id}/({self.row},{self.col}): "
                f"extended box {self.extended} does not cover core {self.core}"
            )

    @property
    def tile_id(self) -> int:
        return self.tile.tile_id

    @property
    def center_sky(self) -> tuple[float, float]:
        """Centre of the core box on the sky ``(ra, dec)`` in degrees."""
        x, y = self.core.center
        ra, dec = self.tile.to_sky(x, y)
        return float(ra), float(dec)

    def core_polygon(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Sky corners (deg) of the core; edges are great circles."""
        return self.tile.box_to_sky(self.core)

    def extended_polygon(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Sky corners (deg) of the extended box; edges are great circles."""
        return self.tile.box_to_sky(self.extended)

    def in_core(self, ra_deg: ArrayLike, dec_deg: ArrayLike) -> NDArray[np.bool_]:
        """Nominal core membership (no clamping) of sky positions."""
        return self.core.contains(*self.tile.to_plane(ra_deg, dec_deg))

    def in_extended(self, ra_deg: ArrayLike, dec_deg: ArrayLike) -> NDArray[np.bool_]:
        """Extended-box membership of sky positions."""
        return self.extended.contains(*self.tile.to_plane(ra_deg, dec_deg))
