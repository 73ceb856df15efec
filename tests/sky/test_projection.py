"""The gnomonic projection against wcslib, everywhere on the sphere."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from constellation.sky import plane_to_sky, sky_to_plane, wrap_ra
from tests.sky.reference import decs, ras, reference_plane, sources_around

TOL_ARCMIN = 1e-9  # ~6e-8 arcsec


@settings(max_examples=60, deadline=None)
@given(ra0=ras, dec0=decs, seed=st.integers(0, 2**32 - 1))
def test_matches_wcslib_near_the_tangent_point(ra0: float, dec0: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    ra, dec = sources_around(rng, ra0, dec0, 500, 40.0)
    x, y = sky_to_plane(ra, dec, ra0, dec0)
    xr, yr = reference_plane(ra0, dec0, ra, dec)
    np.testing.assert_allclose(x, xr, rtol=0, atol=TOL_ARCMIN)
    np.testing.assert_allclose(y, yr, rtol=0, atol=TOL_ARCMIN)


@settings(max_examples=40, deadline=None)
@given(ra0=ras, dec0=decs, seed=st.integers(0, 2**32 - 1))
def test_matches_wcslib_far_from_the_tangent_point(ra0: float, dec0: float, seed: int) -> None:
    """Offsets beyond the series range go through the exact (libm) path."""
    rng = np.random.default_rng(seed)
    ra = rng.uniform(0, 360, 2000)
    dec = np.degrees(np.arcsin(rng.uniform(-1, 1, 2000)))
    x, y = sky_to_plane(ra, dec, ra0, dec0)
    xr, yr = reference_plane(ra0, dec0, ra, dec)
    front = np.isfinite(xr) & (np.hypot(xr, yr) < 60 * 300)  # within ~80 deg
    assert np.array_equal(np.isnan(x), np.isnan(xr)) or np.all(np.isnan(x[~np.isfinite(xr)]))
    np.testing.assert_allclose(x[front], xr[front], rtol=1e-12, atol=TOL_ARCMIN)
    np.testing.assert_allclose(y[front], yr[front], rtol=1e-12, atol=TOL_ARCMIN)


def test_behind_the_plane_is_nan() -> None:
    x, y = sky_to_plane([180.0, 10.0, 100.0], [0.0, 0.0, 0.0], 10.0, 0.0)
    assert np.isnan(x[0])
    assert np.isnan(y[0])
    assert x[1] == 0.0
    assert y[1] == 0.0
    assert np.isnan(x[2])  # exactly 90 deg away: on the horizon


def test_axes_point_west_and_north() -> None:
    x, y = sky_to_plane([10.1, 10.0], [0.0, 0.1], 10.0, 0.0)
    assert x[0] < 0
    assert abs(y[0]) < 1e-12
    assert y[1] > 0
    assert abs(x[1]) < 1e-12


@settings(max_examples=60, deadline=None)
@given(ra0=ras, dec0=decs, seed=st.integers(0, 2**32 - 1))
def test_round_trip(ra0: float, dec0: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.uniform(-30, 30, 300)
    y = rng.uniform(-30, 30, 300)
    ra, dec = plane_to_sky(x, y, ra0, dec0)
    assert np.all((ra >= 0) & (ra < 360))
    x2, y2 = sky_to_plane(ra, dec, ra0, dec0)
    np.testing.assert_allclose(x2, x, atol=1e-9)
    np.testing.assert_allclose(y2, y, atol=1e-9)


def test_wrap_ra_never_returns_360() -> None:
    r = wrap_ra([-1e-20, -0.0, 360.0, 720.5, -359.5])
    assert np.all((r >= 0) & (r < 360))
    np.testing.assert_allclose(r, [0.0, 0.0, 0.0, 0.5, 0.5])


def test_scalar_and_shape_checks() -> None:
    x, _y = sky_to_plane(10.0, 20.0, 10.0, 20.0)
    assert x.shape == ()
    assert float(x) == 0.0
    with pytest.raises(ValueError, match="differ in shape"):
        sky_to_plane([1.0, 2.0], [1.0], 0.0, 0.0)
