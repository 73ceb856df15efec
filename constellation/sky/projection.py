"""Gnomonic (TAN) projection about a tangent point: sky <-> plane.

The plane has ``x`` pointing **west** and ``y`` pointing **north**, in arcmin,
so that a picture of it with ``x`` to the right shows north up and east left,
as the MER mosaics do (their CD1_1 is negative), and ``x`` matches SHINE's
``u = -RA cos(dec)`` axis. Tangent points anywhere on the sphere work,
including RA = 0/360 and the poles; points at >= 90 deg from the tangent point
have no image and come back as nan.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["ARCMIN_PER_RAD", "plane_to_sky", "sky_to_plane", "wrap_ra"]

ARCMIN_PER_RAD = 180.0 * 60.0 / np.pi


def wrap_ra(ra_deg: ArrayLike) -> NDArray[np.float64]:
    """Wrap RA (deg) into ``[0, 360)``; unlike a bare ``% 360``, never returns 360.0."""
    r = np.asarray(ra_deg, dtype=np.float64) % 360.0
    return np.where(r >= 360.0, r - 360.0, r)


def _as_f64(a: ArrayLike, name: str) -> NDArray[np.float64]:
    arr = np.asarray(a, dtype=np.float64)
    if arr.ndim > 1:
        raise ValueError(f"{name} must be a scalar or 1-d array, got shape {arr.shape}")
    return arr


def sky_to_plane(
    ra_deg: ArrayLike, dec_deg: ArrayLike, ra0_deg: float, dec0_deg: float
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Project sky positions onto the plane tangent at ``(ra0_deg, dec0_deg)``.

    Parameters
    ----------
    ra_deg, dec_deg
        Positions in degrees (scalars or 1-d arrays of equal length).
    ra0_deg, dec0_deg
        Tangent point in degrees.

    Returns
    -------
    x_arcmin, y_arcmin
        Plane coordinates (``x`` west, ``y`` north), arrays of the input shape;
        nan for points on or behind the horizon.
    """
    from constellation.sky import _kernels

    ra = _as_f64(ra_deg, "ra_deg")
    dec = _as_f64(dec_deg, "dec_deg")
    if ra.shape != dec.shape:
        raise ValueError(f"ra_deg and dec_deg differ in shape: {ra.shape} vs {dec.shape}")
    shape = ra.shape
    x, y = _kernels.project(
        np.ascontiguousarray(ra.reshape(-1)),
        np.ascontiguousarray(dec.reshape(-1)),
        float(ra0_deg),
        float(dec0_deg),
    )
    return x.reshape(shape), y.reshape(shape)


def plane_to_sky(
    x_arcmin: ArrayLike, y_arcmin: ArrayLike, ra0_deg: ArrayLike, dec0_deg: ArrayLike
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Inverse of :func:`sky_to_plane`: plane (arcmin) to ``(ra in [0, 360), dec)`` degrees.

    The tangent point may be an array that broadcasts against ``x``/``y``
    (one tangent point per row, say).
    """
    xi = -np.asarray(x_arcmin, dtype=np.float64) / ARCMIN_PER_RAD  # east-positive standard coord
    eta = np.asarray(y_arcmin, dtype=np.float64) / ARCMIN_PER_RAD
    if xi.shape != eta.shape:
        raise ValueError(f"x and y differ in shape: {xi.shape} vs {eta.shape}")
    d0 = np.radians(np.asarray(dec0_deg, dtype=np.float64))
    s0, c0 = np.sin(d0), np.cos(d0)
    denom = c0 - eta * s0
    ra = np.radians(np.asarray(ra0_deg, dtype=np.float64)) + np.arctan2(xi, denom)
    dec = np.arctan2(s0 + eta * c0, np.hypot(xi, denom))
    return wrap_ra(np.degrees(ra)), np.degrees(dec)
