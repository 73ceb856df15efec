"""The Euclid-VIS-like focal plane and its per-quadrant TPV WCS.

Sky positions are compared in a tangent plane computed here independently of
the module (plain spherical trigonometry), never by RA ranges.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS
from numpy.typing import NDArray

from constellation.io.fits import card_image
from constellation.simulate import focal_plane as fp

# Pointings that must all work: RA wrap, EDF-N-like, near the south pole, pole inside the FPA.
SPECIAL_POINTINGS = [
    (0.0001, 0.0, 0.0),
    (359.9999, 0.0, 0.0),
    (0.0001, 66.0, 17.0),
    (359.9999, 66.0, 17.0),
    (359.9999, -89.5, 0.0),
    (0.0001, -89.5, 250.0),
    (123.0, -89.9, 45.0),
    (52.9, -28.1, 0.0),
]
#: SPECIAL_POINTINGS with all but an RA-wrap, a mid-latitude and a polar one ``slow``
#: (each ~1 s per test on 2 cores).
POINTINGS = [
    p if p in {(359.9999, 0.0, 0.0), (0.0001, 66.0, 17.0), (123.0, -89.9, 45.0)}
    else pytest.param(*p, marks=pytest.mark.slow)
    for p in SPECIAL_POINTINGS
]  # fmt: skip

Vec = NDArray[np.float64]


def tangent_arcsec(ra: Vec, dec: Vec, ra0: float, dec0: float) -> tuple[Vec, Vec]:
    """Gnomonic standard coordinates (xi east, eta north) about (ra0, dec0), arcsec."""
    a, d = np.radians(ra), np.radians(dec)
    a0, d0 = np.radians(ra0), np.radians(dec0)
    cos_c = np.sin(d0) * np.sin(d) + np.cos(d0) * np.cos(d) * np.cos(a - a0)
    xi = np.cos(d) * np.sin(a - a0) / cos_c
    eta = (np.cos(d0) * np.sin(d) - np.sin(d0) * np.cos(d) * np.cos(a - a0)) / cos_c
    return np.degrees(xi) * 3600.0, np.degrees(eta) * 3600.0


def to_fp_frame(xi: Vec, eta: Vec, pa: float) -> tuple[Vec, Vec]:
    """Standard coordinates -> FP (X, Y) for position angle pa (inverse rotation)."""
    c, s = np.cos(np.radians(pa)), np.sin(np.radians(pa))
    return c * xi - s * eta, s * xi + c * eta


def pixel_edges(nx: int, ny: int, per_edge: int) -> tuple[Vec, Vec]:
    """Closed boundary of a quadrant at the pixel edges, 0-based, counter-clockwise."""
    t = np.linspace(0.0, 1.0, per_edge, endpoint=False)
    x0, x1, y0, y1 = -0.5, nx - 0.5, -0.5, ny - 0.5
    xs = np.concatenate(
        [x0 + t * (x1 - x0), np.full_like(t, x1), x1 - t * (x1 - x0), np.full_like(t, x0)]
    )
    ys = np.concatenate(
        [np.full_like(t, y0), y0 + t * (y1 - y0), np.full_like(t, y1), y1 - t * (y1 - y0)]
    )
    return xs, ys


def pix2sky(w: WCS, x: Vec, y: Vec) -> tuple[Vec, Vec]:
    """0-based pixels to (ra, dec) through the full (TPV) WCS."""
    ra, dec = w.all_pix2world(x, y, 0)
    return np.asarray(ra, dtype=np.float64), np.asarray(dec, dtype=np.float64)


def inside_polygon(px: Vec, py: Vec, vx: Vec, vy: Vec) -> NDArray[np.bool_]:
    """Even-odd ray casting; vertices (vx, vy) form a closed polygon (last joins first)."""
    inside = np.zeros(px.shape, dtype=bool)
    wx, wy = np.roll(vx, -1), np.roll(vy, -1)
    for ax, ay, bx, by in zip(vx, vy, wx, wy, strict=True):
        crosses = (ay > py) != (by > py)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_at = ax + (py - ay) * (bx - ax) / (by - ay)
        inside ^= crosses & (px < x_at)
    return inside


def footprints_fp(
    ra0: float, dec0: float, pa: float, *, distortion: bool, binning: int = 1
) -> dict[str, tuple[Vec, Vec]]:
    """Quadrant corners (as quadrant_footprint) in the FP frame, arcsec."""
    out = {}
    for q in fp.QUADRANT_IDS:
        ra, dec = fp.quadrant_footprint(q, ra0, dec0, pa, binning, distortion=distortion)
        out[q] = to_fp_frame(*tangent_arcsec(ra, dec, ra0, dec0), pa)
    return out


def model_corners(q: str) -> tuple[Vec, Vec]:
    """Quadrant corners straight from the layout (arcsec), in quadrant_footprint order."""
    lay = fp.quadrant_layout(q)
    hw, hh = 0.5 * fp.QUADRANT_NX * 0.1, 0.5 * fp.QUADRANT_NY * 0.1
    sx = np.array([-1.0, 1.0, 1.0, -1.0]) * lay.x_sign
    sy = np.array([-1.0, -1.0, 1.0, 1.0]) * lay.y_sign
    return lay.x_center_arcsec + sx * hw, lay.y_center_arcsec + sy * hh


def ccd_boxes(corners: dict[str, tuple[Vec, Vec]]) -> Iterator[tuple[int, int, Vec]]:
    """(row, col, [xmin, xmax, ymin, ymax]) of each CCD from its quadrants' corners."""
    for i in range(1, 7):
        for j in range(1, 7):
            xs = np.concatenate([corners[f"{i}-{j}.{q}"][0] for q in "EFGH"])
            ys = np.concatenate([corners[f"{i}-{j}.{q}"][1] for q in "EFGH"])
            yield i, j, np.array([xs.min(), xs.max(), ys.min(), ys.max()])


