"""Simulation modes, storage targets, the CLI and awkward sky positions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from pydantic import ValidationError
from typer.testing import CliRunner

from constellation.cli import app
from constellation.io.storage import Storage
from constellation.simulate import FieldSpec, plan_field
from constellation.simulate.run import simulate_field
from constellation.simulate.sources import draw_sources
from constellation.sky import AllSkyTiling, sky_to_plane

SMALL = {"n_tiles_ra": 1, "n_tiles_dec": 1, "density_per_arcmin2": 3.0}


def test_sparse_mode_has_true_geometry_and_costs_little_disk(tmp_path: Path) -> None:
    simulate_field(FieldSpec(mode="sparse", **SMALL), Storage(), str(tmp_path))
    det = sorted(tmp_path.glob("q1/VIS/*/EUC_VIS_SWL-DET-*.fits"))[0]
    st = det.stat()
    assert st.st_size > 7.2e9  # 144 x 3 extensions of 2048 x 2066 pixels: ~7.3 GB
    assert st.st_blocks * 512 < 5e6  # ... of which only the headers are on disk
    with fits.open(det, memmap=True) as hdul:
        assert len(hdul) == 433
        h = hdul["3-4.F.SCI"]
        assert (h.header["NAXIS1"], h.header["NAXIS2"]) == (2048, 2066)
        assert not np.any(h.section[:10, :10])  # holes read back as zeros


@pytest.mark.slow  # ~20 s on 2 cores; pixels mode stays in the fast loop through the
# pixels field of tests/inference/test_shine_loading.py
def test_pixels_mode_draws_galaxies_in_chosen_quadrants(tmp_path: Path) -> None:
    spec = FieldSpec(mode="pixels", pixel_quadrants=("3-4.F",), **SMALL)
    summary = simulate_field(spec, Storage(), str(tmp_path))
    det = sorted(tmp_path.glob("q1/VIS/*/EUC_VIS_SWL-DET-*-00-1-*.fits"))[0]
    with fits.open(det, memmap=True) as hdul:
        sci = hdul["3-4.F.SCI"].data.astype(np.float64)
        rms = hdul["3-4.F.RMS"].data.astype(np.float64)
        bkg_level = np.median(sci)
        assert 300 < bkg_level < 600  # sky ~0.8 ADU/s over 560 s
        peaks = sci > bkg_level + 10 * np.median(rms)
        assert peaks.sum() > 100  # galaxies and stars were drawn
        assert not np.any(hdul["1-1.E.SCI"].section[:50, :50])  # other quadrants: sparse
    assert summary.n_sources > 0


def test_memory_storage_and_sparse_refusal() -> None:
    storage = Storage()
    summary = simulate_field(FieldSpec(**SMALL), storage, "memory://fieldtest")
    keys = storage.glob("memory://fieldtest/q1/catalogs/MER_FINAL_CATALOG/*/*.fits")
    assert len(keys) == len(summary.plan.tiles) == 1
    with pytest.raises(ValueError, match="local root"):
        simulate_field(FieldSpec(mode="sparse", **SMALL), storage, "memory://other")


@pytest.mark.parametrize(("ra", "dec"), [(0.05, 1.0), (359.95, -30.0), (269.7, 66.0), (10.0, 88.2)])
def test_fields_anywhere(ra: float, dec: float) -> None:
    plan = plan_field(FieldSpec(ra_deg=ra, dec_deg=dec, n_tiles_ra=2 if dec < 88 else 1,
                                n_tiles_dec=2, density_per_arcmin2=2.0))  # fmt: skip
    sources = draw_sources(plan)
    assert np.array_equal(
        AllSkyTiling().tile_of(sources.truth["ra"], sources.truth["dec"]), sources.tile_id
    )
    assert set(np.unique(sources.tile_id)) == set(plan.tiles.tile_id.tolist())
    # the pointings cover every tile centre (compared in a tangent plane, not by RA)
    for tile in plan.tiles:
        x, y = sky_to_plane(
            [e.ra_deg for e in plan.exposures], [e.dec_deg for e in plan.exposures],
            tile.ra_deg, tile.dec_deg,
        )  # fmt: skip
        assert np.min(np.hypot(x, y)) < 30.0  # arcmin


def test_neighbouring_tiles_overlap() -> None:
    plan = plan_field(FieldSpec(n_tiles_ra=2, n_tiles_dec=2))
    tiles = list(plan.tiles)
    a, b = tiles[0], tiles[1]
    corners = np.array(b.box_to_sky(b.extended_box))
    x, y = a.to_plane(corners[0], corners[1])
    assert np.any(a.extended_box.contains(x, y))  # extended areas overlap


def test_spec_validation() -> None:
    with pytest.raises(ValidationError):
        FieldSpec(mode="huge")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        FieldSpec(density_per_arcmin2=-1)
    with pytest.raises(ValidationError, match="pole"):
        FieldSpec(dec_deg=89.5, n_tiles_ra=2)


@pytest.mark.slow  # two simulations: ~17 s on 2 cores
def test_cli(tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(
        app, ["simulate", "--out", str(tmp_path), "--tiles", "1x1", "--density", "2"]
    )
    assert res.exit_code == 0, res.output
    assert "1 tiles" in res.stdout
    assert (tmp_path / "truth" / "field.json").exists()
    bad = runner.invoke(app, ["simulate", "--out", str(tmp_path), "--tiles", "2by2"])
    assert bad.exit_code == 2
    assert "NxM" in bad.output
    # the field is not overwritten unless asked
    before = (tmp_path / "truth" / "field.json").stat().st_mtime_ns
    again = runner.invoke(app, ["simulate", "--out", str(tmp_path), "--tiles", "1x1"])
    assert again.exit_code == 1
    assert "use --force to overwrite" in again.stderr
    assert (tmp_path / "truth" / "field.json").stat().st_mtime_ns == before
    forced = runner.invoke(
        app, ["simulate", "--out", str(tmp_path), "--tiles", "1x1", "--density", "2", "--force"]
    )
    assert forced.exit_code == 0, forced.output


def test_unknown_pixel_quadrant_rejected() -> None:
    with pytest.raises(ValidationError, match="unknown quadrant"):
        FieldSpec(pixel_quadrants=("7-1.E",))


def test_calibration_fields_constant_shear_round_galaxies_no_noise() -> None:
    """A calibration field: one shear everywhere, zero intrinsic ellipticity and no pixel
    noise; the rotated partner of a pair turns every intrinsic ellipticity by 2 x 90 deg."""
    from constellation.simulate.field import ShearField

    shear = ShearField(amplitude=0.0, g1_constant=0.02, g2_constant=-0.01)
    calib = FieldSpec(shear=shear, shape_noise=0.0, **SMALL)
    truth = draw_sources(plan_field(calib)).truth
    np.testing.assert_array_equal(truth["g1"], 0.02)
    np.testing.assert_array_equal(truth["g2"], -0.01)
    assert not np.any(truth["e1_intrinsic"])
    assert not np.any(truth["e2_intrinsic"])
    base = draw_sources(plan_field(FieldSpec(**SMALL))).truth
    turned = draw_sources(plan_field(FieldSpec(intrinsic_rotation_deg=90.0, **SMALL))).truth
    gal = ~base["is_star"]
    assert np.std(base["e1_intrinsic"][gal]) == pytest.approx(0.26, rel=0.1)
    np.testing.assert_allclose(turned["e1_intrinsic"], -base["e1_intrinsic"], atol=1e-12)
    np.testing.assert_allclose(turned["e2_intrinsic"], -base["e2_intrinsic"], atol=1e-12)
    with pytest.raises(ValidationError, match=r"below 0\.5"):
        ShearField(amplitude=0.2, g1_constant=0.2, g2_constant=0.2)


def _small_quadrant_header() -> object:
    """A 128 x 128 px TAN header at 0.1"/px (RA axis flipped) for render_quadrant."""
    from astropy.wcs import WCS

    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [52.93, -28.09]
    w.wcs.crpix = [64.5, 64.5]
    w.wcs.cd = [[-0.1 / 3600, 0.0], [0.0, 0.1 / 3600]]
    header = w.to_header()
    header["NAXIS"], header["NAXIS1"], header["NAXIS2"] = 2, 128, 128
    return header


