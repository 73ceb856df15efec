"""Compiled kernel of :mod:`constellation.discovery.match` (numba; imported lazily).

The same tests as :func:`~constellation.discovery.match.polygons_intersect_box`
and :func:`~constellation.discovery.match.point_in_polygons`, operation for
operation (no fast-math), so the results are identical; but one call covers
many boxes, each polygon is tested only against the boxes its bounding box
meets, and the edge loop stops at the first edge that meets a box.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(inline="always")
def _meets(
    v: np.ndarray, r: int, x0: float, x1: float, y0: float, y1: float
) -> bool:  # pragma: no cover - compiled
    n = v.shape[1]
    for j in range(n):
        ax, ay = v[r, j, 0], v[r, j, 1]
        k = j + 1 if j + 1 < n else 0
        bx, by = v[r, k, 0], v[r, k, 1]
        if max(ax, bx) >= x0 and min(ax, bx) <= x1 and max(ay, by) >= y0 and min(ay, by) <= y1:
            dx, dy = bx - ax, by - ay
            c0 = dx * (y0 - ay) - dy * (x0 - ax)
            c1 = dx * (y0 - ay) - dy * (x1 - ax)
            c2 = dx * (y1 - ay) - dy * (x1 - ax)
            c3 = dx * (y1 - ay) - dy * (x0 - ax)
            positive = c0 > 0 and c1 > 0 and c2 > 0 and c3 > 0
            negative = c0 < 0 and c1 < 0 and c2 < 0 and c3 < 0
            if not (positive or negative):
                return True
    # no edge meets the box: it is inside iff its centre is (even-odd rule)
    x = 0.5 * (x0 + x1)
    y = 0.5 * (y0 + y1)
    crossings = 0
    for j in range(n):
        px, py = v[r, j, 0], v[r, j, 1]
        k = j + 1 if j + 1 < n else 0
        qx, qy = v[r, k, 0], v[r, k, 1]
        if (py > y) != (qy > y):
            x_cross = px + (y - py) * (qx - px) / (qy - py)
            if x < x_cross:
                crossings += 1
    return crossings % 2 == 1


@njit(cache=True, nogil=True, error_model="numpy")
def polygons_boxes(
    vertices: np.ndarray, lo: np.ndarray, hi: np.ndarray, boxes: np.ndarray
) -> np.ndarray:  # pragma: no cover - compiled
    """``(m, k)`` hits of ``k`` polygons ``(k, V, 2)`` against ``m`` boxes ``(m, 4)``.

    ``lo``/``hi`` are the polygons' bounding boxes ``(k, 2)`` (``inf``/``-inf``
    for polygons with a non-finite vertex, which then meet nothing); a box row
    is ``x_min, x_max, y_min, y_max``.
    """
    m, k = boxes.shape[0], vertices.shape[0]
    hits = np.zeros((m, k), dtype=np.bool_)
    for r in range(k):
        for b in range(m):
            x0, x1, y0, y1 = boxes[b, 0], boxes[b, 1], boxes[b, 2], boxes[b, 3]
            if hi[r, 0] >= x0 and lo[r, 0] <= x1 and hi[r, 1] >= y0 and lo[r, 1] <= y1:
                hits[b, r] = _meets(vertices, r, x0, x1, y0, y1)
    return hits
