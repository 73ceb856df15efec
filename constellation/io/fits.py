"""Byte-level FITS: cards, header blocks, data-unit sizes, and headers read by ranges.

The one module that handles FITS bytes itself (astropy parses and builds headers; the
simulator's writer, :mod:`constellation.simulate.fitsbytes`, lays out whole files
with the helpers here).

A FITS file is a sequence of HDUs, each a header of 2880-byte blocks of 80-byte
cards ending with an ``END`` card, then a data unit padded to whole blocks.

**One header** (:func:`read_header`): blocks are fetched from its start in growing
ranged reads (2 blocks, then as many again, doubling each time) until a block holds
the ``END`` card; the data unit beyond the last block fetched is never touched. The
size of the data unit follows from the header (:func:`header_data_span`), so the
next HDU's header can be read the same way at :attr:`HeaderRead.next_offset`: the
header of a 1.4 GB mosaic costs a few kilobytes.

**Every extension header** (:func:`read_extension_headers`): walking 432 extension
headers one after the other costs 432 round trips. The extensions of a Euclid DET,
BKG or PSF file all have the same header size and data size, so after one read we
can *predict* where every header lies and fetch them all at once:

1. **Round 1**: one ranged read of the first ``first_read_bytes`` (64 KiB): the
   primary header and the first extension's header, whose header size and data
   span give the stride ``header_bytes + data span``.
2. **Round 2**: the header blocks at ``first + k * stride`` (within the file
   size) are fetched concurrently (a thread pool). Each is checked: it starts
   with ``XTENSION``, its ``END`` card lies inside the block, and it lies where
   the previous verified header's own data span says the next HDU starts.
3. **Rounds 3+**: where a prediction fails (an extension of another shape,
   extra header cards), the walk goes on sequentially from the last verified
   offset with :func:`read_header`, one round per hop, reusing any fetched block
   that the chain lands on.

Nothing is trusted that the chain of headers does not confirm, so the result is
the same as a sequential walk, just cheaper: for a 7.3 GB DET file, 2 rounds,
~430 requests of one header each and almost no byte beyond the headers.

**Header bytes**: :func:`card_image` and :func:`cards_to_header_bytes` format cards
and whole header blocks (a few microseconds where astropy's ``Header`` costs ~1 ms
per card list); :func:`rename_extension` rewrites the ``EXTNAME`` card of fetched
header bytes in place, keeping their length.
"""

from __future__ import annotations

import threading
from bisect import bisect_right
from collections.abc import Iterable, Mapping
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from math import prod
from typing import TYPE_CHECKING, TypeAlias

import numpy as np
from astropy.io import fits

from constellation.io.fitscards import size_cards

if TYPE_CHECKING:
    from constellation.io.storage import Storage

__all__ = [
    "BITPIX_DTYPES",
    "BLOCK_BYTES",
    "CARD_BYTES",
    "DEFAULT_FIRST_READ_BYTES",
    "DEFAULT_MAX_GAP_BYTES",
    "DEFAULT_MAX_HEADER_BYTES",
    "DEFAULT_MAX_RUN_BYTES",
    "DEFAULT_RANGE_WORKERS",
    "Card",
    "ExtensionHeader",
    "ExtensionScan",
    "FitsHeaderError",
    "HeaderRead",
    "card_image",
    "cards_to_header_bytes",
    "header_data_bytes",
    "header_data_span",
    "pad_bytes",
    "read_extension_headers",
    "read_header",
    "read_primary_header",
    "rename_extension",
]

BLOCK_BYTES = 2880
"""Size of a FITS block: headers and data units are whole numbers of blocks."""

CARD_BYTES = 80
"""Size of a header card."""

DEFAULT_MAX_HEADER_BYTES = 1000 * BLOCK_BYTES
"""Give up on a header larger than this (~2.9 MB, 36,000 cards)."""

DEFAULT_FIRST_READ_BYTES = 64 * 1024
"""Bytes of the first ranged read of :func:`read_extension_headers` (primary header +
first extension header)."""

DEFAULT_RANGE_WORKERS = 32
"""Concurrent ranged reads of the predicted headers."""

DEFAULT_MAX_GAP_BYTES = 32 * 1024
"""Predicted headers separated by at most this many data bytes are fetched by one
read (small files: fewer requests for a few more bytes; never for Euclid's
8.5 MB quadrant data units)."""

DEFAULT_MAX_RUN_BYTES = 4 * 2**20
"""Upper bound on one such merged read."""

