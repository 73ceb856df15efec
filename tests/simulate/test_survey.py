"""The synthetic survey-scale quadrant index (``constellation.simulate.survey``)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from constellation.discovery.match import footprints_from_table, point_in_polygons
from constellation.manifest.quadrant_index import FOOTPRINT_VERTICES, QUADRANT_INDEX_SCHEMA
from constellation.simulate import focal_plane
from constellation.simulate.survey import (
    SURVEY_INDEX_COLUMNS,
    SurveyPointings,
    focal_plane_vertices,
    fp_to_sky,
    survey_index_table,
)
from constellation.sky import Tile, healpix


@pytest.fixture(scope="module")
def pointings() -> SurveyPointings:
    return SurveyPointings.wide()


@pytest.mark.parametrize(
    ("ra", "dec", "pa_deg"), [(359.9, -62.0, 3.0), (0.0, 0.0, -4.0), (120.0, 89.95, 1.0)]
)
def test_vectorised_model_is_the_focal_plane_model(ra: float, dec: float, pa_deg: float) -> None:
    fx, fy = focal_plane_vertices()
    got_ra, got_dec = fp_to_sky(fx, fy, [ra, 10.0], [dec, 5.0], [pa_deg, 0.0])
    want_ra, want_dec = focal_plane.focal_plane_to_sky(fx, fy, ra, dec, pa_deg)
    assert got_ra.shape == (2, *fx.shape)
    dra = (got_ra[0] - want_ra + 180.0) % 360.0 - 180.0
    assert np.abs(dra * np.cos(np.radians(want_dec))).max() < 1e-10
    assert np.abs(got_dec[0] - want_dec).max() < 1e-10


def test_survey_size(pointings: SurveyPointings) -> None:
    """~27 M quadrant exposures: 864 per observation (4 nominal + 2 short exposures)."""
    assert pointings.exposures_per_observation == 6
    assert pointings.quadrant_exposures == len(pointings) * 864
    assert 25e6 < pointings.quadrant_exposures < 30e6
    hp = healpix.radec_to_index(pointings.ra, pointings.dec)
    assert (np.diff(hp) >= 0).all()  # observation ids follow HEALPix order


def test_index_rows_are_in_the_index_form(pointings: SurveyPointings) -> None:
    table = survey_index_table(pointings, [5, 3])
    assert table.schema == pa.schema([QUADRANT_INDEX_SCHEMA.field(c) for c in SURVEY_INDEX_COLUMNS])
    assert table.num_rows == 2 * 864
    hp = table.column("healpix").to_numpy()
    assert (np.diff(hp) >= 0).all()
    rows = table.to_pylist()
    assert {r["obs_id"] for r in rows} == {3, 5}
    # every (obs, dither, expnum, quadrant) once; short exposures at dithers 0 and 1
    keys = {(r["obs_id"], r["dither"], r["expnum"], r["quadrant"]) for r in rows}
    assert len(keys) == table.num_rows
    assert {(r["dither"], r["expnum"]) for r in rows} == {
        (0, 1), (1, 1), (2, 1), (3, 1), (0, 2), (1, 2)
    }  # fmt: skip
    assert all(r["exposure"] == f"{r['obs_id']:06d}-{r['dither']:02d}-{r['expnum']}" for r in rows)
    assert {r["exptime"] for r in rows if r["expnum"] == 2} == {89.52}
    # the healpix column is the centre's index; a short row repeats its nominal geometry
    assert np.array_equal(
        hp,
        healpix.radec_to_index(
            table.column("center_ra").to_numpy(), table.column("center_dec").to_numpy()
        ),
    )
    fra, fdec = footprints_from_table(table)
    assert fra.shape == (table.num_rows, FOOTPRINT_VERTICES)
    geo = {}
    for r, a, d in zip(rows, fra, fdec, strict=True):
        key = (r["obs_id"], r["dither"], r["quadrant"])
        geo.setdefault(key, []).append((a, d))
    assert all(np.array_equal(g[0][0], g[-1][0]) for g in geo.values())


def test_footprints_cover_the_simulated_quadrants(pointings: SurveyPointings) -> None:
    """The true (TPV) corners of a quadrant lie inside its index polygon."""
    table = survey_index_table(pointings, [100])
    fra, fdec = footprints_from_table(table)
    obs = 100
    for i in range(0, table.num_rows, 97):
        r = table.slice(i, 1).to_pylist()[0]
        d = r["dither"]
        ra, dec = focal_plane.quadrant_footprint(
            r["quadrant"],
            float(pointings.dither_ra[obs, d]),
            float(pointings.dither_dec[obs, d]),
            float(pointings.pa[obs]),
        )
        tile = Tile(1, r["center_ra"], r["center_dec"])
        x, y = tile.to_plane(fra[i], fdec[i])
        polygon = np.stack([x, y], axis=-1)[None]
        cx, cy = tile.to_plane(ra, dec)
        assert all(point_in_polygons(polygon, a, b)[0] for a, b in zip(cx, cy, strict=True))


def test_ranges_keep_only_the_rows_inside(pointings: SurveyPointings) -> None:
    full = survey_index_table(pointings, np.arange(40, 44))
    ranges = healpix.disc_ranges(float(pointings.ra[41]), float(pointings.dec[41]), 0.3, 10)
    part = survey_index_table(pointings, np.arange(40, 44), ranges)
    keep = healpix.in_ranges(full.column("healpix").to_numpy(), ranges)
    assert 0 < part.num_rows < full.num_rows
    assert part.equals(full.filter(pa.array(keep)))
    assert survey_index_table(pointings, []).num_rows == 0
    with pytest.raises(IndexError):
        survey_index_table(pointings, [len(pointings)])


def test_reach_bounds_every_quadrant_centre(pointings: SurveyPointings) -> None:
    table = survey_index_table(pointings, [7])
    tile = Tile(1, float(pointings.ra[7]), float(pointings.dec[7]))
    x, y = tile.to_plane(
        table.column("center_ra").to_numpy(), table.column("center_dec").to_numpy()
    )
    assert np.hypot(x, y).max() / 60.0 < SurveyPointings.reach_deg()