# -- ids and layout -----------------------------------------------------------------


def test_144_unique_well_formed_ids() -> None:
    ids = fp.QUADRANT_IDS
    assert len(ids) == 144
    assert len(set(ids)) == 144
    assert all(re.fullmatch(r"[1-6]-[1-6]\.[EFGH]", q) for q in ids)
    layouts = fp.quadrant_layouts()
    assert [lay.quadrant_id for lay in layouts] == list(ids)
    for lay in layouts:
        assert lay.quadrant_id == f"{lay.ccd_row}-{lay.ccd_col}.{lay.letter}"
        assert lay.ccdid == f"{lay.ccd_row}-{lay.ccd_col}"
        assert lay.detid == 6 * (lay.ccd_row - 1) + (lay.ccd_col - 1)
        assert fp.layout(lay.quadrant_id) is lay
    assert sorted({lay.detid for lay in layouts}) == list(range(36))


def test_unknown_ids_and_bad_arguments_are_rejected() -> None:
    for bad in ("7-1.E", "3-4.A", "3-4F", "", "3-4.f"):
        with pytest.raises(KeyError):
            fp.quadrant_layout(bad)
    with pytest.raises(ValueError, match="dec"):
        fp.quadrant_wcs_header("3-4.F", 10.0, 91.0, 0.0)
    with pytest.raises(ValueError, match="finite"):
        fp.quadrant_wcs_header("3-4.F", float("nan"), 0.0, 0.0)
    for b in (0, -1, True, 2.0):
        with pytest.raises(ValueError, match="binning"):
            fp.quadrant_shape(b)  # type: ignore[arg-type]


