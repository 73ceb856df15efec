"""Synthetic VIS PSF grids in the Q1 layout: 9 x 9 stamps of 21 x 21 pixels.

Each quadrant's PSF extension is a 189 x 189 image holding the stamps row-major
(stamp ``(j, i)`` at rows ``21 j : 21 j + 21`` and columns ``21 i : 21 i + 21``),
the grid spread uniformly over the 2048 x 2066 quadrant, at native 0.1"
pixels. A stamp is an elliptical Gaussian core (FWHM ~1.6 px, as Q1's 0.16")
plus faint wings, whose size and ellipticity vary smoothly across the
quadrant, normalised to a sum of 0.95 (real stamps sum to 0.93-0.97).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

__all__ = ["GRID", "STAMP", "psf_grid", "psf_parameters", "psf_stamp"]

STAMP = 21
GRID = 9
_FWHM_TO_SIGMA = 1.0 / 2.3548200450309493
# pixel indices of a stamp (row y, column x), made once: ~12,000 stamps a field
_STAMP_Y, _STAMP_X = np.mgrid[0:STAMP, 0:STAMP].astype(np.float64)
_STAMP_Y.flags.writeable = _STAMP_X.flags.writeable = False


def psf_stamp(
    fwhm_px: float, e1: float, e2: float, dx: float = 0.0, dy: float = 0.0
) -> NDArray[np.float64]:
    """One 21 x 21 stamp: elliptical Gaussian core + 5 % wide wings, sum 0.95."""
    c = (STAMP - 1) / 2
    x = _STAMP_X - (c + dx)
    y = _STAMP_Y - (c + dy)
    s = fwhm_px * _FWHM_TO_SIGMA
    # shear the coordinates: (x, y) -> (1 - e1) x - e2 y, ...
    xs = (1 - e1) * x - e2 * y
    ys = -e2 * x + (1 + e1) * y
    core = np.exp(-0.5 * (xs**2 + ys**2) / s**2)
    wings = np.exp(-0.5 * (x**2 + y**2) / (3.0 * s) ** 2)
    img = core / core.sum() * 0.95 + wings / wings.sum() * 0.05
    return np.asarray(img / img.sum() * 0.95, dtype=np.float64)


def psf_parameters(rng: np.random.Generator) -> NDArray[np.float64]:
    """FWHM (px), e1 and e2 of each stamp of a quadrant's 9 x 9 grid, shape (9, 9, 3):
    smooth variation across the quadrant."""
    a = rng.normal(0, 1, 6)
    out = np.empty((GRID, GRID, 3))
    for j in range(GRID):
        for i in range(GRID):
            u, v = (i - 4) / 4.0, (j - 4) / 4.0
            fwhm = 1.6 * (1 + 0.04 * a[0] * u + 0.04 * a[1] * v + 0.03 * (u * u + v * v))
            e1 = 0.02 * a[2] + 0.015 * a[3] * u
            e2 = 0.02 * a[4] + 0.015 * a[5] * v
            out[j, i] = (fwhm, e1, e2)
    return out


def psf_grid(rng: np.random.Generator, renderer: str = "builtin") -> NDArray[np.float32]:
    """A quadrant's 189 x 189 PSF image with smooth variation across its 9 x 9 grid.

    ``builtin``: each stamp samples the profile at pixel centres (:func:`psf_stamp`);
    ``galsim``: each stamp is GalSim's pixel-integrated image of the same profile (an
    effective PSF, like PSFEx's), see :mod:`constellation.simulate.galsim_render`.
    """
    params = psf_parameters(rng)
    if renderer == "galsim":
        from constellation.simulate.galsim_render import psf_stamp_galsim as stamp
    else:
        stamp = psf_stamp
    out = np.empty((GRID * STAMP, GRID * STAMP), dtype=np.float32)
    for j in range(GRID):
        for i in range(GRID):
            out[j * STAMP : (j + 1) * STAMP, i * STAMP : (i + 1) * STAMP] = stamp(*params[j, i])
    return out
