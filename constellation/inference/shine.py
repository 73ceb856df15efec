"""The ``shine`` inference backend: SHINE's Euclid model run in-process on one sub-tile.

SHINE (``shine.euclid``, installed from its source; see ``docs/shine.md``) fits
one quadrant id with one PSF grid and one zero point per run. A sub-tile's
extended box is usually covered by several quadrants of several exposures, so
this backend assembles SHINE's :class:`~shine.euclid.ExposureSet` itself:

* **Ranged reads, cropped.** For each quadrant exposure of the manifest the SCI
  header gives the WCS; the extended polygon is projected into the quadrant and
  only the rows that overlap it (grown by half the largest stamp) are read from
  SCI, RMS, FLG and BKG (a row range is one contiguous byte range), then cropped
  in columns. All crops are padded to one common, bucketed shape; padding and
  pixels outside the extended polygon are masked (noise ``1e10``).
* **One photometric reference.** Each exposure's image and noise are scaled by
  ``c_ref / c_j`` with ``c = 10**((MAGZEROP + 2.5 log10 EXPTIME - 23.9) / 2.5)``
  (ADU per uJy), so SHINE's single per-source ADU flux, centred on the catalog
  flux converted with ``c_ref``, is right in every exposure.
* **Per-quadrant PSF.** Each quadrant's 189 x 189 PSF grid becomes a
  :class:`~shine.euclid.EuclidPSFModel`, interpolated at the source's position.
  SHINE treats the stamp as a sky-frame image, draws the profile at the integer
  pixel it is given (minus half a pixel for its even stamps) and drops the
  sub-pixel part of the position; the stamp given to SHINE is therefore the
  pixel-frame PSF resampled (Lanczos-3) into SHINE's frame through the local
  Jacobian and shifted by the exact sub-pixel offset, so that every exposure sees
  the galaxy at its WCS position with the right PSF orientation (mirrored and
  rotated quadrants included).
* **Every source accounted for.** SHINE's source selection (the ``sources``
  section) picks the modelled sources; the pixels around rejected sources, and
  around modelled sources in the exposures where their stamp does not fit, are
  masked, so that no unmodelled light enters the likelihood.
* **Warm across sub-tiles.** For MAP the optimisation (Adam on the unconstrained
  parameters of SHINE's model, initialised from the catalog, all steps in one
  ``lax.scan``) is compiled once per (exposures, shape, sources per stamp tier,
  steps) bucket: source counts and image shapes are padded to buckets and the
  data are arguments of the compiled function, so a second sub-tile of the same
  bucket does not recompile. VI and NUTS go through SHINE's ``Inference``
  (which compiles on each call).

The pure helpers (crop windows, masks, zero-point scales, source selection,
PSF resampling, posterior summaries) need neither SHINE nor JAX and are tested
in CI; everything that imports SHINE does so inside functions.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import io
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from numpy.typing import NDArray

from constellation.config import ScienceConfig
from constellation.inference.base import (
    BackendOutput,
    BackendUnavailableError,
    NonFiniteFitError,
    NothingToFitError,
    SubTileDataError,
    SubTileInput,
)
from constellation.io.storage import Storage
from constellation.manifest.layout import resolve_relative
from constellation.manifest.subtile import FitsExtension, QuadrantExposure, SubTileManifest
from constellation.results.schema import SOURCE_PARAMETERS

__all__ = [
    "INSTALL_HINT",
    "MASKED_SIGMA",
    "CropWindow",
    "PosteriorSummary",
    "ShineBackend",
    "bucket",
    "convex_polygon_mask",
    "crop_span",
    "crop_window",
    "disc_mask",
    "flux_conversion",
    "hlr_arcsec",
    "lanczos_resample",
    "local_jacobians",
    "psf_for_shine",
    "select_sources",
    "source_bucket",
    "split_rhat",
    "stamp_tiers",
    "summarize_posterior",
    "zeropoint_scales",
]

logger = logging.getLogger(__name__)

INSTALL_HINT = (
    "the 'shine' backend needs SHINE with its Euclid module (shine.euclid), which is only in "
    "SHINE's source tree: pip install 'git+https://github.com/CosmoStat/SHINE' (Python >= 3.11; "
    "the PyPI package shine-wl 0.0.3 lacks shine.euclid). Or use science.backend.name: mock."
)

#: Noise sigma of masked pixels, as SHINE's loader uses.
MASKED_SIGMA = 1e10
#: Half-width of SHINE's 21 x 21 PSF stamps, px (its stamp sizing uses it).
PSF_HALF = 10.5
#: AB magnitude of 1 uJy.
_AB_UJY = 23.9
#: Latent sites of SHINE's Euclid model, per source.
SOURCE_SITES: tuple[str, ...] = tuple(name for name, _ in SOURCE_PARAMETERS)

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]
ArrayLikeFloat = Sequence[float] | NDArray[np.floating[Any]]


# =========================================================================== pure helpers


def flux_conversion(magzerop: float, exptime: float) -> float:
    """ADU per uJy of an exposure: ``10**((MAGZEROP + 2.5 log10 EXPTIME - 23.9) / 2.5)``."""
    if exptime <= 0:
        raise ValueError(f"exposure time must be positive, got {exptime}")
    return float(10.0 ** ((magzerop + 2.5 * math.log10(exptime) - _AB_UJY) / 2.5))


def zeropoint_scales(
    magzerops: Sequence[float], exptimes: Sequence[float], reference: int = 0
) -> FloatArray:
    """Factors that bring each exposure to the photometry of exposure ``reference``.

    Multiplying exposure ``j``'s image and noise by ``scales[j] = c_ref / c_j``
    (``c`` = ADU per uJy, :func:`flux_conversion`) makes one ADU flux right for
    every exposure.
    """
    if len(magzerops) != len(exptimes):
        raise ValueError("magzerops and exptimes differ in length")
    conv = np.array([flux_conversion(z, t) for z, t in zip(magzerops, exptimes, strict=True)])
    return np.asarray(conv[reference] / conv, dtype=np.float64)


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


def bucket(n: int, step: int) -> int:
    """``n`` rounded up to a positive multiple of ``step``."""
    if step <= 0:
        raise ValueError("step must be positive")
    return max(step, -(-n // step) * step)


def source_bucket(n: int, step: int = 16) -> int:
    """Padded source count: 0 stays 0, then powers of two up to ``step``, then multiples."""
    if n <= 0:
        return 0
    if n <= step:
        return 1 << (n - 1).bit_length()
    return bucket(n, step)


def _column(table: pa.Table, name: str) -> NDArray[Any] | None:
    if name not in table.column_names:
        return None
    col = table.column(name).combine_chunks()
    if pa.types.is_integer(col.type) or pa.types.is_boolean(col.type):
        return np.asarray(col.cast(pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)
    return np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.float64)


def hlr_arcsec(table: pa.Table, pixel_scale: float = 0.1) -> FloatArray:
    """Catalog half-light radius, arcsec: ``semimajor_axis`` (px) x scale, else ``fwhm`` / 2.

    Clipped to [0.05, 5] arcsec; 0.5 arcsec where neither column is known.
    """
    n = table.num_rows
    out = np.full(n, np.nan)
    sma = _column(table, "semimajor_axis")
    if sma is not None:
        out = sma * pixel_scale
    fwhm = _column(table, "fwhm")
    if fwhm is not None:
        out = np.where(np.isfinite(out), out, 0.5 * fwhm)
    out = np.where(np.isfinite(out), out, 0.5)
    return np.asarray(np.clip(out, 0.05, 5.0), dtype=np.float64)


def stamp_tiers(
    hlr: FloatArray, stamp_sizes: Sequence[int], pixel_scale: float = 0.1
) -> NDArray[np.int64]:
    """Index of the smallest stamp holding ``2 (3 hlr_px + 10.5)`` px (else the largest)."""
    needed = 2.0 * (3.0 * np.asarray(hlr) / pixel_scale + PSF_HALF)
    tiers = np.full(needed.shape, len(stamp_sizes) - 1, dtype=np.int64)
    for t in range(len(stamp_sizes) - 1, -1, -1):
        tiers[needed <= stamp_sizes[t]] = t
    return tiers


def select_sources(
    table: pa.Table,
    selection: Mapping[str, Any],
    max_stamp: int,
) -> BoolArray:
    """Which rows SHINE's ``sources`` settings keep (the filters documented by SHINE).

    ``selection`` holds SHINE's ``SourceSelectionConfig`` fields (missing ones take
    SHINE's defaults): S/N ``flux_detection_total / fluxerr_detection_total >=
    min_snr``; ``vis_det > 0``; ``spurious_flag == 0``; ``deblended_flag == 0`` (only
    if ``exclude_deblended``); ``point_like_flag != 1``; ``det_quality_flag &
    det_quality_exclude_mask == 0``; ``2 (3 semimajor_axis + 10.5) <= max_stamp``;
    then the ``max_sources`` highest S/N. A filter whose column is absent is
    skipped; a null fails a requirement (S/N, ``vis_det``) and passes an exclusion.
    """
    n = table.num_rows
    keep = np.ones(n, dtype=bool)
    flux = _column(table, "flux_detection_total")
    ferr = _column(table, "fluxerr_detection_total")
    snr = None
    if flux is not None and ferr is not None:
        with np.errstate(divide="ignore", invalid="ignore"):
            snr = flux / ferr
        keep &= np.nan_to_num(snr, nan=-np.inf) >= float(selection.get("min_snr", 10.0))

    def flag(name: str) -> NDArray[np.float64] | None:
        return _column(table, name)

    vis = flag("vis_det")
    if bool(selection.get("require_vis_detected", True)) and vis is not None:
        keep &= np.nan_to_num(vis, nan=0.0) > 0
    spurious = flag("spurious_flag")
    if bool(selection.get("exclude_spurious", True)) and spurious is not None:
        keep &= np.nan_to_num(spurious, nan=0.0) == 0
    deblended = flag("deblended_flag")
    if bool(selection.get("exclude_deblended", False)) and deblended is not None:
        keep &= np.nan_to_num(deblended, nan=0.0) == 0
    point = flag("point_like_flag")
    if bool(selection.get("exclude_point_sources", True)) and point is not None:
        keep &= np.nan_to_num(point, nan=0.0) != 1
    dq_mask = int(selection.get("det_quality_exclude_mask", 0x78C))
    dq = flag("det_quality_flag")
    if dq_mask and dq is not None:
        keep &= (np.nan_to_num(dq, nan=0.0).astype(np.int64) & dq_mask) == 0
    sma = _column(table, "semimajor_axis")
    if sma is not None:
        keep &= np.nan_to_num(2.0 * (3.0 * sma + PSF_HALF), nan=0.0) <= max_stamp
    max_sources = selection.get("max_sources")
    if max_sources is not None and int(keep.sum()) > int(max_sources):
        idx = np.flatnonzero(keep)
        if snr is not None:
            order = np.argsort(-np.nan_to_num(snr[idx], nan=-np.inf), kind="stable")
            idx = idx[order]
        keep = np.zeros(n, dtype=bool)
        keep[idx[: int(max_sources)]] = True
    return keep


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


def psf_for_shine(
    stamp: NDArray[np.floating[Any]],
    jacobian: Sequence[float] | FloatArray,
    shift: tuple[float, float],
    pixel_scale: float = 0.1,
) -> FloatArray:
    """The stamp to give SHINE so that it renders pixel-frame PSF ``stamp`` moved by ``shift``.

    SHINE wraps the stamp as a sky-frame image of scale ``pixel_scale`` and draws it
    through the local Jacobian ``J`` (``(dudx, dudy, dvdx, dvdy)``, arcsec/px); the
    pixel-frame PSF it applies is then ``S(J p / scale)``. Returning
    ``S(q) = P(scale J^-1 q - shift)`` makes that ``P(p - shift)``: the right
    orientation for mirrored or rotated quadrants, and the sub-pixel position that
    SHINE drops. Normalised to unit sum.
    """
    j = np.asarray(jacobian, dtype=np.float64).reshape(2, 2)
    m = np.asarray(pixel_scale * np.linalg.inv(j), dtype=np.float64)
    out = lanczos_resample(np.asarray(stamp, dtype=np.float64), m, shift)
    total = out.sum()
    return out / total if total > 0 else out


def split_rhat(draws: NDArray[np.floating[Any]]) -> float:
    """Split-R-hat (Gelman et al.) of ``(chain, draw)`` samples of one scalar."""
    a = np.asarray(draws, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError("draws must be (chain, draw)")
    half = a.shape[1] // 2
    if half < 2:
        return float("nan")
    chains = np.concatenate([a[:, :half], a[:, half : 2 * half]], axis=0)
    n = chains.shape[1]
    means = chains.mean(axis=1)
    w = chains.var(axis=1, ddof=1).mean()
    b = n * means.var(ddof=1)
    if w <= 0:
        return float("nan") if b <= 0 else float("inf")
    var_plus = (n - 1) / n * w + b / n
    return float(math.sqrt(var_plus / w))


@dataclass(frozen=True)
class PosteriorSummary:
    """Shear and per-source parameters from posterior draws (or a MAP point)."""

    g1: float
    g2: float
    g1_err: float | None
    g2_err: float | None
    g1_g2_cov: float | None
    sources: pa.Table


def _draws(value: NDArray[Any]) -> NDArray[np.float64]:
    """Flatten ``(chain, draw, ...)`` into ``(samples, ...)``."""
    a = np.asarray(value, dtype=np.float64)
    if a.ndim < 2:
        raise ValueError("posterior arrays must be (chain, draw, ...)")
    return a.reshape((a.shape[0] * a.shape[1], *a.shape[2:]))


def summarize_posterior(
    posterior: Mapping[str, NDArray[Any]],
    object_ids: Sequence[int] | NDArray[np.int64],
    slots: Sequence[int] | NDArray[np.int64],
    *,
    with_errors: bool,
) -> PosteriorSummary:
    """Mean (and, ``with_errors``, std and g1-g2 covariance) of posterior draws.

    ``posterior`` maps site names to ``(chain, draw, ...)`` arrays (``g1``, ``g2``
    scalars per draw, possibly with a trailing length-1 axis; per-source sites
    ``(chain, draw, n_slots)``). ``slots[i]`` is the per-source slot of
    ``object_ids[i]``. Per-source columns absent from the posterior (e.g. fixed
    parameters) and all ``*_err`` without errors are null.
    """
    if "g1" not in posterior or "g2" not in posterior:
        raise ValueError("the posterior has no g1/g2")
    g1 = _draws(posterior["g1"]).reshape(-1)
    g2 = _draws(posterior["g2"]).reshape(-1)
    errors = with_errors and g1.size > 1
    cov = np.cov(np.stack([g1, g2])) if errors else None
    slot_idx = np.asarray(slots, dtype=np.int64)
    columns: dict[str, pa.Array] = {
        "object_id": pa.array(np.asarray(object_ids, dtype=np.int64), type=pa.int64())
    }
    n = slot_idx.size
    for name in SOURCE_SITES:
        value = posterior.get(name)
        mean: list[float | None] = [None] * n
        err: list[float | None] = [None] * n
        if value is not None:
            d = _draws(value)
            if d.ndim == 2 and n:
                sel = d[:, slot_idx]
                mean = [float(v) for v in sel.mean(axis=0)]
                if errors:
                    err = [float(v) for v in sel.std(axis=0, ddof=1)]
        columns[name] = pa.array(mean, type=pa.float64())
        columns[f"{name}_err"] = pa.array(err, type=pa.float64())
    return PosteriorSummary(
        g1=float(g1.mean()),
        g2=float(g2.mean()),
        g1_err=float(math.sqrt(cov[0, 0])) if cov is not None else None,
        g2_err=float(math.sqrt(cov[1, 1])) if cov is not None else None,
        g1_g2_cov=float(cov[0, 1]) if cov is not None else None,
        sources=pa.table(columns),
    )


def shear_drift(g1_path: FloatArray, g2_path: FloatArray, fraction: float = 0.1) -> float:
    """Largest change of g1 or g2 over the last ``fraction`` of an optimisation's steps."""
    a = np.asarray(g1_path, dtype=np.float64).reshape(-1)
    b = np.asarray(g2_path, dtype=np.float64).reshape(-1)
    if a.size < 2:
        return float("nan")
    k = max(1, round(a.size * fraction))
    return float(max(abs(a[-1] - a[-1 - k]), abs(b[-1] - b[-1 - k])))