BITPIX_DTYPES = {8: ">u1", 16: ">i2", 32: ">i4", 64: ">i8", -32: ">f4", -64: ">f8"}
"""The numpy dtype (big-endian, as stored) of each BITPIX value."""

_END = b"END     "

Card = tuple[str, object, str]
"""A header card as ``(keyword, value, comment)``."""


class FitsHeaderError(ValueError):
    """A FITS header is missing, truncated, too large or malformed; the message names the URL."""


# --------------------------------------------------------------------------- cards and blocks


def pad_bytes(n: int) -> int:
    """Bytes of padding that bring ``n`` bytes to whole 2880-byte blocks."""
    return -n % BLOCK_BYTES


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
    """One 80-character FITS card (keyword <= 8 characters, or ``HIERARCH ...``); a long
    comment is cut at the end of the card.

    Raises
    ------
    ValueError
        If the keyword is too long, or the keyword and value alone exceed one card.
    """
    if keyword.startswith("HIERARCH "):
        head = f"{keyword} = "
    else:
        if len(keyword) > 8:
            raise ValueError(f"keyword {keyword!r} longer than 8 characters")
        head = f"{keyword:<8}= "
    text = head + _value_text(value)
    if len(text.rstrip()) > CARD_BYTES:
        raise ValueError(f"{keyword} value too long for one card: {value!r}")
    if comment:
        text += " / " + comment
    return text[:CARD_BYTES].ljust(CARD_BYTES)


def cards_to_header_bytes(cards: Iterable[Card], images: str = "") -> bytes:
    """Header bytes (with END, padded to 2880) from ``(keyword, value, comment)`` cards,
    followed by ``images``: cards already formatted (:func:`card_image`, 80 characters
    each), for the cards many headers share.

    A fast path for the thousands of near-identical quadrant headers: astropy's
    Header machinery costs ~1 ms per card list, this a few microseconds.
    """
    if len(images) % CARD_BYTES:
        raise ValueError(f"card images of {len(images)} characters, not a multiple of 80")
    text = "".join(card_image(k, v, c) for k, v, c in cards) + images + "END".ljust(CARD_BYTES)
    raw = text.encode("ascii")
    return raw + b" " * pad_bytes(len(raw))


def _end_blocks(buf: bytes | bytearray, start: int = 0, first_card: int = 0) -> int | None:
    """Whole blocks, counted from ``start``, up to and including the one holding the END
    card of the header at ``buf[start:]`` (cards before ``first_card`` are not looked
    at); ``None`` if the END card is not in ``buf``."""
    n_cards = (len(buf) - start) // CARD_BYTES
    for i in range(first_card, n_cards):
        pos = start + i * CARD_BYTES
        if buf[pos : pos + 8] == _END:
            return (i * CARD_BYTES) // BLOCK_BYTES + 1
    return None


def rename_extension(header: bytes, name: str) -> bytes:
    """``header`` (whole 2880-byte blocks) with its ``EXTNAME`` set to ``name``, same length.

    The existing ``EXTNAME`` card is replaced; without one, the new card takes the
    place of ``END``, which moves one card later (into the blank padding).
    """
    if len(header) % BLOCK_BYTES:
        raise ValueError(f"header length {len(header)} is not a multiple of {BLOCK_BYTES}")
    new = card_image("EXTNAME", name).encode("ascii")
    out = bytearray(header)
    end = None
    for pos in range(0, len(header), CARD_BYTES):
        key = header[pos : pos + 8]
        if key == b"EXTNAME ":
            out[pos : pos + CARD_BYTES] = new
            return bytes(out)
        if key == _END:
            end = pos
            break
    if end is None:
        raise ValueError("header has no END card")
    if (
        end + 2 * CARD_BYTES > len(header)
        or header[end + CARD_BYTES : end + 2 * CARD_BYTES].strip()
    ):
        raise ValueError("no room for an EXTNAME card in the header")
    out[end : end + CARD_BYTES] = new
    out[end + CARD_BYTES : end + 2 * CARD_BYTES] = b"END".ljust(CARD_BYTES)
    return bytes(out)


# --------------------------------------------------------------------------- data units


HeaderLike: TypeAlias = "fits.Header | Mapping[str, object]"
"""A parsed header, or the few cards :func:`~constellation.io.fitscards.size_cards` reads."""


