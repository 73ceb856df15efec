"""Padding to buckets, so that a worker compiles few model shapes.

A compiled JAX function is specialised to the shapes of its arrays. Image sides and
source counts are therefore rounded up to the values of short ladders: a sub-tile
whose shapes fall on rungs already compiled by this worker (or found in JAX's
persistent compilation cache) starts fitting at once. Padding costs work — padded
pixels are evaluated, padded source slots rendered — so the ladders are geometric
with small ratios: at most 25 % per image side, at most 25 % of a tier's sources.
"""

from __future__ import annotations

__all__ = ["bucket", "count_bucket", "image_bucket", "slot_bucket", "source_bucket"]

#: Image sides (px): from SHINE's smallest stamp (64 px) up to a quadrant (2048 x 2066
#: px), ratios of at most 1.25.
IMAGE_LADDER: tuple[int, ...] = (
    64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384, 448, 512, 640, 768, 896, 1024,
    1280, 1536, 1792, 2048, 2112,
)  # fmt: skip


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


def image_bucket(n: int) -> int:
    """An image side rounded up to :data:`IMAGE_LADDER` (beyond it, a multiple of 256)."""
    if n <= 0:
        raise ValueError("an image side must be positive")
    for rung in IMAGE_LADDER:
        if n <= rung:
            return rung
    return bucket(n, 256)


def count_bucket(n: int) -> int:
    """A count (sources of a tier in a window, windows in a batch) rounded up: exact up to
    8, then to 5, 6, 7 or 8 times a power of two — at most 25 % padding, four rungs per
    doubling."""
    if n <= 8:
        return max(n, 0)
    power = 1 << ((n - 1).bit_length() - 3)  # n in (4 power, 8 power]
    for k in (5, 6, 7, 8):
        if n <= k * power:
            return k * power
    raise AssertionError("unreachable")  # pragma: no cover


def slot_bucket(n: int) -> int:
    """The length of a sub-tile's parameter vectors: a power of two, at least 16. Padded
    slots are never rendered (only the prior sees them), so a coarse ladder is free."""
    return max(16, 1 << max(0, n - 1).bit_length())
