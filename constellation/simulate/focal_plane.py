"""A Euclid-VIS-like focal plane and a TPV WCS for each of its 144 quadrants.

Pure and deterministic: no I/O, no randomness. Only numpy and astropy.

Focal-plane frame
-----------------
Positions on the focal plane (FP) are ``(X, Y)`` in arcsec in the gnomonic
plane tangent at the pointing (the FPA centre). At position angle ``pa = 0``
``X`` points **east** and ``Y`` **north**, so ``(X, Y)`` are then exactly the
FITS standard coordinates ``(xi, eta)`` about the pointing. ``pa`` (degrees,
east of north) is the position angle of ``+Y``; the frame turns rigidly::

    xi  =  X cos(pa) + Y sin(pa)
    eta = -X sin(pa) + Y cos(pa)

so ``pa = 90`` puts ``+Y`` on east and ``+X`` on south. (The FP drawn with ``X``
right and ``Y`` up is therefore the sky seen with east *right*: a mirror image
of the usual picture. This choice gives quadrant ``3-4.F`` the usual sky
parity, as SHINE's test asserts for real data; see below.)

CCDs and quadrants
------------------
* 6 x 6 CCDs. CCD ``i-j``: row ``i`` (1 at ``-Y``, 6 at ``+Y``) and column ``j``
  (1 at ``-X``, 6 at ``+X``), centred at ``X = (j - 3.5) * 422.3"``,
  ``Y = (i - 3.5) * 478.0"``.
* A CCD is 2 x 2 quadrants of 2048 (x) x 2066 (y) pixels of 0.1" (12 um).
  Between its lower and upper quadrant pairs sit the 4 charge-injection rows
  (0.4", not part of any quadrant), so a CCD spans 4096 x 4136 pixel pitches
  (409.6" x 413.6"); the left and right halves touch (no gap).
* Gaps between CCDs: 12.7" in ``X`` and 64.4" in ``Y``. The FPA envelope is then
  0.7003 deg (``X``) x 0.7788 deg (``Y``), 1.2 % and 1.0 % under the quoted
  0.709 deg x 0.787 deg field of view.
* Quadrant letters are the read-out corners. In a CCD's own frame E is
  lower-left, F lower-right, G upper-right and H upper-left. CCDs in columns
  1-3 sit in the FP as drawn; CCDs in columns 4-6 are rotated by 180 deg, so
  there E is upper-right, F upper-left, G lower-left and H lower-right.
* A quadrant's pixel ``(0, 0)`` is at its read-out corner (the CCD's outer
  corner) and its pixel axes point into the CCD. Within a CCD the quadrant
  axes are therefore mirrored against each other: E and G map pixels to the
  FP with determinant +1 and F and H with -1, on both halves (a 180 deg
  rotation keeps parity). On the sky this gives ``det(CD) > 0`` (east along
  ``+x`` when north is along ``+y``: mirrored) for E and G and ``det(CD) < 0``
  (the usual north-up, east-left parity) for F and H. Consistency check:
  ``3-4.F`` comes out as the quadrant of CCD 3-4 nearest the FPA centre,
  173.7" from it (real data: ~173"), with ``det(CD) < 0``, i.e. a positive
  Jacobian in SHINE's ``(u, v) = (-RA cos dec, Dec)`` frame.
* ``DETID = 6 (i - 1) + (j - 1)`` (0..35, row-major) and ``CCDID = "i-j"``. The
  real DETID <-> CCDID map is not this simple (real DETID 26 is CCD 3-4; here
  it is 15); never infer one from the other in code meant for real data.

WCS
---
Each quadrant gets its own tangent point: ``CRVAL`` is the sky position of the
quadrant centre, ``CRPIX`` the centre pixel ``((NAXIS1 + 1) / 2, (NAXIS2 + 1) / 2)``
(FITS, 1-based) and ``CD`` the exact local Jacobian of the FP model at that
centre (0.1"/px times the quadrant's flips, the 180 deg half, ``pa`` and the
small change of "north" between the pointing and the quadrant centre, which is
large near the poles). Mapping the FP plane onto the quadrant's own tangent
plane is a projective map; its curvature over one quadrant is below 0.01 px,
so with ``distortion=False`` the TAN header reproduces the FP model (see
:func:`pixel_to_focal_plane` and :func:`focal_plane_to_sky`) to that level.

With ``distortion=True`` (default) the header is TPV and adds a barrel-like
cubic term about the quadrant centre, the same in every quadrant. TPV terms
act on the intermediate world coordinates ``(x, y) = CD (p - CRPIX)`` in
degrees::

    xi'  = x + K (x**3 + x y**2)     PV1_1 = 1, PV1_7 = PV1_9 = K
    eta' = y + K (y**3 + y x**2)     PV2_1 = 1, PV2_7 = PV2_9 = K

with ``K = TPV_RADIAL_CUBIC_PER_DEG2 = -0.8 deg**-2`` and every other
``PV1_0..10`` / ``PV2_0..10`` term written as 0 (``PVi_3``, the ``r`` term, is not
written). It pulls the corners in by 1.90 native pixels and the edge midpoints
by ~0.66 px, so quadrants never overlap (it only widens the gaps). The
distortion is part of the truth: positions must go through
``all_pix2world`` / ``all_world2pix``.

Binning
-------
``binning = b`` (the simulator's light mode) keeps the sky footprint and uses
``NAXIS = round(native / b)`` pixels (half up) of ``b`` native pixels each, centred
on the quadrant centre: ``b = 8`` gives 256 x 258 pixels of 0.8". The binned
footprint differs from the native one by at most ``b / 4`` native pixels per
edge (0.2" for ``b = 8``). ``CD`` is scaled by ``b``; the PV terms are unchanged
(they act in degrees). Binned pixel ``(0, 0)`` still sits at the read-out corner.

Header keywords
---------------
:func:`quadrant_wcs_header` writes only ``WCSAXES NAXIS NAXIS1 NAXIS2 CTYPE1/2
CUNIT1/2 CRPIX1/2 CRVAL1/2 CD1_1 CD1_2 CD2_1 CD2_2 RADESYS`` and, with distortion,
``PV1_0 PV1_1 PV1_2 PV1_4..PV1_10`` and the same for ``PV2``, plus ``DETID`` and
``CCDID``. Everything else (``EXTNAME``, ``GAIN``, ``EXPTIME``, ``RA/DEC/PA``,
``DATE-OBS`` ...) is the writer's job.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, Wcsprm
from numpy.typing import ArrayLike, NDArray

from constellation.io.fits import card_image

__all__ = [
    "CCD_GAP_X_ARCSEC",
    "CCD_GAP_Y_ARCSEC",
    "CCD_HEIGHT_ARCSEC",
    "CCD_PITCH_X_ARCSEC",
    "CCD_PITCH_Y_ARCSEC",
    "CCD_WIDTH_ARCSEC",
    "CHARGE_INJECTION_ROWS",
    "N_CCD_COLS",
    "N_CCD_ROWS",
    "PIXEL_SCALE_ARCSEC",
    "PIXEL_SIZE_MM",
    "QUADRANT_IDS",
    "QUADRANT_LETTERS",
    "QUADRANT_NX",
    "QUADRANT_NY",
    "TPV_RADIAL_CUBIC_PER_DEG2",
    "QuadrantLayout",
    "focal_plane_extent_deg",
    "focal_plane_to_sky",
    "layout",
    "pixel_to_focal_plane",
    "quadrant_footprint",
    "quadrant_layout",
    "quadrant_layouts",
    "quadrant_shape",
    "quadrant_wcs",
    "quadrant_wcs_header",
    "sky_to_focal_plane",
]

PIXEL_SCALE_ARCSEC: Final = 0.1
PIXEL_SIZE_MM: Final = 0.012
QUADRANT_NX: Final = 2048
QUADRANT_NY: Final = 2066
CHARGE_INJECTION_ROWS: Final = 4
N_CCD_ROWS: Final = 6
N_CCD_COLS: Final = 6
CCD_GAP_X_ARCSEC: Final = 12.7
CCD_GAP_Y_ARCSEC: Final = 64.4
QUADRANT_LETTERS: Final = ("E", "F", "G", "H")
TPV_RADIAL_CUBIC_PER_DEG2: Final = -0.8

_QUAD_W_ARCSEC: Final = QUADRANT_NX * PIXEL_SCALE_ARCSEC  # 204.8
_QUAD_H_ARCSEC: Final = QUADRANT_NY * PIXEL_SCALE_ARCSEC  # 206.6
_CI_GAP_ARCSEC: Final = CHARGE_INJECTION_ROWS * PIXEL_SCALE_ARCSEC  # 0.4
CCD_WIDTH_ARCSEC: Final = 2 * _QUAD_W_ARCSEC  # 409.6
CCD_HEIGHT_ARCSEC: Final = 2 * _QUAD_H_ARCSEC + _CI_GAP_ARCSEC  # 413.6
CCD_PITCH_X_ARCSEC: Final = CCD_WIDTH_ARCSEC + CCD_GAP_X_ARCSEC  # 422.3
CCD_PITCH_Y_ARCSEC: Final = CCD_HEIGHT_ARCSEC + CCD_GAP_Y_ARCSEC  # 478.0

_ARCSEC_PER_RAD: Final = 180.0 * 3600.0 / math.pi
_MM_PER_ARCSEC: Final = PIXEL_SIZE_MM / PIXEL_SCALE_ARCSEC

# Read-out corner of each letter in a CCD's own frame: (-1 = low, +1 = high) in (x, y).
_OWN_CORNER: Final = {"E": (-1, -1), "F": (1, -1), "G": (1, 1), "H": (-1, 1)}
# CCD columns whose CCDs are rotated by 180 deg in the FP.
_ROTATED_COLS: Final = frozenset({4, 5, 6})

QUADRANT_IDS: Final[tuple[str, ...]] = tuple(
    f"{i}-{j}.{q}"
    for i in range(1, N_CCD_ROWS + 1)
    for j in range(1, N_CCD_COLS + 1)
    for q in QUADRANT_LETTERS
)


@dataclass(frozen=True, slots=True)
class QuadrantLayout:
    """Where one quadrant sits in the focal plane and how its pixel axes point.

    Attributes
    ----------
    quadrant_id
        ``"{ccd_row}-{ccd_col}.{letter}"``.
    ccd_row, ccd_col
        CCD row (1 at ``-Y``) and column (1 at ``-X``), 1..6.
    letter
        Read-out corner, one of E, F, G, H.
    detid, ccdid
        Header values ``DETID`` (``6 (row - 1) + (col - 1)``; not the real map)
        and ``CCDID`` (``"row-col"``).
    rotated
        True for CCDs in the half of the FPA rotated by 180 deg (columns 4-6).
    x_center_arcsec, y_center_arcsec
        Quadrant centre in the FP frame (arcsec, gnomonic about the pointing).
    x_sign, y_sign
        Direction along FP ``X`` / ``Y`` of increasing pixel ``x`` / ``y`` (+1 or -1):
        ``X = x_center + x_sign * (x - (nx - 1) / 2) * scale`` and likewise ``Y``.
    """

    quadrant_id: str
    ccd_row: int
    ccd_col: int
    letter: str
    detid: int
    ccdid: str
    rotated: bool
    x_center_arcsec: float
    y_center_arcsec: float
    x_sign: int
    y_sign: int

    @property
    def mirrored(self) -> bool:
        """True if pixel ``(x, y)`` maps to the FP with determinant -1 (F and H)."""
        return self.x_sign * self.y_sign < 0

    @property
    def x_center_mm(self) -> float:
        """``x_center_arcsec`` in mm on the detector (12 um per 0.1" pixel)."""
        return self.x_center_arcsec * _MM_PER_ARCSEC

    @property
    def y_center_mm(self) -> float:
        """``y_center_arcsec`` in mm on the detector (12 um per 0.1" pixel)."""
        return self.y_center_arcsec * _MM_PER_ARCSEC

    @property
    def readout_corner_arcsec(self) -> tuple[float, float]:
        """FP position (arcsec) of the outer corner of pixel ``(0, 0)``."""
        return (
            self.x_center_arcsec - 0.5 * self.x_sign * _QUAD_W_ARCSEC,
            self.y_center_arcsec - 0.5 * self.y_sign * _QUAD_H_ARCSEC,
        )

    def pixel_matrix(self) -> NDArray[np.float64]:
        """2x2 matrix taking pixel offsets to FP offsets, in native pixels -> pixels."""
        return np.array([[float(self.x_sign), 0.0], [0.0, float(self.y_sign)]])


def _build_layout(quadrant_id: str) -> QuadrantLayout:
    ccd, letter = quadrant_id.split(".")
    row_s, col_s = ccd.split("-")
    row, col = int(row_s), int(col_s)
    rotated = col in _ROTATED_COLS
    cx, cy = _OWN_CORNER[letter]
    if rotated:
        cx, cy = -cx, -cy
    x_ccd = (col - 0.5 * (N_CCD_COLS + 1)) * CCD_PITCH_X_ARCSEC
    y_ccd = (row - 0.5 * (N_CCD_ROWS + 1)) * CCD_PITCH_Y_ARCSEC
    return QuadrantLayout(
        quadrant_id=quadrant_id,
        ccd_row=row,
        ccd_col=col,
        letter=letter,
        detid=N_CCD_COLS * (row - 1) + (col - 1),
        ccdid=ccd,
        rotated=rotated,
        x_center_arcsec=x_ccd + cx * 0.5 * _QUAD_W_ARCSEC,
        y_center_arcsec=y_ccd + cy * 0.5 * (_CI_GAP_ARCSEC + _QUAD_H_ARCSEC),
        x_sign=-cx,
        y_sign=-cy,
    )


_LAYOUTS: Final[dict[str, QuadrantLayout]] = {q: _build_layout(q) for q in QUADRANT_IDS}


def quadrant_layout(quadrant_id: str) -> QuadrantLayout:
    """The layout of one quadrant; raises ``KeyError`` for an unknown id."""
    try:
        return _LAYOUTS[quadrant_id]
    except KeyError:
        raise KeyError(f"unknown quadrant id {quadrant_id!r} (expected e.g. '3-4.F')") from None


layout = quadrant_layout  # short alias


def quadrant_layouts() -> tuple[QuadrantLayout, ...]:
    """All 144 layouts, in the order of :data:`QUADRANT_IDS`."""
    return tuple(_LAYOUTS[q] for q in QUADRANT_IDS)


def focal_plane_extent_deg() -> tuple[float, float]:
    """Envelope of the 36 CCDs along FP ``X`` and ``Y`` in degrees: about (0.7003, 0.7788)."""
    x = N_CCD_COLS * CCD_WIDTH_ARCSEC + (N_CCD_COLS - 1) * CCD_GAP_X_ARCSEC
    y = N_CCD_ROWS * CCD_HEIGHT_ARCSEC + (N_CCD_ROWS - 1) * CCD_GAP_Y_ARCSEC
    return x / 3600.0, y / 3600.0


def _check_binning(binning: int) -> int:
    if isinstance(binning, bool) or not isinstance(binning, int | np.integer) or binning < 1:
        raise ValueError(f"binning must be an integer >= 1, got {binning!r}")
    return int(binning)


def quadrant_shape(binning: int = 1) -> tuple[int, int]:
    """``(NAXIS1, NAXIS2)`` of a quadrant image binned by ``binning`` (half-up rounding).

    1 -> (2048, 2066), 2 -> (1024, 1033), 4 -> (512, 517), 8 -> (256, 258).
    The numpy array shape is the reverse, ``(NAXIS2, NAXIS1)``.
    """
    b = _check_binning(binning)
    return (
        max(1, (2 * QUADRANT_NX + b) // (2 * b)),
        max(1, (2 * QUADRANT_NY + b) // (2 * b)),
    )


def _check_pointing(ra_deg: float, dec_deg: float, pa_deg: float) -> None:
    if not all(math.isfinite(float(v)) for v in (ra_deg, dec_deg, pa_deg)):
        raise ValueError(f"pointing must be finite, got ra={ra_deg} dec={dec_deg} pa={pa_deg}")
    if not -90.0 <= dec_deg <= 90.0:
        raise ValueError(f"dec_deg={dec_deg} outside [-90, 90]")


def _unit_vector(ra_deg: ArrayLike, dec_deg: ArrayLike) -> NDArray[np.float64]:
    a = np.radians(np.asarray(ra_deg, dtype=np.float64))
    d = np.radians(np.asarray(dec_deg, dtype=np.float64))
    return np.stack([np.cos(d) * np.cos(a), np.cos(d) * np.sin(a), np.sin(d)], axis=-1)


def _east_north(
    ra_deg: ArrayLike, dec_deg: ArrayLike
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Local east and north unit vectors; at a pole, the limit along meridian ``ra``."""
    a = np.radians(np.asarray(ra_deg, dtype=np.float64))
    d = np.radians(np.asarray(dec_deg, dtype=np.float64))
    east = np.stack([-np.sin(a), np.cos(a), np.zeros_like(a)], axis=-1)
    north = np.stack([-np.sin(d) * np.cos(a), -np.sin(d) * np.sin(a), np.cos(d)], axis=-1)
    return east, north


def _fp_axes(
    ra_deg: float, dec_deg: float, pa_deg: float
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Pointing unit vector and the sky directions of FP ``+X`` and ``+Y``."""
    p0 = _unit_vector(ra_deg, dec_deg)
    e0, n0 = _east_north(ra_deg, dec_deg)
    c, s = math.cos(math.radians(pa_deg)), math.sin(math.radians(pa_deg))
    return p0, c * e0 - s * n0, s * e0 + c * n0


def _vector_to_sky(w: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    ra = np.degrees(np.arctan2(w[..., 1], w[..., 0])) % 360.0
    ra = np.where(ra >= 360.0, ra - 360.0, ra)
    dec = np.degrees(np.arctan2(w[..., 2], np.hypot(w[..., 0], w[..., 1])))
    return ra, dec


def focal_plane_to_sky(
    x_arcsec: ArrayLike, y_arcsec: ArrayLike, ra_deg: float, dec_deg: float, pa_deg: float
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """FP ``(X, Y)`` (arcsec) to sky ``(ra in [0, 360), dec)`` (deg) for a pointing."""
    _check_pointing(ra_deg, dec_deg, pa_deg)
    p0, ax, ay = _fp_axes(ra_deg, dec_deg, pa_deg)
    x = np.asarray(x_arcsec, dtype=np.float64)[..., None] / _ARCSEC_PER_RAD
    y = np.asarray(y_arcsec, dtype=np.float64)[..., None] / _ARCSEC_PER_RAD
    return _vector_to_sky(p0 + x * ax + y * ay)


def sky_to_focal_plane(
    ra_deg: ArrayLike, dec_deg: ArrayLike, ra0_deg: float, dec0_deg: float, pa_deg: float
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Inverse of :func:`focal_plane_to_sky`; nan for points >= 90 deg from the pointing."""
    _check_pointing(ra0_deg, dec0_deg, pa_deg)
    p0, ax, ay = _fp_axes(ra0_deg, dec0_deg, pa_deg)
    v = _unit_vector(ra_deg, dec_deg)
    cos_r = v @ p0
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = np.where(cos_r > 0, 1.0 / cos_r, np.nan) * _ARCSEC_PER_RAD
    return (v @ ax) * inv, (v @ ay) * inv


def pixel_to_focal_plane(
    quadrant_id: str, x: ArrayLike, y: ArrayLike, binning: int = 1
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """0-based pixel ``(x, y)`` of a (binned) quadrant to FP ``(X, Y)`` in arcsec.

    This is the undistorted model; the TPV header adds the PV distortion on top.
    """
    lay = quadrant_layout(quadrant_id)
    b = _check_binning(binning)
    nx, ny = quadrant_shape(b)
    step = b * PIXEL_SCALE_ARCSEC
    xa = np.asarray(x, dtype=np.float64)
    ya = np.asarray(y, dtype=np.float64)
    return (
        lay.x_center_arcsec + lay.x_sign * (xa - 0.5 * (nx - 1)) * step,
        lay.y_center_arcsec + lay.y_sign * (ya - 0.5 * (ny - 1)) * step,
    )


def _pv_cards(axis: int, k: float) -> list[tuple[str, float, str]]:
    # TPV terms 0..10 without 3 (r): 1, x, y, x^2, xy, y^2, x^3, x^2 y, x y^2, y^3
    # (for PV2 read x <-> y). Radial-like cubic: terms 7 and 9.
    values = {0: 0.0, 1: 1.0, 2: 0.0, 4: 0.0, 5: 0.0, 6: 0.0, 7: k, 8: 0.0, 9: k, 10: 0.0}
    return [(f"PV{axis}_{m}", v, "TPV distortion coefficient") for m, v in values.items()]


def quadrant_wcs_header(
    quadrant_id: str,
    ra_deg: float,
    dec_deg: float,
    pa_deg: float,
    *,
    binning: int = 1,
    distortion: bool = True,
) -> fits.Header:
    """WCS header of one quadrant: :func:`quadrant_wcs_cards` as an astropy ``Header``."""
    return fits.Header(
        quadrant_wcs_cards(
            quadrant_id, ra_deg, dec_deg, pa_deg, binning=binning, distortion=distortion
        )
    )


def quadrant_wcs_cards(
    quadrant_id: str,
    ra_deg: float,
    dec_deg: float,
    pa_deg: float,
    *,
    binning: int = 1,
    distortion: bool = True,
) -> list[tuple[str, object, str]]:
    """WCS cards ``(keyword, value, comment)`` of one quadrant for a pointing (FPA centre)
    and position angle (the simulator formats thousands of these without astropy).

    Parameters
    ----------
    quadrant_id
        ``"{row}-{col}.{E|F|G|H}"``.
    ra_deg, dec_deg
        Pointing: sky position of the FPA centre (degrees; any RA, |Dec| <= 90).
    pa_deg
        Position angle of FP ``+Y``, degrees east of north.
    binning
        Pixels of ``binning x binning`` native pixels (see :func:`quadrant_shape`).
    distortion
        TPV with the documented PV terms if True, plain TAN (no PV) if False.

    Returns
    -------
    list of (keyword, value, comment)
        ``WCSAXES NAXIS NAXIS1 NAXIS2 CTYPE1 CTYPE2 CUNIT1 CUNIT2 CRPIX1 CRPIX2
        CRVAL1 CRVAL2 CD1_1 CD1_2 CD2_1 CD2_2 RADESYS [PV1_* PV2_*] DETID CCDID``.
    """
    lay = quadrant_layout(quadrant_id)
    b = _check_binning(binning)
    _check_pointing(ra_deg, dec_deg, pa_deg)
    nx, ny = quadrant_shape(b)

    p0, ax, ay = _fp_axes(ra_deg, dec_deg, pa_deg)
    xc = lay.x_center_arcsec / _ARCSEC_PER_RAD
    yc = lay.y_center_arcsec / _ARCSEC_PER_RAD
    w = p0 + xc * ax + yc * ay
    norm = float(np.linalg.norm(w))
    centre = w / norm
    ra_c, dec_c = _vector_to_sky(centre)
    east_c, north_c = _east_north(ra_c, dec_c)
    # d(xi, eta)/d(X, Y) at the quadrant centre (gnomonic about the centre vs about the pointing).
    jac = np.array([[ax @ east_c, ay @ east_c], [ax @ north_c, ay @ north_c]]) / norm
    step_deg = b * PIXEL_SCALE_ARCSEC / 3600.0
    cd = jac @ lay.pixel_matrix() * step_deg

    proj = "TPV" if distortion else "TAN"
    cards: list[tuple[str, object, str]] = [
        ("WCSAXES", 2, "number of WCS axes"),
        ("NAXIS", 2, "number of data axes"),
        ("NAXIS1", nx, "quadrant width (pixels)"),
        ("NAXIS2", ny, "quadrant height (pixels)"),
        ("CTYPE1", f"RA---{proj}", ""),
        ("CTYPE2", f"DEC--{proj}", ""),
        ("CUNIT1", "deg", ""),
        ("CUNIT2", "deg", ""),
        ("CRPIX1", 0.5 * (nx + 1), "quadrant centre (1-based)"),
        ("CRPIX2", 0.5 * (ny + 1), "quadrant centre (1-based)"),
        ("CRVAL1", float(ra_c), "RA of the quadrant centre (deg)"),
        ("CRVAL2", float(dec_c), "Dec of the quadrant centre (deg)"),
        ("CD1_1", float(cd[0, 0]), ""),
        ("CD1_2", float(cd[0, 1]), ""),
        ("CD2_1", float(cd[1, 0]), ""),
        ("CD2_2", float(cd[1, 1]), ""),
        ("RADESYS", "ICRS", ""),
    ]
    if distortion:
        cards += _pv_cards(1, TPV_RADIAL_CUBIC_PER_DEG2)
        cards += _pv_cards(2, TPV_RADIAL_CUBIC_PER_DEG2)
    cards += [
        ("DETID", lay.detid, "detector id 0-35 (simulated map)"),
        ("CCDID", lay.ccdid, "CCD row-column"),
    ]
    return cards


def quadrant_wcs(
    quadrant_id: str,
    ra_deg: float,
    dec_deg: float,
    pa_deg: float,
    *,
    binning: int = 1,
    distortion: bool = True,
) -> WCS:
    """The ``astropy.wcs.WCS`` of the quadrant's header as the simulator writes it
    (:func:`quadrant_wcs_cards` as 80-character card images; ``pixel_shape`` set).

    Built as ``WCS(text)`` builds it (WCSLIB parses the cards with ``relax=True``, then
    ``fix()`` and ``set()``), without the astropy ``Header`` work around it (the cards
    made into a ``Header``, converted to text and back twice, every card verified, SIP
    and lookup-table distortions looked for, which these cards never hold): ~0.3 ms
    instead of ~4 ms. The same WCS as ``WCS(text)``, and within 1e-10 deg of
    ``WCS(quadrant_wcs_header(...))``, whose cards round ``CD`` to 15 digits
    (tests/simulate/test_focal_plane.py).
    """
    cards = quadrant_wcs_cards(
        quadrant_id, ra_deg, dec_deg, pa_deg, binning=binning, distortion=distortion
    )
    text = "".join(card_image(k, v, c) for k, v, c in cards)
    wcs = WCS(naxis=2)
    wcs.wcs = Wcsprm(header=text.encode("ascii"), relax=True)
    wcs.fix()
    wcs.wcs.set()
    wcs.pixel_shape = quadrant_shape(binning)
    return wcs


def quadrant_footprint(
    quadrant_id: str,
    ra_deg: float,
    dec_deg: float,
    pa_deg: float,
    binning: int = 1,
    *,
    distortion: bool = True,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Sky corners ``(ra[4], dec[4])`` (deg) of a quadrant's outer pixel edges.

    Corners are the 0-based pixel positions ``(-0.5, -0.5)`` (the read-out
    corner), ``(nx - 0.5, -0.5)``, ``(nx - 0.5, ny - 0.5)``, ``(-0.5, ny - 0.5)``,
    through ``all_pix2world`` (PV distortion included when ``distortion``).
    RA is in ``[0, 360)``; compare corners in a tangent plane, never by RA range.
    """
    wcs = quadrant_wcs(quadrant_id, ra_deg, dec_deg, pa_deg, binning=binning, distortion=distortion)
    nx, ny = quadrant_shape(binning)
    px = np.array([-0.5, nx - 0.5, nx - 0.5, -0.5])
    py = np.array([-0.5, -0.5, ny - 0.5, ny - 0.5])
    ra, dec = wcs.all_pix2world(px, py, 0)
    ra = np.asarray(ra, dtype=np.float64) % 360.0
    return np.where(ra >= 360.0, ra - 360.0, ra), np.asarray(dec, dtype=np.float64)