# =========================================================================== reading pixels


def _header(storage: Storage, url: str, ext: FitsExtension) -> Any:
    from astropy.io import fits

    raw = storage.read_range(url, ext.header_offset, ext.data_offset)
    return fits.Header.fromstring(raw.decode("ascii", errors="replace"))


_BITPIX = {8: ">u1", 16: ">i2", 32: ">i4", 64: ">i8", -32: ">f4", -64: ">f8"}


def _read_rows(
    storage: Storage, url: str, ext: FitsExtension, header: Any, window: CropWindow
) -> NDArray[Any]:
    """Rows ``y0 .. y1 - 1`` of an image extension (one ranged read), cropped to ``x0 .. x1``."""
    dtype = np.dtype(_BITPIX[int(header["BITPIX"])])
    naxis1 = int(header["NAXIS1"])
    start, end = window.row_byte_range(ext.data_offset, naxis1, dtype.itemsize)
    raw = storage.read_range(url, start, end)
    rows = np.frombuffer(raw, dtype=dtype).reshape(window.ny, naxis1)[:, window.x0 : window.x1]
    bscale = float(header.get("BSCALE", 1.0))
    bzero = float(header.get("BZERO", 0.0))
    if bscale != 1.0 or bzero != 0.0:
        return rows.astype(np.float64) * bscale + bzero
    return rows.astype(dtype.newbyteorder("="))