def test_letters_sit_at_documented_ccd_corners_on_both_halves() -> None:
    """E/F/G/H at LL/LR/UR/UL in columns 1-3 and rotated by 180 deg in columns 4-6."""
    own = {"E": (-1, -1), "F": (1, -1), "G": (1, 1), "H": (-1, 1)}
    for i in range(1, 7):
        for j in range(1, 7):
            lays = {q: fp.quadrant_layout(f"{i}-{j}.{q}") for q in "EFGH"}
            cx = np.mean([lay.x_center_arcsec for lay in lays.values()])
            cy = np.mean([lay.y_center_arcsec for lay in lays.values()])
            flip = -1 if j >= 4 else 1
            for q, lay in lays.items():
                assert lay.rotated == (j >= 4)
                sx, sy = own[q][0] * flip, own[q][1] * flip
                assert np.sign(lay.x_center_arcsec - cx) == sx
                assert np.sign(lay.y_center_arcsec - cy) == sy
                # Pixel (0, 0) is at the read-out corner, i.e. the CCD's outer corner there.
                rx, ry = lay.readout_corner_arcsec
                assert rx == pytest.approx(cx + sx * 204.8, abs=1e-9)
                assert ry == pytest.approx(cy + sy * 206.8, abs=1e-9)
                assert (lay.x_sign, lay.y_sign) == (-sx, -sy)
                assert lay.mirrored == (q in "FH")
                assert lay.x_center_mm == pytest.approx(lay.x_center_arcsec * 0.12)


def test_quadrant_3_4_f_is_the_inner_one_173_arcsec_from_the_centre() -> None:
    """Matches the real data: 3-4.F's centre is ~173" from the pointing."""
    lays = [fp.quadrant_layout(f"3-4.{q}") for q in "EFGH"]
    dist = {lay.letter: float(np.hypot(lay.x_center_arcsec, lay.y_center_arcsec)) for lay in lays}
    assert min(dist, key=dist.__getitem__) == "F"
    assert dist["F"] == pytest.approx(173.0, abs=1.0)


# -- field of view, gaps, overlaps --------------------------------------------------


def test_field_of_view_is_euclid_like() -> None:
    ex, ey = fp.focal_plane_extent_deg()
    assert ex == pytest.approx(0.709, rel=0.03)
    assert ey == pytest.approx(0.787, rel=0.03)
    # The same measured on the sky from all footprints (tangent plane, FP axes).
    for ra0, dec0, pa in [(52.9, -28.1, 0.0), (359.9999, 66.0, 17.0)]:
        corners = footprints_fp(ra0, dec0, pa, distortion=False)
        xs = np.concatenate([c[0] for c in corners.values()])
        ys = np.concatenate([c[1] for c in corners.values()])
        assert (xs.max() - xs.min()) / 3600 == pytest.approx(ex, abs=0.01 / 3600)
        assert (ys.max() - ys.min()) / 3600 == pytest.approx(ey, abs=0.01 / 3600)
        assert abs(xs.max() + xs.min()) < 0.01  # centred on the pointing
        assert abs(ys.max() + ys.min()) < 0.01


@pytest.mark.parametrize("distortion", [False, True])
def test_ccds_are_separated_by_the_documented_gaps(distortion: bool) -> None:
    corners = footprints_fp(10.0, 66.0, 17.0, distortion=distortion)
    boxes = {(i, j): box for i, j, box in ccd_boxes(corners)}
    gx = [boxes[i, j + 1][0] - boxes[i, j][1] for i in range(1, 7) for j in range(1, 6)]
    gy = [boxes[i + 1, j][2] - boxes[i, j][3] for i in range(1, 6) for j in range(1, 7)]
    # Charge-injection gap between the lower (E, F on cols 1-3) and upper quadrant pairs.
    gci = []
    for i in range(1, 7):
        for j in range(1, 7):
            low, high = ("E", "H") if j <= 3 else ("H", "E")
            gci.append(corners[f"{i}-{j}.{high}"][1].min() - corners[f"{i}-{j}.{low}"][1].max())
    if distortion:  # the barrel term only pulls corners in: gaps widen a little
        assert fp.CCD_GAP_X_ARCSEC < min(gx) < max(gx) < fp.CCD_GAP_X_ARCSEC + 0.6
        assert fp.CCD_GAP_Y_ARCSEC < min(gy) < max(gy) < fp.CCD_GAP_Y_ARCSEC + 0.6
    else:
        np.testing.assert_allclose(gx, 12.7, atol=0.002)
        np.testing.assert_allclose(gy, 64.4, atol=0.002)
        np.testing.assert_allclose(gci, 0.4, atol=0.002)
        for i, j, box in ccd_boxes(corners):
            assert box[1] - box[0] == pytest.approx(409.6, abs=0.002), (i, j)
            assert box[3] - box[2] == pytest.approx(413.6, abs=0.002), (i, j)


