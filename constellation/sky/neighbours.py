"""Neighbouring tiles: whose catalogs an edge sub-tile needs.

MER catalogs hold only their tile's core sources, but the extended boxes of a
tile's edge sub-tiles reach into the neighbours' cores. The neighbours of a
tile are every other tile whose core square intersects the union of its
sub-tiles' extended boxes, i.e. its core grown by the margin (the *reach*).

The search takes HEALPix candidates first (tile centres in the pixels of a disc
that provably contains every intersecting tile's centre), then applies an exact
test: a gnomonic projection maps great circles to straight lines, so the
neighbour's core — a great-circle quadrilateral — is exactly a convex
quadrilateral in our tile's plane, and the separating-axis theorem decides
whether it meets the reach box.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

from constellation.sky import healpix
from constellation.sky.projection import ARCMIN_PER_RAD, plane_to_sky, sky_to_plane
from constellation.sky.registry import TileRegistry
from constellation.sky.tiling import Box, Tile

__all__ = ["NeighbourIndex", "quads_intersect_box"]


def _half_diagonal_deg(half_side_arcmin: float) -> float:
    """Angular distance from a TAN square's centre to its corner (deg)."""
    return math.degrees(math.atan(math.sqrt(2.0) * half_side_arcmin / ARCMIN_PER_RAD))


def quads_intersect_box(quads: NDArray[np.float64], box: Box) -> NDArray[np.bool_]:
    """Which convex quadrilaterals meet a closed axis-aligned box (separating axes).

    Parameters
    ----------
    quads
        ``(k, 4, 2)`` vertices in order (either orientation); rows with a
        non-finite vertex count as not intersecting.
    box
        The box (its edges count as inside: touching is intersecting).
    """
    q = np.asarray(quads, dtype=np.float64)
    finite = np.isfinite(q).all(axis=(1, 2))
    qx, qy = q[..., 0], q[..., 1]
    overlap = (
        (qx.max(axis=1) >= box.x_min)
        & (qx.min(axis=1) <= box.x_max)
        & (qy.max(axis=1) >= box.y_min)
        & (qy.min(axis=1) <= box.y_max)
    )
    corners = box.corners()  # (4, 2)
    edges = np.roll(q, -1, axis=1) - q  # (k, 4, 2)
    normals = np.stack([-edges[..., 1], edges[..., 0]], axis=-1)  # (k, 4, 2)
    proj_q = np.einsum("kad,kbd->kab", normals, q)  # (k, axis, vertex)
    proj_b = np.einsum("kad,bd->kab", normals, corners)
    separated = (proj_q.max(axis=2) < proj_b.min(axis=2)) | (
        proj_b.max(axis=2) < proj_q.min(axis=2)
    )
    return np.asarray(finite & overlap & ~separated.any(axis=1))


class NeighbourIndex:
    """HEALPix index of a registry's tile centres for neighbour queries.

    Parameters
    ----------
    registry
        The tiles.
    order
        HEALPix order of the candidate search (pixel size should be a fraction
        of a tile; order 9 is ~6.9').
    """

    def __init__(self, registry: TileRegistry, order: int = 9) -> None:
        self.registry = registry
        self.order = order
        pix = healpix.radec_to_index(registry.ra, registry.dec, order)
        self._sort = np.argsort(pix, kind="stable")
        self._sorted_pix = pix[self._sort]
        half = 0.5 * float(registry.core_size_arcmin.max()) if len(registry) else 0.0
        self._max_core_radius_deg = _half_diagonal_deg(half)

    def candidates(self, tile: Tile, reach: Box, slack_arcmin: float = 0.0) -> NDArray[np.int64]:
        """Registry rows of tiles whose core could meet ``reach`` (a superset)."""
        half = max(abs(reach.x_min), abs(reach.x_max), abs(reach.y_min), abs(reach.y_max))
        radius = (
            _half_diagonal_deg(half)
            + self._max_core_radius_deg
            + math.degrees(math.atan(math.sqrt(2.0) * slack_arcmin / ARCMIN_PER_RAD))
        )
        pixels = healpix.disc_pixels(tile.ra_deg, tile.dec_deg, radius, self.order)
        ranges = healpix.pixel_ranges(pixels, self.order, self.order)
        return np.asarray(self._sort[healpix.select_sorted(self._sorted_pix, ranges)])

    def neighbours(
        self, tile: Tile, margin_arcmin: float, slack_arcmin: float = 0.0
    ) -> NDArray[np.int64]:
        """Ids of the other tiles whose core meets the reach of ``tile`` (sorted).

        Parameters
        ----------
        tile
            The tile (need not be in the registry).
        margin_arcmin
            Sub-tile margin: the reach is the core grown by it.
        slack_arcmin
            Grow the neighbours' cores by this much before testing, e.g. to
            catch sources a MER catalog places slightly outside its nominal
            core square.
        """
        reach = tile.reach_box(margin_arcmin)
        rows = self.candidates(tile, reach, slack_arcmin)
        hit = intersecting_rows(self.registry, rows, tile, reach, slack_arcmin)
        ids = self.registry.tile_id[rows[hit]]
        return np.sort(ids[ids != tile.tile_id])


def intersecting_rows(
    registry: TileRegistry, rows: NDArray[np.int64], tile: Tile, reach: Box, slack_arcmin: float
) -> NDArray[np.bool_]:
    """Exact test: which of ``rows`` have a core (grown by slack) meeting ``reach``."""
    if rows.size == 0:
        return np.zeros(0, dtype=bool)
    half = 0.5 * registry.core_size_arcmin[rows] + slack_arcmin  # (k,)
    unit = np.array([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]])
    cx = unit[None, :, 0] * half[:, None]
    cy = unit[None, :, 1] * half[:, None]
    ra, dec = plane_to_sky(cx, cy, registry.ra[rows][:, None], registry.dec[rows][:, None])
    x, y = sky_to_plane(ra.ravel(), dec.ravel(), tile.ra_deg, tile.dec_deg)
    quads = np.stack([x.reshape(-1, 4), y.reshape(-1, 4)], axis=-1)
    return quads_intersect_box(quads, reach)
