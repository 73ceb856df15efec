"""Compiled array kernels of :mod:`constellation.sky` (numba).

This module is private and imported lazily by the public functions, so that
importing the package (or running ``constellation --help``) never pays numba's
import and compilation cost.

Conventions shared by every kernel
----------------------------------
* Angles come in degrees (float64); tangent-plane coordinates go out in arcmin.
* The tangent plane is the gnomonic (TAN) projection at ``(ra0, dec0)`` with
  ``x`` pointing **west** and ``y`` pointing **north**: a picture of the plane
  with ``x`` to the right has north up and east left, like the MER mosaics
  (whose CD1_1 is negative). ``x`` is also SHINE's ``u = -RA cos(dec)`` axis.
* Points on or behind the plane's horizon (angular distance >= 90 deg) get
  ``x = y = nan`` from :func:`project` and are outside every box.

Why a series expansion: ``sin``/``cos`` through libm cost ~25 ns per point and
block SIMD vectorisation. Offsets from the tangent point are small for nearly
every point that matters, so the kernels evaluate ``sin``/``cos`` of the RA and
Dec offsets with their Taylor series (truncation error below 1e-20 for offsets
up to 0.25 rad), branch-free so that LLVM vectorises the loop (~2 ns/point),
then redo the rare points with larger offsets exactly through libm.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_DEG = np.pi / 180.0
_RAD_TO_ARCMIN = 180.0 * 60.0 / np.pi
#: Offsets (radians) below which the series are used; beyond, libm.
_SERIES_LIMIT_RAD = 0.25
#: cos(distance) at or below which a point counts as on or behind the horizon.
_HORIZON = 1e-10
_FASTMATH = {"contract", "arcp", "nsz"}  # no reassociation: results stay reproducible


@njit(inline="always", fastmath=_FASTMATH)
def _sin_series(a: float) -> float:  # pragma: no cover - compiled
    a2 = a * a
    return a * (
        1.0
        - a2
        / 6.0
        * (
            1.0
            - a2
            / 20.0
            * (1.0 - a2 / 42.0 * (1.0 - a2 / 72.0 * (1.0 - a2 / 110.0 * (1.0 - a2 / 156.0))))
        )
    )


@njit(inline="always", fastmath=_FASTMATH)
def _cos_series(a: float) -> float:  # pragma: no cover - compiled
    a2 = a * a
    return 1.0 - a2 / 2.0 * (
        1.0
        - a2 / 12.0 * (1.0 - a2 / 30.0 * (1.0 - a2 / 56.0 * (1.0 - a2 / 90.0 * (1.0 - a2 / 132.0))))
    )


@njit(inline="always")
def _wrap_deg(a: float) -> float:  # pragma: no cover - compiled
    """Wrap an angle difference in degrees into [-180, 180)."""
    return a - 360.0 * np.floor((a + 180.0) / 360.0)


@njit(fastmath=_FASTMATH, cache=True, nogil=True, error_model="numpy")
def _project_series(
    ra: np.ndarray,
    dec: np.ndarray,
    start: int,
    stop: int,
    s0: float,
    c0: float,
    dec0: float,
    ra0: float,
    x: np.ndarray,
    y: np.ndarray,
) -> None:  # pragma: no cover - compiled
    for i in range(start, stop):
        a = _wrap_deg(ra[i] - ra0) * _DEG
        dd = (dec[i] - dec0) * _DEG
        sa = _sin_series(a)
        ca = _cos_series(a)
        sdd = _sin_series(dd)
        cdd = _cos_series(dd)
        sd = s0 * cdd + c0 * sdd
        cd = c0 * cdd - s0 * sdd
        inv = _RAD_TO_ARCMIN / (s0 * sd + c0 * cd * ca)
        x[i - start] = -cd * sa * inv
        y[i - start] = (c0 * sd - s0 * cd * ca) * inv


@njit(cache=True, nogil=True, error_model="numpy")
def _project_fixup(
    ra: np.ndarray,
    dec: np.ndarray,
    start: int,
    stop: int,
    s0: float,
    c0: float,
    dec0: float,
    ra0: float,
    x: np.ndarray,
    y: np.ndarray,
) -> None:  # pragma: no cover - compiled
    """Redo exactly (libm) the points whose offsets exceed the series range."""
    for i in range(start, stop):
        a = _wrap_deg(ra[i] - ra0) * _DEG
        dd = (dec[i] - dec0) * _DEG
        big = abs(a) > _SERIES_LIMIT_RAD or abs(dd) > _SERIES_LIMIT_RAD
        if big or not (np.isfinite(a) and np.isfinite(dd)):
            d = dec[i] * _DEG
            sd = np.sin(d)
            cd = np.cos(d)
            sa = np.sin(a)
            ca = np.cos(a)
            cc = s0 * sd + c0 * cd * ca
            j = i - start
            if cc > _HORIZON:
                inv = _RAD_TO_ARCMIN / cc
                x[j] = -cd * sa * inv
                y[j] = (c0 * sd - s0 * cd * ca) * inv
            else:
                x[j] = np.nan
                y[j] = np.nan


@njit(cache=True, nogil=True, error_model="numpy")
def project_block(
    ra: np.ndarray,
    dec: np.ndarray,
    start: int,
    stop: int,
    ra0: float,
    dec0: float,
    x: np.ndarray,
    y: np.ndarray,
) -> None:  # pragma: no cover - compiled
    """Project ``ra[start:stop], dec[start:stop]`` into ``x[:n], y[:n]`` (arcmin)."""
    s0 = np.sin(dec0 * _DEG)
    c0 = np.cos(dec0 * _DEG)
    _project_series(ra, dec, start, stop, s0, c0, dec0, ra0, x, y)
    _project_fixup(ra, dec, start, stop, s0, c0, dec0, ra0, x, y)


_BLOCK = 4096


@njit(cache=True, nogil=True, error_model="numpy")
def project(
    ra: np.ndarray, dec: np.ndarray, ra0: float, dec0: float
) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover - compiled
    """Gnomonic projection of whole arrays (see module conventions)."""
    n = ra.size
    x = np.empty(n)
    y = np.empty(n)
    project_block(ra, dec, 0, n, ra0, dec0, x, y)
    return x, y


@njit(inline="always")
def _edge(k: int, half: float, w: float, n: int) -> float:  # pragma: no cover - compiled
    """Cell edge ``k`` of ``n`` cells of width ``w`` across ``[-half, half]``.

    Bit-identical to :func:`constellation.sky.tiling.grid_edges` (the same
    IEEE operations in the same order; the kernels are compiled without
    fast-math, so nothing is contracted into an FMA or reassociated).
    """
    return half if k >= n else -half + float(k) * w


@njit(inline="always")
def _axis_cells(
    v: float, half: float, w: float, inv_w: float, n: int, m: float
) -> tuple[int, int, int]:  # pragma: no cover - compiled
    """Core cell (clamped) and extended range ``[k_lo, k_hi]`` of one coordinate.

    The arithmetic guess is off by at most one cell; comparing with the exact
    edges (recomputed, not gathered, so that the calling loop vectorises)
    makes the result agree to the bit with the half-open boxes of
    :class:`constellation.sky.tiling.SubTile`. ``v`` must not be nan.
    """
    # core: the cell holding v, clamped into [0, n-1]
    k = int(min(max(np.floor((v + half) * inv_w), 0.0), n - 1.0))
    k -= (k > 0) & (v < _edge(k, half, w, n))
    k += (k < n - 1) & (v >= _edge(k + 1, half, w, n))
    # k_lo = number of boxes whose upper edge edge(j+1) + m is <= v
    a = int(min(max(np.floor((v - m + half) * inv_w), 0.0), float(n)))
    a += (a < n) & (_edge(a + 1, half, w, n) + m <= v)
    a -= (a > 0) & (_edge(a, half, w, n) + m > v)
    # k_hi + 1 = number of boxes whose lower edge edge(j) - m is <= v
    b = int(min(max(np.floor((v + m + half) * inv_w) + 1.0, 0.0), float(n)))
    b += (b < n) & (_edge(b, half, w, n) - m <= v)
    b -= (b > 0) & (_edge(b - 1, half, w, n) - m > v)
    return k, a, b - 1


@njit(cache=True, nogil=True, error_model="numpy")
def _codes_block(
    xb: np.ndarray,
    yb: np.ndarray,
    count: int,
    size: float,
    n_cols: int,
    n_rows: int,
    m: float,
    span_x: int,
    span_y: int,
    core_out: np.ndarray,
    code_out: np.ndarray,
) -> int:  # pragma: no cover - compiled
    """Core cell and extended code of ``count`` projected points; returns #outside core."""
    half = 0.5 * size
    wx, wy = size / n_cols, size / n_rows
    inv_wx, inv_wy = n_cols / size, n_rows / size
    n_ry = n_rows * (span_y + 1) + 1
    empty = (n_cols * (span_x + 1) + 1) * n_ry - 1
    outside = 0
    for j in range(count):
        xv = xb[j]
        yv = yb[j]
        bad = np.isnan(xv) | np.isnan(yv)
        xs = 1e300 if bad else xv
        ys = 1e300 if bad else yv
        cx, ax, bx = _axis_cells(xs, half, wx, inv_wx, n_cols, m)
        cy, ay, by = _axis_cells(ys, half, wy, inv_wy, n_rows, m)
        inside = (-half <= xs) & (xs < half) & (-half <= ys) & (ys < half)
        outside += 1 - inside
        core_out[j] = cy * n_cols + cx
        ok = (ax <= bx) & (ay <= by)
        code = (ax * (span_x + 1) + (bx - ax)) * n_ry + ay * (span_y + 1) + (by - ay)
        code_out[j] = code if ok else empty
    return outside


