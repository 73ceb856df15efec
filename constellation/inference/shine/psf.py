"""PSF stamps in SHINE's frame: Lanczos-3 resampling through the local Jacobian (pure numpy)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from constellation.inference.shine.geometry import FloatArray

__all__ = ["lanczos_resample", "psf_for_shine", "remove_pixel"]


def _lanczos(t: FloatArray, a: int = 3) -> FloatArray:
    out = np.sinc(t) * np.sinc(t / a)
    return np.asarray(np.where(np.abs(t) < a, out, 0.0), dtype=np.float64)


def lanczos_resample(
    image: NDArray[np.floating[Any]], matrix: FloatArray, shift: tuple[float, float]
) -> FloatArray:
    """Resample a square stamp: ``out[k, l] = image(c + M (l - c, k - c) - shift)``.

    ``c`` is the stamp centre, ``M`` a 2 x 2 matrix acting on ``(x, y) = (column,
    row)`` offsets and ``shift`` ``(sx, sy)`` in input pixels; Lanczos-3
    interpolation, zero outside the input.
    """
    img = np.asarray(image, dtype=np.float64)
    n = img.shape[0]
    if img.shape != (n, n):
        raise ValueError("the stamp must be square")
    c = (n - 1) / 2.0
    kk, ll = np.mgrid[0:n, 0:n].astype(np.float64)
    qx, qy = ll - c, kk - c
    m = np.asarray(matrix, dtype=np.float64)
    sx = c + m[0, 0] * qx + m[0, 1] * qy - shift[0]
    sy = c + m[1, 0] * qx + m[1, 1] * qy - shift[1]
    fx, fy = np.floor(sx), np.floor(sy)
    out = np.zeros((n, n))
    wsum = np.zeros((n, n))
    for j in range(-2, 4):
        iy = fy + j
        wy = _lanczos(sy - iy)
        for i in range(-2, 4):
            ix = fx + i
            w = wy * _lanczos(sx - ix)
            wsum += w
            ok = (ix >= 0) & (ix < n) & (iy >= 0) & (iy < n)
            vals = np.zeros((n, n))
            vals[ok] = img[iy[ok].astype(np.int64), ix[ok].astype(np.int64)]
            out += w * vals
    # normalise the kernel (Lanczos weights sum to ~1, not exactly, off the grid)
    return np.asarray(np.where(wsum != 0, out / np.where(wsum != 0, wsum, 1.0), 0.0))


def remove_pixel(stamp: NDArray[np.floating[Any]]) -> FloatArray:
    """Divide the pixel's response out of a pixel-integrated (effective) PSF stamp.

    An effective PSF (PSFEx's, VIS's) is the optical PSF convolved with the 1 x 1 pixel
    box, sampled at pixel centres; SHINE draws the stamp it is given and convolves the
    result with the pixel again. Dividing the stamp's Fourier transform by the box's,
    ``sinc(fx) sinc(fy)`` (at least 0.41 below the Nyquist frequency, so no
    regularisation is needed), gives samples of the optical PSF instead. The stamp is
    padded by its size on every side before the transform, so that the deconvolution's
    ringing does not wrap around; the sum is kept.
    """
    img = np.asarray(stamp, dtype=np.float64)
    n = img.shape[0]
    if img.shape != (n, n):
        raise ValueError("the stamp must be square")
    m = 3 * n
    padded = np.zeros((m, m))
    padded[n : 2 * n, n : 2 * n] = img
    f = np.fft.fftfreq(m)
    box = np.outer(np.sinc(f), np.sinc(f))
    out = np.fft.ifft2(np.fft.fft2(padded) / box).real
    return np.asarray(out[n : 2 * n, n : 2 * n], dtype=np.float64)


def psf_for_shine(
    stamp: NDArray[np.floating[Any]],
    jacobian: Sequence[float] | FloatArray,
    shift: tuple[float, float],
    pixel_scale: float = 0.1,
    *,
    without_pixel: bool = False,
) -> FloatArray:
    """The stamp to give SHINE so that it renders pixel-frame PSF ``stamp`` moved by ``shift``.

    SHINE wraps the stamp as a sky-frame image of scale ``pixel_scale`` and draws it
    through the local Jacobian ``J`` (``(dudx, dudy, dvdx, dvdy)``, arcsec/px); the
    pixel-frame PSF it applies is then ``S(J p / scale)``. Returning
    ``S(q) = P(scale J^-1 q - shift)`` makes that ``P(p - shift)``: the right
    orientation for mirrored or rotated quadrants, and the sub-pixel position that
    SHINE drops. ``without_pixel``: the pixel's response is divided out of the stamp
    first (:func:`remove_pixel`), since SHINE convolves with the pixel again. Normalised
    to unit sum.
    """
    j = np.asarray(jacobian, dtype=np.float64).reshape(2, 2)
    m = np.asarray(pixel_scale * np.linalg.inv(j), dtype=np.float64)
    source = remove_pixel(stamp) if without_pixel else np.asarray(stamp, dtype=np.float64)
    out = lanczos_resample(source, m, shift)
    total = out.sum()
    return out / total if total > 0 else out
