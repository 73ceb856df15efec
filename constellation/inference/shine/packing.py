"""Where the sparse model evaluates the likelihood: stamp windows, packed onto canvases.

SHINE draws a source only inside its stamp, so the likelihood of an exposure depends on
the parameters only through its *windows* (:func:`stamp_windows`): the bounding boxes of
connected groups of overlapping stamps of the sources visible in it. A sub-tile has
thousands of windows of many shapes; compiling one function per window shape would
compile hundreds per sub-tile. Instead, windows are packed side by side onto square
*canvases* (:func:`pack_windows`): every canvas of a sub-tile has the same side and the
same number of source slots per stamp tier, so that all of them are one batch of one
compiled function, and the sub-tiles of a survey share a few such shapes (slot counts
on :func:`~.buckets.count_bucket`). A canvas pixel outside every window carries no data
(the masked-pixel sigma): the posterior is the one of the exposures.

numpy only (no SHINE, no JAX).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from constellation.inference.shine.buckets import count_bucket, image_bucket

if TYPE_CHECKING:
    from constellation.inference.shine.loading import SubTileData

__all__ = ["Canvas", "Window", "bucket_windows", "pack_windows", "stamp_windows"]

#: Windows are packed until this fraction of the canvases' pixels is in use, on average
#: (shelf packing of windows sorted by height reaches it on survey-density fields).
FILL = 0.5
#: Canvases tried for a window (those with the most free slots of its costliest tier).
CANDIDATES = 8


@dataclass(frozen=True)
class Window:
    """Where a group of sources is seen in one exposure: the bounding box (crop pixels) of
    their SHINE stamps, which overlap one another and no other visible source's stamp."""

    exposure: int
    x0: int
    y0: int
    nx: int
    ny: int
    sources: NDArray[np.int64]  # indices into the SubTileData sources, by tier


def stamp_windows(data: SubTileData, stamp_sizes: Sequence[int]) -> list[Window]:
    """The windows of every exposure: the connected groups of overlapping stamps.

    SHINE draws a source of stamp size ``s`` at pixel position ``p`` into the box
    ``[round(p) - s // 2, round(p) - s // 2 + s)`` and nowhere else, so a pixel outside
    every box has no model light: its likelihood does not depend on any parameter, and
    the likelihood of an exposure is, up to a constant, the sum over its windows.
    """
    windows: list[Window] = []
    sizes = np.asarray(stamp_sizes, dtype=np.int64)
    for j, e in enumerate(data.exposures):
        vis = np.flatnonzero(e.visible)
        if vis.size == 0:
            continue
        ss = sizes[data.tiers[vis]]
        x0 = np.round(e.positions[vis, 0]).astype(np.int64) - ss // 2
        y0 = np.round(e.positions[vis, 1]).astype(np.int64) - ss // 2
        x1, y1 = x0 + ss, y0 + ss
        parent = np.arange(vis.size)

        def root(i: int, parent: NDArray[np.int64] = parent) -> int:
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = int(parent[i])
            return i

        order = np.argsort(x0, kind="stable")
        for a_pos, a in enumerate(order):  # sweep in x: only boxes starting before a ends
            for b in order[a_pos + 1 :]:
                if x0[b] >= x1[a]:
                    break
                if y0[b] < y1[a] and y0[a] < y1[b]:
                    ra, rb = root(int(a)), root(int(b))
                    if ra != rb:
                        parent[max(ra, rb)] = min(ra, rb)
        groups: dict[int, list[int]] = {}
        for i in range(vis.size):
            groups.setdefault(root(i), []).append(i)
        for members in groups.values():
            m = np.asarray(members)
            src = vis[m]
            src = src[np.lexsort((src, data.tiers[src]))]
            bx0, by0 = int(x0[m].min()), int(y0[m].min())
            windows.append(Window(j, bx0, by0, int(x1[m].max()) - bx0, int(y1[m].max()) - by0, src))
    return windows


@dataclass
class Canvas:
    """An image of ``ny`` x ``nx`` pixels holding windows at ``(y, x)`` offsets, with
    ``slots[t]`` source slots of stamp tier ``t`` (unused slots are invisible)."""

    ny: int
    nx: int
    slots: tuple[int, ...]
    placements: list[tuple[Window, int, int]] = field(default_factory=list)
    used: NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    # shelf packing state: (top of the shelf, its height, next free column)
    shelves: list[list[int]] = field(default_factory=list)
    top: int = 0

    @property
    def key(self) -> tuple[int, int, tuple[int, ...]]:
        """What a compiled function is specialised to."""
        return (self.ny, self.nx, self.slots)

    def place(self, w: Window, counts: NDArray[np.int64]) -> bool:
        """Put ``w`` on the first shelf with room (or a new shelf); False if it does
        not fit (pixels or slots)."""
        if np.any(self.used + counts > np.asarray(self.slots)):
            return False
        for shelf in self.shelves:
            y, height, x = shelf
            if w.ny <= height and x + w.nx <= self.nx:
                shelf[2] = x + w.nx
                break
        else:
            if self.top + w.ny > self.ny or w.nx > self.nx:
                return False
            y, x = self.top, 0
            self.shelves.append([self.top, w.ny, w.nx])
            self.top += w.ny
        self.placements.append((w, y, x))
        self.used = self.used + counts
        return True


