"""Compiled kernel of :mod:`constellation.simulate.survey` (numba; imported lazily)."""

from __future__ import annotations

import math

import numpy as np
from numba import njit

_RAD_PER_ARCSEC = math.pi / (180.0 * 3600.0)
_DEG_PER_RAD = 180.0 / math.pi


@njit(cache=True, nogil=True, error_model="numpy")
def fp_gather_to_sky(
    x_arcsec: np.ndarray,
    y_arcsec: np.ndarray,
    point: np.ndarray,
    frame: np.ndarray,
    p0: np.ndarray,
    ax: np.ndarray,
    ay: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover - compiled
    """Row ``i``: the FP points ``x_arcsec[point[i]]`` (``(P, V)`` tables) in frame ``frame[i]``.

    A row equal to the previous one (same point set and frame) is copied, not
    recomputed.
    """
    n, v = point.size, x_arcsec.shape[1]
    ra = np.empty((n, v))
    dec = np.empty((n, v))
    for i in range(n):
        q, f = point[i], frame[i]
        if i > 0 and q == point[i - 1] and f == frame[i - 1]:
            ra[i] = ra[i - 1]
            dec[i] = dec[i - 1]
            continue
        p00, p01, p02 = p0[f, 0], p0[f, 1], p0[f, 2]
        a0, a1, a2 = ax[f, 0], ax[f, 1], ax[f, 2]
        b0, b1, b2 = ay[f, 0], ay[f, 1], ay[f, 2]
        for j in range(v):
            x = x_arcsec[q, j] * _RAD_PER_ARCSEC
            y = y_arcsec[q, j] * _RAD_PER_ARCSEC
            w0 = p00 + x * a0 + y * b0
            w1 = p01 + x * a1 + y * b1
            w2 = p02 + x * a2 + y * b2
            r = math.atan2(w1, w0) * _DEG_PER_RAD
            if r < 0.0:
                r += 360.0
            if r >= 360.0:
                r -= 360.0
            ra[i, j] = r
            dec[i, j] = math.atan2(w2, math.sqrt(w0 * w0 + w1 * w1)) * _DEG_PER_RAD
    return ra, dec
