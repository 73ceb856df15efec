"""FITS headers by ranged reads: the header of a 1.4 GB mosaic for a few kilobytes.

A FITS file is a sequence of HDUs, each a header of 2880-byte blocks of 80-byte
cards ending with an ``END`` card, then a data unit padded to whole blocks. To
read a header we fetch blocks from its start in growing ranged reads (2 blocks,
then as many again, doubling each time) until a block holds the ``END`` card,
and never touch the data unit beyond the last block fetched. The size of the
data unit follows from the header (:func:`header_data_span`), so the next HDU's
header can be read the same way at :attr:`HeaderRead.next_offset`.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod
from typing import TYPE_CHECKING

from astropy.io import fits

if TYPE_CHECKING:
    from constellation.io.storage import Storage

__all__ = [
    "BLOCK_BYTES",
    "CARD_BYTES",
    "DEFAULT_MAX_HEADER_BYTES",
    "FitsHeaderError",
    "HeaderRead",
    "header_data_span",
    "read_header",
    "read_primary_header",
]

BLOCK_BYTES = 2880
"""Size of a FITS block: headers and data units are whole numbers of blocks."""

CARD_BYTES = 80
"""Size of a header card."""

DEFAULT_MAX_HEADER_BYTES = 1000 * BLOCK_BYTES
"""Give up on a header larger than this (~2.9 MB, 36,000 cards)."""

_END_KEYWORD = b"END     "


class FitsHeaderError(ValueError):
    """A FITS header is missing, truncated, too large or malformed; the message names the URL."""


@dataclass(frozen=True)
class HeaderRead:
    """A header read from storage and what the read cost.

    Attributes
    ----------
    header
        The parsed header.
    url
        Where it was read from.
    offset
        Byte offset of the header in the file (0 for the primary header).
    header_bytes
        Size of the header on disk, a whole number of blocks, the ``END`` block included.
    requests
        Ranged reads made.
    bytes_read
        Bytes fetched (the header plus at most the rest of the last range).
    """

    header: fits.Header
    url: str
    offset: int
    header_bytes: int
    requests: int
    bytes_read: int

    @property
    def data_offset(self) -> int:
        """Byte offset of the data unit that follows the header."""
        return self.offset + self.header_bytes

    @property
    def data_bytes(self) -> int:
        """Size of the data unit on disk, padding included."""
        return header_data_span(self.header)

    @property
    def next_offset(self) -> int:
        """Byte offset of the next HDU's header."""
        return self.data_offset + self.data_bytes


def _int_card(header: fits.Header, key: str, default: int | None = None) -> int:
    value = header.get(key, default)
    if value is None:
        raise FitsHeaderError(f"header lacks the {key} keyword")
    if isinstance(value, bool) or not isinstance(value, int):
        raise FitsHeaderError(f"header keyword {key} must be an integer, got {value!r}")
    return value