def _sigma_clipped_median(values: NDArray[Any], sigma: float = 3.0, iters: int = 5) -> float:
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return 0.0
    for _ in range(iters):
        med, std = np.median(v), v.std()
        keep = np.abs(v - med) < sigma * std
        if keep.all() or not keep.any():
            break
        v = v[keep]
    return float(np.median(v))


@dataclass
class _Exposure:
    """One quadrant exposure, cropped and scaled (numpy)."""

    key: str
    quadrant: str
    image: NDArray[np.float32]
    sigma: NDArray[np.float32]
    valid: BoolArray
    background: float
    positions: FloatArray  # (n_sel, 2) integer pixel positions given to SHINE (crop frame)
    visible: BoolArray  # (n_sel,)
    jacobians: FloatArray  # (n_sel, 4)
    psfs: FloatArray  # (n_sel, 21, 21)
    corners_sky: FloatArray  # (4, 2)
    span: tuple[int, int] = (0, 0)  # (ny, nx) of the crop before clipping to the quadrant


@dataclass
class _SubTileData:
    """What the model needs, before padding (numpy)."""

    exposures: list[_Exposure]
    object_ids: NDArray[np.int64]  # selected sources, SHINE slot order before padding
    ra: FloatArray
    dec: FloatArray
    flux_adu: FloatArray
    hlr: FloatArray
    tiers: NDArray[np.int64]
    n_rejected: int
    n_masked_invisible: int
    reference_magzerop: float
    reference_exptime: float