def test_pixel_noise_off_renders_sky_and_galaxies_exactly() -> None:
    """Without pixel noise a rendered quadrant is sky + galaxies (its RMS still says what
    the noise would be); with it, the same sources differ by that noise."""
    from constellation.simulate.psf import psf_grid
    from constellation.simulate.render import RenderSources, render_quadrant

    header = _small_quadrant_header()
    one = np.ones(1)
    sources = RenderSources(
        ra=one * 52.93, dec=one * -28.09, flux_ujy=one * 5.0, hlr_arcsec=one * 0.4,
        e1=one * 0.0, e2=one * 0.0, g1=one * 0.02, g2=one * 0.0, is_star=np.zeros(1, bool),
    )  # fmt: skip
    psf = psf_grid(np.random.default_rng(0))

    def render(noise: bool) -> dict[str, np.ndarray]:
        return render_quadrant(
            header, psf, sources, zeropoint=25.0, exptime_s=560.0, gain=3.5, rdnoise_e=4.0,
            sky_adu=450.0, rng=np.random.default_rng(1), pixel_noise=noise,
        )  # fmt: skip

    quiet, noisy = render(False), render(True)
    sci = quiet["SCI"].astype(np.float64)
    assert float(np.median(quiet["RMS"])) > 1.0
    assert sci.max() > 450.0 + 10 * float(np.median(quiet["RMS"]))  # the galaxy is there
    # the sky is a plane: without noise its second differences vanish away from the galaxy
    assert np.abs(np.diff(sci[:20], n=2, axis=1)).max() < 1e-2
    np.testing.assert_array_equal(quiet["RMS"], noisy["RMS"])
    resid = (noisy["SCI"] - quiet["SCI"]) / quiet["RMS"]
    assert float(np.std(resid)) == pytest.approx(1.0, rel=0.05)


