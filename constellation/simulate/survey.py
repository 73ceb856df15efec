"""A synthetic quadrant index at survey scale: VIS pointings over a Wide-like footprint.

For planning and benchmarks at the size of the Euclid Wide Survey (~28 million
quadrant exposures) without pixels or FITS files. Deterministic; generated in
pieces (any subset of pointings), so that nothing needs the whole index in
memory.

Assumptions (stated, not Euclid's schedule):

* **Pointings** are the centres of an all-sky tiling with 42' tiles
  (:class:`~constellation.sky.AllSkyTiling`), ~0.49 deg² per pointing, cut to
  :func:`~constellation.sky.wide_footprint_mask`: 0.49 deg² against the 0.55
  deg² of the focal-plane envelope leaves ~10 % overlap between neighbouring
  fields. Each has a position angle uniform in [-4, 4] deg (seeded).
* **Exposures** per pointing (one observation): the 4 dithers of
  :data:`~constellation.simulate.field.DITHER_OFFSETS_ARCSEC` (nominal,
  ``expnum`` 1, 560.52 s) plus a short exposure (``expnum`` 2, 89.52 s) at
  the pointing of each dither in :data:`~constellation.simulate.field.SHORT_DITHERS`:
  6 exposures, 864 quadrant exposures per observation.
* **Quadrants**: the 144 of :mod:`~constellation.simulate.focal_plane`; each
  footprint is the index builder's 32-vertex polygon (8 points per pixel
  edge, edges grown by :data:`~constellation.io.quadrant_index.FOOTPRINT_MARGIN_PX`)
  through the undistorted focal-plane model. The TPV term of the simulator
  only pulls pixels inwards (by <= 1.9 px), so these polygons cover the
  simulated quadrants too.

Rows carry the geometry and identity columns of
:data:`~constellation.manifest.quadrant_index.QUADRANT_INDEX_SCHEMA` that
matching and the exposure policy read (:data:`SURVEY_INDEX_COLUMNS`), with
the schema's types, sorted by ``healpix`` as in a real index. File names and
byte offsets are not generated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
from numpy.typing import ArrayLike, NDArray

from constellation.io.quadrant_index import FOOTPRINT_MARGIN_PX
from constellation.manifest.quadrant_index import (
    FOOTPRINT_VERTICES,
    QUADRANT_INDEX_SCHEMA,
    exposure_key,
)
from constellation.simulate import focal_plane
from constellation.simulate.field import (
    DITHER_OFFSETS_ARCSEC,
    EXPTIME_NOMINAL_S,
    EXPTIME_SHORT_S,
    SHORT_DITHERS,
)
from constellation.sky import healpix
from constellation.sky.allsky import AllSkyTiling, wide_footprint_mask
from constellation.sky.projection import plane_to_sky

__all__ = [
    "POINTING_SPACING_ARCMIN",
    "SURVEY_INDEX_COLUMNS",
    "SurveyPointings",
    "focal_plane_vertices",
    "fp_to_sky",
    "survey_index_table",
]

#: Spacing of the pointing centres (the side of the generating tiling's cells).
POINTING_SPACING_ARCMIN = 42.0
#: The index columns the synthetic rows carry (types as in the schema).
SURVEY_INDEX_COLUMNS = (
    "healpix", "center_ra", "center_dec", "footprint_ra", "footprint_dec",
    "exposure", "obs_id", "dither", "expnum", "quadrant", "exptime",
)  # fmt: skip

_ARCSEC_PER_RAD = 180.0 * 3600.0 / math.pi
_SCHEMA = pa.schema([QUADRANT_INDEX_SCHEMA.field(c) for c in SURVEY_INDEX_COLUMNS])


def focal_plane_vertices(
    grow_px: float = FOOTPRINT_MARGIN_PX,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """FP ``(X, Y)`` arcsec of each quadrant's centre and footprint vertices.

    Returns two ``(144, 1 + FOOTPRINT_VERTICES)`` arrays: column 0 is the
    quadrant's centre pixel, the others walk its pixel edges (grown by
    ``grow_px``) as the index builder does, 8 points per edge.
    """
    nx, ny = focal_plane.quadrant_shape(1)
    per = FOOTPRINT_VERTICES // 4
    t = np.arange(per) / per
    lo_x, hi_x = -0.5 - grow_px, nx - 0.5 + grow_px
    lo_y, hi_y = -0.5 - grow_px, ny - 0.5 + grow_px
    px = np.concatenate([[(nx - 1) / 2], lo_x + t * (hi_x - lo_x), np.full(per, hi_x),
                         hi_x - t * (hi_x - lo_x), np.full(per, lo_x)])  # fmt: skip
    py = np.concatenate([[(ny - 1) / 2], np.full(per, lo_y), lo_y + t * (hi_y - lo_y),
                         np.full(per, hi_y), hi_y - t * (hi_y - lo_y)])  # fmt: skip
    xs, ys = zip(*(focal_plane.pixel_to_focal_plane(q, px, py) for q in focal_plane.QUADRANT_IDS),
                 strict=True)  # fmt: skip
    return np.array(xs), np.array(ys)


def _frames(
    ra_deg: ArrayLike, dec_deg: ArrayLike, pa_deg: ArrayLike
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Pointing unit vectors and the sky directions of FP ``+X`` / ``+Y``: three ``(n, 3)``."""
    a, d, p = (
        np.radians(np.atleast_1d(np.asarray(v, np.float64))) for v in (ra_deg, dec_deg, pa_deg)
    )
    ca, sa, cd, sd, cp, sp = np.cos(a), np.sin(a), np.cos(d), np.sin(d), np.cos(p), np.sin(p)
    p0 = np.stack([cd * ca, cd * sa, sd], axis=-1)
    e0 = np.stack([-sa, ca, np.zeros_like(a)], axis=-1)
    n0 = np.stack([-sd * ca, -sd * sa, cd], axis=-1)
    return p0, cp[:, None] * e0 - sp[:, None] * n0, sp[:, None] * e0 + cp[:, None] * n0