# =========================================================================== the backend


def _import_shine() -> Any:
    """Import ``shine.euclid`` (and check its pieces) or raise :class:`BackendUnavailableError`."""
    try:
        euclid = importlib.import_module("shine.euclid")
        for name in ("ExposureSet", "EuclidPSFModel", "MultiExposureScene"):
            getattr(euclid, name)
        importlib.import_module("shine.inference")
    except (ImportError, AttributeError) as exc:
        raise BackendUnavailableError(f"{INSTALL_HINT} (import failed: {exc})") from exc
    return euclid


def _shine_config(sections: Any, data: dict[str, Any]) -> Any:
    """SHINE's ``EuclidInferenceConfig`` from the pass-through ``sections`` (``inference``,
    ``gal``, ``sources``) and a ``data`` section."""
    from shine.euclid.config import EuclidInferenceConfig

    raw: dict[str, Any] = {"data": data, "inference": dict(sections.inference)}
    if sections.sources:
        raw["sources"] = dict(sections.sources)
    if sections.gal:
        raw["gal"] = dict(sections.gal)
    return EuclidInferenceConfig.model_validate(raw)


def _shine_version() -> str:
    for dist in ("shine-wl", "shine"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    module = importlib.import_module("shine")
    return str(getattr(module, "__version__", "unknown"))


class ShineBackend:
    """SHINE's Euclid model on one sub-tile, in-process (see the module docstring).

    Built once per process (:func:`constellation.inference.get_backend`); keeps
    the PSF grids it has read and the compiled MAP optimisers between sub-tiles.

    Raises
    ------
    BackendUnavailableError
        When ``shine.euclid`` cannot be imported (the message says how to install it)
        or the ``science.shine`` sections are not a valid SHINE configuration: either
        would fail every sub-tile the same way.
    """

    name = "shine"

    #: Image sides are padded up to a multiple of this (compile-cache buckets).
    shape_step = 128
    #: Per-tier source counts are padded up to a multiple of this.
    source_step = 16

    def __init__(self, science: ScienceConfig) -> None:
        self.science = science
        self._euclid = _import_shine()
        self.version = _shine_version()
        try:
            _shine_config(science.shine, {"exposure_paths": [], "psf_path": "", "catalog_path": ""})
        except Exception as exc:  # pydantic.ValidationError, kept generic
            raise BackendUnavailableError(
                f"science.shine is not a valid SHINE configuration: {exc}"
            ) from exc
        self._lock = threading.Lock()
        self._psf_cache: OrderedDict[tuple[str, int], Any] = OrderedDict()
        self._compiled: dict[tuple[Any, ...], Callable[..., Any]] = {}

    @property
    def device(self) -> str:
        """Where JAX computes in this process: ``cpu``, ``gpu`` or ``tpu``."""
        import jax

        return str(jax.default_backend())

    # ------------------------------------------------------------------ config

    def _config(self, manifest: SubTileManifest, manifest_url: str) -> Any:
        exposures = manifest.exposures
        data: dict[str, Any] = {
            # descriptive only: this backend reads the pixels itself
            "exposure_paths": [resolve_relative(manifest_url, e.det.uri) for e in exposures],
            "psf_path": next(
                (resolve_relative(manifest_url, e.psf.uri) for e in exposures if e.psf), ""
            ),
            "catalog_path": resolve_relative(manifest_url, manifest.sources.uri),
        }
        if exposures:
            data["quadrant"] = exposures[0].quadrant
        try:
            return _shine_config(manifest.shine, data)
        except Exception as exc:  # pydantic.ValidationError, kept generic
            raise SubTileDataError(f"invalid SHINE configuration in the manifest: {exc}") from exc

    # ------------------------------------------------------------------ loading

    def _psf_model(
        self, storage: Storage, url: str, ext: FitsExtension, naxis1: int, naxis2: int
    ) -> Any:
        key = (url, ext.data_offset)
        with self._lock:
            model = self._psf_cache.get(key)
            if model is not None:
                self._psf_cache.move_to_end(key)
                return model
        header = _header(storage, url, ext)
        shape = (int(header["NAXIS2"]), int(header["NAXIS1"]))
        dtype = np.dtype(_BITPIX[int(header["BITPIX"])])
        raw = storage.read_range(url, ext.data_offset, ext.data_offset + ext.data_bytes)
        data = np.frombuffer(raw, dtype=dtype).reshape(shape).astype(np.float32)
        grid = 9
        stamp = shape[0] // grid
        model = self._euclid.EuclidPSFModel(
            data, stamp_size=stamp, grid_nx=grid, grid_ny=grid, quad_nx=naxis1, quad_ny=naxis2
        )
        with self._lock:
            self._psf_cache[key] = model
            while len(self._psf_cache) > 256:
                self._psf_cache.popitem(last=False)
        return model

    def _load(self, item: SubTileInput, cfg: Any) -> _SubTileData:
        from astropy.wcs import WCS

        manifest, storage = item.manifest, item.storage
        table = item.sources
        if table.num_rows == 0:
            raise NothingToFitError("no sources", "the sub-tile has no sources")
        if not manifest.exposures:
            raise NothingToFitError("no exposures", "the sub-tile has no quadrant exposures")
        pixel_scale = float(cfg.data.pixel_scale)
        stamp_sizes = [int(s) for s in cfg.galaxy_stamp_sizes]
        selection = cfg.sources.model_dump()
        keep = select_sources(table, selection, max(stamp_sizes))
        ids = np.asarray(table.column("object_id").to_numpy(), dtype=np.int64)
        ra = np.asarray(table.column("right_ascension").to_numpy(), dtype=np.float64)
        dec = np.asarray(table.column("declination").to_numpy(), dtype=np.float64)
        hlr = hlr_arcsec(table, pixel_scale)
        tiers = stamp_tiers(hlr, stamp_sizes, pixel_scale)
        # SHINE's slot order: by tier, then object id
        sel = np.flatnonzero(keep)
        sel = sel[np.lexsort((ids[sel], tiers[sel]))]
        rej = np.flatnonzero(~keep)
        mask_radius = 3.0 * hlr / pixel_scale + PSF_HALF  # px, as SHINE's stamp sizing

        ref = manifest.exposures[0]
        scales = zeropoint_scales(
            [e.magzerop for e in manifest.exposures], [e.exptime for e in manifest.exposures]
        )
        flux = _column(table, "flux_detection_total")
        flux_ujy = flux[sel] if flux is not None else np.ones(sel.size)
        flux_adu = np.clip(
            np.nan_to_num(flux_ujy, nan=1.0) * flux_conversion(ref.magzerop, ref.exptime), 1.0, None
        )

        poly = manifest.geometry.extended_polygon
        # crops grow by half the second stamp tier (64 px by default), the same for
        # every sub-tile so that image shapes fall into the same buckets
        pad = stamp_sizes[min(1, len(stamp_sizes) - 1)] // 2
        exposures: list[_Exposure] = []
        n_masked_invisible = 0
        for j, qe in enumerate(manifest.exposures):
            loaded = self._load_exposure(
                storage,
                item.manifest_url,
                qe,
                WCS,
                poly_ra=np.asarray(poly.ra_deg),
                poly_dec=np.asarray(poly.dec_deg),
                pad=pad,
                scale=float(scales[j]),
                sel=sel,
                rej=rej,
                ra=ra,
                dec=dec,
                tiers=tiers,
                stamp_sizes=stamp_sizes,
                mask_radius=mask_radius,
                pixel_scale=pixel_scale,
                bad_pixel_mask=int(cfg.data.bad_pixel_mask),
            )
            if loaded is None:
                continue
            exp, n_inv = loaded
            n_masked_invisible += n_inv
            exposures.append(exp)
        if not exposures:
            raise NothingToFitError(
                "no valid pixels", "no exposure has valid pixels with a modelled source in it"
            )
        seen = np.zeros(sel.size, dtype=bool)
        for exp in exposures:
            seen |= exp.visible
        slots = np.flatnonzero(seen)
        if slots.size == 0:
            raise NothingToFitError("no visible source", "no selected source fits in any exposure")
        for exp in exposures:
            exp.positions = exp.positions[slots]
            exp.visible = exp.visible[slots]
            exp.jacobians = exp.jacobians[slots]
            exp.psfs = exp.psfs[slots]
        chosen = sel[slots]
        return _SubTileData(
            exposures=exposures,
            object_ids=ids[chosen],
            ra=ra[chosen],
            dec=dec[chosen],
            flux_adu=np.asarray(flux_adu[slots], dtype=np.float64),
            hlr=hlr[chosen],
            tiers=tiers[chosen],
            n_rejected=int(rej.size + (sel.size - slots.size)),
            n_masked_invisible=n_masked_invisible,
            reference_magzerop=ref.magzerop,
            reference_exptime=ref.exptime,
        )

    def _load_exposure(
        self,
        storage: Storage,
        manifest_url: str,
        qe: QuadrantExposure,
        wcs_class: Any,
        *,
        poly_ra: FloatArray,
        poly_dec: FloatArray,
        pad: int,
        scale: float,
        sel: NDArray[np.int64],
        rej: NDArray[np.int64],
        ra: FloatArray,
        dec: FloatArray,
        tiers: NDArray[np.int64],
        stamp_sizes: list[int],
        mask_radius: FloatArray,
        pixel_scale: float,
        bad_pixel_mask: int,
    ) -> tuple[_Exposure, int] | None:
        det_url = resolve_relative(manifest_url, qe.det.uri)
        sci_header = _header(storage, det_url, qe.det.sci)
        wcs = wcs_class(sci_header)
        vx, vy = wcs.all_world2pix(poly_ra, poly_dec, 0)
        window = crop_window(vx, vy, qe.naxis1, qe.naxis2, pad)
        if window is None:
            return None
        span = crop_span(vx, vy, pad, qe.naxis1, qe.naxis2)
        # noise first: a crop without a usable noise value has no valid pixel, and the
        # other extensions need not be read (unobserved or blank quadrant data)
        rms = _read_rows(
            storage, det_url, qe.det.rms, _header(storage, det_url, qe.det.rms), window
        )
        valid = np.isfinite(rms) & (rms > 0)
        if not valid.any():
            return None
        flg = _read_rows(
            storage, det_url, qe.det.flg, _header(storage, det_url, qe.det.flg), window
        )
        sci = _read_rows(storage, det_url, qe.det.sci, sci_header, window)
        shape = (window.ny, window.nx)
        valid &= ((flg.astype(np.int64) & bad_pixel_mask) == 0) & np.isfinite(sci)
        valid &= convex_polygon_mask(shape, window.x0, window.y0, vx, vy)
        if qe.bkg is not None:
            bkg_url = resolve_relative(manifest_url, qe.bkg.uri)
            bkg = _read_rows(
                storage,
                bkg_url,
                qe.bkg.extension,
                _header(storage, bkg_url, qe.bkg.extension),
                window,
            )
            image = sci.astype(np.float64) - bkg
            background = float(np.median(bkg[valid])) if valid.any() else 0.0
        else:
            background = _sigma_clipped_median(sci[valid])
            image = sci.astype(np.float64) - background

        # sources in this quadrant's crop frame
        sx, sy = wcs.all_world2pix(ra, dec, 0)
        sx = np.asarray(sx, dtype=np.float64) - window.x0
        sy = np.asarray(sy, dtype=np.float64) - window.y0
        n_sel = sel.size
        positions = np.zeros((n_sel, 2))
        visible = np.zeros(n_sel, dtype=bool)
        jac = np.tile(np.array([pixel_scale, 0.0, 0.0, pixel_scale]), (n_sel, 1))
        psfs = np.zeros((n_sel, 21, 21))
        psfs[:, 10, 10] = 1.0
        xi, yi = sx[sel], sy[sel]
        ok = np.isfinite(xi) & np.isfinite(yi)
        rx = np.where(ok, np.round(xi), 0.0)
        ry = np.where(ok, np.round(yi), 0.0)
        ss = np.array([stamp_sizes[int(t)] for t in tiers[sel]], dtype=np.int64)
        cx, cy = rx.astype(np.int64) - ss // 2, ry.astype(np.int64) - ss // 2
        fits_in = ok & (cx >= 0) & (cy >= 0) & (cx + ss <= window.nx) & (cy + ss <= window.ny)
        # the centre must fall on valid data of this quadrant
        centre_ok = np.zeros(n_sel, dtype=bool)
        inside = ok & (rx >= 0) & (rx < window.nx) & (ry >= 0) & (ry < window.ny)
        centre_ok[inside] = valid[ry[inside].astype(np.int64), rx[inside].astype(np.int64)]
        visible = fits_in & centre_ok
        # light of sources that are not modelled here: mask it
        touches = (
            ok
            & (xi + mask_radius[sel] >= 0)
            & (xi - mask_radius[sel] < window.nx)
            & (yi + mask_radius[sel] >= 0)
            & (yi - mask_radius[sel] < window.ny)
        )
        hide_sel = touches & ~visible
        hide = np.concatenate([sel[hide_sel], rej])
        if hide.size:
            valid &= ~disc_mask(shape, sx[hide], sy[hide], mask_radius[hide])
        if not visible.any() or not valid.any():
            return None
        vis = np.flatnonzero(visible)
        positions[vis, 0] = rx[vis]
        positions[vis, 1] = ry[vis]
        jac[vis] = local_jacobians(wcs, xi[vis] + window.x0, yi[vis] + window.y0)
        if qe.psf is None:
            raise SubTileDataError(f"exposure {qe.exposure} quadrant {qe.quadrant} has no PSF grid")
        psf_model = self._psf_model(
            storage,
            resolve_relative(manifest_url, qe.psf.uri),
            qe.psf.extension,
            qe.naxis1,
            qe.naxis2,
        )
        for i in vis:
            stamp = np.asarray(
                psf_model.interpolate_at(float(xi[i] + window.x0), float(yi[i] + window.y0))
            )
            # SHINE draws the profile at round(pos) - ss//2 + (ss - 1)/2
            s = int(ss[i])
            centre_x = rx[i] - s // 2 + (s - 1) / 2.0
            centre_y = ry[i] - s // 2 + (s - 1) / 2.0
            psfs[i] = psf_for_shine(
                stamp, jac[i], (float(xi[i] - centre_x), float(yi[i] - centre_y)), pixel_scale
            )
        corners_x = np.array([0, window.nx - 1, window.nx - 1, 0], dtype=np.float64) + window.x0
        corners_y = np.array([0, 0, window.ny - 1, window.ny - 1], dtype=np.float64) + window.y0
        cra, cdec = wcs.all_pix2world(corners_x, corners_y, 0)
        sigma = np.where(valid, rms.astype(np.float64) * scale, MASKED_SIGMA)
        image = np.where(valid, image * scale, 0.0)
        return (
            _Exposure(
                key=qe.exposure,
                quadrant=qe.quadrant,
                image=image.astype(np.float32),
                sigma=sigma.astype(np.float32),
                valid=valid,
                background=background * scale,
                positions=positions,
                visible=visible,
                jacobians=jac,
                psfs=psfs,
                corners_sky=np.stack([np.asarray(cra), np.asarray(cdec)], axis=1),
                span=span,
            ),
            int(hide_sel.sum()),
        )

    # ------------------------------------------------------------------ ExposureSet

    def _exposure_set(
        self, data: _SubTileData, n_tiers: int, pad_sources: bool
    ) -> tuple[Any, NDArray[np.int64], tuple[int, ...]]:
        """SHINE's ExposureSet (numpy arrays) and the slot of each real source.

        With ``pad_sources`` each tier's source count and the image shape are
        padded to buckets (padded sources are invisible everywhere).
        """
        exps = data.exposures
        ny = max(e.image.shape[0] for e in exps)
        nx = max(e.image.shape[1] for e in exps)
        if pad_sources:
            # from the unclipped crops (at most a quadrant): the same for every sub-tile
            # of a tile, even where the quadrant edges cut the crops differently
            ny = max(ny, *(e.span[0] for e in exps))
            nx = max(nx, *(e.span[1] for e in exps))
            ny, nx = bucket(ny, self.shape_step), bucket(nx, self.shape_step)
        n_exp = len(exps)
        counts = [int((data.tiers == t).sum()) for t in range(n_tiers)]
        padded = [source_bucket(c, self.source_step) if pad_sources else c for c in counts]
        n_slots = sum(padded)
        slot_of = np.zeros(data.object_ids.size, dtype=np.int64)
        tier_arr = np.zeros(n_slots, dtype=np.int32)
        start = 0
        src = 0
        for t in range(n_tiers):
            tier_arr[start : start + padded[t]] = t
            slot_of[src : src + counts[t]] = np.arange(start, start + counts[t])
            start += padded[t]
            src += counts[t]
        images = np.zeros((n_exp, ny, nx), dtype=np.float32)
        sigma = np.full((n_exp, ny, nx), MASKED_SIGMA, dtype=np.float32)
        masks = np.zeros((n_exp, ny, nx), dtype=bool)
        pos = np.zeros((n_slots, n_exp, 2))
        jac = np.tile(np.array([0.1, 0.0, 0.0, 0.1]), (n_slots, n_exp, 1))
        psf = np.zeros((n_slots, n_exp, 21, 21))
        psf[:, :, 10, 10] = 1.0
        vis = np.zeros((n_slots, n_exp), dtype=bool)
        for j, e in enumerate(exps):
            h, w = e.image.shape
            images[j, :h, :w] = e.image
            sigma[j, :h, :w] = e.sigma
            masks[j, :h, :w] = e.valid
            pos[slot_of, j] = e.positions
            jac[slot_of, j] = e.jacobians
            psf[slot_of, j] = e.psfs
            vis[slot_of, j] = e.visible
        flux = np.ones(n_slots)
        flux[slot_of] = data.flux_adu
        hlr = np.full(n_slots, 0.5)
        hlr[slot_of] = data.hlr
        ras = np.zeros(n_slots)
        ras[slot_of] = data.ra
        decs = np.zeros(n_slots)
        decs[slot_of] = data.dec
        ids = [-1] * n_slots
        for i, s in enumerate(slot_of):
            ids[int(s)] = int(data.object_ids[i])
        eset = self._euclid.ExposureSet(
            images=images,
            noise_sigma=sigma,
            masks=masks,
            flag_maps=np.zeros((n_exp, 1, 1), dtype=np.int32),
            backgrounds=np.array([e.background for e in exps], dtype=np.float32),
            pixel_positions=pos.astype(np.float32),
            wcs_jacobians=jac.astype(np.float32),
            psf_images=psf.astype(np.float32),
            source_visible=vis,
            catalog_flux_adu=flux.astype(np.float32),
            catalog_hlr_arcsec=hlr.astype(np.float32),
            catalog_ra=ras,
            catalog_dec=decs,
            source_stamp_tier=tier_arr,
            exposure_corners_sky=np.stack([e.corners_sky for e in exps]),
            source_ids=ids,
            n_exposures=n_exp,
            n_sources=n_slots,
            image_ny=ny,
            image_nx=nx,
        )
        return eset, slot_of, tuple(padded)

    def _to_jax(self, eset: Any) -> Any:
        import dataclasses

        import jax.numpy as jnp

        arrays = {
            f: jnp.asarray(getattr(eset, f))
            for f in (
                "images",
                "noise_sigma",
                "masks",
                "backgrounds",
                "pixel_positions",
                "wcs_jacobians",
                "psf_images",
                "source_visible",
                "catalog_flux_adu",
                "catalog_hlr_arcsec",
            )
        }
        return dataclasses.replace(eset, **arrays)

    # ------------------------------------------------------------------ MAP (cached)

    _TRACED = (
        "images",
        "noise_sigma",
        "pixel_positions",
        "wcs_jacobians",
        "psf_images",
        "source_visible",
        "catalog_flux_adu",
        "catalog_hlr_arcsec",
    )

    def _map_fn(self, cfg: Any, eset: Any, tiers: tuple[int, ...], num_steps: int) -> Any:
        """The compiled MAP optimiser for this bucket (built on first use)."""
        key = (
            eset.n_exposures,
            eset.image_ny,
            eset.image_nx,
            tiers,
            num_steps,
            cfg.model_dump_json(include={"gal", "galaxy_stamp_sizes"}),
            float(cfg.data.pixel_scale),
        )
        with self._lock:
            fn = self._compiled.get(key)
        if fn is not None:
            return fn
        fn = self._build_map_fn(cfg, eset, num_steps)
        with self._lock:
            self._compiled[key] = fn
        return fn

    def _build_map_fn(self, cfg: Any, template: Any, num_steps: int) -> Any:
        import dataclasses

        import jax
        import numpyro
        from numpyro import handlers
        from numpyro.distributions.transforms import biject_to
        from numpyro.infer.util import log_density

        euclid = self._euclid
        static = {
            "source_stamp_tier": np.asarray(template.source_stamp_tier),
            "n_exposures": template.n_exposures,
            "n_sources": template.n_sources,
            "image_ny": template.image_ny,
            "image_nx": template.image_nx,
        }
        traced_names = self._TRACED

        n_exp = int(template.n_exposures)

        def run(arrays: dict[str, Any], init: dict[str, Any], lr: Any) -> Any:
            scene = euclid.MultiExposureScene(
                cfg, dataclasses.replace(template, **static, **arrays)
            )
            model = scene.build_model()
            singles = [scene.build_single_exposure_model(j) for j in range(n_exp)]
            images = arrays["images"]
            kwargs = {"observed_data": images}
            priors_only = handlers.block(model, hide_fn=lambda site: site["name"].startswith("obs"))
            seeded = handlers.seed(handlers.substitute(model, data=init), rng_seed=0)
            trace = handlers.trace(seeded).get_trace(observed_data=images)
            transforms = {
                name: biject_to(site["fn"].support)
                for name, site in trace.items()
                if site["type"] == "sample" and not site["is_observed"]
            }
            u0 = {k: transforms[k].inv(init[k]) for k in transforms}

            def constrain(u: dict[str, Any]) -> dict[str, Any]:
                return {k: transforms[k](v) for k, v in u.items()}

            def log_prior(z: dict[str, Any]) -> Any:
                return log_density(priors_only, (), kwargs, z)[0]

            def exposure_terms(j: int) -> Any:
                # prior + likelihood of exposure j; rematerialised in the backward
                # pass so that one exposure's intermediates are alive at a time
                return jax.checkpoint(lambda z: log_density(singles[j], (), kwargs, z)[0])

            terms = [exposure_terms(j) for j in range(n_exp)]

            def loss(u: dict[str, Any]) -> Any:
                z = constrain(u)
                total = sum((term(z) for term in terms), -(n_exp - 1) * log_prior(z))
                return -total

            opt = numpyro.optim.Adam(step_size=lr)
            state = opt.init(u0)

            def body(state: Any, _: Any) -> Any:
                u = opt.get_params(state)
                value, grads = jax.value_and_grad(loss)(u)
                z = constrain(u)
                return opt.update(grads, state), (value, z["g1"], z["g2"])

            state, (losses, g1s, g2s) = jax.lax.scan(body, state, None, length=num_steps)
            final = constrain(opt.get_params(state))
            return final, losses, g1s, g2s, loss(opt.get_params(state))

        jitted = jax.jit(run)

        def call(eset: Any, init: dict[str, Any], lr: float) -> Any:
            arrays = {name: getattr(eset, name) for name in traced_names}
            return jitted(arrays, init, lr)

        call.jitted = jitted  # type: ignore[attr-defined]  # for inspection (memory analysis)
        return call

    def _init_values(self, cfg: Any, eset: Any) -> dict[str, Any]:
        """Catalog start: flux, hlr from the catalog, shapes, offsets and shear 0."""
        import jax.numpy as jnp

        n = eset.n_sources
        init: dict[str, Any] = {
            "g1": jnp.asarray(0.0, dtype=jnp.float32),
            "g2": jnp.asarray(0.0, dtype=jnp.float32),
            "flux": jnp.asarray(eset.catalog_flux_adu, dtype=jnp.float32),
            "hlr": jnp.asarray(eset.catalog_hlr_arcsec, dtype=jnp.float32),
        }
        gal = cfg.gal
        if gal.ellipticity is not None:
            init["e1"] = jnp.zeros(n, dtype=jnp.float32)
            init["e2"] = jnp.zeros(n, dtype=jnp.float32)
        if gal.position is not None and gal.position.type == "Offset":
            init["dx"] = jnp.zeros(n, dtype=jnp.float32)
            init["dy"] = jnp.zeros(n, dtype=jnp.float32)
        # only sites that are sampled (fixed numbers in the config are constants)
        sampled = {
            "g1": gal.shear.g1,
            "g2": gal.shear.g2,
            "flux": gal.flux,
            "hlr": gal.half_light_radius,
            "e1": gal.ellipticity.e1 if gal.ellipticity is not None else 0.0,
            "e2": gal.ellipticity.e2 if gal.ellipticity is not None else 0.0,
            "dx": getattr(gal.position, "dx", 0.0) if gal.position is not None else 0.0,
            "dy": getattr(gal.position, "dy", 0.0) if gal.position is not None else 0.0,
        }
        return {k: v for k, v in init.items() if not isinstance(sampled[k], int | float)}

    def _run_map(
        self, cfg: Any, eset: Any, tiers: tuple[int, ...], num_steps: int, lr: float
    ) -> tuple[dict[str, NDArray[Any]], FloatArray, FloatArray, FloatArray, float]:
        fn = self._map_fn(cfg, eset, tiers, num_steps)
        jeset = self._to_jax(eset)
        final, losses, g1s, g2s, last = fn(jeset, self._init_values(cfg, eset), lr)
        point = {k: np.asarray(v) for k, v in final.items()}
        return (
            point,
            np.asarray(losses, dtype=np.float64),
            np.asarray(g1s, dtype=np.float64),
            np.asarray(g2s, dtype=np.float64),
            float(last),
        )

    # ------------------------------------------------------------------ run

    def run(self, item: SubTileInput) -> BackendOutput:
        """Fit one sub-tile (see the module docstring); raise on failure."""
        t0 = time.perf_counter()
        cfg = self._config(item.manifest, item.manifest_url)
        data = self._load(item, cfg)
        t_load = time.perf_counter() - t0
        method = str(cfg.inference.method)
        n_tiers = len(cfg.galaxy_stamp_sizes)
        t1 = time.perf_counter()
        extras: dict[str, float] = {
            "n_sources_rejected": float(data.n_rejected),
            "n_source_exposures_masked": float(data.n_masked_invisible),
            "n_quadrants_used": float(len({e.quadrant for e in data.exposures})),
            "reference_magzerop": data.reference_magzerop,
            "reference_exptime": data.reference_exptime,
        }
        convergence: float | None = None
        convergence_kind: str | None = None
        if method == "map":
            map_cfg = cfg.inference.map_config
            steps = int(map_cfg.num_steps) if map_cfg is not None else 1000
            lr = float(map_cfg.learning_rate) if map_cfg is not None else 1e-2
            eset, slot_of, tiers = self._exposure_set(data, n_tiers, pad_sources=True)
            point, losses, g1s, g2s, last = self._run_map(cfg, eset, tiers, steps, lr)
            posterior = {k: v[None, None, ...] for k, v in point.items()}
            summary = summarize_posterior(posterior, data.object_ids, slot_of, with_errors=False)
            convergence = shear_drift(g1s, g2s)
            convergence_kind = "map_shear_drift"
            extras["map_final_loss"] = last
            if losses.size > 1:
                k = max(1, round(losses.size * 0.1))
                extras["map_loss_rel_change"] = float(
                    (losses[-1 - k] - losses[-1]) / max(abs(losses[-1]), 1e-30)
                )
            for t, count in enumerate(tiers):
                extras[f"tier{t}_slots"] = float(count)
            extras["image_ny"] = float(eset.image_ny)
            extras["image_nx"] = float(eset.image_nx)
        elif method in ("vi", "nuts"):
            summary, convergence, convergence_kind = self._run_sampler(
                cfg, data, n_tiers, method, extras
            )
        else:  # SHINE's config validation refuses other methods
            raise SubTileDataError(f"unsupported SHINE inference method {method!r}")
        t_infer = time.perf_counter() - t1
        if not (math.isfinite(summary.g1) and math.isfinite(summary.g2)):
            raise NonFiniteFitError(
                f"the {method} fit gave a non-finite shear (g1={summary.g1}, g2={summary.g2})"
            )
        return BackendOutput(
            g1=summary.g1,
            g2=summary.g2,
            g1_err=summary.g1_err,
            g2_err=summary.g2_err,
            g1_g2_cov=summary.g1_g2_cov,
            method=method,
            n_sources_modelled=int(data.object_ids.size),
            sources=summary.sources,
            convergence=convergence,
            convergence_kind=convergence_kind,
            n_exposures=len(data.exposures),
            t_load_s=t_load,
            t_infer_s=t_infer,
            extras=extras,
        )

    def _run_sampler(
        self, cfg: Any, data: _SubTileData, n_tiers: int, method: str, extras: dict[str, float]
    ) -> tuple[PosteriorSummary, float | None, str | None]:
        import jax
        from shine.inference import Inference

        eset, slot_of, _ = self._exposure_set(data, n_tiers, pad_sources=False)
        jeset = self._to_jax(eset)
        model = self._euclid.MultiExposureScene(cfg, jeset).build_model()
        inference = Inference(model, cfg.inference)
        key = jax.random.PRNGKey(int(cfg.inference.rng_seed))
        if method == "vi":
            idata = inference.run(key, observed_data=jeset.images)
            posterior = _posterior_arrays(idata)
            loss = idata.posterior.attrs.get("vi_final_loss")
            summary = summarize_posterior(posterior, data.object_ids, slot_of, with_errors=True)
            return summary, (float(loss) if loss is not None else None), "vi_final_loss"
        nuts = cfg.inference.nuts_config
        init = None
        if nuts is not None and nuts.map_init is not None and nuts.map_init.enabled:
            # SHINE's own MAP start ignores the catalog; start from ours instead
            peset, pslot, ptiers = self._exposure_set(data, n_tiers, pad_sources=True)
            point, _, _, _, _ = self._run_map(
                cfg, peset, ptiers, int(nuts.map_init.num_steps), float(nuts.map_init.learning_rate)
            )
            init = {
                k: (v[..., pslot] if np.ndim(v) >= 1 and v.shape[-1] == peset.n_sources else v)
                for k, v in point.items()
            }
        else:
            init = {k: np.asarray(v) for k, v in self._init_values(cfg, eset).items()}
        idata = inference.run_mcmc(key, jeset.images, init_params=init)
        posterior = _posterior_arrays(idata)
        summary = summarize_posterior(posterior, data.object_ids, slot_of, with_errors=True)
        rhat = max(split_rhat(_chains(posterior["g1"])), split_rhat(_chains(posterior["g2"])))
        return summary, rhat, "r_hat"


def _chains(value: NDArray[Any]) -> NDArray[np.float64]:
    a = np.asarray(value, dtype=np.float64)
    return a.reshape(a.shape[0], a.shape[1])


def _posterior_arrays(idata: Any) -> dict[str, NDArray[Any]]:
    post = idata.posterior
    return {str(name): np.asarray(post[name].values) for name in post.data_vars}


def read_sources(storage: Storage, manifest: SubTileManifest, manifest_url: str) -> pa.Table:
    """The sub-tile source table of a manifest (a convenience for scripts)."""
    url = resolve_relative(manifest_url, manifest.sources.uri)
    return pq.read_table(io.BytesIO(storage.read_bytes(url)))