def _scratch_layout() -> tuple[int, int, int, int, int]:
    """Offsets (in 8-byte words) of the four block buffers inside one scratch array.

    The hot loop reads two float64 streams and writes two int32 streams. When
    such streams sit at unlucky relative addresses (modulo the 4 KiB page),
    loads falsely wait on unrelated stores and the loop runs ~3.5x slower (seen
    here, decided by where the allocator happened to put the arrays). Keeping
    all four streams in one buffer, at fixed staggered offsets, makes the speed
    the same in every process.
    """
    x = 0
    y = x + _BLOCK + 40
    c = y + _BLOCK + 88
    k = c + _BLOCK // 2 + 136
    return x, y, c, k, k + _BLOCK // 2 + 8


_SCRATCH = _scratch_layout()


@njit(cache=True, nogil=True, error_model="numpy")
def bin_points(
    ra: np.ndarray,
    dec: np.ndarray,
    ra0: float,
    dec0: float,
    size: float,
    n_cols: int,
    n_rows: int,
    m: float,
    span_x: int,
    span_y: int,
    core_cell: np.ndarray,
    ext_code: np.ndarray,
    core_counts: np.ndarray,
    code_counts: np.ndarray,
) -> int:  # pragma: no cover - compiled
    """First pass of the partition: project, bin, and count.

    Writes per point its core cell (``row * n_cols + col``, clamped into the
    grid) and its extended code (which encodes the column range and row range
    of the extended boxes holding it; the last code means "none"), and adds
    to the per-cell / per-code histograms. Returns the number of points
    outside the nominal core square (or behind the tangent plane).
    """
    n = ra.size
    ox, oy, oc, ok, total = _SCRATCH
    raw = np.empty(total + 8)
    base = ((64 - raw.ctypes.data % 64) % 64) // 8  # 64-byte aligned start
    scratch = raw[base : base + total]
    xb = scratch[ox : ox + _BLOCK]
    yb = scratch[oy : oy + _BLOCK]
    cb = scratch[oc : oc + _BLOCK // 2].view(np.int32)
    kb = scratch[ok : ok + _BLOCK // 2].view(np.int32)
    outside = 0
    for start in range(0, n, _BLOCK):
        stop = min(n, start + _BLOCK)
        count = stop - start
        project_block(ra, dec, start, stop, ra0, dec0, xb, yb)
        outside += _codes_block(
            xb, yb, count, size, n_cols, n_rows, m, span_x, span_y, cb, kb
        )  # fmt: skip
        for j in range(count):
            core_counts[cb[j]] += 1
            code_counts[kb[j]] += 1
        core_cell[start:stop] = cb[:count]
        ext_code[start:stop] = kb[:count]
    return outside


@njit(cache=True, nogil=True, error_model="numpy")
def counting_sort(
    keys: np.ndarray, offsets: np.ndarray, out: np.ndarray
) -> None:  # pragma: no cover - compiled
    """Stable counting sort of point indices by key (``offsets`` from the key histogram)."""
    cursor = offsets[:-1].copy()
    for i in range(keys.size):
        c = keys[i]
        out[cursor[c]] = i
        cursor[c] += 1


@njit(cache=True, nogil=True, error_model="numpy")
def expand_codes(
    by_code: np.ndarray,
    code_offsets: np.ndarray,
    n_cols: int,
    n_rows: int,
    span_x: int,
    span_y: int,
    cursor: np.ndarray,
    index_offset: int,
    out: np.ndarray,
) -> None:  # pragma: no cover - compiled
    """Copy each code's bucket of point indices into every extended cell of that code.

    ``cursor[cell]`` is the next free slot of each cell in ``out``, advanced in
    place so that several catalogs can be expanded one after the other.
    """
    n_ry = n_rows * (span_y + 1) + 1
    n_codes = code_offsets.size - 1
    for code in range(n_codes - 1):  # the last code is "in no extended box"
        s, e = code_offsets[code], code_offsets[code + 1]
        if s == e:
            continue
        cx, cy = code // n_ry, code % n_ry
        ax, dx = cx // (span_x + 1), cx % (span_x + 1)
        ay, dy = cy // (span_y + 1), cy % (span_y + 1)
        for r in range(ay, ay + dy + 1):
            for c in range(ax, ax + dx + 1):
                cell = r * n_cols + c
                k = cursor[cell]
                for t in range(s, e):
                    out[k] = by_code[t] + index_offset
                    k += 1
                cursor[cell] = k


@njit(cache=True, nogil=True, error_model="numpy")
def expand_code_counts(
    code_counts: np.ndarray, n_cols: int, n_rows: int, span_x: int, span_y: int, out: np.ndarray
) -> None:  # pragma: no cover - compiled
    """Add the per-code point counts to every extended cell of each code."""
    n_ry = n_rows * (span_y + 1) + 1
    for code in range(code_counts.size - 1):
        cnt = code_counts[code]
        if cnt == 0:
            continue
        cx, cy = code // n_ry, code % n_ry
        ax, dx = cx // (span_x + 1), cx % (span_x + 1)
        ay, dy = cy // (span_y + 1), cy % (span_y + 1)
        for r in range(ay, ay + dy + 1):
            for c in range(ax, ax + dx + 1):
                out[r * n_cols + c] += cnt