@pytest.mark.parametrize(
    ("ra0", "dec0", "pa", "distortion"),
    [(0.0001, 66.0, 30.0, True), (359.9999, -89.5, 0.0, False), (52.9, -28.1, 0.0, True)],
)
def test_quadrant_footprints_do_not_overlap(
    ra0: float, dec0: float, pa: float, distortion: bool
) -> None:
    """Points sampled in every quadrant (down to 0.05 px from its edges) lie in no other."""
    nx, ny = fp.quadrant_shape(1)
    bx, by = pixel_edges(nx, ny, 16)
    gx, gy = np.meshgrid(np.linspace(-0.45, nx - 0.55, 9), np.linspace(-0.45, ny - 0.55, 9))
    polys, points = {}, {}
    for q in fp.QUADRANT_IDS:
        w = fp.quadrant_wcs(q, ra0, dec0, pa, distortion=distortion)
        polys[q] = tangent_arcsec(*pix2sky(w, bx, by), ra0, dec0)
        points[q] = tangent_arcsec(*pix2sky(w, gx.ravel(), gy.ravel()), ra0, dec0)
    all_q = np.repeat(np.arange(144), gx.size)
    px = np.concatenate([points[q][0] for q in fp.QUADRANT_IDS])
    py = np.concatenate([points[q][1] for q in fp.QUADRANT_IDS])
    for k, q in enumerate(fp.QUADRANT_IDS):
        vx, vy = polys[q]
        hit = inside_polygon(px, py, vx, vy)
        assert hit[all_q == k].all(), f"{q}: own samples outside its own boundary"
        others = np.unique(all_q[hit & (all_q != k)])
        assert others.size == 0, f"{q} overlaps {[fp.QUADRANT_IDS[o] for o in others]}"


# -- WCS headers --------------------------------------------------------------------


def test_header_keywords_and_astropy_round_trip() -> None:
    h = fp.quadrant_wcs_header("3-4.F", 52.9, -28.1, 10.0)
    assert h["CTYPE1"] == "RA---TPV"
    assert h["CTYPE2"] == "DEC--TPV"
    assert (h["NAXIS"], h["NAXIS1"], h["NAXIS2"]) == (2, 2048, 2066)
    assert (h["CRPIX1"], h["CRPIX2"]) == (1024.5, 1033.5)
    assert (h["DETID"], h["CCDID"]) == (15, "3-4")
    assert h["RADESYS"] == "ICRS"
    pv = {k: h[k] for k in h if k.startswith("PV")}
    assert set(pv) == {f"PV{a}_{m}" for a in (1, 2) for m in (0, 1, 2, 4, 5, 6, 7, 8, 9, 10)}
    assert pv["PV1_1"] == pv["PV2_1"] == 1.0
    assert pv["PV1_7"] == pv["PV1_9"] == pv["PV2_7"] == pv["PV2_9"] == fp.TPV_RADIAL_CUBIC_PER_DEG2
    assert not {"EXTNAME", "GAIN", "EXPTIME", "RA", "DEC", "PA"} & set(h)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no FITSFixedWarning etc.
        w = WCS(h)
        hdu = fits.ImageHDU(np.zeros((2066, 2048), np.float32), header=h, name="3-4.F.SCI")
        hdu.verify("exception")
        back = WCS(fits.Header.fromstring(hdu.header.tostring()))
    assert "TAN" in w.wcs.ctype[0]
    assert "TAN" in w.wcs.ctype[1]
    assert w.pixel_shape == (2048, 2066)
    assert w.to_header()["CTYPE1"] == "RA---TPV"
    p = np.array([[0.0, 0.0], [2047.0, 2065.0], [100.5, 1900.25], [1023.5, 1032.5]])
    np.testing.assert_allclose(back.all_pix2world(p, 0), w.all_pix2world(p, 0), rtol=0, atol=1e-12)
    plain = fp.quadrant_wcs_header("3-4.F", 52.9, -28.1, 10.0, distortion=False)
    assert plain["CTYPE1"] == "RA---TAN"
    assert not [k for k in plain if k.startswith("PV")]


