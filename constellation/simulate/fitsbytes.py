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

from constellation.io.fits_headers import header_data_span

__all__ = ["BLOCK", "HduSpec", "assemble_bytes", "data_span", "write_sparse"]

BLOCK = 2880


def _pad(n: int) -> int:
    return (-n) % BLOCK


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
    if len(raw) % BLOCK:  # pragma: no cover - astropy pads already
        raw += b" " * _pad(len(raw))
    return raw


def _data_bytes(data: np.ndarray) -> bytes:
    kind = {np.dtype(np.float32): ">f4", np.dtype(np.float64): ">f8",
            np.dtype(np.int32): ">i4", np.dtype(np.int16): ">i2",
            np.dtype(np.uint8): "u1", np.dtype(np.int64): ">i8"}[np.dtype(data.dtype)]  # fmt: skip
    raw = np.ascontiguousarray(data).astype(kind, copy=False).tobytes()
    return raw + b"\0" * _pad(len(raw))


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


Card = tuple[str, object, str]


def _value_text(value: object) -> str:
    if isinstance(value, bool | np.bool_):
        return f"{'T' if value else 'F':>20}"
    if isinstance(value, int | np.integer):
        return f"{int(value):>20}"
    if isinstance(value, float | np.floating):
        v = float(value)
        text = repr(v).upper()
        if "." not in text and "E" not in text:
            text += "."
        if len(text) > 20:
            text = f"{v:.15E}"
        return f"{text:>20}"
    if isinstance(value, str):
        s = value.replace("'", "''")
        return f"'{s:<8}'".ljust(20)
    raise TypeError(f"unsupported FITS value {value!r}")


def card_image(keyword: str, value: object, comment: str = "") -> str:
    """One 80-character FITS card (keyword <= 8 characters, or HIERARCH ...)."""
    if keyword.startswith("HIERARCH "):
        head = f"{keyword} = "
    else:
        if len(keyword) > 8:
            raise ValueError(f"keyword {keyword!r} longer than 8 characters")
        head = f"{keyword:<8}= "
    text = head + _value_text(value)
    if comment:
        text += " / " + comment
    if len(text) > 80:
        text = text[:80]
    return text.ljust(80)


def cards_to_header_bytes(cards: Iterable[Card]) -> bytes:
    """Header bytes (with END, padded to 2880) from ``(keyword, value, comment)`` cards.

    A fast path for the thousands of near-identical quadrant headers: astropy's
    Header machinery costs ~1 ms per card list, this a few microseconds.
    """
    text = "".join(card_image(k, v, c) for k, v, c in cards) + "END".ljust(80)
    raw = text.encode("ascii")
    return raw + b" " * _pad(len(raw))


def cards_of(header: fits.Header) -> list[Card]:
    """An astropy header as a card list (COMMENT/HISTORY/blank cards dropped)."""
    return [
        (c.keyword, c.value, c.comment)
        for c in header.cards
        if c.keyword not in ("", "COMMENT", "HISTORY", "END")
    ]