def _int_card(header: HeaderLike, key: str, default: int | None = None) -> int:
    value = header.get(key, default)
    if value is None:
        raise FitsHeaderError(f"header lacks the {key} keyword")
    if isinstance(value, bool) or not isinstance(value, int):
        raise FitsHeaderError(f"header keyword {key} must be an integer, got {value!r}")
    return value


def header_data_bytes(header: HeaderLike) -> int:
    """Bytes of the data unit described by a header (or the mapping of its size
    keywords), without the padding.

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
    return abs(bitpix) // 8 * gcount * (pcount + prod(dims))


def header_data_span(header: HeaderLike) -> int:
    """Bytes of the data unit described by a header, padded to whole 2880-byte blocks
    (see :func:`header_data_bytes`)."""
    nbytes = header_data_bytes(header)
    return nbytes + pad_bytes(nbytes)


# --------------------------------------------------------------------------- one header


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
    text, header_bytes, requests, bytes_read = _fetch_header(
        storage, url, offset, initial_blocks=initial_blocks, max_bytes=max_bytes
    )
    header = _parse_text(url, text, offset)
    return HeaderRead(header, url, offset, header_bytes, requests, bytes_read)


def _fetch_header(
    storage: Storage,
    url: str,
    offset: int,
    *,
    initial_blocks: int = 2,
    max_bytes: int = DEFAULT_MAX_HEADER_BYTES,
) -> tuple[str, int, int, int]:
    """The header at ``offset`` as text (see :func:`read_header`), its size in bytes,
    the requests made and the bytes fetched."""
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
        n_blocks = _end_blocks(buf, first_card=scanned_cards)
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
    except UnicodeDecodeError as exc:
        raise FitsHeaderError(f"{url}: malformed header at offset {offset}: {exc}") from exc
    return text, header_bytes, requests, len(buf)


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


# --------------------------------------------------------------------------- every extension


@dataclass(frozen=True)
class ExtensionHeader:
    """One extension: its name, header and where its header and data lie.

    ``data_bytes`` is the data unit's length without the FITS padding;
    ``data_span`` with it (so the next HDU starts at ``data_offset + data_span``).

    ``text`` is the header as read (whole blocks, ``END`` card included);
    :attr:`header` parses it with astropy on first use only. ``extname`` and the
    sizes come from :func:`~constellation.io.fitscards.size_cards` (astropy only
    where that light reader gives up): of the five extensions of a quadrant (SCI,
    RMS, FLG, BKG, PSF) the quadrant index parses only the SCI header. With
    :func:`~constellation.io.quadrant_index.wcs_cards_text` taken from the cards as
    written, that took the index's CPU per quadrant from 7.1 to 4.8 ms (one exposure
    of the 2x2 light field, median of 5, interleaved with the former code on the
    busy 2-core machine); most of the rest is building the TPV WCS (~3.7 ms).
    """

    index: int  # HDU number (1 = first extension)
    extname: str
    text: str = field(repr=False)
    header_offset: int
    header_bytes: int
    data_offset: int
    data_bytes: int
    data_span: int
    url: str = field(default="", repr=False, compare=False)

    @property
    def header(self) -> fits.Header:
        """The parsed header (parsed once, on first use).

        Raises
        ------
        FitsHeaderError
            If astropy cannot parse it.
        """
        parsed: fits.Header | None = self.__dict__.get("_header")
        if parsed is None:
            parsed = _parse_text(self.url, self.text, self.header_offset)
            object.__setattr__(self, "_header", parsed)
        return parsed

    @property
    def next_offset(self) -> int:
        return self.data_offset + self.data_span


@dataclass(frozen=True)
class ExtensionScan:
    """All extension headers of one file and what reading them cost.

    ``rounds`` counts sequential round trips (concurrent requests of one round
    count once); ``requests`` and ``bytes_read`` count every ranged read.
    """

    url: str
    size: int
    primary: fits.Header
    primary_header_bytes: int
    extensions: tuple[ExtensionHeader, ...]
    requests: int
    rounds: int
    bytes_read: int

    @property
    def header_bytes_total(self) -> int:
        """Bytes of all headers, the primary one included."""
        return self.primary_header_bytes + sum(e.header_bytes for e in self.extensions)

    def by_name(self) -> dict[str, ExtensionHeader]:
        """Extensions by EXTNAME (the first of any duplicates)."""
        out: dict[str, ExtensionHeader] = {}
        for ext in self.extensions:
            out.setdefault(ext.extname, ext)
        return out


def _text(url: str, buf: bytes, start: int, offset: int, first: bytes) -> tuple[str, int]:
    """The complete header at ``buf[start:]`` (known to hold its END card) as text, and
    its size in bytes."""
    if not buf[start : start + len(first)] == first:
        raise FitsHeaderError(
            f"{url}: expected {first.decode()!r} at offset {offset}, "
            f"found {bytes(buf[start : start + 20])!r}"
        )
    n = _end_blocks(buf, start)
    assert n is not None
    try:
        return buf[start : start + n * BLOCK_BYTES].decode("ascii"), n * BLOCK_BYTES
    except UnicodeDecodeError as exc:
        raise FitsHeaderError(f"{url}: malformed header at offset {offset}: {exc}") from exc


def _parse_text(url: str, text: str, offset: int) -> fits.Header:
    try:
        return fits.Header.fromstring(text)
    except ValueError as exc:
        raise FitsHeaderError(f"{url}: malformed header at offset {offset}: {exc}") from exc


def _parse(url: str, buf: bytes, start: int, offset: int, first: bytes) -> tuple[fits.Header, int]:
    """Parse the complete header at ``buf[start:]`` (known to hold its END card)."""
    text, nbytes = _text(url, buf, start, offset, first)
    return _parse_text(url, text, offset), nbytes


def _extension(url: str, index: int, offset: int, text: str, header_bytes: int) -> ExtensionHeader:
    """The extension whose header ``text`` starts at ``offset``: its name and data size
    from the light card reader, or from astropy where that reader gives up."""
    cards = size_cards(text)
    parsed = None
    source: HeaderLike
    if cards is None:
        source = parsed = _parse_text(url, text, offset)
    else:
        source = cards
    nbytes = header_data_bytes(source)
    ext = ExtensionHeader(
        index=index,
        extname=str(source.get("EXTNAME", "")).strip(),
        text=text,
        header_offset=offset,
        header_bytes=header_bytes,
        data_offset=offset + header_bytes,
        data_bytes=nbytes,
        data_span=nbytes + pad_bytes(nbytes),
        url=url,
    )
    if parsed is not None:
        object.__setattr__(ext, "_header", parsed)
    return ext


class _Counter:
    def __init__(self) -> None:
        self.requests = 0
        self.bytes_read = 0
        self.rounds = 0
        self._lock = threading.Lock()

    def add(self, nbytes: int) -> None:
        with self._lock:
            self.requests += 1
            self.bytes_read += nbytes


def read_extension_headers(
    storage: Storage,
    url: str,
    *,
    size: int | None = None,
    first_read_bytes: int = DEFAULT_FIRST_READ_BYTES,
    workers: int = DEFAULT_RANGE_WORKERS,
    executor: Executor | None = None,
    max_gap_bytes: int = DEFAULT_MAX_GAP_BYTES,
    max_run_bytes: int = DEFAULT_MAX_RUN_BYTES,
) -> ExtensionScan:
    """Read every extension header of a FITS file (see the module notes).

    Parameters
    ----------
    storage, url
        Where the file is.
    size
        The file size if known (from a listing); otherwise one ``info`` request
        (an extra round) asks the store.
    first_read_bytes
        Size of the first ranged read.
    workers
        Concurrent reads of the predicted headers (when no ``executor`` is given).
    executor
        A thread pool to use for the concurrent reads (shared between files).
    max_gap_bytes, max_run_bytes
        Predicted header ranges closer than ``max_gap_bytes`` are merged into
        one read of at most ``max_run_bytes`` (``max_gap_bytes=0``: one read
        per header).

    Raises
    ------
    FitsHeaderError
        If the file is not FITS, is truncated (a header or a data unit ends past
        the end of the file) or a header is malformed.
    """
    count = _Counter()
    if size is None:
        info = storage.info(url)
        if info.size is None:
            raise FitsHeaderError(f"{url}: the store reports no size")
        size = info.size
        count.requests += 1
        count.rounds += 1
    if size < BLOCK_BYTES:
        raise FitsHeaderError(f"{url}: {size} bytes is too small for a FITS file")

    # Round 1: primary header + first extension header.
    head = storage.read_range(url, 0, min(size, max(first_read_bytes, BLOCK_BYTES)))
    count.add(len(head))
    count.rounds += 1
    if _end_blocks(head) is not None:
        primary, primary_bytes = _parse(url, head, 0, 0, b"SIMPLE  =")
    else:
        hr = read_header(storage, url, 0)
        count.requests += hr.requests
        count.bytes_read += hr.bytes_read
        count.rounds += hr.requests
        primary, primary_bytes = hr.header, hr.header_bytes
    cur = primary_bytes + header_data_span(primary)
    _check_within(url, size, cur, "primary HDU")
    exts: list[ExtensionHeader] = []
    if cur >= size:
        return _scan(url, size, primary, primary_bytes, exts, count)

    # Blocks already fetched: offset -> bytes starting there.
    fetched: dict[int, bytes] = {}
    if cur < len(head):
        fetched[cur] = head[cur:]
    first = _read_one(storage, url, cur, size, fetched, count, len(exts) + 1)
    exts.append(first)
    cur = first.next_offset
    _check_within(url, size, cur, f"extension {first.extname!r}")

    # Round 2: predict the remaining headers at a fixed stride, fetch concurrently.
    stride = first.header_bytes + first.data_span
    predicted = []
    off = cur
    while stride > 0 and off + first.header_bytes <= size:
        predicted.append(off)
        off += stride
    for off in predicted:
        if off + first.header_bytes <= len(head):
            fetched[off] = head[off:]
    to_fetch = [o for o in predicted if o not in fetched]
    if to_fetch:
        count.rounds += 1
        runs = _coalesce(to_fetch, first.header_bytes, max_gap_bytes, max_run_bytes)

        def fetch(run: tuple[int, int]) -> tuple[int, bytes]:
            start, end = run
            data = storage.read_range(url, start, min(size, end))
            count.add(len(data))
            return start, data

        if executor is not None:
            results: list[tuple[int, bytes]] = list(executor.map(fetch, runs))
        else:
            with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
                results = list(pool.map(fetch, runs))
        starts = [r[0] for r in results]
        for o in to_fetch:
            i = bisect_right(starts, o) - 1
            start, data = results[i]
            fetched[o] = data[o - start : o - start + first.header_bytes]

    # Verify the chain; rounds 3+: sequential hops where a prediction failed.
    while cur < size:
        ext = _read_one(storage, url, cur, size, fetched, count, len(exts) + 1)
        exts.append(ext)
        cur = ext.next_offset
        _check_within(url, size, cur, f"extension {ext.extname!r}")
    return _scan(url, size, primary, primary_bytes, exts, count)


def _read_one(
    storage: Storage,
    url: str,
    offset: int,
    size: int,
    fetched: dict[int, bytes],
    count: _Counter,
    index: int,
) -> ExtensionHeader:
    """The extension header at ``offset``: from a fetched block if it holds the whole
    header, else by a sequential read (one more round per request)."""
    block = fetched.get(offset)
    if block is not None and _end_blocks(block) is not None:
        text, nbytes = _text(url, block, 0, offset, b"XTENSION=")
        return _extension(url, index, offset, text, nbytes)
    if size - offset < BLOCK_BYTES:
        raise FitsHeaderError(
            f"{url}: truncated: {size - offset} bytes left at offset {offset}, "
            f"expected extension {index} there"
        )
    text, header_bytes, requests, bytes_read = _fetch_header(storage, url, offset)
    with count._lock:
        count.requests += requests
        count.bytes_read += bytes_read
        count.rounds += requests
    return _extension(url, index, offset, text, header_bytes)


def _coalesce(offsets: list[int], length: int, max_gap: int, max_run: int) -> list[tuple[int, int]]:
    """Merge ranges ``[o, o + length)`` (sorted) separated by at most ``max_gap`` bytes
    into ``(start, end)`` runs of at most ``max_run`` bytes."""
    runs: list[tuple[int, int]] = []
    for o in offsets:
        if runs:
            start, end = runs[-1]
            if o - end <= max_gap and o + length - start <= max_run:
                runs[-1] = (start, o + length)
                continue
        runs.append((o, o + length))
    return runs


def _check_within(url: str, size: int, end: int, what: str) -> None:
    if end > size:
        raise FitsHeaderError(
            f"{url}: truncated: the data of the {what} end at byte {end}, "
            f"but the file has only {size} bytes"
        )


def _scan(
    url: str,
    size: int,
    primary: fits.Header,
    primary_bytes: int,
    exts: list[ExtensionHeader],
    count: _Counter,
) -> ExtensionScan:
    return ExtensionScan(
        url=url,
        size=size,
        primary=primary,
        primary_header_bytes=primary_bytes,
        extensions=tuple(exts),
        requests=count.requests,
        rounds=count.rounds,
        bytes_read=count.bytes_read,
    )