@pytest.mark.parametrize(("ra0", "dec0", "pa"), POINTINGS)
def test_quadrant_wcs_is_the_wcs_astropy_makes_of_the_header(
    ra0: float, dec0: float, pa: float
) -> None:
    """``quadrant_wcs`` skips ``WCS(header)``'s Python work, not its result."""
    rng = np.random.default_rng(11)
    for b, distortion in ((1, True), (1, False), (8, True)):
        nx, ny = fp.quadrant_shape(b)
        x, y = rng.uniform(-5.0, nx + 5.0, 200), rng.uniform(-5.0, ny + 5.0, 200)
        for q in fp.QUADRANT_IDS[::23]:
            args = (q, ra0, dec0, pa)
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # nothing to fix, as WCS(h) in the test above
                w = fp.quadrant_wcs(*args, binning=b, distortion=distortion)
            cards = fp.quadrant_wcs_cards(*args, binning=b, distortion=distortion)
            # the header as the simulator writes it: the same WCS, bit for bit
            full = WCS("".join(card_image(k, v, c) for k, v, c in cards))
            assert w.pixel_shape == full.pixel_shape == (nx, ny)
            assert w.to_header_string() == full.to_header_string()
            sky = w.all_pix2world(x, y, 0)
            np.testing.assert_array_equal(sky, full.all_pix2world(x, y, 0))
            np.testing.assert_array_equal(w.all_world2pix(*sky, 0), full.all_world2pix(*sky, 0))
            # astropy's Header of the cards rounds CD to 15 digits: the same to < 1 uas
            old = WCS(fp.quadrant_wcs_header(*args, binning=b, distortion=distortion))
            xi, eta = tangent_arcsec(*pix2sky(old, x, y), ra0, dec0)
            wx, wy = tangent_arcsec(*pix2sky(w, x, y), ra0, dec0)
            assert np.hypot(wx - xi, wy - eta).max() < 1e-6


@pytest.mark.parametrize(("ra0", "dec0", "pa"), POINTINGS)
def test_every_header_round_trips_pixels(ra0: float, dec0: float, pa: float) -> None:
    rng = np.random.default_rng(7)
    for b, ids in ((1, fp.QUADRANT_IDS), (8, fp.QUADRANT_IDS[::5])):
        nx, ny = fp.quadrant_shape(b)
        p = np.column_stack([rng.uniform(-0.5, nx - 0.5, 50), rng.uniform(-0.5, ny - 0.5, 50)])
        p = np.vstack([p, [[-0.5, -0.5], [nx - 0.5, ny - 0.5]]])
        for q in ids:
            w = fp.quadrant_wcs(q, ra0, dec0, pa, binning=b)
            world = w.all_pix2world(p, 0)
            assert np.all((world[:, 0] >= 0) & (world[:, 0] < 360))
            np.testing.assert_allclose(w.all_world2pix(world, 0, tolerance=1e-9), p, atol=1e-6)


