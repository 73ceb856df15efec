"""What a synthetic field is: its tiles, observations, sources and injected shear.

Pure: no I/O. :func:`plan_field` turns a :class:`FieldSpec` into a
:class:`FieldPlan` (tiles, pointings, exposures); the writers in
:mod:`constellation.simulate.writers` put it on storage in the Q1 layout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from pydantic import BaseModel, ConfigDict, Field, model_validator

from constellation.sky import AllSkyTiling, Tile, TileRegistry, plane_to_sky, sky_to_plane
from constellation.truth import ShearField

__all__ = [
    "DITHER_OFFSETS_ARCSEC",
    "Exposure",
    "FieldPlan",
    "FieldSpec",
    "ShearField",
    "plan_field",
]

PixelMode = Literal["light", "sparse", "pixels"]

#: Offsets (x west, y north; arcsec) of the four dithers from the observation's
#: pointing: a sizeable fraction of a 205" x 207" quadrant, as in Euclid's
#: reference sequence (dither 3 of one quadrant does not overlap dither 0).
DITHER_OFFSETS_ARCSEC: tuple[tuple[float, float], ...] = (
    (0.0, 0.0),
    (105.0, 62.0),
    (38.0, 154.0),
    (-71.0, 221.0),
)
#: Exposure times (s): nominal (N = 1) and short (N = 2).
EXPTIME_NOMINAL_S = 560.52
EXPTIME_SHORT_S = 89.52
#: Dithers that carry a short exposure when short exposures are simulated.
SHORT_DITHERS = (0, 1)
#: Visible focal-plane extent (deg) used to lay out pointings (x, y).
_FOV_DEG = (0.787, 0.709)


class FieldSpec(BaseModel):
    """Everything that defines a synthetic field; same spec and seed, same bytes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ra_deg: float = Field(52.93, description="Field centre RA, deg (EDF-F by default).")
    dec_deg: float = Field(-28.09, ge=-90, le=90, description="Field centre Dec, deg.")
    n_tiles_ra: int = Field(2, ge=1, le=20, description="Tiles per ring (east-west).")
    n_tiles_dec: int = Field(2, ge=1, le=20, description="Number of rings (north-south).")
    density_per_arcmin2: float = Field(
        30.0, gt=0, le=500, description="Catalog sources per arcmin² (all detections)."
    )
    mode: PixelMode = Field("light", description="Pixel mode: light, sparse or pixels.")
    light_binning: int = Field(
        32, ge=2, le=64, description="light mode: quadrants binned by this factor per axis."
    )
    include_short: bool = Field(False, description="Also write the two short exposures (N=2).")
    pixel_quadrants: tuple[str, ...] = Field(
        ("3-4.F",), description="pixels mode: quadrants rendered with galaxies (others sparse)."
    )
    shear: ShearField = Field(default_factory=ShearField)
    shape_noise: float = Field(
        0.26,
        ge=0.0,
        le=0.6,
        description="Per-component rms of the galaxies' intrinsic ellipticity (0: round "
        "galaxies, for calibration fields).",
    )
    intrinsic_rotation_deg: float = Field(
        0.0,
        description="Rotate every galaxy's intrinsic orientation by this angle (90: the "
        "partner of a shape-noise-cancelling pair of fields).",
    )
    pixel_noise: bool = Field(True, description="Add Gaussian pixel noise to rendered pixels.")
    renderer: Literal["builtin", "galsim"] = Field(
        "builtin",
        description="pixels mode: 'builtin' (numpy; PSF sampled at pixel centres) or 'galsim' "
        "(GalSim, continuous convolution and pixel-integrated PSF stamps, as PSFEx's; needs "
        "GalSim, which comes with SHINE).",
    )
    first_obs_id: int = Field(2681, ge=0, le=999_999, description="Id of the first observation.")
    seed: int = Field(42, ge=0, description="Random seed.")

    @model_validator(mode="after")
    def _check(self) -> FieldSpec:
        if abs(self.dec_deg) > 89.0 and self.n_tiles_ra > 1:
            raise ValueError("within 1 deg of a pole use n_tiles_ra = 1")
        from constellation.simulate.focal_plane import QUADRANT_IDS

        unknown = [q for q in self.pixel_quadrants if q not in QUADRANT_IDS]
        if unknown:
            raise ValueError(f"unknown quadrant id(s) {unknown}; ids look like '3-4.F'")
        return self


@dataclass(frozen=True)
class Exposure:
    """One exposure of one observation: (obs_id, dither, n) and its pointing."""

    obs_id: int
    dither: int
    n: int  # 1 = nominal, 2 = short
    ra_deg: float
    dec_deg: float
    pa_deg: float
    exptime_s: float
    timestamp: datetime  # processing time of the DET file (BKG/WGT differ slightly)

    @property
    def key(self) -> tuple[int, int, int]:
        return (self.obs_id, self.dither, self.n)