def header_data_span(header: fits.Header) -> int:
    """Bytes of the data unit described by a header, padded to whole 2880-byte blocks.

    ``|BITPIX| / 8 * GCOUNT * (PCOUNT + NAXIS1 * ... * NAXISn)`` (FITS standard 4.0,
    eq. 2), with ``NAXIS1`` left out of the product for random groups
    (``GROUPS = T``, ``NAXIS1 = 0``). ``NAXIS = 0`` means no data unit.

    Raises
    ------
    FitsHeaderError
        If a required keyword is missing or not an integer.
    """
    naxis = _int_card(header, "NAXIS")
    if naxis == 0:
        return 0
    bitpix = _int_card(header, "BITPIX")
    dims = [_int_card(header, f"NAXIS{i}") for i in range(1, naxis + 1)]
    if header.get("GROUPS") is True and dims[0] == 0:
        dims = dims[1:]
    pcount = _int_card(header, "PCOUNT", 0)
    gcount = _int_card(header, "GCOUNT", 1)
    nbytes = abs(bitpix) // 8 * gcount * (pcount + prod(dims))
    return -(-nbytes // BLOCK_BYTES) * BLOCK_BYTES


def _end_card_block(buf: bytes | bytearray, first_card: int) -> int | None:
    """Number of whole blocks up to and including the one holding the END card, if any
    card from ``first_card`` on is END."""
    n_cards = len(buf) // CARD_BYTES
    for i in range(first_card, n_cards):
        if buf[i * CARD_BYTES : i * CARD_BYTES + 8] == _END_KEYWORD:
            return (i * CARD_BYTES) // BLOCK_BYTES + 1
    return None


def read_header(
    storage: Storage,
    url: str,
    offset: int = 0,
    *,
    initial_blocks: int = 2,
    max_bytes: int = DEFAULT_MAX_HEADER_BYTES,
) -> HeaderRead:
    """Read the header of the HDU starting at byte ``offset`` with ranged reads.

    Parameters
    ----------
    storage
        Where the file lives.
    url
        URL of the FITS file.
    offset
        Byte offset of the HDU (0 for the primary HDU; :attr:`HeaderRead.next_offset`
        of the previous HDU for an extension). A multiple of 2880.
    initial_blocks
        Blocks fetched by the first read; each further read fetches as many blocks
        as have been fetched so far.
    max_bytes
        Give up if no END card is found within this many bytes.

    Returns
    -------
    HeaderRead
        The header, its size and what the read cost.

    Raises
    ------
    FitsHeaderError
        If the bytes at ``offset`` are not a FITS header, the file ends before the
        END card, or the header is larger than ``max_bytes``.
    FileNotFoundError, StorageError
        From the storage.
    """
    if offset < 0 or offset % BLOCK_BYTES:
        raise ValueError(f"{url}: header offset must be a multiple of 2880, got {offset}")
    if initial_blocks < 1:
        raise ValueError(f"initial_blocks must be >= 1, got {initial_blocks}")
    max_blocks = max(1, max_bytes // BLOCK_BYTES)
    buf = bytearray()
    requests = 0
    want_blocks = min(initial_blocks, max_blocks)
    n_blocks: int | None = None
    while n_blocks is None:
        scanned_cards = len(buf) // CARD_BYTES
        start = offset + len(buf)
        chunk = storage.read_range(url, start, offset + want_blocks * BLOCK_BYTES)
        requests += 1
        buf += chunk
        if requests == 1:
            _check_first_card(url, offset, bytes(buf[:CARD_BYTES]))
        n_blocks = _end_card_block(buf, scanned_cards)
        if n_blocks is not None:
            break
        if len(buf) < want_blocks * BLOCK_BYTES:
            raise FitsHeaderError(
                f"{url}: file ends {offset + len(buf)} bytes in, inside the header at "
                f"offset {offset} (no END card)"
            )
        if want_blocks >= max_blocks:
            raise FitsHeaderError(
                f"{url}: no END card in the first {max_blocks * BLOCK_BYTES} bytes of the "
                f"header at offset {offset} (raise max_bytes if the header is really that large)"
            )
        want_blocks = min(2 * want_blocks, max_blocks)
    header_bytes = n_blocks * BLOCK_BYTES
    try:
        text = bytes(buf[:header_bytes]).decode("ascii")
        header = fits.Header.fromstring(text)
    except (UnicodeDecodeError, ValueError) as exc:
        raise FitsHeaderError(f"{url}: malformed header at offset {offset}: {exc}") from exc
    return HeaderRead(header, url, offset, header_bytes, requests, len(buf))


def read_primary_header(
    storage: Storage,
    url: str,
    *,
    initial_blocks: int = 2,
    max_bytes: int = DEFAULT_MAX_HEADER_BYTES,
) -> HeaderRead:
    """Read the primary header of a FITS file with ranged reads (see :func:`read_header`)."""
    return read_header(storage, url, 0, initial_blocks=initial_blocks, max_bytes=max_bytes)


def _check_first_card(url: str, offset: int, card: bytes) -> None:
    expected = b"SIMPLE  =" if offset == 0 else b"XTENSION="
    if not card:
        raise FitsHeaderError(f"{url}: no HDU at offset {offset} (the file ends there)")
    if not card.startswith(expected):
        what = f"{card[:20]!r}"
        raise FitsHeaderError(
            f"{url}: not a FITS {'file' if offset == 0 else 'extension'} at offset {offset} "
            f"(expected {expected.decode()!r}..., found {what})"
        )