@pytest.mark.parametrize(("ra0", "dec0", "pa"), POINTINGS)
def test_tan_headers_reproduce_the_focal_plane_model(ra0: float, dec0: float, pa: float) -> None:
    """distortion=False: WCS == layout + gnomonic about the pointing, to < 0.01 px."""
    nx, ny = fp.quadrant_shape(1)
    x, y = pixel_edges(nx, ny, 4)
    x, y = np.append(x, [1023.5, 300.0]), np.append(y, [1032.5, 1700.0])
    for q in fp.QUADRANT_IDS:
        w = fp.quadrant_wcs(q, ra0, dec0, pa, distortion=False)
        fx, fy = fp.pixel_to_focal_plane(q, x, y)
        ra, dec = fp.focal_plane_to_sky(fx, fy, ra0, dec0, pa)
        # The module's own projection against the independent one here.
        tx, ty = to_fp_frame(*tangent_arcsec(ra, dec, ra0, dec0), pa)
        np.testing.assert_allclose(tx, fx, atol=1e-6)
        np.testing.assert_allclose(ty, fy, atol=1e-6)
        bx, by = fp.sky_to_focal_plane(ra, dec, ra0, dec0, pa)
        np.testing.assert_allclose(bx, fx, atol=1e-6)
        np.testing.assert_allclose(by, fy, atol=1e-6)
        px, py = w.all_world2pix(ra, dec, 0)
        assert np.max(np.hypot(px - x, py - y)) < 0.01, q


@pytest.mark.parametrize(("ra0", "dec0", "pa"), POINTINGS)
def test_crval_is_the_quadrant_centre_and_lies_inside_it(
    ra0: float, dec0: float, pa: float
) -> None:
    for q in fp.QUADRANT_IDS:
        h = {k: v for k, v, _ in fp.quadrant_wcs_cards(q, ra0, dec0, pa)}  # as Header(cards)
        lay = fp.quadrant_layout(q)
        assert isinstance(h["CRVAL1"], float)
        assert isinstance(h["CRVAL2"], float)
        assert 0.0 <= h["CRVAL1"] < 360.0
        cx, cy = to_fp_frame(
            *tangent_arcsec(np.array([h["CRVAL1"]]), np.array([h["CRVAL2"]]), ra0, dec0), pa
        )
        assert cx[0] == pytest.approx(lay.x_center_arcsec, abs=1e-6)
        assert cy[0] == pytest.approx(lay.y_center_arcsec, abs=1e-6)
        w = fp.quadrant_wcs(q, ra0, dec0, pa)
        assert tuple(w.wcs.crval) == pytest.approx((h["CRVAL1"], h["CRVAL2"]), rel=0, abs=1e-12)
        vx, vy = tangent_arcsec(*pix2sky(w, *pixel_edges(2048, 2066, 2)), ra0, dec0)
        kx, ky = tangent_arcsec(np.array([h["CRVAL1"]]), np.array([h["CRVAL2"]]), ra0, dec0)
        assert inside_polygon(kx, ky, vx, vy)[0], q
        px, py = w.all_world2pix(h["CRVAL1"], h["CRVAL2"], 0)
        assert (float(px), float(py)) == pytest.approx((1023.5, 1032.5), abs=1e-6)


# -- scale, binning, orientation ----------------------------------------------------


def local_scale_arcsec(w: WCS, x: float, y: float) -> tuple[float, float]:
    """Sky distance (arcsec) from pixel (x, y) to (x + 1, y) and to (x, y + 1)."""
    ra, dec = w.all_pix2world([x, x + 1, x], [y, y, y + 1], 0)
    tx, ty = tangent_arcsec(ra, dec, float(ra[0]), float(dec[0]))
    return float(np.hypot(tx[1], ty[1])), float(np.hypot(tx[2], ty[2]))


