"""Which quadrant exposures cover which sub-tiles: an exact test in the tile plane.

Pure: no I/O. The caller brings candidate rows of the quadrant index (see
:mod:`constellation.io.quadrant_lookup`, which reads the rows near a tile) as
their footprint polygons, ``footprint_ra`` / ``footprint_dec`` of shape
``(k, V)`` (``V`` = :data:`~constellation.manifest.quadrant_index.FOOTPRINT_VERTICES`
in the index) or as an Arrow table with those columns.

Method
------
Every footprint is projected once into the tangent plane of the tile
(:meth:`~constellation.sky.tiling.Tile.to_plane`). The gnomonic projection maps
great circles to straight lines, so a polygon with great-circle edges between
its vertices is exactly the straight-edged polygon through the projected
vertices, and a sub-tile's extended box is exactly an axis-aligned box.

1. A cheap pre-filter drops rows whose bounding box in the plane misses the
   sub-tile's extended box (one comparison per row and sub-tile).
2. The exact test treats the footprint as a general simple polygon (convex or
   not): it meets a closed box if and only if one of its edges meets the box,
   or the box lies wholly inside it (then the box centre is inside the
   polygon). Edge-vs-box is a separating-axis test (the box's two axes and the
   edge's normal); point-in-polygon is the even-odd rule. Both are vectorised
   over rows and vertices.

The index builder's vertices sample the quadrant's curved (TPV) edges through
the pixel edges and grow them outwards by 2 pixels, so the straight segments
cover the quadrant: no overlapping quadrant is missed, and false positives lie
within a few pixels of the box. Touching counts as intersecting. Rows with a
non-finite projected vertex (90 deg or more from the tile centre) never match.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike, NDArray

from constellation.sky.tiling import Box, SubTile, SubTileGrid, Tile

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = [
    "PlaneFootprints",
    "footprints_from_table",
    "match_subtile",
    "match_tile",
    "point_in_polygons",
    "polygons_intersect_box",
    "project_footprints",
]


def footprints_from_table(table: pa.Table) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """``footprint_ra`` and ``footprint_dec`` of an index table as ``(k, V)`` arrays.

    Every row must have the same number of vertices ``V`` (the index contract).
    """
    out: list[NDArray[np.float64]] = []
    n = table.num_rows
    for name in ("footprint_ra", "footprint_dec"):
        if name not in table.column_names:
            raise KeyError(f"table has no column {name!r}")
        col = table.column(name).combine_chunks()
        if n == 0:
            out.append(np.empty((0, 0), dtype=np.float64))
            continue
        if col.null_count:
            raise ValueError(f"{name} has null rows")
        offsets = np.asarray(col.offsets, dtype=np.int64)
        lengths = np.diff(offsets)
        v = int(lengths[0])
        if v < 3 or not np.all(lengths == v):
            raise ValueError(f"{name}: every row needs the same number (>= 3) of vertices")
        values = np.asarray(col.values, dtype=np.float64)[offsets[0] : offsets[-1]]
        out.append(values.reshape(n, v))
    ra, dec = out
    return ra, dec


class PlaneFootprints:
    """Footprint polygons projected into a tile's tangent plane (arcmin).

    Parameters
    ----------
    tile
        The tile whose plane is the frame.
    footprint_ra, footprint_dec
        ``(k, V)`` vertices in degrees, in order around the polygon (either
        orientation).
    """

    def __init__(self, tile: Tile, footprint_ra: ArrayLike, footprint_dec: ArrayLike) -> None:
        ra = np.asarray(footprint_ra, dtype=np.float64)
        dec = np.asarray(footprint_dec, dtype=np.float64)
        if ra.shape != dec.shape or ra.ndim != 2:
            raise ValueError(
                f"footprints must be two (k, V) arrays of one shape, got {ra.shape} and {dec.shape}"
            )
        if ra.shape[0] and ra.shape[1] < 3:
            raise ValueError(f"a footprint needs at least 3 vertices, got {ra.shape[1]}")
        self.tile = tile
        k, v = ra.shape
        x, y = tile.to_plane(ra.reshape(-1), dec.reshape(-1))
        x, y = x.reshape(k, v), y.reshape(k, v)
        self.vertices: NDArray[np.float64] = np.stack([x, y], axis=-1)
        self.finite: NDArray[np.bool_] = np.asarray(
            np.isfinite(x).all(axis=1) & np.isfinite(y).all(axis=1)
        )
        # reductions over the contiguous (k, V) planes: much faster than over (k, V, 2)
        with np.errstate(invalid="ignore"):
            lo = np.stack([x.min(axis=1), y.min(axis=1)], axis=-1)
            hi = np.stack([x.max(axis=1), y.max(axis=1)], axis=-1)
        self.lo: NDArray[np.float64] = np.where(self.finite[:, None], lo, np.inf)
        self.hi: NDArray[np.float64] = np.where(self.finite[:, None], hi, -np.inf)

    def __len__(self) -> int:
        return int(self.vertices.shape[0])

    def candidates(self, box: Box) -> NDArray[np.int64]:
        """Rows whose bounding box meets ``box`` (a superset of the matches)."""
        hit = (
            (self.hi[:, 0] >= box.x_min)
            & (self.lo[:, 0] <= box.x_max)
            & (self.hi[:, 1] >= box.y_min)
            & (self.lo[:, 1] <= box.y_max)
        )
        return np.flatnonzero(hit).astype(np.int64)

    def intersecting(self, box: Box) -> NDArray[np.int64]:
        """Rows (ascending) whose polygon meets the closed ``box``."""
        rows = self.candidates(box)
        if rows.size == 0:
            return rows
        return rows[polygons_intersect_box(self.vertices[rows], box)]

    def intersecting_boxes(self, boxes: Sequence[Box]) -> list[NDArray[np.int64]]:
        """:meth:`intersecting` for each of ``boxes``, in one compiled pass (same results).

        Each polygon is tested only against the boxes its bounding box meets,
        which is what makes a tile's 16 sub-tiles cheap.
        """
        if not boxes:
            return []
        if len(self) == 0:
            return [np.empty(0, dtype=np.int64) for _ in boxes]
        from constellation.discovery._kernels import polygons_boxes

        edges = np.array([[b.x_min, b.x_max, b.y_min, b.y_max] for b in boxes], dtype=np.float64)
        hits = polygons_boxes(
            np.ascontiguousarray(self.vertices),
            np.ascontiguousarray(self.lo),
            np.ascontiguousarray(self.hi),
            edges,
        )
        return [np.flatnonzero(h).astype(np.int64) for h in hits]


def point_in_polygons(polygons: NDArray[np.float64], x: float, y: float) -> NDArray[np.bool_]:
    """Even-odd test of one point against ``(k, V, 2)`` polygons (either orientation)."""
    px, py = polygons[..., 0], polygons[..., 1]
    qx, qy = np.roll(px, -1, axis=1), np.roll(py, -1, axis=1)
    straddles = (py > y) != (qy > y)
    with np.errstate(divide="ignore", invalid="ignore"):
        x_cross = px + (y - py) * (qx - px) / (qy - py)
    crossings = straddles & (x < x_cross)
    return np.asarray(crossings.sum(axis=1) % 2 == 1)


def polygons_intersect_box(polygons: ArrayLike, box: Box) -> NDArray[np.bool_]:
    """Which simple polygons meet a closed axis-aligned box (touching counts).

    Parameters
    ----------
    polygons
        ``(k, V, 2)`` vertices in order around each polygon (either
        orientation; convexity not required). Rows with a non-finite vertex
        count as not intersecting.
    box
        The box in the same plane.

    Notes
    -----
    A polygon and a box meet iff an edge of the polygon meets the box or the
    box lies inside the polygon. An edge (a segment) misses the box iff one of
    three axes separates them: ``x``, ``y`` or the edge's normal (all four box
    corners strictly on one side of the edge's line).
    """
    p = np.asarray(polygons, dtype=np.float64)
    if p.ndim != 3 or p.shape[2] != 2:
        raise ValueError(f"polygons must have shape (k, V, 2), got {p.shape}")
    if p.shape[0] == 0:
        return np.zeros(0, dtype=bool)
    finite = np.asarray(np.isfinite(p).all(axis=(1, 2)))
    p = np.where(finite[:, None, None], p, 0.0)
    ax, ay = p[..., 0], p[..., 1]  # (k, V) edge starts
    bx, by = np.roll(ax, -1, axis=1), np.roll(ay, -1, axis=1)  # edge ends
    # separating axes x and y: the edge's extent against the box's
    overlap = (
        (np.maximum(ax, bx) >= box.x_min)
        & (np.minimum(ax, bx) <= box.x_max)
        & (np.maximum(ay, by) >= box.y_min)
        & (np.minimum(ay, by) <= box.y_max)
    )
    # separating axis: the edge's normal; sign of the cross product per box corner
    dx, dy = bx - ax, by - ay
    corners = box.corners()  # (4, 2)
    cross = dx[..., None] * (corners[:, 1] - ay[..., None]) - dy[..., None] * (
        corners[:, 0] - ax[..., None]
    )  # (k, V, 4)
    one_side = (cross > 0).all(axis=-1) | (cross < 0).all(axis=-1)
    edge_hits = (overlap & ~one_side).any(axis=1)
    cx, cy = box.center
    inside = point_in_polygons(p, cx, cy)
    return np.asarray(finite & (edge_hits | inside))


def project_footprints(
    tile: Tile, footprint_ra: ArrayLike, footprint_dec: ArrayLike
) -> PlaneFootprints:
    """:class:`PlaneFootprints` of ``(k, V)`` footprints in ``tile``'s plane."""
    return PlaneFootprints(tile, footprint_ra, footprint_dec)


