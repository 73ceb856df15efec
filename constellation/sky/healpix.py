"""HEALPix helpers: the only module that imports healpy.

Conventions (as HATS): NESTED scheme; every source carries one index at a
fine order (:data:`SOURCE_ORDER` = 29); the pixel at a coarser order is a bit
shift of it, so data sorted by the fine index is sorted at every order and a
region is a set of contiguous index ranges.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "MAX_ORDER",
    "SOURCE_ORDER",
    "coarsen",
    "disc_ranges",
    "in_ranges",
    "nside",
    "pixel_ranges",
    "polygon_ranges",
    "radec_to_index",
    "select_sorted",
]

#: Finest order healpy supports (nside = 2**29).
MAX_ORDER = 29
#: Order of the per-source index (~0.4 mas pixels), as in HATS.
SOURCE_ORDER = 29


def _check_order(order: int) -> None:
    if not 0 <= order <= MAX_ORDER:
        raise ValueError(f"HEALPix order must be in [0, {MAX_ORDER}], got {order}")


def nside(order: int) -> int:
    """``nside = 2**order``."""
    _check_order(order)
    return 1 << order


def radec_to_index(
    ra_deg: ArrayLike, dec_deg: ArrayLike, order: int = SOURCE_ORDER
) -> NDArray[np.int64]:
    """NESTED pixel index (int64) of sky positions at ``order``."""
    import healpy as hp

    ra = np.asarray(ra_deg, dtype=np.float64)
    dec = np.asarray(dec_deg, dtype=np.float64)
    pix = hp.ang2pix(nside(order), ra, dec, nest=True, lonlat=True)
    return np.asarray(pix, dtype=np.int64)


def coarsen(index: ArrayLike, from_order: int, to_order: int) -> NDArray[np.int64]:
    """Parent pixel at ``to_order`` of NESTED indices at ``from_order`` (a bit shift)."""
    _check_order(from_order)
    _check_order(to_order)
    if to_order > from_order:
        raise ValueError(f"cannot coarsen from order {from_order} to finer order {to_order}")
    return np.asarray(index, dtype=np.int64) >> (2 * (from_order - to_order))


def pixel_ranges(
    pixels: ArrayLike, order: int, target_order: int = SOURCE_ORDER
) -> NDArray[np.int64]:
    """Pixels at ``order`` as merged half-open index ranges at ``target_order``.

    Returns an ``(k, 2)`` int64 array of ``[start, stop)`` rows, sorted and
    non-overlapping, adjacent ranges merged.
    """
    _check_order(order)
    _check_order(target_order)
    if target_order < order:
        raise ValueError(f"target_order {target_order} is coarser than order {order}")
    p = np.unique(np.asarray(pixels, dtype=np.int64))
    if p.size == 0:
        return np.empty((0, 2), dtype=np.int64)
    shift = 2 * (target_order - order)
    # break where consecutive pixels are not adjacent
    breaks = np.flatnonzero(np.diff(p) != 1) + 1
    first = np.concatenate([p[:1], p[breaks]])
    last = np.concatenate([p[breaks - 1], p[-1:]])
    return np.stack([first << shift, (last + 1) << shift], axis=1)


def _unit_vectors(ra_deg: ArrayLike, dec_deg: ArrayLike) -> NDArray[np.float64]:
    ra = np.radians(np.asarray(ra_deg, dtype=np.float64))
    dec = np.radians(np.asarray(dec_deg, dtype=np.float64))
    c = np.cos(dec)
    return np.stack([c * np.cos(ra), c * np.sin(ra), np.sin(dec)], axis=-1)


def polygon_pixels(ra_deg: ArrayLike, dec_deg: ArrayLike, order: int) -> NDArray[np.int64]:
    """Pixels at ``order`` that touch a convex great-circle polygon (conservative)."""
    import healpy as hp

    vecs = _unit_vectors(ra_deg, dec_deg)
    pix = hp.query_polygon(nside(order), vecs, inclusive=True, nest=True)
    return np.asarray(pix, dtype=np.int64)


def polygon_ranges(
    ra_deg: ArrayLike, dec_deg: ArrayLike, order: int, target_order: int = SOURCE_ORDER
) -> NDArray[np.int64]:
    """Index ranges at ``target_order`` covering a convex polygon (conservative at ``order``)."""
    return pixel_ranges(polygon_pixels(ra_deg, dec_deg, order), order, target_order)


def disc_pixels(ra_deg: float, dec_deg: float, radius_deg: float, order: int) -> NDArray[np.int64]:
    """Pixels at ``order`` that touch a disc (conservative)."""
    import healpy as hp

    vec = _unit_vectors(ra_deg, dec_deg)
    pix = hp.query_disc(nside(order), vec, np.radians(radius_deg), inclusive=True, nest=True)
    return np.asarray(pix, dtype=np.int64)


def disc_ranges(
    ra_deg: float, dec_deg: float, radius_deg: float, order: int, target_order: int = SOURCE_ORDER
) -> NDArray[np.int64]:
    """Index ranges at ``target_order`` covering a disc (conservative at ``order``)."""
    return pixel_ranges(disc_pixels(ra_deg, dec_deg, radius_deg, order), order, target_order)


def in_ranges(index: ArrayLike, ranges: NDArray[np.int64]) -> NDArray[np.bool_]:
    """Membership of (unsorted) indices in sorted, disjoint ``[start, stop)`` ranges."""
    idx = np.asarray(index, dtype=np.int64)
    if ranges.size == 0:
        return np.zeros(idx.shape, dtype=bool)
    k = np.searchsorted(ranges[:, 0], idx, side="right") - 1
    kk = np.clip(k, 0, None)
    return np.asarray((k >= 0) & (idx < ranges[kk, 1]), dtype=bool)


def select_sorted(sorted_index: ArrayLike, ranges: NDArray[np.int64]) -> NDArray[np.int64]:
    """Positions in an index array sorted ascending that fall in ``ranges``.

    The fast path for HEALPix-sorted data: two binary searches per range,
    then the concatenated slices, without scanning the data.
    """
    s = np.asarray(sorted_index, dtype=np.int64)
    if ranges.size == 0:
        return np.empty(0, dtype=np.int64)
    starts = np.searchsorted(s, ranges[:, 0], side="left")
    stops = np.searchsorted(s, ranges[:, 1], side="left")
    keep = stops > starts
    if not keep.any():
        return np.empty(0, dtype=np.int64)
    return np.concatenate(
        [np.arange(a, b, dtype=np.int64) for a, b in zip(starts[keep], stops[keep], strict=True)]
    )