def _own_canvas(w: Window, counts: NDArray[np.int64]) -> Canvas:
    """A canvas holding one window: sides on :func:`~.buckets.image_bucket`, slots on
    :func:`~.buckets.count_bucket`."""
    canvas = Canvas(
        image_bucket(w.ny),
        image_bucket(w.nx),
        tuple(count_bucket(int(c)) for c in counts),
        used=np.zeros(counts.size, dtype=np.int64),
    )
    canvas.place(w, counts)
    return canvas


def bucket_windows(data: SubTileData, stamp_sizes: Sequence[int]) -> list[Canvas]:
    """Each window on a canvas of its own, bucketed (the least padding, the most shapes)."""
    n_tiers = len(stamp_sizes)
    return [
        _own_canvas(w, np.bincount(data.tiers[w.sources], minlength=n_tiers))
        for w in stamp_windows(data, stamp_sizes)
    ]


def pack_windows(data: SubTileData, stamp_sizes: Sequence[int], side: int = 512) -> list[Canvas]:
    """The sub-tile's windows on canvases.

    Windows that fit in ``side`` x ``side`` share canvases of that side (or of the
    smallest rung of :data:`~.buckets.IMAGE_LADDER` that holds them all at :data:`FILL`,
    when that is smaller), each with
    ``slots[t]`` slots of tier ``t``: the sub-tile's tier-``t`` stamps divided by the
    canvases its window pixels need at :data:`FILL`, rounded up on
    :func:`~.buckets.count_bucket` (and at least the most any window holds). They are
    packed onto shelves, the windows holding the largest tier first, each onto the
    canvas with the most free slots of that tier (of :data:`CANDIDATES`) where it fits;
    new canvases only when none has room. A larger window (a big blend) gets a canvas of its
    own, sides on :func:`~.buckets.image_bucket`, slots on ``count_bucket``.
    """
    n_tiers = len(stamp_sizes)
    windows = stamp_windows(data, stamp_sizes)
    counts = [np.bincount(data.tiers[w.sources], minlength=n_tiers) for w in windows]
    fits = [i for i, w in enumerate(windows) if w.ny <= side and w.nx <= side]
    canvases: list[Canvas] = []
    small: list[int] = []
    slots: tuple[int, ...] = ()
    n_canvas = 0
    if fits:
        area = sum(windows[i].ny * windows[i].nx for i in fits)
        # a sub-tile with few windows gets smaller canvases (a rung of the image ladder)
        need = max(
            max(max(windows[i].ny, windows[i].nx) for i in fits),
            math.ceil(math.sqrt(area / FILL)),
        )
        side = min(side, image_bucket(need))
        n_canvas = max(1, math.ceil(area / (FILL * side * side)))
        totals = np.sum([counts[i] for i in fits], axis=0)
        slots = tuple(count_bucket(math.ceil(int(t) / n_canvas)) for t in totals)
        # a window holding more stamps of a tier than a canvas has slots is a big one
        small = [i for i in fits if np.all(counts[i] <= np.asarray(slots))]
    big = [i for i in range(len(windows)) if i not in set(small)]
    if small:
        # the costliest windows first (those holding the largest stamp tier), each onto
        # the canvas with the most free slots of that tier among those it fits on: the
        # expensive slots fill evenly, the cheap ones and the pixels fill around them
        top = [int(np.flatnonzero(counts[i]).max()) for i in small]
        order = sorted(range(len(small)), key=lambda k: (-top[k], -windows[small[k]].ny))
        room = np.tile(np.asarray(slots, dtype=np.int64), (n_canvas, 1))
        canvases = [
            Canvas(side, side, slots, used=np.zeros(n_tiers, dtype=np.int64))
            for _ in range(n_canvas)
        ]
        for k in order:
            i = small[k]
            for c in np.argsort(-room[:, top[k]], kind="stable")[:CANDIDATES]:
                if canvases[c].place(windows[i], counts[i]):
                    room[c] -= counts[i]
                    break
            else:
                canvas = Canvas(side, side, slots, used=np.zeros(n_tiers, dtype=np.int64))
                if not canvas.place(windows[i], counts[i]):  # pragma: no cover
                    raise AssertionError("a window that fits a canvas did not fit an empty one")
                canvases.append(canvas)
                room = np.vstack([room, np.asarray(slots) - counts[i]])
        canvases = [c for c in canvases if c.placements]
    canvases += [_own_canvas(windows[i], counts[i]) for i in big]
    return canvases
