"""Render a quadrant's pixels: sheared galaxies through the PSF grid, sky and noise.

Used by the ``pixels`` mode for a chosen few quadrants. Each galaxy is an
exponential profile with its intrinsic ellipticity, sheared by the injected
field at its position (complex addition of reduced shear), evaluated with 3 x 3
sub-sampling in a stamp through the quadrant's local affine WCS (its CD
matrix, as SHINE uses it), convolved with the nearest stamp of the quadrant's
PSF grid and scaled to ADU with the exposure's zero point and exposure time.
Stars are the PSF stamp. The sky level of the BKG map is added, then Gaussian
noise with variance ``(rdnoise/gain)^2 + signal/gain`` (ADU).

Shear convention: ``(u, v) = (west, north)`` on the sky (SHINE's frame,
``u = -RA cos(dec)``); ``+g1`` stretches along ``u``, ``+g2`` along ``u = v``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from astropy.wcs import WCS
from numpy.typing import NDArray

from constellation.simulate.psf import GRID, STAMP

__all__ = ["RenderSources", "render_quadrant"]

_SUB = 3  # sub-samples per pixel per axis
_HLR_PER_SCALE = 1.6783469900166605  # exponential: half-light radius / scale length


@dataclass(frozen=True)
class RenderSources:
    """The sources to draw (arrays aligned)."""

    ra: NDArray[np.float64]
    dec: NDArray[np.float64]
    flux_ujy: NDArray[np.float64]
    hlr_arcsec: NDArray[np.float64]
    e1: NDArray[np.float64]
    e2: NDArray[np.float64]
    g1: NDArray[np.float64]
    g2: NDArray[np.float64]
    is_star: NDArray[np.bool_]


def _sheared(e1: float, e2: float, g1: float, g2: float) -> complex:
    """Ellipticity after shear: (e + g) / (1 + g* e) (reduced-shear convention)."""
    e = complex(e1, e2)
    g = complex(g1, g2)
    return (e + g) / (1 + g.conjugate() * e)


def _stamp(
    hlr: float, ell: complex, jac: NDArray[np.float64], size: int, frac: tuple[float, float]
) -> NDArray[np.float64]:
    """Unit-flux exponential galaxy in pixel space; ``jac`` maps pixel offsets to (u, v) ″."""
    c = (size - 1) / 2
    off = (np.arange(size * _SUB) + 0.5) / _SUB - 0.5 - c
    dy, dx = np.meshgrid(off - frac[1], off - frac[0], indexing="ij")
    u = jac[0, 0] * dx + jac[0, 1] * dy
    v = jac[1, 0] * dx + jac[1, 1] * dy
    mod = min(abs(ell), 0.95)
    phi = 0.5 * np.angle(ell)
    p = u * np.cos(phi) + v * np.sin(phi)
    q = -u * np.sin(phi) + v * np.cos(phi)
    k = np.sqrt((1 + mod) / (1 - mod))  # sqrt(a/b): a = rs k, b = rs / k (area kept)
    rs = hlr / _HLR_PER_SCALE
    r = np.sqrt((p / (rs * k)) ** 2 + (q * k / rs) ** 2)
    img = np.exp(-r).reshape(size, _SUB, size, _SUB).mean(axis=(1, 3))
    return np.asarray(img / img.sum(), dtype=np.float64)


def _convolve(img: NDArray[np.float64], psf: NDArray[np.float64]) -> NDArray[np.float64]:
    n = img.shape[0] + psf.shape[0] - 1
    f = np.fft.rfft2(img, (n, n)) * np.fft.rfft2(psf, (n, n))
    full = np.fft.irfft2(f, (n, n))
    h = psf.shape[0] // 2
    return full[h : h + img.shape[0], h : h + img.shape[1]]


def render_quadrant(
    header: object,
    psf_image: NDArray[np.float32],
    sources: RenderSources,
    *,
    zeropoint: float,
    exptime_s: float,
    gain: float,
    rdnoise_e: float,
    sky_adu: float,
    rng: np.random.Generator,
    pixel_noise: bool = True,
    renderer: str = "builtin",
    psf_params: NDArray[np.float64] | None = None,
) -> dict[str, NDArray[np.float32] | NDArray[np.int32]]:
    """SCI, RMS, FLG, BKG and WGT arrays of one quadrant of one exposure (without the
    noise draw when ``pixel_noise`` is false: RMS still says what the noise would be).

    ``renderer="galsim"`` draws every source with GalSim through the continuous PSF
    profiles ``psf_params`` (the grid's (fwhm_px, e1, e2), shape (9, 9, 3)) instead of
    convolving with the stamps of ``psf_image``."""
    if renderer == "galsim" and psf_params is None:
        raise ValueError("renderer 'galsim' needs psf_params")
    if renderer == "galsim":
        from constellation.simulate.galsim_render import galaxy_stamp_galsim, star_stamp_galsim
    wcs = WCS(header)
    ny, nx = int(wcs.pixel_shape[1]), int(wcs.pixel_shape[0])
    x, y = wcs.all_world2pix(sources.ra, sources.dec, 0, quiet=True)
    inside = (x > -24) & (x < nx + 23) & (y > -24) & (y < ny + 23)
    cd = wcs.pixel_scale_matrix * 3600.0  # intermediate world (east, north) ″ per px
    jac = np.array([[-cd[0, 0], -cd[0, 1]], [cd[1, 0], cd[1, 1]]])  # -> (west, north)
    adu_per_ujy = 10 ** ((zeropoint - 23.9) / 2.5) * exptime_s
    stamps = psf_image.reshape(GRID, STAMP, GRID, STAMP).transpose(0, 2, 1, 3).astype(np.float64)
    signal = np.zeros((ny, nx))
    for i in np.flatnonzero(inside):
        gx = int(np.clip(np.floor(x[i] / nx * GRID), 0, GRID - 1))
        gy = int(np.clip(np.floor(y[i] / ny * GRID), 0, GRID - 1))
        psf = stamps[gy, gx]
        ix, iy = int(np.floor(x[i] + 0.5)), int(np.floor(y[i] + 0.5))
        frac = (float(x[i] - ix), float(y[i] - iy))
        if renderer == "galsim":
            assert psf_params is not None
            cell = (float(psf_params[gy, gx, 0]), float(psf_params[gy, gx, 1]),
                    float(psf_params[gy, gx, 2]))  # fmt: skip
            if sources.is_star[i]:
                size = STAMP
                img = star_stamp_galsim(size, frac, cell)
            else:
                hlr = float(sources.hlr_arcsec[i])
                size = int(min(64, max(STAMP, 2 * np.ceil(6 * hlr / 0.1) + 1)))
                size += 1 - size % 2
                ell = _sheared(sources.e1[i], sources.e2[i], sources.g1[i], sources.g2[i])
                img = galaxy_stamp_galsim(hlr, ell, jac, size, frac, cell)
        elif sources.is_star[i]:
            img = psf / psf.sum() * 0.95
            size = STAMP
        else:
            hlr = float(sources.hlr_arcsec[i])
            size = int(min(64, max(STAMP, 2 * np.ceil(6 * hlr / 0.1) + 1)))
            size += 1 - size % 2
            ell = _sheared(sources.e1[i], sources.e2[i], sources.g1[i], sources.g2[i])
            img = _convolve(_stamp(hlr, ell, jac, size, frac), psf)
        img = img * float(sources.flux_ujy[i]) * adu_per_ujy
        h = size // 2
        x0, y0 = ix - h, iy - h
        sx0, sy0 = max(0, -x0), max(0, -y0)
        sx1, sy1 = min(size, nx - x0), min(size, ny - y0)
        if sx0 < sx1 and sy0 < sy1:
            signal[y0 + sy0 : y0 + sy1, x0 + sx0 : x0 + sx1] += img[sy0:sy1, sx0:sx1]
    # a row and a column broadcast to the frame: the same numbers as full index grids
    yy, xx = np.arange(ny)[:, None], np.arange(nx)[None, :]
    bkg = sky_adu * (1 + 0.02 * (xx / nx - 0.5) + 0.01 * (yy / ny - 0.5))
    var = (rdnoise_e / gain) ** 2 + (bkg + signal) / gain
    rms = np.sqrt(var)
    noise = rng.normal(0.0, 1.0, (ny, nx)) * rms
    sci = bkg + signal + (noise if pixel_noise else 0.0)
    flg = np.zeros((ny, nx), dtype=np.int32)
    col = int(rng.integers(0, nx))
    flg[:, col] = 1 | 128  # INVALID | BAD_COLUMN
    flg[sci > 200_000 / gain] |= 1 | 8  # INVALID | SAT
    wgt = ((flg & 1) == 0).astype(np.float32)  # 0 where INVALID, else 1
    return {
        "SCI": sci.astype(np.float32),
        "RMS": rms.astype(np.float32),
        "FLG": flg,
        "BKG": bkg.astype(np.float32),
        "WGT": wgt,
    }
