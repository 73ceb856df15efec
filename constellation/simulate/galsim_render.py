"""GalSim drawing for ``renderer: galsim`` fields (calibration fields).

GalSim, the field's reference image simulator (it comes with SHINE), draws each
galaxy as the continuous convolution of the sheared exponential profile with the
continuous PSF profile, integrated over each pixel (``method='auto'``), in the
quadrant's pixel frame through its local Jacobian. The PSF stamps written to the PSF
file are GalSim's pixel-integrated images of the same PSF profiles: effective PSFs, as
PSFEx's stamps of real VIS data are. The built-in renderer instead samples the PSF at
pixel centres and convolves on the pixel grid; ``benchmarks/calibration.py`` measures
the difference on galaxy moments.

The PSF profile of a stamp is the built-in one's: an elliptical Gaussian core of FWHM
``fwhm_px`` sheared by ``(e1, e2)`` (95 % of the light) plus round Gaussian wings three
times wider (5 %), total flux 0.95.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "GalSimUnavailableError",
    "galaxy_stamp_galsim",
    "psf_profile",
    "psf_stamp_galsim",
    "star_stamp_galsim",
]

_FWHM_TO_SIGMA = 1.0 / 2.3548200450309493
_STAMP = 21


class GalSimUnavailableError(ImportError):
    """GalSim is not installed but a ``galsim`` renderer was asked for."""


def _galsim() -> Any:
    try:
        import galsim
    except ImportError as exc:
        raise GalSimUnavailableError(
            "renderer 'galsim' needs GalSim (installed with SHINE, or: pip install galsim)"
        ) from exc
    return galsim


def psf_profile(fwhm_px: float, e1: float, e2: float) -> Any:
    """The continuous PSF in pixel units (flux 0.95)."""
    galsim = _galsim()
    core = galsim.Gaussian(fwhm=fwhm_px).shear(g1=e1, g2=e2)
    wings = galsim.Gaussian(sigma=3.0 * fwhm_px * _FWHM_TO_SIGMA)
    return galsim.Add([core * 0.95, wings * 0.05]) * 0.95


def psf_stamp_galsim(fwhm_px: float, e1: float, e2: float) -> NDArray[np.float64]:
    """A 21 x 21 stamp of the pixel-integrated PSF (an effective PSF), centred."""
    image = psf_profile(fwhm_px, e1, e2).drawImage(nx=_STAMP, ny=_STAMP, scale=1.0, method="auto")
    return np.asarray(image.array, dtype=np.float64)


def galaxy_stamp_galsim(
    hlr_arcsec: float,
    ell: complex,
    jac: NDArray[np.float64],
    size: int,
    frac: tuple[float, float],
    psf: tuple[float, float, float],
) -> NDArray[np.float64]:
    """A ``size`` x ``size`` pixel-frame stamp (odd ``size``) of a unit-flux exponential
    of ellipticity ``ell`` (reduced-shear convention, in the (west, north) frame) through
    the PSF ``(fwhm_px, e1, e2)``, centred ``frac`` pixels off the stamp centre. ``jac``
    maps pixel offsets to (west, north) arcsec."""
    galsim = _galsim()
    wcs = galsim.JacobianWCS(float(jac[0, 0]), float(jac[0, 1]), float(jac[1, 0]), float(jac[1, 1]))
    gal = galsim.Exponential(half_light_radius=hlr_arcsec).shear(g1=ell.real, g2=ell.imag)
    obj = galsim.Convolve(wcs.toImage(gal), psf_profile(*psf))
    image = obj.drawImage(nx=size, ny=size, scale=1.0, offset=frac, method="auto")
    return np.asarray(image.array, dtype=np.float64)


def star_stamp_galsim(
    size: int, frac: tuple[float, float], psf: tuple[float, float, float]
) -> NDArray[np.float64]:
    """A star: the pixel-integrated PSF ``(fwhm_px, e1, e2)`` centred ``frac`` pixels off
    the centre of a ``size`` x ``size`` stamp (flux 0.95)."""
    image = psf_profile(*psf).drawImage(nx=size, ny=size, scale=1.0, offset=frac, method="auto")
    return np.asarray(image.array, dtype=np.float64)
