"""Assemble FITS files HDU by HDU, in memory or as sparse files on local disk.

astropy builds the headers; this module lays out the bytes itself so that a
432-extension file is written in one pass, and so that ``sparse`` files can
leave their (zero) data units as holes: a 7.3 GB DET file then costs a few MB
of disk while its byte offsets are those of a real one.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits

from constellation.io.fits import BLOCK_BYTES, Card, header_data_span, pad_bytes

__all__ = ["HduSpec", "assemble_bytes", "cards_of", "data_span", "header_only", "write_sparse"]


@dataclass(frozen=True)
class HduSpec:
    """One HDU: its header (astropy, or pre-formatted bytes plus its data span), and
    either data or nothing (a zero data unit, or a hole in a sparse file)."""

    header: fits.Header | bytes
    data: np.ndarray | None = None  # big-endian conversion happens here
    span: int = -1  # data-unit bytes (padded) when ``header`` is bytes


def data_span(header: fits.Header | HduSpec) -> int:
    """Bytes of the data unit (padded) that a header announces."""
    if isinstance(header, HduSpec):
        if isinstance(header.header, bytes):
            return header.span
        header = header.header
    return header_data_span(header)


def _header_bytes(header: fits.Header | bytes) -> bytes:
    if isinstance(header, bytes):
        return header
    raw: bytes = header.tostring(endcard=True, padding=True).encode("ascii")
    if len(raw) % BLOCK_BYTES:  # pragma: no cover - astropy pads already
        raw += b" " * pad_bytes(len(raw))
    return raw


def _data_bytes(data: np.ndarray) -> bytes:
    kind = {np.dtype(np.float32): ">f4", np.dtype(np.float64): ">f8",
            np.dtype(np.int32): ">i4", np.dtype(np.int16): ">i2",
            np.dtype(np.uint8): "u1", np.dtype(np.int64): ">i8"}[np.dtype(data.dtype)]  # fmt: skip
    raw = np.ascontiguousarray(data).astype(kind, copy=False).tobytes()
    return raw + b"\0" * pad_bytes(len(raw))


def assemble_bytes(hdus: Iterable[HduSpec]) -> bytes:
    """The whole file in memory; data units without data are written as zeros."""
    out = io.BytesIO()
    for h in hdus:
        out.write(_header_bytes(h.header))
        if h.data is not None:
            out.write(_data_bytes(h.data))
        else:
            out.write(b"\0" * data_span(h))
    return out.getvalue()


def write_sparse(path: Path, hdus: Iterable[HduSpec]) -> int:
    """Write to a local file, leaving data units without data as holes; returns its size.

    The holes read back as zeros, so the file is a valid FITS file with the
    byte layout of a full one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    pos = 0
    with open(tmp, "wb") as f:
        for h in hdus:
            hb = _header_bytes(h.header)
            f.write(hb)
            pos += len(hb)
            if h.data is not None:
                db = _data_bytes(h.data)
                f.write(db)
                pos += len(db)
            else:
                span = data_span(h)
                f.seek(span, io.SEEK_CUR)
                pos += span
        f.truncate(pos)
    tmp.replace(path)
    return pos


def header_only(header: fits.Header) -> bytes:
    """A file holding only a header (its announced data unit omitted).

    Used for MER mosaics: readers of the header (registry resolution) see the
    real 19200 x 19200 geometry; a reader of the pixels would find the file
    truncated.
    """
    return _header_bytes(header)


def cards_of(header: fits.Header) -> list[Card]:
    """An astropy header as a card list (COMMENT/HISTORY/blank cards dropped)."""
    return [
        (c.keyword, c.value, c.comment)
        for c in header.cards
        if c.keyword not in ("", "COMMENT", "HISTORY", "END")
    ]
