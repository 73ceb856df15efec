"""Byte-level FITS: cards and header blocks as astropy reads them; headers by ranged
reads: few requests, few bytes, exact offsets."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from constellation.io.fits import (
    BLOCK_BYTES,
    FitsHeaderError,
    card_image,
    cards_to_header_bytes,
    header_data_bytes,
    header_data_span,
    pad_bytes,
    read_header,
    read_primary_header,
    rename_extension,
)
from constellation.io.storage import Storage
from tests.fixtures.mer import mosaic_header, sparse_mosaic, write_header_only

WIDE_DATA_BYTES = 19200 * 19200 * 4  # 1,474,560,000 bytes, a whole number of blocks


def _same_cards(a: fits.Header, written: fits.Header) -> None:
    # compare with the header as written (cards hold 20-character values)
    b = fits.Header.fromstring(written.tostring())
    assert list(a.keys()) == list(b.keys())
    for key in ("NAXIS1", "CRVAL1", "CRVAL2", "CD1_1", "CD2_2", "CTYPE1"):
        assert a[key] == b[key], key


def test_header_of_a_1p4_gb_mosaic_costs_a_few_kilobytes(tmp_path: Path) -> None:
    header = mosaic_header(269.7, 66.0)  # ~170 cards: 5 blocks
    path = tmp_path / "mosaic.fits"
    total = sparse_mosaic(path, header)
    assert path.stat().st_size == total > 1.4e9
    storage = Storage()
    got = read_primary_header(storage, str(path))
    _same_cards(got.header, header)
    n_header = len(header.tostring())
    assert got.header_bytes == n_header
    assert got.offset == 0
    assert got.data_offset == n_header
    assert got.data_bytes == WIDE_DATA_BYTES
    assert got.next_offset == total
    # 2 blocks, then 2 more, then 4 more: 8 blocks fetched, 3 requests
    assert got.requests == 3
    assert got.bytes_read == 8 * BLOCK_BYTES
    assert storage.stats.bytes_read == got.bytes_read < 25_000
    assert storage.stats.requests == 3


def test_growth_and_initial_size(tmp_path: Path) -> None:
    header = mosaic_header(10.0, -40.0, n_history=1000)  # ~1020 cards: 29 blocks
    path = tmp_path / "big_header.fits"
    n = write_header_only(path, header)
    assert n == 29 * BLOCK_BYTES
    got = read_primary_header(Storage(), str(path), initial_blocks=1)
    assert got.header_bytes == n
    assert got.requests == 6  # 1, 2, 4, 8, 16, 32 blocks (file ends at 29)
    assert got.bytes_read == n
    big = read_primary_header(Storage(), str(path), initial_blocks=40)
    assert big.requests == 1
    assert list(big.header.items()) == list(got.header.items())


def test_extensions_are_walked_to_astropys_offsets(tmp_path: Path) -> None:
    path = tmp_path / "multi.fits"
    hdus = fits.HDUList(
        [
            fits.PrimaryHDU(np.zeros((7, 13), dtype=np.int16)),
            fits.BinTableHDU.from_columns(
                [
                    fits.Column("ID", "K", array=np.arange(50)),
                    fits.Column("V", "PE()", array=[np.arange(i % 5) for i in range(50)]),
                ],
                name="CAT",
            ),
            fits.ImageHDU(np.ones((3, 4, 5), dtype=np.float64), name="CUBE"),
            fits.ImageHDU(name="EMPTY"),
        ]
    )
    hdus.writeto(path)
    storage = Storage()
    offset = 0
    seen = []
    with fits.open(path) as ref:
        for i, hdu in enumerate(ref):
            got = read_header(storage, str(path), offset)
            loc = ref.fileinfo(i)
            assert (got.offset, got.data_offset, got.data_bytes) == (
                loc["hdrLoc"],
                loc["datLoc"],
                loc["datSpan"],
            )
            assert got.header.get("EXTNAME", "PRIMARY") == hdu.name
            seen.append(hdu.name)
            offset = got.next_offset
    assert seen == ["PRIMARY", "CAT", "CUBE", "EMPTY"]
    assert offset == path.stat().st_size
    with pytest.raises(FitsHeaderError, match="no HDU at offset"):
        read_header(storage, str(path), offset)


def test_reads_from_memory_and_anonymous_s3(
    tmp_path: Path,
    s3_bucket: str,
    upload_tree: Callable[..., list[str]],
    anon_s3_storage: Storage,
) -> None:
    header = mosaic_header(0.25, 0.0)
    local = tmp_path / "tree" / "m.fits"
    n = write_header_only(local, header)
    upload_tree(tmp_path / "tree", s3_bucket, "q1")
    got = read_primary_header(anon_s3_storage, f"s3://{s3_bucket}/q1/m.fits")
    _same_cards(got.header, header)
    assert got.header_bytes == n
    assert anon_s3_storage.stats.requests == got.requests == 3
    memory = Storage()
    url = f"memory://{uuid.uuid4().hex}/m.fits"
    memory.write_bytes(url, local.read_bytes())
    _same_cards(read_primary_header(memory, url).header, header)


def test_errors_name_the_file(tmp_path: Path) -> None:
    storage = Storage()
    not_fits = tmp_path / "notes.fits"
    not_fits.write_bytes(b"hello world" * 1000)
    with pytest.raises(FitsHeaderError, match=r"notes\.fits: not a FITS file"):
        read_primary_header(storage, str(not_fits))
    empty = tmp_path / "empty.fits"
    empty.write_bytes(b"")
    with pytest.raises(FitsHeaderError, match=r"empty\.fits: no HDU"):
        read_primary_header(storage, str(empty))
    # header without its END card, truncated at a block boundary
    text = mosaic_header(1.0, 2.0).tostring()
    cut = tmp_path / "cut.fits"
    cut.write_bytes(text.replace("END" + " " * 77, " " * 80).encode()[: 4 * BLOCK_BYTES])
    with pytest.raises(FitsHeaderError, match=r"cut\.fits: file ends 11520 bytes in"):
        read_primary_header(storage, str(cut))
    big = tmp_path / "big.fits"
    write_header_only(big, mosaic_header(1.0, 2.0, n_history=500))
    with pytest.raises(FitsHeaderError, match=r"big\.fits: no END card in the first 8640"):
        read_primary_header(storage, str(big), max_bytes=3 * BLOCK_BYTES)
    with pytest.raises(FileNotFoundError, match=r"absent\.fits"):
        read_primary_header(storage, str(tmp_path / "absent.fits"))
    with pytest.raises(ValueError, match="multiple of 2880"):
        read_header(storage, str(big), 100)


def _header(**cards: object) -> fits.Header:
    h = fits.Header()
    for k, v in cards.items():
        h[k] = v
    return h


@pytest.mark.parametrize(
    ("cards", "expected"),
    [
        ({"BITPIX": 8, "NAXIS": 0}, 0),
        ({"BITPIX": -32, "NAXIS": 2, "NAXIS1": 19200, "NAXIS2": 19200}, WIDE_DATA_BYTES),
        ({"BITPIX": 8, "NAXIS": 1, "NAXIS1": 1}, BLOCK_BYTES),
        ({"BITPIX": 16, "NAXIS": 2, "NAXIS1": 1440, "NAXIS2": 1}, BLOCK_BYTES),
        ({"BITPIX": 16, "NAXIS": 2, "NAXIS1": 1441, "NAXIS2": 1}, 2 * BLOCK_BYTES),
        # binary table with a heap: NAXIS1 * NAXIS2 + PCOUNT
        (
            {"BITPIX": 8, "NAXIS": 2, "NAXIS1": 100, "NAXIS2": 30, "PCOUNT": 2000, "GCOUNT": 1},
            2 * BLOCK_BYTES,
        ),
        # random groups: NAXIS1 = 0 is left out; GCOUNT * (PCOUNT + NAXIS2 * NAXIS3)
        (
            {
                "BITPIX": -32,
                "NAXIS": 3,
                "NAXIS1": 0,
                "NAXIS2": 3,
                "NAXIS3": 4,
                "GROUPS": True,
                "PCOUNT": 2,
                "GCOUNT": 100,
            },
            2 * BLOCK_BYTES,  # 4 * 100 * 14 = 5600 bytes
        ),
    ],
)
def test_header_data_span(cards: dict[str, object], expected: int) -> None:
    assert header_data_span(_header(**cards)) == expected


def test_header_data_span_needs_the_keywords() -> None:
    with pytest.raises(FitsHeaderError, match="NAXIS2"):
        header_data_span(_header(BITPIX=8, NAXIS=2, NAXIS1=4))
    with pytest.raises(FitsHeaderError, match="BITPIX"):
        header_data_span(_header(NAXIS=1, NAXIS1=4))


# --------------------------------------------------------------------------- cards and blocks


def test_cards_read_back_by_astropy() -> None:
    cards = [
        ("XTENSION", "IMAGE", "image extension"),
        ("BITPIX", -32, ""),
        ("NAXIS", 2, ""),
        ("NAXIS1", 7, ""),
        ("NAXIS2", 3, ""),
        ("PCOUNT", 0, ""),
        ("GCOUNT", 1, ""),
        ("EXTNAME", "3-4.F.SCI", "it's a quote test " + "x" * 80),
        ("CRVAL1", 269.73151, ""),
        ("GAIN", 3.0, ""),
        ("TINY", 1.5e-300, ""),
        ("FLAG", True, ""),
        ("HIERARCH ESO DET ID", "CCD-1", ""),
    ]
    raw = cards_to_header_bytes(cards)
    assert len(raw) % BLOCK_BYTES == 0
    header = fits.Header.fromstring(raw.decode("ascii"))
    for key, value, _ in cards:
        assert header[key.removeprefix("HIERARCH ")] == value, key
    assert header_data_bytes(header) == 7 * 3 * 4
    assert header_data_span(header) == BLOCK_BYTES
    assert all(len(card_image(k, v, c)) == 80 for k, v, c in cards)
    with pytest.raises(ValueError, match="too long for one card"):
        card_image("EXTNAME", "x" * 80)
    with pytest.raises(ValueError, match="longer than 8"):
        card_image("TOOLONGKEY", 1)
    # cards formatted once (the images many headers share) come after the others
    shared = "".join(card_image(k, v, c) for k, v, c in cards[8:])
    assert cards_to_header_bytes(cards[:8], shared) == raw
    with pytest.raises(ValueError, match="not a multiple of 80"):
        cards_to_header_bytes(cards[:8], shared[:-1])


@pytest.mark.parametrize("n", [0, 1, 2879, 2880, 2881, 5760])
def test_pad_bytes(n: int) -> None:
    assert (n + pad_bytes(n)) % BLOCK_BYTES == 0
    assert 0 <= pad_bytes(n) < BLOCK_BYTES


def test_rename_extension_keeps_the_length() -> None:
    named = cards_to_header_bytes([("XTENSION", "IMAGE", ""), ("BITPIX", 8, ""),
                                   ("NAXIS", 0, ""), ("EXTNAME", "OLD", "")])  # fmt: skip
    unnamed = cards_to_header_bytes([("XTENSION", "IMAGE", ""), ("BITPIX", 8, ""),
                                     ("NAXIS", 0, "")])  # fmt: skip
    for raw in (named, unnamed):
        out = rename_extension(raw, "3-4.F.PSF")
        assert len(out) == len(raw)
        assert fits.Header.fromstring(out.decode("ascii"))["EXTNAME"] == "3-4.F.PSF"
    full = b"".join(card_image(f"K{i}", i).encode() for i in range(35)) + b"END".ljust(80)
    with pytest.raises(ValueError, match="no room"):
        rename_extension(full, "X")
    with pytest.raises(ValueError, match="multiple of 2880"):
        rename_extension(named[:-80], "X")
