"""Pixel geometry of the bridge: crop windows, masks and local WCS Jacobians (pure numpy).

Crops are half-open pixel windows of a quadrant; masks are boolean arrays in a crop's
frame; Jacobians are ``(dudx, dudy, dvdx, dvdy)`` in arcsec per pixel with ``u`` west and
``v`` north (SHINE's frame).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "MASKED_SIGMA",
    "PSF_HALF",
    "CropWindow",
    "convex_polygon_mask",
    "crop_span",
    "crop_window",
    "disc_mask",
    "local_jacobians",
]

#: Noise sigma of masked pixels, as SHINE's loader uses.
MASKED_SIGMA = 1e10
#: Half-width of SHINE's 21 x 21 PSF stamps, px (its stamp sizing uses it).
PSF_HALF = 10.5

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]
ArrayLikeFloat = Sequence[float] | NDArray[np.floating[Any]]


@dataclass(frozen=True)
class CropWindow:
    """A half-open pixel window ``[x0, x1) x [y0, y1)`` of a quadrant (0-based)."""

    x0: int
    x1: int
    y0: int
    y1: int

    @property
    def nx(self) -> int:
        return self.x1 - self.x0

    @property
    def ny(self) -> int:
        return self.y1 - self.y0

    def row_byte_range(self, data_offset: int, naxis1: int, itemsize: int) -> tuple[int, int]:
        """Byte range ``[start, end)`` of rows ``y0 .. y1 - 1`` of a row-major FITS image."""
        row = naxis1 * itemsize
        return data_offset + self.y0 * row, data_offset + self.y1 * row


def crop_window(
    x: ArrayLikeFloat, y: ArrayLikeFloat, naxis1: int, naxis2: int, pad: int
) -> CropWindow | None:
    """The window of a quadrant covering points ``(x, y)`` (0-based pixels) grown by ``pad``.

    Clipped to the quadrant; ``None`` when it does not meet the quadrant.
    """
    xs = np.asarray(x, dtype=np.float64)
    ys = np.asarray(y, dtype=np.float64)
    if xs.size == 0 or not (np.all(np.isfinite(xs)) and np.all(np.isfinite(ys))):
        return None
    x0 = max(0, math.floor(float(xs.min())) - pad)
    x1 = min(naxis1, math.ceil(float(xs.max())) + 1 + pad)
    y0 = max(0, math.floor(float(ys.min())) - pad)
    y1 = min(naxis2, math.ceil(float(ys.max())) + 1 + pad)
    if x1 <= x0 or y1 <= y0:
        return None
    return CropWindow(x0, x1, y0, y1)


def crop_span(
    x: ArrayLikeFloat,
    y: ArrayLikeFloat,
    pad: int,
    naxis1: int | None = None,
    naxis2: int | None = None,
) -> tuple[int, int]:
    """``(ny, nx)`` of :func:`crop_window`'s window before clipping to the quadrant, at
    most the quadrant's size (``naxis2``, ``naxis1``) when given.

    The model's common image shape is taken from these spans, so that it is the same
    for every sub-tile of a tile wherever the quadrant edges cut the crops; a crop never
    exceeds its quadrant, so neither need the shape: a default 10' extended region
    spans ~6300 px, a quadrant 2048 x 2066.
    """
    xs = np.asarray(x, dtype=np.float64)
    ys = np.asarray(y, dtype=np.float64)
    nx = math.ceil(float(xs.max())) + 1 - math.floor(float(xs.min())) + 2 * pad
    ny = math.ceil(float(ys.max())) + 1 - math.floor(float(ys.min())) + 2 * pad
    if naxis1 is not None:
        nx = min(nx, naxis1)
    if naxis2 is not None:
        ny = min(ny, naxis2)
    return ny, nx


def convex_polygon_mask(
    shape: tuple[int, int], x0: int, y0: int, vx: ArrayLikeFloat, vy: ArrayLikeFloat
) -> BoolArray:
    """Pixels of a ``(ny, nx)`` crop whose centres lie inside a convex polygon.

    ``vx``, ``vy``: the polygon's vertices in quadrant pixels (either orientation);
    ``(x0, y0)`` is the crop's origin in the quadrant.
    """
    px = np.asarray(vx, dtype=np.float64) - x0
    py = np.asarray(vy, dtype=np.float64) - y0
    n = px.size
    if n < 3:
        raise ValueError("a polygon needs at least 3 vertices")
    area2 = float(np.sum(px * np.roll(py, -1) - np.roll(px, -1) * py))
    sign = 1.0 if area2 >= 0 else -1.0
    ny, nx = shape
    xx = np.arange(nx, dtype=np.float64)[None, :]
    yy = np.arange(ny, dtype=np.float64)[:, None]
    inside = np.ones(shape, dtype=bool)
    for i in range(n):
        ax, ay = px[i], py[i]
        bx, by = px[(i + 1) % n], py[(i + 1) % n]
        cross = (bx - ax) * (yy - ay) - (by - ay) * (xx - ax)
        inside &= sign * cross >= 0
    return inside


def disc_mask(
    shape: tuple[int, int], cx: ArrayLikeFloat, cy: ArrayLikeFloat, radius: ArrayLikeFloat
) -> BoolArray:
    """Pixels of a ``(ny, nx)`` array within ``radius`` of any centre ``(cx, cy)``."""
    out = np.zeros(shape, dtype=bool)
    ny, nx = shape
    for x, y, r in zip(
        np.atleast_1d(np.asarray(cx, dtype=np.float64)),
        np.atleast_1d(np.asarray(cy, dtype=np.float64)),
        np.broadcast_to(np.asarray(radius, dtype=np.float64), np.shape(np.atleast_1d(cx))),
        strict=True,
    ):
        if not (np.isfinite(x) and np.isfinite(y)) or r <= 0:
            continue
        xa, xb = max(0, math.floor(x - r)), min(nx, math.ceil(x + r) + 1)
        ya, yb = max(0, math.floor(y - r)), min(ny, math.ceil(y + r) + 1)
        if xa >= xb or ya >= yb:
            continue
        yy, xx = np.mgrid[ya:yb, xa:xb]
        out[ya:yb, xa:xb] |= (xx - x) ** 2 + (yy - y) ** 2 <= r * r
    return out


def local_jacobians(wcs: Any, x: FloatArray, y: FloatArray, step: float = 0.5) -> FloatArray:
    """Local WCS Jacobians ``(dudx, dudy, dvdx, dvdy)`` in arcsec/px at 0-based pixels.

    ``u = -RA cos(Dec)`` (west), ``v = Dec`` (north), by central differences of the
    full WCS (``all_pix2world``, distortion included); ``wcs`` is an astropy WCS.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.size == 0:
        return np.zeros((0, 4))
    xs = np.concatenate([x + step, x - step, x, x])
    ys = np.concatenate([y, y, y + step, y - step])
    ra, dec = wcs.all_pix2world(xs, ys, 0)
    ra = np.asarray(ra, dtype=np.float64).reshape(4, -1)
    dec = np.asarray(dec, dtype=np.float64).reshape(4, -1)
    cosd = np.cos(np.radians(dec.mean(axis=0)))

    def d_ra(a: FloatArray, b: FloatArray) -> FloatArray:
        return np.asarray((a - b + 180.0) % 360.0 - 180.0, dtype=np.float64)

    k = 3600.0 / (2 * step)
    dudx = -d_ra(ra[0], ra[1]) * cosd * k
    dudy = -d_ra(ra[2], ra[3]) * cosd * k
    dvdx = (dec[0] - dec[1]) * k
    dvdy = (dec[2] - dec[3]) * k
    return np.stack([dudx, dudy, dvdx, dvdy], axis=1)
