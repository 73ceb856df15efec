"""The quadrant index reads the simulated VIS headers as astropy does, without parsing
every header: the light card reader and the WCS card text agree with astropy."""

from __future__ import annotations

from pathlib import Path

from astropy.io import fits

from constellation.io.fits import header_data_bytes, read_extension_headers
from constellation.io.fitscards import size_cards
from constellation.io.observations import list_observations
from constellation.io.quadrant_index import _WCS_KEY, _wcs_text, wcs_cards_text
from constellation.io.storage import Storage
from constellation.simulate.run import FieldSummary


def test_simulated_headers_read_as_astropy(light_field: tuple[Path, FieldSummary]) -> None:
    root, _ = light_field
    storage = Storage()
    e = list_observations(storage, f"{root}/q1/VIS").exposures[0]
    n_sci = 0
    for ref in (e.det, e.bkg, e.psf):
        assert ref is not None
        scan = read_extension_headers(storage, ref.url, size=ref.size)
        assert len(scan.extensions) in (144, 432)
        for ext in scan.extensions:
            header = fits.Header.fromstring(ext.text)
            cards = size_cards(ext.text)
            assert cards is not None  # the light reader reads every simulated header
            assert ext.extname == str(header.get("EXTNAME", "")).strip()
            assert ext.data_bytes == header_data_bytes(header)
            assert cards["NAXIS1"] == header["NAXIS1"]
            assert "_header" not in ext.__dict__  # not parsed by the scan
            if ext.extname.endswith(".SCI"):
                n_sci += 1
                text = _wcs_text(ext)
                assert text == wcs_cards_text(header)
                assert "PV1_7" in text
                assert "CTYPE1  = 'RA---TPV'" in text
                wcs = [c for c in header.cards if _WCS_KEY.match(c.keyword)]
                assert text.count("\n") + 1 == len(wcs) == 35
    assert n_sci == 144


def test_wcs_cards_text_as_a_header_writes_it() -> None:
    """The card images joined, as ``Header.tostring`` joins them (CONTINUE cards too)."""
    header = fits.Header()
    header["NAXIS1"] = 32
    header["OBJECT"] = "not a WCS card"
    header["CTYPE1"] = "RA---TPV"
    header["CTYPE2"] = "D" * 100  # a long string: CONTINUE cards
    header["CRVAL1"] = 52.93
    header["PV1_10"] = (-0.8, "TPV distortion coefficient")
    cards = [c for c in header.cards if c.keyword != "OBJECT"]
    expected = fits.Header(cards).tostring(sep="\n", padding=False, endcard=False)
    text = wcs_cards_text(fits.Header.fromstring(header.tostring()))
    assert text == expected
    assert "\nCONTINUE" in text
    assert "OBJECT" not in text
