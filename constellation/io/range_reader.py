"""A seekable raw binary stream over ranged reads (what :meth:`Storage.open
<constellation.io.storage.Storage.open>` wraps in a buffered reader)."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

__all__ = ["RangeReader"]


class RangeReader(io.RawIOBase):
    """A seekable raw binary stream over a stored object of ``size`` bytes, one call of
    ``read_range(url, start, end)`` (bytes ``[start, end)``) per fill."""

    def __init__(self, read_range: Callable[[str, int, int], bytes], url: str, size: int) -> None:
        super().__init__()
        self._read_range = read_range
        self._url = url
        self._size = size
        self._pos = 0
        self.name = url

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self._size + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if pos < 0:
            raise ValueError(f"negative seek position {pos}")
        self._pos = pos
        return pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        end = min(self._pos + len(view), self._size)
        if end <= self._pos:
            return 0
        data = self._read_range(self._url, self._pos, end)
        n = len(data)
        view[:n] = data
        self._pos += n
        return n