@dataclass(frozen=True)
class FieldPlan:
    """The tiles, exposures and geometry of a field."""

    spec: FieldSpec
    tiles: TileRegistry
    exposures: tuple[Exposure, ...]
    plane_half_deg: tuple[float, float]  # half-extent (x, y) covering all extended areas
    psf_timestamp: datetime
    centre: tuple[float, float]  # field-plane tangent point: the centroid of the tiles

    def to_field_plane(
        self, ra: ArrayLike, dec: ArrayLike
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Sky -> field plane (deg, x west, y north, tangent at :attr:`centre`)."""
        x, y = sky_to_plane(ra, dec, *self.centre)
        return x / 60.0, y / 60.0

    def shear_at(self, ra: ArrayLike, dec: ArrayLike) -> tuple[NDArray[np.float64], ...]:
        """Injected (g1, g2) at sky positions."""
        return self.spec.shear.at_plane(*self.to_field_plane(ra, dec))

    @property
    def obs_ids(self) -> list[int]:
        return sorted({e.obs_id for e in self.exposures})


def _select_tiles(spec: FieldSpec) -> TileRegistry:
    """``n_tiles_dec`` rings around the centre, ``n_tiles_ra`` adjacent tiles in each."""
    sky = AllSkyTiling()
    full = sky.registry()
    centre_id = int(sky.tile_of(spec.ra_deg, spec.dec_deg))
    ring0 = (centre_id - 100_000_000) // sky.id_stride
    n_rings = sky.ring_dec.size
    first = min(max(ring0 - (spec.n_tiles_dec - 1) // 2, 0), n_rings - spec.n_tiles_dec)
    ids: list[int] = []
    for ring in range(first, first + spec.n_tiles_dec):
        count = int(sky.ring_count[ring])
        ring_ids = 100_000_000 + ring * sky.id_stride + np.arange(count)
        rows = full.rows_of(ring_ids)
        # nearest tiles by RA offset (wrapped), then take a contiguous run around them
        d = (full.ra[rows] - spec.ra_deg + 180.0) % 360.0 - 180.0
        k0 = int(np.argmin(np.abs(d)))
        take = min(spec.n_tiles_ra, count)
        start = k0 - (take - 1) // 2
        ids.extend(int(ring_ids[(start + j) % count]) for j in range(take))
    return full.subset(sorted(set(ids)))


def _centroid(tiles: TileRegistry) -> tuple[float, float]:
    """Mean direction of the tile centres (RA, Dec in degrees)."""
    ra, dec = np.radians(tiles.ra), np.radians(tiles.dec)
    v = np.stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)]).mean(axis=1)
    v /= np.linalg.norm(v)
    return float(np.degrees(np.arctan2(v[1], v[0])) % 360.0), float(np.degrees(np.arcsin(v[2])))


def _plane_extent(centre: tuple[float, float], tiles: TileRegistry) -> tuple[float, float]:
    """Half-extent (deg) of the field plane box holding every tile's extended square."""
    xs, ys = [], []
    for t in tiles:
        ra, dec = t.box_to_sky(t.extended_box)
        x, y = sky_to_plane(ra, dec, *centre)
        xs.append(np.abs(x))
        ys.append(np.abs(y))
    return float(np.max(xs)) / 60.0, float(np.max(ys)) / 60.0


def _timestamp(rng: np.random.Generator, base: datetime) -> datetime:
    return base + timedelta(
        seconds=int(rng.integers(0, 86_400 * 20)), microseconds=int(rng.integers(0, 10**6))
    )


def plan_field(spec: FieldSpec) -> FieldPlan:
    """Tiles, pointings and exposures of a field (deterministic in ``spec``)."""
    rng = np.random.default_rng([spec.seed, 1])
    tiles = _select_tiles(spec)
    centre = _centroid(tiles)
    hx, hy = _plane_extent(centre, tiles)
    # Pointing grid over the field plane; the dither pattern spans ~0.05 deg, so
    # the grid steps leave that much overlap.
    nx = max(1, math.ceil((2 * hx - 0.02) / (_FOV_DEG[0] - 0.06)))
    ny = max(1, math.ceil((2 * hy - 0.02) / (_FOV_DEG[1] - 0.09)))
    step_x = 0.0 if nx == 1 else (2 * hx - _FOV_DEG[0] + 0.06) / (nx - 1)
    step_y = 0.0 if ny == 1 else (2 * hy - _FOV_DEG[1] + 0.09) / (ny - 1)
    exposures: list[Exposure] = []
    base = datetime(2024, 10, 1, 0, 0, 0, tzinfo=UTC)
    obs_id = spec.first_obs_id
    for j in range(ny):
        for i in range(nx):
            px = (i - (nx - 1) / 2) * step_x * 60.0
            py = (j - (ny - 1) / 2) * step_y * 60.0 - 1.8  # centre the dither pattern
            pa = float(rng.uniform(-4.0, 4.0))
            obs_ts = _timestamp(rng, base)
            for dither, (dx, dy) in enumerate(DITHER_OFFSETS_ARCSEC):
                ra, dec = plane_to_sky(px + dx / 60.0, py + dy / 60.0, *centre)
                for n in (1, 2) if spec.include_short and dither in SHORT_DITHERS else (1,):
                    exposures.append(
                        Exposure(
                            obs_id=obs_id,
                            dither=dither,
                            n=n,
                            ra_deg=float(ra),
                            dec_deg=float(dec),
                            pa_deg=pa,
                            exptime_s=EXPTIME_NOMINAL_S if n == 1 else EXPTIME_SHORT_S,
                            timestamp=obs_ts
                            + timedelta(
                                minutes=3 * dither + n, microseconds=int(rng.integers(10**6))
                            ),
                        )
                    )
            obs_id += 1
    psf_ts = datetime(2024, 3, 22, 19, 29, 15, 424564, tzinfo=UTC)
    return FieldPlan(spec, tiles, tuple(exposures), (hx, hy), psf_ts, centre)


def field_tiles(plan: FieldPlan) -> list[Tile]:
    """The field's tiles as :class:`Tile` objects (sorted by id)."""
    return list(plan.tiles)