@pytest.mark.parametrize(("ra0", "dec0", "pa"), [(52.9, -28.1, 0.0), (359.9999, -89.5, 77.0)])
def test_pixel_scale_and_binned_footprint(ra0: float, dec0: float, pa: float) -> None:
    assert fp.quadrant_shape(1) == (2048, 2066)
    assert fp.quadrant_shape(8) == (256, 258)
    for q in ("1-1.E", "3-4.F", "6-6.G", "2-5.H"):
        w1 = fp.quadrant_wcs(q, ra0, dec0, pa)
        w8 = fp.quadrant_wcs(q, ra0, dec0, pa, binning=8)
        assert w8.pixel_shape == (256, 258)
        for w, b in ((w1, 1), (w8, 8)):
            cd = w.pixel_scale_matrix * 3600.0
            assert np.sqrt(abs(np.linalg.det(cd))) == pytest.approx(0.1 * b, rel=1e-4)
            nx, ny = w.pixel_shape
            sx, sy = local_scale_arcsec(w, 0.5 * (nx - 1), 0.5 * (ny - 1))
            assert (sx, sy) == pytest.approx((0.1 * b, 0.1 * b), rel=1e-4)
            sx, sy = local_scale_arcsec(w, 0.0, 0.0)  # barrel: slightly smaller at corners
            assert (sx, sy) == pytest.approx((0.1 * b, 0.1 * b), rel=0.01)
        # Same sky footprint, corner by corner (same read-out corner first).
        ra1, dec1 = fp.quadrant_footprint(q, ra0, dec0, pa, 1)
        ra8, dec8 = fp.quadrant_footprint(q, ra0, dec0, pa, 8)
        x1, y1 = tangent_arcsec(ra1, dec1, ra0, dec0)
        x8, y8 = tangent_arcsec(ra8, dec8, ra0, dec0)
        d = np.hypot(x8 - x1, y8 - y1)
        assert d.max() < 1.0
        assert d.max() < 0.3  # round(2066 / 8) * 8 = 2064: 1 px per edge at most, plus PV
        assert h_det_sign(w1) == h_det_sign(w8)


def h_det_sign(w: WCS) -> float:
    return float(np.sign(np.linalg.det(w.pixel_scale_matrix)))


def test_det_cd_has_both_signs_and_the_halves_differ_by_180_deg() -> None:
    ra0, dec0, pa = 30.0, 0.0, 0.0
    dets = {}
    x_angle = {}
    for q in fp.QUADRANT_IDS:
        cd = fp.quadrant_wcs(q, ra0, dec0, pa).pixel_scale_matrix
        dets[q] = np.linalg.det(cd)
        x_angle[q] = np.degrees(np.arctan2(cd[1, 0], cd[0, 0]))  # direction of pixel +x
    signs = {q: np.sign(d) for q, d in dets.items()}
    assert {signs[q] for q in fp.QUADRANT_IDS} == {-1.0, 1.0}
    for q in fp.QUADRANT_IDS:  # E, G mirrored on the sky (det > 0); F, H usual parity
        assert signs[q] == (1.0 if q[-1] in "EG" else -1.0), q
    assert dets["3-4.F"] < 0  # positive Jacobian in SHINE's (u, v) = (-RA cos dec, Dec)
    for i in range(1, 7):
        for j in range(1, 4):
            for letter in "EFGH":
                a = x_angle[f"{i}-{j}.{letter}"]
                b = x_angle[f"{i}-{j + 3}.{letter}"]
                diff = (b - a) % 360.0
                assert diff == pytest.approx(180.0, abs=0.05), (i, j, letter)
                c = x_angle[f"{i}-{(j % 3) + 1}.{letter}"]  # same half: same direction
                assert abs(((c - a + 180.0) % 360.0) - 180.0) < 0.05


@pytest.mark.parametrize("dec0", [0.0, 66.0, -89.5])
def test_footprints_are_continuous_across_ra_zero(dec0: float) -> None:
    """RA 0.0001 vs 359.9999: same shapes, shifted by 0.0002 deg of RA."""
    east = tangent_arcsec(np.array([0.0001]), np.array([dec0]), 0.0, dec0)
    west = tangent_arcsec(np.array([359.9999]), np.array([dec0]), 0.0, dec0)
    for q in fp.QUADRANT_IDS[::7]:
        r1, d1 = fp.quadrant_footprint(q, 0.0001, dec0, 0.0)
        r2, d2 = fp.quadrant_footprint(q, 359.9999, dec0, 0.0)
        x1, y1 = tangent_arcsec(r1, d1, 0.0, dec0)
        x2, y2 = tangent_arcsec(r2, d2, 0.0, dec0)
        # Offset about each pointing (the relevant frame), then the pointing offset itself.
        assert np.hypot(x1 - x2, y1 - y2).max() < 0.72 + 0.01
        np.testing.assert_allclose(x1 - east[0][0], x2 - west[0][0], atol=0.05)
        np.testing.assert_allclose(y1 - east[1][0], y2 - west[1][0], atol=0.05)
        # Quadrant size is preserved (nothing 360 deg wide).
        assert np.hypot(x1[1] - x1[0], y1[1] - y1[0]) == pytest.approx(204.8, abs=0.5)


