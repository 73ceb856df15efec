"""Matching quadrant footprints to sub-tiles, against brute-force point sampling.

The footprints are made as the index builder makes them (32 vertices through
the pixel edges grown by 2 px, full TPV WCS), for simulated fields planned with
:func:`plan_field` (no I/O). The truth is independent of the polygon: points
sampled densely on each quadrant (pixel space -> sky -> tile plane) and on each
sub-tile's extended box (plane -> sky -> quadrant pixels).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

import numpy as np
import pyarrow as pa
import pytest
from astropy.wcs import WCS
from numpy.typing import NDArray

from constellation.discovery.match import (
    PlaneFootprints,
    footprints_from_table,
    match_subtile,
    match_tile,
    point_in_polygons,
    polygons_intersect_box,
)
from constellation.manifest.quadrant_index import FOOTPRINT_VERTICES, MAX_QUADRANT_RADIUS_DEG
from constellation.simulate import focal_plane
from constellation.simulate.field import FieldSpec, plan_field
from constellation.sky import Box, SubTile, SubTileGrid, Tile

GRID = SubTileGrid(4, 4, 1.0)
GROW_PX = 2.0
NX, NY = focal_plane.quadrant_shape(1)
EDGE_STEP_PX = 4.0  # quadrant boundary sampling
INTERIOR_STEP_PX = 64.0  # quadrant interior sampling
BOX_EDGE_STEP_ARCMIN = 0.25 / 60.0  # 0.25" along the box perimeter
BOX_INTERIOR_STEP_ARCMIN = 0.25
# conservative false positives: the 2 px growth (+ rounding) and the sampling step
FALSE_POSITIVE_TOL_ARCMIN = (3.0 + EDGE_STEP_PX) * focal_plane.PIXEL_SCALE_ARCSEC / 60.0


# -- the builder's footprint, re-made here ----------------------------------------------


def edge_pixels(per_edge: int, grow: float) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Pixel positions around the quadrant's outer edge grown by ``grow`` px (0-based)."""
    lo_x, hi_x = -0.5 - grow, NX - 0.5 + grow
    lo_y, hi_y = -0.5 - grow, NY - 0.5 + grow
    t = np.arange(per_edge) / per_edge
    xs = np.concatenate(
        [
            lo_x + t * (hi_x - lo_x),
            np.full(per_edge, hi_x),
            hi_x - t * (hi_x - lo_x),
            np.full(per_edge, lo_x),
        ]
    )
    ys = np.concatenate(
        [
            np.full(per_edge, lo_y),
            lo_y + t * (hi_y - lo_y),
            np.full(per_edge, hi_y),
            hi_y - t * (hi_y - lo_y),
        ]
    )
    return xs, ys


@dataclass
class Quadrant:
    wcs: WCS
    center_ra: float
    center_dec: float
    footprint_ra: NDArray[np.float64]
    footprint_dec: NDArray[np.float64]
    edge_ra: NDArray[np.float64]  # dense samples of the true (ungrown) boundary
    edge_dec: NDArray[np.float64]
    inner_ra: NDArray[np.float64]  # coarse interior grid
    inner_dec: NDArray[np.float64]


