"""Synthetic MER-like sources: catalogs (real column names and dtypes) and truth.

Sources are drawn uniformly over the field, each owned by the tile whose core
cell holds it (:meth:`AllSkyTiling.tile_of`); a tile's catalog holds only the
sources it owns, as MER catalogs do. Columns follow the MER final catalog
(upper case, FITS dtypes of the DPDD): see :data:`CATALOG_COLUMNS`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from constellation.simulate.field import FieldPlan
from constellation.sky import AllSkyTiling, plane_to_sky

__all__ = ["CATALOG_COLUMNS", "SourceSet", "draw_sources", "object_ids"]

#: MER final-catalog columns written by the simulator: name -> numpy dtype.
CATALOG_COLUMNS: dict[str, str] = {
    "OBJECT_ID": "int64",
    "RIGHT_ASCENSION": "float64",
    "DECLINATION": "float64",
    "RIGHT_ASCENSION_PSF_FITTING": "float64",
    "DECLINATION_PSF_FITTING": "float64",
    "SEGMENTATION_MAP_ID": "int64",
    "VIS_DET": "int16",
    "FLUX_DETECTION_TOTAL": "float32",
    "FLUXERR_DETECTION_TOTAL": "float32",
    "FLUX_VIS_PSF": "float32",
    "FLUXERR_VIS_PSF": "float32",
    "SPURIOUS_FLAG": "int16",
    "SPURIOUS_PROB": "float32",
    "POINT_LIKE_FLAG": "int16",  # 1 or null
    "POINT_LIKE_PROB": "float32",
    "EXTENDED_FLAG": "int16",
    "DET_QUALITY_FLAG": "int16",
    "DEBLENDED_FLAG": "int16",
    "SHE_FLAG": "int16",
    "FLAG_VIS": "int32",
    "SEMIMAJOR_AXIS": "float32",  # pixels of 0.1"
    "POSITION_ANGLE": "float32",  # deg, CCW from x, -90..90
    "ELLIPTICITY": "float32",
    "KRON_RADIUS": "float32",  # pixels
    "FWHM": "float32",  # arcsec
    "SEGMENTATION_AREA": "int32",  # pixels
    "MU_MAX": "float32",
}

_AB_ZERO_UJY = 23.9  # m_AB = -2.5 log10(F / uJy) + 23.9


def object_ids(ra_deg: NDArray[np.float64], dec_deg: NDArray[np.float64]) -> NDArray[np.int64]:
    """MER OBJECT_ID: sign(Dec) · (int(RA·1e7)·1e9 + int(|Dec|·1e7)), in int64 arithmetic."""
    ra_part = np.floor(np.asarray(ra_deg) * 1e7).astype(np.int64)
    dec_part = np.floor(np.abs(np.asarray(dec_deg)) * 1e7).astype(np.int64)
    sign = np.where(np.asarray(dec_deg) < 0, -1, 1).astype(np.int64)
    return np.asarray(sign * (ra_part * 1_000_000_000 + dec_part), dtype=np.int64)


@dataclass(frozen=True)
class SourceSet:
    """All sources of a field: catalog columns plus truth, aligned row by row."""

    tile_id: NDArray[np.int64]
    columns: dict[str, NDArray]  # type: ignore[type-arg]
    point_like_null: NDArray[np.bool_]
    truth: dict[str, NDArray]  # type: ignore[type-arg]

    def __len__(self) -> int:
        return int(self.tile_id.size)

    def rows_of_tile(self, tile_id: int) -> NDArray[np.int64]:
        return np.flatnonzero(self.tile_id == tile_id)


def draw_sources(plan: FieldPlan) -> SourceSet:
    """Draw the field's sources (deterministic in the spec's seed)."""
    spec = plan.spec
    rng = np.random.default_rng([spec.seed, 2])
    hx, hy = plan.plane_half_deg
    area_arcmin2 = (2 * hx * 60) * (2 * hy * 60)
    n = int(rng.poisson(spec.density_per_arcmin2 * area_arcmin2))
    x = rng.uniform(-hx * 60, hx * 60, n)
    y = rng.uniform(-hy * 60, hy * 60, n)
    ra, dec = plane_to_sky(x, y, *plan.centre)
    owner = AllSkyTiling().tile_of(ra, dec)
    keep = np.isin(owner, plan.tiles.tile_id)
    ra, dec, owner = ra[keep], dec[keep], owner[keep]
    # OBJECT_ID must be unique: nudge the (vanishingly rare) collisions
    oid = object_ids(ra, dec)
    while True:
        _, first = np.unique(oid, return_index=True)
        dup = np.setdiff1d(np.arange(oid.size), first)
        if dup.size == 0:
            break
        dec[dup] += np.where(dec[dup] < 89.0, 2e-7, -2e-7)
        oid = object_ids(ra, dec)
    order = np.lexsort((oid, owner))
    ra, dec, owner, oid = ra[order], dec[order], owner[order], oid[order]
    n = ra.size

    # magnitudes from a rising number count, 19 < m < 25.5 (VIS-like)
    u = rng.uniform(size=n)
    slope = 0.3 * np.log(10.0)
    m_lo, m_hi = 19.0, 25.5
    mag = m_lo + np.log1p(u * np.expm1(slope * (m_hi - m_lo))) / slope
    flux = 10 ** ((_AB_ZERO_UJY - mag) / 2.5)  # uJy
    snr = 10.0 * (10 ** ((24.5 - mag) / 2.5)) ** 0.8 + 1.0
    fluxerr = flux / snr
    is_star = rng.uniform(size=n) < 0.08
    vis_det = (rng.uniform(size=n) > 0.03).astype(np.int16)
    hlr = np.where(is_star, 0.0, np.exp(rng.normal(np.log(0.3), 0.35, n)))  # arcsec
    hlr = np.clip(hlr, 0.0, 3.0)
    e_int = np.where(is_star[:, None], 0.0, rng.normal(0.0, 1.0, (n, 2)) * spec.shape_noise)
    e_abs = np.hypot(e_int[:, 0], e_int[:, 1])
    too_big = e_abs > 0.9
    e_int[too_big] *= (0.9 / e_abs[too_big])[:, None]
    if spec.intrinsic_rotation_deg:  # an orientation turned by θ turns e by 2θ
        turn = np.exp(2j * np.radians(spec.intrinsic_rotation_deg))
        rotated = (e_int[:, 0] + 1j * e_int[:, 1]) * turn
        e_int = np.stack([rotated.real, rotated.imag], axis=1)
    e_abs = np.hypot(e_int[:, 0], e_int[:, 1])
    g1, g2 = plan.shear_at(ra, dec)
    spurious_prob = rng.beta(0.3, 8.0, n).astype(np.float32)
    point_prob = np.where(is_star, rng.uniform(0.97, 1.0, n), rng.uniform(0.0, 0.6, n))
    point_prob = np.where(vis_det == 1, point_prob, np.nan)
    det_quality = np.zeros(n, dtype=np.int16)
    flagged = rng.uniform(size=n) < 0.06
    bits = rng.choice(np.array([1, 2, 4, 8, 128, 512], dtype=np.int16), n)
    det_quality[flagged] = bits[flagged]
    point_like = np.where((vis_det == 1) & (det_quality == 0) & (point_prob > 0.96), 1, 0)
    # size of the detection ellipse (pixels of 0.1"): light profile convolved with the PSF
    psf_sigma_px = 1.6 / 2.3548
    sig_px = np.sqrt((hlr / 0.1 / 1.1774) ** 2 + psf_sigma_px**2)
    q = np.sqrt((1 - e_abs) / (1 + e_abs + 1e-12))
    a_px = sig_px / np.sqrt(np.maximum(q, 0.1))
    pa = np.degrees(0.5 * np.arctan2(e_int[:, 1], e_int[:, 0]))
    seg_seq = np.zeros(n, dtype=np.int64)
    for t in np.unique(owner):
        sel = owner == t
        seg_seq[sel] = np.arange(1, int(sel.sum()) + 1)
    cols: dict[str, NDArray] = {  # type: ignore[type-arg]
        "OBJECT_ID": oid,
        "RIGHT_ASCENSION": ra,
        "DECLINATION": dec,
        "RIGHT_ASCENSION_PSF_FITTING": ra
        + rng.normal(0, 5e-6, n) / np.maximum(np.cos(np.radians(dec)), 1e-3),
        "DECLINATION_PSF_FITTING": dec + rng.normal(0, 5e-6, n),
        "SEGMENTATION_MAP_ID": owner * 1_000_000 + seg_seq,
        "VIS_DET": vis_det,
        "FLUX_DETECTION_TOTAL": np.where(vis_det == 1, flux, flux * rng.uniform(0.3, 3.0, n)),
        "FLUXERR_DETECTION_TOTAL": fluxerr,
        "FLUX_VIS_PSF": flux * np.where(is_star, 1.0, rng.uniform(0.4, 0.9, n)),
        "FLUXERR_VIS_PSF": fluxerr * 0.8,
        "SPURIOUS_FLAG": (spurious_prob > 0.5).astype(np.int16),
        "SPURIOUS_PROB": spurious_prob,
        "POINT_LIKE_FLAG": point_like.astype(np.int16),
        "POINT_LIKE_PROB": point_prob,
        "EXTENDED_FLAG": (~is_star).astype(np.int16),
        "DET_QUALITY_FLAG": det_quality,
        "DEBLENDED_FLAG": (rng.uniform(size=n) < 0.1).astype(np.int16),
        "SHE_FLAG": np.where(mag < 19.5, 1, 0).astype(np.int16),
        "FLAG_VIS": np.where(flagged, 1, 0).astype(np.int32),
        "SEMIMAJOR_AXIS": a_px,
        "POSITION_ANGLE": pa,
        "ELLIPTICITY": 1 - q,
        "KRON_RADIUS": 2.5 * a_px,
        "FWHM": 2.3548 * sig_px * 0.1,
        "SEGMENTATION_AREA": np.ceil(np.pi * (2.5 * a_px) ** 2 * np.maximum(q, 0.1)).astype(
            np.int32
        ),
        "MU_MAX": mag - 2.5 * np.log10(1.0 / (2 * np.pi * (sig_px * 0.1) ** 2)) + 1.0,
    }
    for name, dtype in CATALOG_COLUMNS.items():
        cols[name] = np.asarray(cols[name]).astype(dtype)
    truth: dict[str, NDArray] = {  # type: ignore[type-arg]
        "object_id": oid,
        "tile_id": owner.astype(np.int64),
        "ra": ra,
        "dec": dec,
        "g1": g1,
        "g2": g2,
        "e1_intrinsic": e_int[:, 0],
        "e2_intrinsic": e_int[:, 1],
        "flux_ujy": flux,
        "mag_vis": mag,
        "hlr_arcsec": hlr,
        "is_star": is_star,
    }
    return SourceSet(owner.astype(np.int64), cols, point_like == 0, truth)
