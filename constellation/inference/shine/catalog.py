"""The catalog side of the bridge: photometric scales, sizes, stamp tiers and SHINE's
source selection, on the sub-tile source table (pure numpy / pyarrow)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
from numpy.typing import NDArray

from constellation.inference.shine.geometry import PSF_HALF, BoolArray, FloatArray

__all__ = [
    "column",
    "flux_conversion",
    "hlr_arcsec",
    "select_sources",
    "stamp_tiers",
    "zeropoint_scales",
]

#: AB magnitude of 1 uJy.
_AB_UJY = 23.9


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


def column(table: pa.Table, name: str) -> NDArray[Any] | None:
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
    sma = column(table, "semimajor_axis")
    if sma is not None:
        out = sma * pixel_scale
    fwhm = column(table, "fwhm")
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
    flux = column(table, "flux_detection_total")
    ferr = column(table, "fluxerr_detection_total")
    snr = None
    if flux is not None and ferr is not None:
        with np.errstate(divide="ignore", invalid="ignore"):
            snr = flux / ferr
        keep &= np.nan_to_num(snr, nan=-np.inf) >= float(selection.get("min_snr", 10.0))

    def flag(name: str) -> NDArray[np.float64] | None:
        return column(table, name)

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
    sma = column(table, "semimajor_axis")
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