# the pixel positions each quadrant maps to the sky, in one ``all_pix2world`` call:
# footprint vertices, dense true boundary, coarse interior grid, centre
_FOOT_XY = edge_pixels(FOOTPRINT_VERTICES // 4, GROW_PX)
_EDGE_XY = edge_pixels(math.ceil(max(NX, NY) / EDGE_STEP_PX), 0.0)
_GRID_XY = tuple(
    g.ravel()
    for g in np.meshgrid(np.arange(0.0, NX, INTERIOR_STEP_PX), np.arange(0.0, NY, INTERIOR_STEP_PX))
)
_SPLITS = np.cumsum([_FOOT_XY[0].size, _EDGE_XY[0].size, _GRID_XY[0].size])
_ALL_X, _ALL_Y = (
    np.concatenate([_FOOT_XY[i], _EDGE_XY[i], _GRID_XY[i], [((NX, NY)[i] - 1) / 2]]) for i in (0, 1)
)


def make_quadrant(qid: str, ra: float, dec: float, pa_deg: float) -> Quadrant:
    # the WCS of the header as the simulator writes it (~0.3 ms; astropy's full TPV)
    wcs = focal_plane.quadrant_wcs(qid, ra, dec, pa_deg)
    sky_ra, sky_dec = wcs.all_pix2world(_ALL_X, _ALL_Y, 0)
    fra, era, ira, cra = np.split(sky_ra, _SPLITS)
    fdec, edec, idec, cdec = np.split(sky_dec, _SPLITS)
    return Quadrant(wcs, float(cra[0]), float(cdec[0]), fra, fdec, era, edec, ira, idec)


def unit(ra: NDArray[np.float64] | float, dec: NDArray[np.float64] | float) -> NDArray[np.float64]:
    r, d = np.radians(ra), np.radians(dec)
    return np.stack([np.cos(d) * np.cos(r), np.cos(d) * np.sin(r), np.sin(d)], axis=-1)


def separation_deg(
    ra0: float, dec0: float, ra: NDArray[np.float64], dec: NDArray[np.float64]
) -> NDArray[np.float64]:
    c = unit(ra, dec) @ unit(ra0, dec0)
    return np.degrees(np.arccos(np.clip(c, -1.0, 1.0)))


def box_radius_deg(st: SubTile) -> tuple[float, float, float]:
    """Centre (ra, dec) of the extended box and the largest distance to its corners."""
    cx, cy = st.extended.center
    ra0, dec0 = st.tile.to_sky(cx, cy)
    ra, dec = st.extended_polygon()
    return float(ra0), float(dec0), float(separation_deg(float(ra0), float(dec0), ra, dec).max())


def box_samples(st: SubTile) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Sky positions sampling the extended box: its perimeter densely, its inside coarsely."""
    b = st.extended
    nx = math.ceil(b.width_arcmin / BOX_EDGE_STEP_ARCMIN)
    ny = math.ceil(b.height_arcmin / BOX_EDGE_STEP_ARCMIN)
    tx, ty = np.linspace(b.x_min, b.x_max, nx + 1), np.linspace(b.y_min, b.y_max, ny + 1)
    x = np.concatenate([tx, tx, np.full(ny + 1, b.x_min), np.full(ny + 1, b.x_max)])
    y = np.concatenate([np.full(nx + 1, b.y_min), np.full(nx + 1, b.y_max), ty, ty])
    gx, gy = np.meshgrid(
        np.arange(b.x_min, b.x_max, BOX_INTERIOR_STEP_ARCMIN),
        np.arange(b.y_min, b.y_max, BOX_INTERIOR_STEP_ARCMIN),
    )
    x = np.concatenate([x, gx.ravel()])
    y = np.concatenate([y, gy.ravel()])
    return st.tile.to_sky(x, y)


def closed_contains(b: Box, x: NDArray[np.float64], y: NDArray[np.float64]) -> NDArray[np.bool_]:
    return (x >= b.x_min) & (x <= b.x_max) & (y >= b.y_min) & (y <= b.y_max)


def box_distance(b: Box, x: NDArray[np.float64], y: NDArray[np.float64]) -> NDArray[np.float64]:
    dx = np.maximum(np.maximum(b.x_min - x, x - b.x_max), 0.0)
    dy = np.maximum(np.maximum(b.y_min - y, y - b.y_max), 0.0)
    return np.asarray(np.hypot(dx, dy))


# -- simulated fields -----------------------------------------------------------------


@dataclass
class Field:
    tiles: list[Tile]
    quadrants: list[Quadrant]
    footprint_ra: NDArray[np.float64]
    footprint_dec: NDArray[np.float64]


CASES = {
    "edf-f": (52.93, -28.09, 2, 2),
    "ra0": (0.05, 0.5, 2, 1),  # tile 0.0 straddles RA = 0/360
    "dec66": (269.7, 66.0, 2, 2),
    "pole": (10.0, 88.5, 1, 2),  # includes the polar cap tile
}
#: Sub-tiles checked per tile (corners, edges, centre); the rest of the grid is
#: matched too, but only against the cheap far-away check.
CHECKED = [(0, 0), (0, 3), (3, 0), (3, 3), (1, 2), (2, 1)]


@cache
def field(case: str) -> Field:
    ra, dec, n_ra, n_dec = CASES[case]
    plan = plan_field(FieldSpec(ra_deg=ra, dec_deg=dec, n_tiles_ra=n_ra, n_tiles_dec=n_dec))
    tiles = list(plan.tiles)
    # cheap quadrant centres from the focal-plane model; keep those that may reach a tile
    lays = focal_plane.quadrant_layouts()
    fx = np.array([q.x_center_arcsec for q in lays])
    fy = np.array([q.y_center_arcsec for q in lays])
    tile_reach = [
        (t, math.degrees(math.atan(math.sqrt(2) * 16.5 / (180 * 60 / math.pi))) + 0.06)
        for t in tiles
    ]
    rng = np.random.default_rng(7)
    quads: list[Quadrant] = []
    for e in plan.exposures:
        cra, cdec = focal_plane.focal_plane_to_sky(fx, fy, e.ra_deg, e.dec_deg, e.pa_deg)
        near = np.zeros(len(lays), dtype=bool)
        for t, r in tile_reach:
            near |= separation_deg(t.ra_deg, t.dec_deg, cra, cdec) <= r
        # a few far ones too (they must never match)
        near |= rng.random(len(lays)) < 0.02
        for i in np.flatnonzero(near):
            quads.append(make_quadrant(lays[i].quadrant_id, e.ra_deg, e.dec_deg, e.pa_deg))
    fra = np.stack([q.footprint_ra for q in quads])
    fdec = np.stack([q.footprint_dec for q in quads])
    return Field(tiles, quads, fra, fdec)


def brute_force(st: SubTile, quads: list[Quadrant]) -> tuple[set[int], set[int], dict[int, float]]:
    """(quadrants that surely meet the box, those that cannot, distance of the rest)."""
    ra0, dec0, rbox = box_radius_deg(st)
    sra, sdec = box_samples(st)
    svec = unit(sra, sdec)
    must: set[int] = set()
    cannot: set[int] = set()
    dist: dict[int, float] = {}
    far = separation_deg(
        ra0, dec0, np.array([q.center_ra for q in quads]), np.array([q.center_dec for q in quads])
    ) > (rbox + MAX_QUADRANT_RADIUS_DEG)
    for i, q in enumerate(quads):
        if far[i]:
            cannot.add(i)
            continue
        # (i) quadrant samples inside the box
        ex, ey = st.tile.to_plane(q.edge_ra, q.edge_dec)
        ix, iy = st.tile.to_plane(q.inner_ra, q.inner_dec)
        hit = (
            closed_contains(st.extended, ex, ey).any() or closed_contains(st.extended, ix, iy).any()
        )
        # (ii) box samples inside the quadrant
        if not hit:
            close = svec @ unit(q.center_ra, q.center_dec) >= math.cos(
                math.radians(MAX_QUADRANT_RADIUS_DEG)
            )
            if close.any():
                px, py = q.wcs.all_world2pix(sra[close], sdec[close], 0, quiet=True)
                inside = (px >= -0.5) & (px <= NX - 0.5) & (py >= -0.5) & (py <= NY - 0.5)
                hit = bool(inside.any())
        if hit:
            must.add(i)
        else:
            dist[i] = float(box_distance(st.extended, ex, ey).min())
    return must, cannot, dist


#: 2x2-tile cases (~4-6 s each on 2 cores) are slow; "ra0" (its field is built for
#: test_match_tile_accepts_an_arrow_table anyway) and "pole" stay in the fast loop.
SLOW_CASES = ("edf-f", "dec66")


@pytest.mark.parametrize(
    "case", [pytest.param(c, marks=pytest.mark.slow) if c in SLOW_CASES else c for c in CASES]
)
def test_match_tile_against_brute_force(case: str) -> None:
    f = field(case)
    assert len(f.quadrants) > 100
    n_matched = 0
    n_fp = 0
    for tile in f.tiles:
        matched = match_tile(tile, GRID, f.footprint_ra, f.footprint_dec)
        assert len(matched) == GRID.n_subtiles
        for k, rows in enumerate(matched):
            assert rows.dtype == np.int64
            assert np.all(np.diff(rows) > 0)
            row, col = divmod(k, GRID.n_cols)
            if (row, col) not in CHECKED:
                continue
            st = tile.subtile(GRID, row, col)
            got = set(rows.tolist())
            must, cannot, dist = brute_force(st, f.quadrants)
            assert must, (case, tile.tile_id, row, col)  # every box is covered by something
            missed = must - got
            assert not missed, f"{case} tile {tile.tile_id} ({row},{col}): missed {sorted(missed)}"
            assert not (got & cannot)
            for i in got - must:
                assert dist[i] <= FALSE_POSITIVE_TOL_ARCMIN, (case, i, dist[i] * 60.0)
                n_fp += 1
            n_matched += len(got)
            # the single-sub-tile API agrees
            np.testing.assert_array_equal(match_subtile(st, f.footprint_ra, f.footprint_dec), rows)
    assert n_matched > 0
    assert n_fp <= 0.05 * n_matched + 5


def test_match_tile_accepts_an_arrow_table() -> None:
    f = field("ra0")
    n = len(f.quadrants)
    table = pa.table(
        {
            "footprint_ra": pa.array(list(f.footprint_ra), type=pa.list_(pa.float64())),
            "footprint_dec": pa.array(list(f.footprint_dec), type=pa.list_(pa.float64())),
            "healpix": pa.array(np.arange(n)),
        }
    )
    ra, dec = footprints_from_table(table.slice(3))  # non-zero offsets
    np.testing.assert_array_equal(ra, f.footprint_ra[3:])
    np.testing.assert_array_equal(dec, f.footprint_dec[3:])
    tile = f.tiles[0]
    a = match_tile(tile, GRID, table)
    b = match_tile(tile, GRID, (f.footprint_ra, f.footprint_dec))
    c = match_tile(tile, GRID, f.footprint_ra, f.footprint_dec)
    for x, y, z in zip(a, b, c, strict=True):
        np.testing.assert_array_equal(x, y)
        np.testing.assert_array_equal(x, z)


# -- the polygon-vs-box test itself ----------------------------------------------------


BOX = Box(0.0, 1.0, 0.0, 1.0)


def poly(*pts: tuple[float, float]) -> NDArray[np.float64]:
    return np.array([pts], dtype=np.float64)


@pytest.mark.parametrize(
    ("polygon", "expected"),
    [
        (poly((0.2, 0.2), (0.8, 0.2), (0.5, 0.8)), True),  # inside the box
        (poly((-5, -5), (5, -5), (5, 5), (-5, 5)), True),  # box inside the polygon
        (poly((-1, 0.5), (2, 0.5), (2, 0.6)), True),  # crosses, no vertex inside
        (poly((1.0, 0.0), (2, 0), (2, 1)), True),  # touches a corner
        (poly((1.0, -1.0), (2, -1), (1.0, 2.0)), True),  # touches along an edge
        (poly((1.1, -1.0), (2, -1), (1.1, 2.0)), False),
        (poly((1.6, 0.6), (0.6, 1.6), (2, 2)), False),  # only the diagonal axis separates
        # L-shape around the box: the box sits in the notch of a non-convex polygon
        (poly((-1, -1), (3, -1), (3, -0.1), (-0.1, -0.1), (-0.1, 3), (-1, 3)), False),
        # a polygon whose bounding box covers the box, but whose edges do not meet it
        (poly((-1, -1), (-0.5, -1), (-0.5, 2.0), (2, 2), (2, 2.5), (-1, 2.5)), False),
    ],
)
def test_polygons_intersect_box(polygon: NDArray[np.float64], expected: bool) -> None:
    assert polygons_intersect_box(polygon, BOX).tolist() == [expected]
    # orientation does not matter
    assert polygons_intersect_box(polygon[:, ::-1], BOX).tolist() == [expected]


def test_polygons_intersect_box_vectorised_and_nan() -> None:
    p = np.concatenate(
        [
            poly((0.2, 0.2), (0.8, 0.2), (0.5, 0.8)),
            poly((np.nan, 0.2), (0.8, 0.2), (0.5, 0.8)),
            poly((5, 5), (6, 5), (6, 6)),
        ]
    )
    assert polygons_intersect_box(p, BOX).tolist() == [True, False, False]
    assert polygons_intersect_box(np.empty((0, 4, 2)), BOX).shape == (0,)
    with pytest.raises(ValueError, match="shape"):
        polygons_intersect_box(np.zeros((3, 4)), BOX)


def test_point_in_polygons() -> None:
    square = poly((0, 0), (2, 0), (2, 2), (0, 2))
    assert point_in_polygons(square, 1.0, 1.0).tolist() == [True]
    assert point_in_polygons(square, 3.0, 1.0).tolist() == [False]


def test_match_far_side_and_empty() -> None:
    tile = Tile(1, 10.0, 20.0)
    # a footprint on the far side of the sphere projects to nan: never matched
    ra = np.array([[190.0, 190.1, 190.1, 190.0]])
    dec = np.array([[-20.0, -20.0, -19.9, -19.9]])
    assert all(r.size == 0 for r in match_tile(tile, GRID, ra, dec))
    empty = match_tile(tile, GRID, np.empty((0, 32)), np.empty((0, 32)))
    assert len(empty) == GRID.n_subtiles
    assert all(r.size == 0 for r in empty)
    with pytest.raises(ValueError, match="shape"):
        match_tile(tile, GRID, np.zeros((2, 4)), np.zeros((2, 5)))
    with pytest.raises(ValueError, match="pad_arcmin"):
        match_tile(tile, GRID, ra, dec, pad_arcmin=-1.0)


def _kernel_hits(polygons: NDArray[np.float64], boxes: list[Box]) -> NDArray[np.bool_]:
    from constellation.discovery._kernels import polygons_boxes

    finite = np.isfinite(polygons).all(axis=(1, 2))
    with np.errstate(invalid="ignore"):
        lo = np.where(finite[:, None], polygons.min(axis=1), np.inf)
        hi = np.where(finite[:, None], polygons.max(axis=1), -np.inf)
    edges = np.array([[b.x_min, b.x_max, b.y_min, b.y_max] for b in boxes])
    return np.asarray(polygons_boxes(np.ascontiguousarray(polygons), lo, hi, edges))


def test_compiled_kernel_agrees_on_the_special_cases() -> None:
    cases = [
        poly((0.2, 0.2), (0.8, 0.2), (0.5, 0.8)),
        poly((-1, 0.5), (2, 0.5), (2, 0.6)),
        poly((1.0, 0.0), (2, 0), (2, 1)),
        poly((1.0, -1.0), (2, -1), (1.0, 2.0)),
        poly((1.1, -1.0), (2, -1), (1.1, 2.0)),
        poly((1.6, 0.6), (0.6, 1.6), (2, 2)),
        poly((np.nan, 0.2), (0.8, 0.2), (0.5, 0.8)),
    ]
    for p in cases:
        for q in (p, p[:, ::-1]):
            assert _kernel_hits(q, [BOX]).tolist() == [polygons_intersect_box(q, BOX).tolist()]
    for p in (
        poly((-5, -5), (5, -5), (5, 5), (-5, 5)),
        poly((-1, -1), (3, -1), (3, -0.1), (-0.1, -0.1), (-0.1, 3), (-1, 3)),
        poly((-1, -1), (-0.5, -1), (-0.5, 2.0), (2, 2), (2, 2.5), (-1, 2.5)),
    ):
        assert _kernel_hits(p, [BOX]).tolist() == [polygons_intersect_box(p, BOX).tolist()]


def test_intersecting_boxes_equals_intersecting() -> None:
    """The one-pass compiled test gives exactly the per-box numpy results."""
    rng = np.random.default_rng(5)
    tile = Tile(7, 359.9, -62.0)
    # random quadrilaterals (quadrant-sized and smaller, some non-convex) around the tile
    n = 400
    cx, cy = rng.uniform(-19, 19, n), rng.uniform(-19, 19, n)
    ang = np.sort(rng.uniform(0, 2 * np.pi, (n, 6)), axis=1)
    rad = rng.uniform(0.3, 3.5, (n, 6))
    x, y = cx[:, None] + rad * np.cos(ang), cy[:, None] + rad * np.sin(ang)
    ra, dec = tile.to_sky(x.ravel(), y.ravel())
    plane = PlaneFootprints(tile, ra.reshape(n, 6), dec.reshape(n, 6))
    boxes = [st.extended for st in tile.iter_subtiles(GRID)] + [Box(-40, -39, 0, 1)]
    got = plane.intersecting_boxes(boxes)
    want = [plane.intersecting(b) for b in boxes]
    assert sum(w.size for w in want) > 100  # the test has matches to compare
    assert all(np.array_equal(g, w) for g, w in zip(got, want, strict=True))
    assert (
        PlaneFootprints(tile, np.empty((0, 4)), np.empty((0, 4))).intersecting_boxes(boxes)[0].size
        == 0
    )