@pytest.mark.parametrize(("ra0", "dec0"), [(52.9, -28.1), (359.9999, 66.0), (0.0001, -89.5)])
def test_position_angle_rotates_footprints(ra0: float, dec0: float) -> None:
    base = {
        q: tangent_arcsec(*fp.quadrant_footprint(q, ra0, dec0, 0.0), ra0, dec0)
        for q in fp.QUADRANT_IDS[::5]
    }
    for pa in (90.0, 37.0):
        c, s = np.cos(np.radians(pa)), np.sin(np.radians(pa))
        for q, (xi0, eta0) in base.items():
            xi, eta = tangent_arcsec(*fp.quadrant_footprint(q, ra0, dec0, pa), ra0, dec0)
            # +Y turns from north towards east by pa.
            np.testing.assert_allclose(xi, c * xi0 + s * eta0, atol=5e-3)
            np.testing.assert_allclose(eta, -s * xi0 + c * eta0, atol=5e-3)
            if pa == 90.0:
                np.testing.assert_allclose(xi, eta0, atol=5e-3)
                np.testing.assert_allclose(eta, -xi0, atol=5e-3)
    # The whole FPA: at pa = 90 the east-west and north-south extents swap.
    ex, ey = fp.focal_plane_extent_deg()
    outer = [q for q in fp.QUADRANT_IDS if {q[0], q[2]} & {"1", "6"}]  # outer ring of CCDs
    for pa, (wx, wy) in ((0.0, (ex, ey)), (90.0, (ey, ex))):
        xs, ys = [], []
        for q in outer:
            xi, eta = tangent_arcsec(*fp.quadrant_footprint(q, ra0, dec0, pa), ra0, dec0)
            xs.append(xi)
            ys.append(eta)
        assert (np.ptp(np.concatenate(xs)) / 3600, np.ptp(np.concatenate(ys)) / 3600) == (
            pytest.approx((wx, wy), abs=2e-4)
        )


# -- distortion ---------------------------------------------------------------------


def test_tpv_distortion_is_a_barrel_of_1_to_3_pixels_at_the_corners() -> None:
    nx, ny = fp.quadrant_shape(1)
    x = np.array([-0.5, nx - 0.5, nx - 0.5, -0.5, 0.5 * (nx - 1), nx - 0.5])
    y = np.array([-0.5, -0.5, ny - 0.5, ny - 0.5, 0.5 * (ny - 1), 0.5 * (ny - 1)])
    worst = 0.0
    for q in fp.QUADRANT_IDS[::11]:
        tpv = fp.quadrant_wcs(q, 200.0, 40.0, 12.0)
        tan = fp.quadrant_wcs(q, 200.0, 40.0, 12.0, distortion=False)
        px, py = tan.all_world2pix(*tpv.all_pix2world(x, y, 0), 0)
        shift = np.hypot(px - x, py - y)
        worst = max(worst, float(shift[:4].max()))
        assert 1.0 < shift[:4].min() <= shift[:4].max() < 3.0
        assert shift[4] < 1e-6  # none at the tangent point
        assert 0.3 < shift[5] < 1.0  # edge midpoint
        cx, cy = 0.5 * (nx - 1), 0.5 * (ny - 1)  # barrel: towards the centre
        assert np.all(np.hypot(px[:4] - cx, py[:4] - cy) < np.hypot(x[:4] - cx, y[:4] - cy))
    assert worst == pytest.approx(1.90, abs=0.02)
