"""The index's pixel -> sky transform is astropy's ``WCS.all_pix2world``, bit for bit,
on every simulated quadrant and on the header forms that ``WCS`` fixes or rewrites."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning

from constellation.io.fits import read_extension_headers
from constellation.io.observations import list_observations
from constellation.io.quadrant_index import _SkyTransform, _wcs_text, quadrant_footprint
from constellation.io.storage import Storage
from constellation.simulate import focal_plane
from constellation.simulate.run import FieldSummary

NX, NY = focal_plane.quadrant_shape(1)


def astropy_wcs(text: str) -> WCS:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        return WCS(fits.Header.fromstring(text, sep="\n"))


def assert_same_footprint(text: str, nx: int = NX, ny: int = NY) -> _SkyTransform:
    fast = _SkyTransform(text)
    got = quadrant_footprint(fast, nx, ny)
    want = quadrant_footprint(astropy_wcs(text), nx, ny)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    assert got[2:] == want[2:]
    # and anywhere on the quadrant, not only its edge
    x = np.random.default_rng(3).uniform(-50, nx + 50, 200)
    y = np.random.default_rng(4).uniform(-50, ny + 50, 200)
    ra, dec = fast.pix2world(x, y)
    ra0, dec0 = astropy_wcs(text).all_pix2world(x, y, 0)
    np.testing.assert_array_equal(ra, ra0)
    np.testing.assert_array_equal(dec, dec0)
    return fast


def tpv_text(qid: str = "3-4.E", ra: float = 52.93, dec: float = -28.09, pa: float = 17.0) -> str:
    header = focal_plane.quadrant_wcs_header(qid, ra, dec, pa)
    return "\n".join(c.image for c in header.cards)


def test_every_simulated_quadrant(light_field: tuple[Path, FieldSummary]) -> None:
    root, _ = light_field
    storage = Storage()
    e = list_observations(storage, f"{root}/q1/VIS").exposures[0]
    assert e.det is not None
    n = 0
    for ext in read_extension_headers(storage, e.det.url, size=e.det.size).extensions:
        if ext.extname.endswith(".SCI"):
            header = ext.header
            text = _wcs_text(ext)
            fast = assert_same_footprint(text, int(header["NAXIS1"]), int(header["NAXIS2"]))
            assert fast._prm is not None  # Euclid's form: wcslib's own transform
            n += 1
    assert n == 144


@pytest.mark.parametrize(
    ("ra", "dec", "pa"), [(0.0001, 0.3, 0.0), (359.9999, -89.9, 77.0), (180.0, 89.5, -45.0)]
)
def test_quadrants_at_the_poles_and_ra_zero(ra: float, dec: float, pa: float) -> None:
    for qid in ("1-1.E", "6-6.H", "3-4.F"):
        assert_same_footprint(tpv_text(qid, ra, dec, pa))


def test_a_tan_header_without_distortion() -> None:
    text = "\n".join(
        line.replace("-TPV", "-TAN") for line in tpv_text().split("\n") if not line.startswith("PV")
    )
    assert "RA---TAN" in text
    assert assert_same_footprint(text)._prm is not None


def test_a_pre_2012_scamp_header_goes_through_wcs() -> None:
    """``-TAN`` with ``PV`` cards: ``WCS`` reads the PV terms as TPV; so does the index."""
    text = tpv_text().replace("-TPV", "-TAN")
    fast = assert_same_footprint(text)
    assert fast._prm is None
    # the distortion is applied (the plain TAN transform would differ)
    plain = tpv_text().replace("-TPV", "-TAN")
    plain = "\n".join(line for line in plain.split("\n") if not line.startswith("PV"))
    assert not np.array_equal(
        quadrant_footprint(fast, NX, NY)[0], quadrant_footprint(_SkyTransform(plain), NX, NY)[0]
    )


def test_cards_that_wcs_fixes() -> None:
    """Units and frames written in forms wcslib's ``fix`` translates give what ``WCS``
    gives (which applies the same fixes)."""
    text = tpv_text().replace("'deg     '", "'DEG     '").replace("'ICRS    '", "'FK5     '")
    assert "'DEG     '" in text
    assert_same_footprint(text)


@pytest.mark.parametrize("ctype", ["-TAN-SIP", "-SIN", "-ARC"])
def test_other_forms_go_through_wcs(ctype: str) -> None:
    text = "\n".join(
        line.replace("-TPV", ctype) for line in tpv_text().split("\n") if not line.startswith("PV")
    )
    fast = _SkyTransform(text)
    assert fast._prm is None
    ra, dec = fast.pix2world(np.array([0.0, 100.0]), np.array([0.0, 50.0]))
    ra0, dec0 = astropy_wcs(text).all_pix2world([0.0, 100.0], [0.0, 50.0], 0)
    np.testing.assert_array_equal(ra, ra0)
    np.testing.assert_array_equal(dec, dec0)