def _footprints(
    footprints: pa.Table | tuple[ArrayLike, ArrayLike] | ArrayLike,
    footprint_dec: ArrayLike | None,
) -> tuple[ArrayLike, ArrayLike]:
    if footprint_dec is not None:
        return footprints, footprint_dec  # type: ignore[return-value]
    if isinstance(footprints, tuple):
        ra, dec = footprints
        return ra, dec
    if hasattr(footprints, "column_names"):
        return footprints_from_table(footprints)
    raise TypeError("pass footprint_ra and footprint_dec, a (ra, dec) pair or an Arrow table")


def match_tile(
    tile: Tile,
    grid: SubTileGrid,
    footprints: pa.Table | tuple[ArrayLike, ArrayLike] | ArrayLike,
    footprint_dec: ArrayLike | None = None,
    *,
    pad_arcmin: float = 0.0,
) -> list[NDArray[np.int64]]:
    """Rows whose footprint meets each sub-tile's extended box.

    Parameters
    ----------
    tile, grid
        The tile and how it is cut.
    footprints, footprint_dec
        Either ``footprint_ra`` and ``footprint_dec`` (two ``(k, V)`` arrays, deg),
        a ``(ra, dec)`` pair, or an Arrow table with the index's
        ``footprint_ra`` / ``footprint_dec`` list columns.
    pad_arcmin
        Grow every extended box by this much before testing (>= 0).

    Returns
    -------
    list of int64 arrays
        One per sub-tile in row-major order (as :meth:`Tile.subtiles`): the
        ascending row numbers (0-based positions in the input) that meet it.
    """
    if not pad_arcmin >= 0:
        raise ValueError(f"pad_arcmin must be >= 0, got {pad_arcmin}")
    ra, dec = _footprints(footprints, footprint_dec)
    plane = PlaneFootprints(tile, ra, dec)
    return plane.intersecting_boxes(
        [st.extended.grow(pad_arcmin) for st in tile.iter_subtiles(grid)]
    )


def match_subtile(
    subtile: SubTile,
    footprints: pa.Table | tuple[ArrayLike, ArrayLike] | ArrayLike,
    footprint_dec: ArrayLike | None = None,
    *,
    pad_arcmin: float = 0.0,
) -> NDArray[np.int64]:
    """Rows (ascending) whose footprint meets one sub-tile's extended box.

    Arguments as :func:`match_tile`; the frame is the sub-tile's tile plane.
    """
    if not pad_arcmin >= 0:
        raise ValueError(f"pad_arcmin must be >= 0, got {pad_arcmin}")
    ra, dec = _footprints(footprints, footprint_dec)
    return PlaneFootprints(subtile.tile, ra, dec).intersecting(subtile.extended.grow(pad_arcmin))