@pytest.mark.shine
def test_galsim_renderer_agrees_with_the_builtin_one_and_integrates_the_psf() -> None:
    """The GalSim renderer (calibration fields) draws the same galaxy as the built-in one
    (flux, position, shear response within its few-percent sampling error) and writes
    pixel-integrated PSF stamps, wider than the built-in sampled ones. Needs GalSim,
    which comes with SHINE (marked ``shine``: CI's SHINE step runs it)."""
    galsim = pytest.importorskip("galsim")
    from constellation.simulate.psf import psf_grid, psf_parameters
    from constellation.simulate.render import RenderSources, render_quadrant

    header = _small_quadrant_header()
    one = np.ones(1)
    psf_rng = [3, 5, 0]

    def render(renderer: str, g1: float, g2: float) -> np.ndarray:
        sources = RenderSources(
            ra=one * 52.93, dec=one * -28.09, flux_ujy=one * 5.0, hlr_arcsec=one * 0.4,
            e1=one * 0.0, e2=one * 0.0, g1=one * g1, g2=one * g2, is_star=np.zeros(1, bool),
        )  # fmt: skip
        out = render_quadrant(
            header, psf_grid(np.random.default_rng(psf_rng), renderer), sources,
            zeropoint=25.0, exptime_s=560.0, gain=3.5, rdnoise_e=4.0, sky_adu=0.0,
            rng=np.random.default_rng(1), pixel_noise=False, renderer=renderer,
            psf_params=psf_parameters(np.random.default_rng(psf_rng)),
        )  # fmt: skip
        return np.asarray(out["SCI"], dtype=np.float64)

    def moments(img: np.ndarray) -> tuple[float, float, float, float, float]:
        m = galsim.hsm.FindAdaptiveMom(galsim.Image(img))
        return (float(img.sum()), m.moments_centroid.x, m.moments_centroid.y,
                m.observed_shape.e1, m.observed_shape.e2)  # fmt: skip

    for g1, g2 in ((0.02, 0.0), (0.0, -0.02)):
        flux_b, xb, yb, e1b, e2b = moments(render("builtin", g1, g2))
        flux_g, xg, yg, e1g, e2g = moments(render("galsim", g1, g2))
        assert flux_g == pytest.approx(flux_b, rel=2e-3)
        assert (xg, yg) == pytest.approx((xb, yb), abs=0.01)
        # the sign and size of the shear (RA axis flipped: +g1 west is +x here) ...
        assert e1g * g1 >= 0
        assert e2g * g2 >= 0
        assert abs(e1g + e2g) > 0.02
        # ... and the same response within 2 % (the built-in PSF is sampled, not integrated)
        assert (e1g, e2g) == pytest.approx((e1b, e2b), rel=0.02, abs=2e-4)
    sampled = psf_grid(np.random.default_rng(psf_rng))[:21, :21].astype(np.float64)
    integrated = psf_grid(np.random.default_rng(psf_rng), "galsim")[:21, :21].astype(np.float64)

    def width(stamp: np.ndarray) -> float:
        y, x = np.mgrid[0:21, 0:21] - 10.0
        return float(np.sqrt(((x**2 + y**2) * stamp).sum() / stamp.sum() / 2))

    # the box adds 1/12 px^2 per axis to the variance
    assert width(integrated) ** 2 - width(sampled) ** 2 == pytest.approx(1 / 12, rel=0.1)
    assert integrated.sum() == pytest.approx(0.95, abs=0.002)
