"""Padding to buckets, so that a worker compiles few model shapes."""

from __future__ import annotations

__all__ = ["bucket", "source_bucket"]


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