def _to_sky(
    x_arcsec: NDArray[np.float64],
    y_arcsec: NDArray[np.float64],
    frames: tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]],
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """FP points ``(n, V)`` in the frames ``(n, 3)`` (one per row): sky degrees ``(n, V)``."""
    from constellation.simulate._survey_kernels import fp_gather_to_sky

    x = np.ascontiguousarray(x_arcsec, dtype=np.float64)
    y = np.ascontiguousarray(y_arcsec, dtype=np.float64)
    rows = np.arange(x.shape[0])
    ra, dec = fp_gather_to_sky(x, y, rows, rows, *(np.ascontiguousarray(f) for f in frames))
    return np.asarray(ra), np.asarray(dec)


def fp_to_sky(
    x_arcsec: ArrayLike,
    y_arcsec: ArrayLike,
    ra_deg: ArrayLike,
    dec_deg: ArrayLike,
    pa_deg: ArrayLike,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """:func:`~constellation.simulate.focal_plane.focal_plane_to_sky`, vectorised over pointings.

    ``x_arcsec``/``y_arcsec`` of any shape ``S`` for ``n`` pointings (1-d
    ``ra_deg``, ``dec_deg``, ``pa_deg``): sky ``(n, *S)`` in degrees.
    """
    frames = _frames(ra_deg, dec_deg, pa_deg)
    x = np.asarray(x_arcsec, np.float64)
    y = np.asarray(y_arcsec, np.float64)
    n, size = frames[0].shape[0], max(x.size, 1)
    ra, dec = _to_sky(
        np.broadcast_to(x.reshape(1, -1), (n, size)),
        np.broadcast_to(y.reshape(1, -1), (n, size)),
        frames,
    )
    return ra.reshape(n, *x.shape), dec.reshape(n, *x.shape)


def _exposure_plan() -> tuple[NDArray[np.int16], NDArray[np.int16], NDArray[np.float64]]:
    """(dither, expnum, exptime) of the exposures of one observation."""
    rows = [(d, 1, EXPTIME_NOMINAL_S) for d in range(len(DITHER_OFFSETS_ARCSEC))]
    rows += [(d, 2, EXPTIME_SHORT_S) for d in SHORT_DITHERS]
    dither, expnum, exptime = zip(*rows, strict=True)
    return np.array(dither, np.int16), np.array(expnum, np.int16), np.array(exptime)


@dataclass(frozen=True)
class SurveyPointings:
    """The observations of the synthetic survey (struct of arrays, HEALPix order).

    ``obs_id`` is the position in this order; ``dither_ra``/``dither_dec`` are
    the ``(n, 4)`` pointings of the dithers.
    """

    ra: NDArray[np.float64]
    dec: NDArray[np.float64]
    pa: NDArray[np.float64]
    dither_ra: NDArray[np.float64]
    dither_dec: NDArray[np.float64]

    @classmethod
    def wide(
        cls, spacing_arcmin: float = POINTING_SPACING_ARCMIN, seed: int = 0
    ) -> SurveyPointings:
        """Pointings every ``spacing_arcmin`` over the Wide-like footprint."""
        reg = AllSkyTiling(spacing_arcmin, spacing_arcmin).registry()
        keep = wide_footprint_mask(reg.ra, reg.dec)
        ra, dec = reg.ra[keep], reg.dec[keep]
        order = np.argsort(healpix.radec_to_index(ra, dec), kind="stable")
        ra, dec = ra[order], dec[order]
        pa = np.random.default_rng([seed, 7]).uniform(-4.0, 4.0, ra.size)
        off = np.array(DITHER_OFFSETS_ARCSEC) / 60.0  # arcmin, x west / y north
        dra, ddec = plane_to_sky(
            np.broadcast_to(off[:, 0], (ra.size, len(off))),
            np.broadcast_to(off[:, 1], (ra.size, len(off))),
            ra[:, None],
            dec[:, None],
        )
        return cls(ra, dec, pa, dra, ddec)

    def __len__(self) -> int:
        return int(self.ra.size)

    @property
    def exposures_per_observation(self) -> int:
        return int(_exposure_plan()[0].size)

    @property
    def quadrant_exposures(self) -> int:
        """Rows of the whole index."""
        return len(self) * self.exposures_per_observation * len(focal_plane.QUADRANT_IDS)

    @staticmethod
    def reach_deg() -> float:
        """Upper bound on the distance from a pointing to any of its quadrant centres."""
        fx, fy = focal_plane_vertices()
        r = float(np.hypot(fx[:, 0], fy[:, 0]).max())
        d = float(np.hypot(*np.array(DITHER_OFFSETS_ARCSEC).T).max())
        return (r + d) / 3600.0 * 1.01


def survey_index_table(
    pointings: SurveyPointings,
    obs: ArrayLike,
    ranges: NDArray[np.int64] | None = None,
    *,
    batch: int = 64,
) -> pa.Table:
    """The index rows of the observations ``obs`` (positions in ``pointings``), sorted.

    Parameters
    ----------
    pointings
        The survey.
    obs
        Observation ids (positions in ``pointings``).
    ranges
        Keep only the quadrant exposures whose centre's order-29 index lies in
        these sorted ``[start, stop)`` ranges (``None``: all of them). Footprints
        are computed only for the rows kept.
    batch
        Observations handled at once (bounds the temporaries).

    Returns
    -------
    pyarrow.Table
        Columns :data:`SURVEY_INDEX_COLUMNS` with the index schema's types,
        sorted by ``healpix`` (then exposure, as the builder sorts).
    """
    obs_ids = np.unique(np.asarray(obs, dtype=np.int64))
    if obs_ids.size and (obs_ids[0] < 0 or obs_ids[-1] >= len(pointings)):
        raise IndexError(f"observation ids outside [0, {len(pointings)})")
    fx, fy = focal_plane_vertices()
    n_q, n_d = fx.shape[0], pointings.dither_ra.shape[1]
    dither, expnum, exptime = _exposure_plan()
    from constellation.simulate._survey_kernels import fp_gather_to_sky

    # pass 1: the centres of every (obs, dither, quadrant), kept if inside ``ranges``
    frames = _frames(
        pointings.dither_ra[obs_ids].ravel(),
        pointings.dither_dec[obs_ids].ravel(),
        np.repeat(pointings.pa[obs_ids], n_d),
    )
    m = frames[0].shape[0]  # (obs, dither) pairs: frame f is obs_ids[f // n_d], dither f % n_d
    parts: dict[str, list[NDArray[Any]]] = {k: [] for k in ("hp", "ra", "dec", "frame", "q")}
    for s in range(0, m, batch * n_d):
        stop = s + batch * n_d
        sub = (frames[0][s:stop], frames[1][s:stop], frames[2][s:stop])
        k = sub[0].shape[0]
        cra, cdec = _to_sky(np.tile(fx[:, 0], (k, 1)), np.tile(fy[:, 0], (k, 1)), sub)
        hp = healpix.radec_to_index(cra.ravel(), cdec.ravel())
        sel = np.flatnonzero(healpix.in_ranges(hp, ranges)) if ranges is not None else None
        if sel is None:
            sel = np.arange(hp.size)
        parts["hp"].append(hp[sel])
        parts["ra"].append(cra.ravel()[sel])
        parts["dec"].append(cdec.ravel()[sel])
        parts["frame"].append(s + sel // n_q)
        parts["q"].append(sel % n_q)
    c = {k: np.concatenate(v) if v else np.empty(0, np.int64) for k, v in parts.items()}
    if c["hp"].size == 0:
        return _SCHEMA.empty_table()
    # one row per exposure taken at the pair's dither (nominal, maybe a short one); the
    # exposure id (obs position * exposures + exposure) grows with the exposure key, so
    # sorting on (healpix, exposure id) gives the builder's (healpix, exposure, quadrant)
    d_of = c["frame"] % n_d
    src = np.concatenate([np.flatnonzero(d_of == dither[e]) for e in range(dither.size)])
    e_in_obs = np.concatenate(
        [np.full(int((d_of == dither[e]).sum()), e) for e in range(dither.size)]
    )
    exp = (c["frame"][src] // n_d) * dither.size + e_in_obs
    order = np.lexsort((exp, c["hp"][src]))
    src, exp = src[order], exp[order]
    e_in_obs = e_in_obs[order]
    # pass 2: the footprints, computed in the final order (a short row copies its nominal one)
    fra, fdec = fp_gather_to_sky(
        np.ascontiguousarray(fx[:, 1:]),
        np.ascontiguousarray(fy[:, 1:]),
        c["q"][src],
        c["frame"][src],
        *(np.ascontiguousarray(f) for f in frames),
    )
    keys = [
        exposure_key(int(o), int(d), int(n))
        for o in obs_ids
        for d, n in zip(dither, expnum, strict=True)
    ]
    n, v = src.size, FOOTPRINT_VERTICES
    offsets = pa.array(np.arange(0, n * v + 1, v, dtype=np.int32))
    return pa.Table.from_arrays(
        [
            pa.array(c["hp"][src]),
            pa.array(c["ra"][src]),
            pa.array(c["dec"][src]),
            pa.ListArray.from_arrays(offsets, pa.array(fra.reshape(-1))),
            pa.ListArray.from_arrays(offsets, pa.array(fdec.reshape(-1))),
            pa.array(keys).take(pa.array(exp)),
            pa.array(obs_ids[exp // dither.size].astype(np.int32)),
            pa.array(dither[e_in_obs]),
            pa.array(expnum[e_in_obs]),
            pa.array(list(focal_plane.QUADRANT_IDS)).take(pa.array(c["q"][src])),
            pa.array(exptime[e_in_obs]),
        ],
        schema=_SCHEMA,
    )
