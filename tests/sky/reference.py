"""Strategies and independent reference implementations for the sky tests.

The references use astropy's WCS (wcslib) for the gnomonic projection, so the
package's own kernels are checked against an implementation they share no
code with.
"""

from __future__ import annotations

import numpy as np
from astropy.wcs import WCS
from hypothesis import strategies as st


def tan_wcs(ra0: float, dec0: float) -> WCS:
    """A TAN WCS whose 0-based pixel coordinates are our plane (x west, y north) in arcmin."""
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [ra0, dec0]
    w.wcs.crpix = [1.0, 1.0]  # pixel 0 (origin=0) at the tangent point
    w.wcs.cd = [[-1.0 / 60.0, 0.0], [0.0, 1.0 / 60.0]]  # 1 arcmin per pixel, x to the west
    # FITS defaults LONPOLE to 0 when the tangent point is exactly the north pole
    # (180 otherwise); pin 180 so the frame is the continuous limit towards the pole.
    w.wcs.lonpole = 180.0
    w.wcs.set()
    return w


def reference_plane(
    ra0: float, dec0: float, ra: np.ndarray, dec: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Plane coordinates (arcmin) by wcslib; nan for points >= 90 deg away."""
    x, y = tan_wcs(ra0, dec0).wcs_world2pix(ra, dec, 0)
    # wcslib projects the far hemisphere through the antipode; mask it out.
    r0, d0 = np.radians(ra0), np.radians(dec0)
    r, d = np.radians(ra), np.radians(dec)
    cosc = np.sin(d0) * np.sin(d) + np.cos(d0) * np.cos(d) * np.cos(r - r0)
    far = cosc <= 1e-10
    return np.where(far, np.nan, x), np.where(far, np.nan, y)


# Tile centres anywhere, with weight on the awkward places: RA 0/360 and the poles.
ras = st.one_of(
    st.floats(0.0, 360.0, exclude_max=True),
    st.floats(0.0, 1e-6),
    st.floats(360.0 - 1e-6, 360.0, exclude_max=True),
    st.sampled_from([0.0, 180.0, 359.9999999]),
)
decs = st.one_of(
    st.floats(-89.9, 89.9),
    st.floats(89.0, 89.9),
    st.floats(-89.9, -89.0),
    st.sampled_from([0.0, 66.0, -48.4, 89.9, -89.9, 90.0, -90.0]),
)


def sources_around(
    rng: np.random.Generator, ra0: float, dec0: float, n: int, half_arcmin: float
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` sky positions uniform in a square of half-side ``half_arcmin`` on the plane."""
    from constellation.sky import plane_to_sky

    x = rng.uniform(-half_arcmin, half_arcmin, n)
    y = rng.uniform(-half_arcmin, half_arcmin, n)
    return plane_to_sky(x, y, ra0, dec0)
