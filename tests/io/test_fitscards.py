"""The light card reader agrees with astropy, or gives up (and astropy decides)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from constellation.io.fits import (
    FitsHeaderError,
    cards_to_header_bytes,
    header_data_bytes,
    read_extension_headers,
)
from constellation.io.fitscards import card_images, size_cards, value_cards
from constellation.io.storage import Storage
from constellation.simulate.focal_plane import QUADRANT_IDS, quadrant_wcs_cards

_WCS_KEY = re.compile(r"^(CTYPE\d|CUNIT\d|CRPIX\d|CRVAL\d|CD\d_\d|PV\d_\d+|RADESYS|NAXIS[12])$")
_KEYS = ["EXTNAME", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "NAXIS3", "PCOUNT", "GCOUNT", "GROUPS"]


def _sci_text(qid: str = "1-1.E", binning: int = 64) -> str:
    """A SCI header laid out as the simulator writes it."""
    wcs = quadrant_wcs_cards(qid, 52.93, -28.09, 12.0, binning=binning)
    values = {c[0]: c[1] for c in wcs}
    head = [("XTENSION", "IMAGE", "image extension"), ("BITPIX", -32, ""), ("NAXIS", 2, ""),
            ("NAXIS1", values["NAXIS1"], ""), ("NAXIS2", values["NAXIS2"], ""),
            ("PCOUNT", 0, ""), ("GCOUNT", 1, ""), ("EXTNAME", f"{qid}.SCI", "")]  # fmt: skip
    rest = [c for c in wcs if c[0] not in {"NAXIS", "NAXIS1", "NAXIS2"}]
    rest += [("GAIN", 3.5, "e-/ADU"), ("EXPTIME", 560.52, "s"), ("MAGZEROP", 24.6, "")]
    return cards_to_header_bytes(head + rest).decode("ascii")


def _astropy_texts() -> list[str]:
    image = fits.ImageHDU(np.zeros((3, 4, 5), dtype=np.int16), name="Q1")
    image.header["HISTORY"] = "a history card"
    image.header["COMMENT"] = "NAXIS1 = 7 in a comment"
    table = fits.BinTableHDU.from_columns(
        [fits.Column(name="a", format="PJ()", array=[[1, 2], [3]])], name="TAB"
    )
    groups = fits.GroupsHDU(
        fits.GroupData(np.zeros((2, 3), dtype=np.float32), parnames=["p"], pardata=[[1.0, 2.0]])
    )
    psf_cards = [("XTENSION", "IMAGE"), ("BITPIX", -32), ("NAXIS", 2), ("NAXIS1", 189),
                 ("NAXIS2", 189), ("PCOUNT", 0), ("GCOUNT", 1), ("EXTNAME", "1-1.E")]  # fmt: skip
    psf = fits.Header(psf_cards)
    return [h.tostring() for h in (image.header, table.header, groups.header, psf)]


def _outcome(source: object) -> tuple[str, int] | str:
    """(EXTNAME, data bytes) as the index reads them, or the error message."""
    try:
        return str(source.get("EXTNAME", "")).strip(), header_data_bytes(source)  # type: ignore[attr-defined,arg-type]
    except FitsHeaderError as exc:
        return str(exc)


def _set_card(text: str, key: str, image: str | None) -> str:
    """``text`` with the card of ``key`` replaced by ``image`` (None: removed)."""
    cards = [text[i : i + 80] for i in range(0, len(text), 80)]
    i = next(n for n, c in enumerate(cards) if c[:8].rstrip() == key)
    if image is None:
        del cards[i]
        cards.append(" " * 80)
    else:
        cards[i] = image.ljust(80)
    return "".join(cards)


def _insert_after(text: str, key: str, image: str) -> str:
    cards = [text[i : i + 80] for i in range(0, len(text), 80)]
    i = next(n for n, c in enumerate(cards) if c[:8].rstrip() == key)
    cards.insert(i + 1, image.ljust(80))
    return "".join(cards[:-1])  # drop one blank padding card: same length


@pytest.mark.parametrize("text", [_sci_text(q) for q in QUADRANT_IDS[:6]] + _astropy_texts())
def test_agrees_with_astropy_on_written_headers(text: str) -> None:
    cards = size_cards(text)
    assert cards is not None
    header = fits.Header.fromstring(text)
    assert cards == {k: header[k] for k in _KEYS if k in header}
    assert _outcome(cards) == _outcome(header)
    images = card_images(text, _WCS_KEY.match)
    assert images == [c.image for c in header.cards if _WCS_KEY.match(c.keyword)]


# Read by the light reader: the same name, size or error as astropy's.
_READ = {
    "plain": lambda t: t,
    "missing NAXIS2": lambda t: _set_card(t, "NAXIS2", None),
    "missing NAXIS": lambda t: _set_card(t, "NAXIS", None),
    "missing BITPIX": lambda t: _set_card(t, "BITPIX", None),
    "missing PCOUNT": lambda t: _set_card(t, "PCOUNT", None),
    "string NAXIS2": lambda t: _set_card(t, "NAXIS2", "NAXIS2  = 'abc     '"),
    "logical BITPIX": lambda t: _set_card(t, "BITPIX", "BITPIX  =                    T"),
    "signed, zeros": lambda t: _set_card(t, "NAXIS1", "NAXIS1  = +0032/c"),
    "integer EXTNAME": lambda t: _set_card(t, "EXTNAME", "EXTNAME =                    5"),
    "padded EXTNAME": lambda t: _set_card(t, "EXTNAME", "EXTNAME = '  1-1.E   ' / name"),
    "no EXTNAME": lambda t: _set_card(t, "EXTNAME", None),
    "groups": lambda t: _insert_after(
        _set_card(t, "NAXIS1", "NAXIS1  =                    0"), "GCOUNT", "GROUPS  = T"
    ),
}
# Forms astropy may read otherwise: the light reader gives up.
_GIVE_UP = {
    "real NAXIS1": lambda t: _set_card(t, "NAXIS1", "NAXIS1  =                 32.0"),
    "exponent NAXIS1": lambda t: _set_card(t, "NAXIS1", "NAXIS1  =                 3.2E1"),
    "undefined NAXIS1": lambda t: _set_card(t, "NAXIS1", "NAXIS1  ="),
    "lower case": lambda t: _set_card(t, "NAXIS1", "naxis1  =                   32"),
    "shifted equals": lambda t: _set_card(t, "NAXIS1", "NAXIS1 =                    32"),
    "leading blank": lambda t: _set_card(t, "NAXIS1", " NAXIS1 =                   32"),
    "no value indicator": lambda t: _set_card(t, "NAXIS1", "NAXIS1                      32"),
    "duplicate": lambda t: _insert_after(t, "NAXIS2", "NAXIS1  =                   64"),
    "hierarch": lambda t: _insert_after(t, "EXTNAME", "HIERARCH NAXIS3 = 7"),
    "continue": lambda t: _insert_after(
        _set_card(t, "EXTNAME", "EXTNAME = '1-1.E&'"), "EXTNAME", "CONTINUE  'X'"
    ),
    "quote in string": lambda t: _set_card(t, "EXTNAME", "EXTNAME = 'O''NEIL'"),
    "record-valued": lambda t: _set_card(t, "EXTNAME", "EXTNAME = 'AXIS.1: 5'"),
    "unprintable": lambda t: _set_card(t, "NAXIS1", "NAXIS1  =                   32 / \t"),
    "junk END": lambda t: t.replace("END" + " " * 77, "END     x".ljust(80)),
    "no END": lambda t: t.replace("END" + " " * 77, " " * 80),
}


@pytest.mark.parametrize("edit", list(_READ))
def test_reads_plain_cards_as_astropy(edit: str) -> None:
    text = _READ[edit](_sci_text())
    cards = size_cards(text)
    assert cards is not None
    assert _outcome(cards) == _outcome(fits.Header.fromstring(text))


def test_refusals_have_astropy_messages() -> None:
    text = _sci_text()
    edits = ("missing NAXIS2", "string NAXIS2", "logical BITPIX", "missing NAXIS")
    got = {e: _outcome(size_cards(_READ[e](text))) for e in edits}
    assert got == {
        "missing NAXIS2": "header lacks the NAXIS2 keyword",
        "string NAXIS2": "header keyword NAXIS2 must be an integer, got 'abc'",
        "logical BITPIX": "header keyword BITPIX must be an integer, got True",
        "missing NAXIS": "header lacks the NAXIS keyword",
    }


@pytest.mark.parametrize("edit", list(_GIVE_UP))
def test_gives_up_on_other_forms(edit: str) -> None:
    assert size_cards(_GIVE_UP[edit](_sci_text())) is None


@pytest.mark.filterwarnings("ignore::astropy.io.fits.verify.VerifyWarning")
@pytest.mark.parametrize("edit", ["real NAXIS1", "lower case", "shifted equals", "duplicate"])
def test_scan_falls_back_to_astropy(tmp_path: Path, edit: str) -> None:
    """Where the light reader gives up, the scan still reads (or refuses) as astropy."""
    text = _GIVE_UP[edit](_sci_text())
    header = fits.Header.fromstring(text)
    primary = fits.PrimaryHDU().header.tostring().encode()
    path = tmp_path / "x.fits"
    try:
        nbytes = header_data_bytes(header)
    except FitsHeaderError as exc:
        path.write_bytes(primary + text.encode())
        with pytest.raises(FitsHeaderError, match=re.escape(str(exc))):
            read_extension_headers(Storage(), str(path))
        return
    path.write_bytes(primary + text.encode() + bytes(nbytes + -nbytes % 2880))
    (ext,) = read_extension_headers(Storage(), str(path)).extensions
    assert (ext.extname, ext.data_bytes) == (str(header.get("EXTNAME", "")).strip(), nbytes)
    assert ext.header == header


def test_header_parsed_on_first_use(tmp_path: Path) -> None:
    path = tmp_path / "u.fits"
    hdus = [fits.ImageHDU(np.zeros((4, 5), dtype=np.float32), name=f"Q{i}") for i in range(3)]
    fits.HDUList([fits.PrimaryHDU(), *hdus]).writeto(path)
    scan = read_extension_headers(Storage(), str(path))
    assert all("_header" not in e.__dict__ for e in scan.extensions)
    ext = scan.extensions[1]
    assert ext.header is ext.header  # parsed once
    assert ext.header == hdus[1].header
    assert "_header" not in scan.extensions[0].__dict__


_IMAGE_CASES = {
    "lower-case exponent": ("CD1_1", "CD1_1   =              1.0e-03"),  # astropy rewrites it
    "lower-case keyword": ("CRVAL1", "crval1  =                 52.0"),
    "shifted equals": ("CRVAL1", "CRVAL1 =                  52.0"),
    "record-valued": ("CTYPE1", "CTYPE1  = 'AXIS.1: 5'"),
    "hierarch": ("CRVAL1", "HIERARCH CRVAL1 = 52.0"),
}


@pytest.mark.parametrize("case", list(_IMAGE_CASES))
def test_card_images_give_up_on_other_forms(case: str) -> None:
    key, image = _IMAGE_CASES[case]
    text = _set_card(_sci_text(), key, image)
    assert card_images(text, _WCS_KEY.match) is None


def test_card_images_give_up_on_continue() -> None:
    text = _insert_after(
        _set_card(_sci_text(), "CTYPE1", "CTYPE1  = 'RA---TPV&'"), "CTYPE1", "CONTINUE  'X'"
    )
    assert card_images(text, _WCS_KEY.match) is None


def test_rewritten_card_image_differs_from_text() -> None:
    """Why non-standard cards are left to astropy: it verifies and rewrites them."""
    text = _set_card(_sci_text(), "CD1_1", "CD1_1   =              1.0e-03")
    (card,) = [c for c in fits.Header.fromstring(text).cards if c.keyword == "CD1_1"]
    with pytest.warns(fits.verify.VerifyWarning):
        assert card.image != "CD1_1   =              1.0e-03".ljust(80)


# -- value_cards: the SCI keywords the index reads ---------------------------------------

_VALUE_KEYS = frozenset({"NAXIS1", "NAXIS2", "EXPTIME", "MAGZEROP", "GAIN"})


def _astropy_values(text: str) -> dict[str, object]:
    header = fits.Header.fromstring(text)
    return {k: header[k] for k in _VALUE_KEYS if k in header}


_VALUE_READ = {
    "plain": lambda t: t,
    "integer EXPTIME": lambda t: _set_card(t, "EXPTIME", "EXPTIME =                  560"),
    "string MAGZEROP": lambda t: _set_card(t, "MAGZEROP", "MAGZEROP= '24.57000'"),
    "exponent GAIN": lambda t: _set_card(t, "GAIN", "GAIN    =            3.48E+00 / e-/ADU"),
    "signed GAIN": lambda t: _set_card(t, "GAIN", "GAIN    = -.5/x"),
    "trailing point": lambda t: _set_card(t, "EXPTIME", "EXPTIME =                 560."),
    "missing GAIN": lambda t: _set_card(t, "GAIN", None),
    "GAIN in a comment": lambda t: _insert_after(t, "GAIN", "COMMENT GAIN = 7"),
}
_VALUE_GIVE_UP = {
    "D exponent": lambda t: _set_card(t, "GAIN", "GAIN    =            3.48D+00"),
    "lower-case exponent": lambda t: _set_card(t, "GAIN", "GAIN    =            3.48e+00"),
    "complex": lambda t: _set_card(t, "GAIN", "GAIN    = (1.0, 2.0)"),
    "undefined": lambda t: _set_card(t, "GAIN", "GAIN    ="),
    "duplicate": lambda t: _insert_after(t, "GAIN", "GAIN    =                  3.6"),
    "hierarch": lambda t: _insert_after(t, "GAIN", "HIERARCH EXPTIME = 7.0"),
    "lower-case keyword": lambda t: _set_card(t, "GAIN", "gain    =                  3.5"),
    "shifted equals": lambda t: _set_card(t, "GAIN", "GAIN   =                   3.5"),
    "continue": lambda t: _insert_after(
        _set_card(t, "MAGZEROP", "MAGZEROP= '24.5&'"), "MAGZEROP", "CONTINUE  '7'"
    ),
    "no END": lambda t: t.replace("END" + " " * 77, " " * 80),
}


@pytest.mark.parametrize("qid", QUADRANT_IDS[:6])
def test_value_cards_agree_with_astropy_on_written_headers(qid: str) -> None:
    text = _sci_text(qid)
    assert value_cards(text, _VALUE_KEYS) == _astropy_values(text)


@pytest.mark.parametrize("edit", list(_VALUE_READ))
def test_value_cards_read_plain_forms_as_astropy(edit: str) -> None:
    text = _VALUE_READ[edit](_sci_text())
    values = value_cards(text, _VALUE_KEYS)
    assert values == _astropy_values(text)
    assert all(type(values[k]) is type(v) for k, v in _astropy_values(text).items())


@pytest.mark.filterwarnings("ignore::astropy.io.fits.verify.VerifyWarning")
@pytest.mark.parametrize("edit", list(_VALUE_GIVE_UP))
def test_value_cards_give_up_on_other_forms(edit: str) -> None:
    assert value_cards(_VALUE_GIVE_UP[edit](_sci_text()), _VALUE_KEYS) is None
