"""The ``shine`` backend: pure helpers (no SHINE needed), the install hint, and small SHINE runs.

The SHINE tests (marked ``shine``) skip unless ``shine.euclid`` is importable (SHINE
installed from its source tree; see docs/shine.md); CI runs them with SHINE
(``SHINE_REQUIRED``: a missing SHINE fails them instead).
"""

from __future__ import annotations

import itertools
import sys

import numpy as np
import pyarrow as pa
import pytest
from astropy.wcs import WCS

from constellation.config import ScienceConfig
from constellation.inference.base import BackendError
from constellation.inference.shine import (
    INSTALL_HINT,
    CropWindow,
    ExposureData,
    ShineBackend,
    SubTileData,
    bucket,
    convex_polygon_mask,
    crop_span,
    crop_window,
    disc_mask,
    flux_conversion,
    hlr_arcsec,
    lanczos_resample,
    local_jacobians,
    psf_for_shine,
    remove_pixel,
    select_sources,
    shear_drift,
    source_bucket,
    split_rhat,
    stamp_tiers,
    summarize_posterior,
    zeropoint_scales,
)

# --------------------------------------------------------------------------- photometry


def test_flux_conversion_matches_the_ab_formula() -> None:
    # 1 uJy at ZP 23.9 for 1 s is exactly 1 ADU
    assert flux_conversion(23.9, 1.0) == pytest.approx(1.0)
    assert flux_conversion(26.4, 1.0) == pytest.approx(10.0)
    assert flux_conversion(24.57, 560.52) == pytest.approx(10 ** ((24.57 - 23.9) / 2.5) * 560.52)
    with pytest.raises(ValueError, match="positive"):
        flux_conversion(24.0, 0.0)


def test_zeropoint_scales_bring_exposures_to_the_reference() -> None:
    scales = zeropoint_scales([24.5, 24.5, 27.0], [560.0, 280.0, 560.0])
    # half the exposure time -> half the ADU -> scaled up by 2; 2.5 mag deeper -> 10x fewer
    np.testing.assert_allclose(scales, [1.0, 2.0, 0.1], rtol=1e-12)
    # the scaled ADU of a source is then the same in every exposure
    adu = np.array([flux_conversion(24.5, 560.0), flux_conversion(24.5, 280.0)]) * 7.0
    np.testing.assert_allclose(adu * scales[:2], adu[0])
    np.testing.assert_allclose(zeropoint_scales([25.0, 24.0], [1.0, 1.0], reference=1)[1], 1.0)


# --------------------------------------------------------------------------- geometry


def test_crop_window_pads_and_clips() -> None:
    w = crop_window([100.2, 300.7, 250.0], [50.5, 80.0, 400.1], 2048, 2066, pad=10)
    assert w == CropWindow(x0=90, x1=312, y0=40, y1=412)
    assert (w.nx, w.ny) == (222, 372)
    # clipped at the quadrant edges
    assert crop_window([-50.0, 5.0], [2060.0, 2100.0], 2048, 2066, pad=8) == CropWindow(
        0, 14, 2052, 2066
    )
    # entirely outside -> None
    assert crop_window([3000.0, 3100.0], [10.0, 20.0], 2048, 2066, pad=4) is None
    assert crop_window([], [], 2048, 2066, pad=4) is None


def test_crop_span_ignores_the_quadrant_edges() -> None:
    # the same polygon gives the same span wherever the quadrant cuts it
    x, y = [-50.2, 300.0, 120.0], [1900.0, 2100.5, 2000.0]
    assert crop_span(x, y, pad=10) == (2102 - 1900 + 20, 301 - (-51) + 20)
    clipped = crop_window(x, y, 2048, 2066, pad=10)
    assert clipped is not None
    assert (clipped.ny, clipped.nx) != crop_span(x, y, pad=10)


def test_crop_span_is_at_most_a_quadrant() -> None:
    # a default sub-tile's extended region (10') spans more than a quadrant: the
    # model's image needs no more than the quadrant, whatever part of it is cut
    x, y = [-2000.0, 4200.0], [-2100.0, 4150.0]
    assert crop_span(x, y, pad=64, naxis1=2048, naxis2=2066) == (2066, 2048)
    assert crop_span(x, y, pad=64, naxis1=2048) == (4150 + 1 + 2100 + 128, 2048)
    assert crop_span([10.0, 20.0], [30.0, 40.0], pad=4, naxis1=2048, naxis2=2066) == (19, 19)


def test_row_byte_range_is_the_rows_of_a_row_major_image() -> None:
    w = CropWindow(x0=5, x1=9, y0=3, y1=7)
    assert w.row_byte_range(data_offset=2880, naxis1=100, itemsize=4) == (
        2880 + 3 * 400,
        2880 + 7 * 400,
    )


@pytest.mark.parametrize("reverse", [False, True])
def test_convex_polygon_mask_either_orientation(reverse: bool) -> None:
    vx = [2.0, 7.0, 7.0, 2.0]
    vy = [1.0, 1.0, 4.0, 4.0]
    if reverse:
        vx, vy = vx[::-1], vy[::-1]
    # crop origin (1, 0): pixel (i, j) of the crop is quadrant pixel (i + 1, j)
    m = convex_polygon_mask((6, 10), 1, 0, vx, vy)
    expected = np.zeros((6, 10), dtype=bool)
    expected[1:5, 1:7] = True  # x 2..7 -> crop cols 1..6, y 1..4 -> rows 1..4
    np.testing.assert_array_equal(m, expected)


def test_disc_mask() -> None:
    m = disc_mask((10, 10), [2.0, 20.0], [3.0, 20.0], [1.0, 5.0])
    assert m.sum() == 5  # the centre and its 4 neighbours; the second disc is off the array
    assert m[3, 2]
    assert m[2, 2]
    assert m[4, 2]
    assert m[3, 1]
    assert m[3, 3]
    assert not disc_mask((4, 4), [np.nan], [1.0], [3.0]).any()


def test_local_jacobians_of_a_tan_wcs() -> None:
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [52.9, -28.1]
    w.wcs.crpix = [1024.5, 1033.5]
    s = 0.1 / 3600
    w.wcs.cd = [[-s, 0.0], [0.0, s]]  # east to the left: +x points west
    jac = local_jacobians(w, np.array([1023.5]), np.array([1032.5]))
    np.testing.assert_allclose(jac[0], [0.1, 0.0, 0.0, 0.1], atol=1e-7)
    w.wcs.cd = [[s, 0.0], [0.0, -s]]  # rotated by 180 deg relative to the usual
    jac = local_jacobians(w, np.array([1023.5]), np.array([1032.5]))
    np.testing.assert_allclose(jac[0], [-0.1, 0.0, 0.0, -0.1], atol=1e-7)
    assert local_jacobians(w, np.zeros(0), np.zeros(0)).shape == (0, 4)


# --------------------------------------------------------------------------- buckets


def test_buckets() -> None:
    assert [bucket(n, 128) for n in (1, 128, 129, 1300)] == [128, 128, 256, 1408]
    assert [source_bucket(n) for n in (0, 1, 2, 3, 5, 16, 17, 33)] == [0, 1, 2, 4, 8, 16, 32, 48]
    with pytest.raises(ValueError, match="step"):
        bucket(3, 0)


def test_stamp_windows_group_overlapping_stamps() -> None:
    from constellation.inference.shine.packing import stamp_windows

    positions = np.array([
        [40.0, 40.0],    # A: box [8, 72)^2
        [100.0, 40.0],   # B: overlaps A (x 68..132)
        [160.0, 40.0],   # C: overlaps B, not A: one window with A and B
        [300.0, 300.0],  # D: alone
        [300.0, 380.0],  # E: tier 1 (128 px): box [236, 364) x [316, 444) -> overlaps D
        [500.0, 100.0],  # F: not visible here
    ])  # fmt: skip
    tiers = np.array([0, 0, 0, 0, 1, 0])
    exposure = ExposureData(
        key="e", quadrant="1-1.E", image=np.zeros((600, 600), np.float32),
        sigma=np.ones((600, 600), np.float32), valid=np.ones((600, 600), bool),
        background=0.0, positions=positions,
        visible=np.array([True, True, True, True, True, False]),
        jacobians=np.tile([0.1, 0, 0, 0.1], (6, 1)), psfs=np.zeros((6, 21, 21)),
        corners_sky=np.zeros((4, 2)),
    )  # fmt: skip
    data = SubTileData(
        exposures=[exposure], object_ids=np.arange(6), ra=np.zeros(6), dec=np.zeros(6),
        flux_adu=np.ones(6), hlr=np.ones(6), tiers=tiers, n_rejected=0,
        n_masked_invisible=0, reference_magzerop=24.5, reference_exptime=560.0,
    )  # fmt: skip
    windows = sorted(stamp_windows(data, [64, 128, 256]), key=lambda w: w.x0)
    assert [w.sources.tolist() for w in windows] == [[0, 1, 2], [3, 4]]
    abc, de = windows
    assert (abc.x0, abc.y0, abc.nx, abc.ny) == (8, 8, 192 - 8, 64)
    assert (de.x0, de.y0, de.nx, de.ny) == (236, 268, 128, 444 - 268)
    # every visible source in exactly one window of its exposure; its stamp inside it
    assert sorted(i for w in windows for i in w.sources) == [0, 1, 2, 3, 4]


def test_sparse_model_ladders() -> None:
    from constellation.inference.shine.buckets import (
        IMAGE_LADDER,
        count_bucket,
        image_bucket,
        slot_bucket,
    )

    # image sides: the ladder, at most 25 % padding, a whole quadrant fits the last rung
    assert [image_bucket(n) for n in (1, 64, 65, 128, 257, 1039, 2048, 2066)] == [
        64, 64, 80, 128, 320, 1280, 2048, 2112,
    ]  # fmt: skip
    assert image_bucket(3000) == 3072
    for low, high in itertools.pairwise(IMAGE_LADDER):
        assert high <= 1.25 * low + 1e-9
    # counts: exact up to 8, then at most 25 % padding, four rungs per doubling
    assert [count_bucket(n) for n in (0, 1, 4, 5, 8, 9, 17, 33, 100)] == [
        0, 1, 4, 5, 8, 10, 20, 40, 112,
    ]  # fmt: skip
    for n in range(1, 5000):
        assert n <= count_bucket(n) <= 1.25 * n
    assert len({count_bucket(n) for n in range(65, 129)}) == 4
    # parameter vectors: powers of two, at least 16
    assert [slot_bucket(n) for n in (0, 1, 16, 17, 2460)] == [16, 16, 16, 32, 4096]


# --------------------------------------------------------------------------- sources


def _catalog() -> pa.Table:
    return pa.table(
        {
            "object_id": pa.array([1, 2, 3, 4, 5, 6, 7, 8], type=pa.int64()),
            "flux_detection_total": pa.array([100.0, 100.0, 100.0, 100, 100, 100, 100, 50]),
            "fluxerr_detection_total": pa.array([5.0, 20.0, 5.0, 5, 5, 5, 5, 2]),
            "vis_det": pa.array([1, 1, 0, 1, 1, 1, 1, 1], type=pa.int16()),
            "spurious_flag": pa.array([0, 0, 0, 1, 0, 0, 0, 0], type=pa.int16()),
            "point_like_flag": pa.array([None, None, None, None, 1, None, 0, None], pa.int16()),
            "det_quality_flag": pa.array([0, 0, 0, 0, 0, 4, 1, 2], type=pa.int16()),
            "semimajor_axis": pa.array([3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 50.0]),
        }
    )


def test_select_sources_applies_each_filter() -> None:
    t = _catalog()
    keep = select_sources(t, {"min_snr": 10.0}, max_stamp=256)
    # 2: S/N 5; 3: not VIS-detected; 4: spurious; 5: point-like; 6: saturated (bit 3)
    # 7: neighbour bit only (kept); 8: too large for a 256 px stamp (2 (150 + 10.5) > 256)
    np.testing.assert_array_equal(keep, [1, 0, 0, 0, 0, 0, 1, 0])
    relaxed = {
        "min_snr": 1.0,
        "require_vis_detected": False,
        "exclude_spurious": False,
        "exclude_point_sources": False,
        "det_quality_exclude_mask": 0,
    }
    np.testing.assert_array_equal(select_sources(t, relaxed, 512), [1] * 8)
    # max_sources keeps the highest S/N
    top = select_sources(t, {**relaxed, "max_sources": 2}, 512)
    # S/N 25 (row 8) is the highest, then the first of the S/N 20 ties
    np.testing.assert_array_equal(np.flatnonzero(top), [0, 7])
    # a missing column skips its filter
    np.testing.assert_array_equal(
        select_sources(t.drop_columns(["vis_det"]), {"min_snr": 10.0}, 256)[:3], [1, 0, 1]
    )


def test_hlr_and_stamp_tiers() -> None:
    t = pa.table(
        {
            "semimajor_axis": pa.array([3.0, None, 0.1, 100.0]),
            "fwhm": pa.array([0.5, 0.8, 0.5, 0.5]),
        }
    )
    hlr = hlr_arcsec(t, 0.1)
    np.testing.assert_allclose(hlr, [0.3, 0.4, 0.05, 5.0])
    # needed stamp 2 (3 hlr_px + 10.5): 39 -> 64; 45 -> 64; 24 -> 64; 321 -> 256 (largest)
    np.testing.assert_array_equal(stamp_tiers(hlr, [64, 128, 256]), [0, 0, 0, 2])
    np.testing.assert_array_equal(stamp_tiers(np.array([0.8]), [64, 128, 256]), [1])
    assert hlr_arcsec(pa.table({"x": [1.0]}))[0] == 0.5


# --------------------------------------------------------------------------- PSF


def _gauss(n: int = 21, x0: float = 10.0, y0: float = 10.0, sx: float = 1.0, sy: float = 1.6):
    y, x = np.mgrid[0:n, 0:n].astype(float)
    g = np.exp(-0.5 * (((x - x0) / sx) ** 2 + ((y - y0) / sy) ** 2))
    return g / g.sum()


def _centroid(img: np.ndarray) -> tuple[float, float]:
    y, x = np.mgrid[0 : img.shape[0], 0 : img.shape[1]]
    return float((img * x).sum() / img.sum()), float((img * y).sum() / img.sum())


def test_lanczos_resample_identity_flip_and_integer_shift() -> None:
    g = _gauss(x0=9.3)
    np.testing.assert_allclose(lanczos_resample(g, np.eye(2), (0.0, 0.0)), g, atol=1e-12)
    flipped = lanczos_resample(g, np.diag([-1.0, 1.0]), (0.0, 0.0))
    np.testing.assert_allclose(flipped, g[:, ::-1], atol=1e-12)
    shifted = lanczos_resample(g, np.eye(2), (2.0, -1.0))
    np.testing.assert_allclose(shifted[1:-1, 2:], g[2:, :-2], atol=1e-12)


def test_psf_for_shine_identity_mirror_and_subpixel_shift() -> None:
    g = _gauss()
    np.testing.assert_allclose(psf_for_shine(g, [0.1, 0, 0, 0.1], (0.0, 0.0)), g, atol=1e-12)
    # a mirrored quadrant (dudx < 0): SHINE reads the stamp in the sky frame, so the
    # stamp handed over is mirrored too; with sx != sy a transpose would be wrong
    m = psf_for_shine(g, [-0.1, 0, 0, 0.1], (0.0, 0.0))
    np.testing.assert_allclose(m, g[:, ::-1], atol=1e-12)
    # 90 deg rotation: u along -y, v along x
    r = psf_for_shine(g, [0, -0.1, 0.1, 0], (0.0, 0.0))
    np.testing.assert_allclose(r, _gauss(sx=1.6, sy=1.0), atol=1e-3)
    # a sub-pixel shift moves the centroid by that much (identity frame)
    s = psf_for_shine(g, [0.1, 0, 0, 0.1], (0.37, -0.22))
    cx, cy = _centroid(s)
    assert cx == pytest.approx(10.37, abs=0.02)
    assert cy == pytest.approx(9.78, abs=0.02)
    assert s.sum() == pytest.approx(1.0)


def _pixel_integrated_gauss(sigma: float, n: int = 21) -> np.ndarray:
    """A round Gaussian integrated over each pixel (an effective PSF), analytically."""
    from math import erf, sqrt

    c = (n - 1) / 2
    edges = np.arange(n + 1) - c - 0.5
    cdf = np.array([0.5 * (1 + erf(e / (sigma * sqrt(2)))) for e in edges])
    line = np.diff(cdf)
    return np.outer(line, line)


@pytest.mark.parametrize(("sigma", "atol"), [(1.5, 1e-5), (1.0, 2e-3), (0.68, 2e-2)])
def test_remove_pixel_recovers_the_optical_psf_samples(sigma: float, atol: float) -> None:
    effective = _pixel_integrated_gauss(sigma)
    x = np.arange(21) - 10.0
    line = np.exp(-0.5 * (x / sigma) ** 2)
    optical = np.outer(line, line) / line.sum() ** 2
    peak = optical.max()
    out = remove_pixel(effective)
    # the pixel box makes the stamp wider: 4-16 % of the peak off at these widths
    assert np.abs(effective - optical).max() > 0.03 * peak
    # without it, the samples of the optical PSF (up to aliasing at FWHM 1.6 px)
    assert np.abs(out - optical).max() < atol * peak
    assert out.sum() == pytest.approx(effective.sum(), rel=1e-3)
    # and psf_for_shine applies it when asked
    np.testing.assert_allclose(
        psf_for_shine(effective, [0.1, 0, 0, 0.1], (0.0, 0.0), without_pixel=True),
        out / out.sum(),
        atol=1e-12,
    )


# --------------------------------------------------------------------------- outputs


def _split_rhat_by_definition(a: np.ndarray) -> float:
    """Split-R-hat written out: each chain cut into its first and last halves, then
    sqrt(((n - 1) / n * W + B / n) / W) over the 2 * chains half-chains of n draws."""
    n = a.shape[1] // 2
    halves = [c[:n] for c in a] + [c[-n:] for c in a]
    w = np.mean([np.var(h, ddof=1) for h in halves])
    b = n * np.var([np.mean(h) for h in halves], ddof=1)
    return float(np.sqrt(((n - 1) / n * w + b / n) / w))


@pytest.mark.shine
def test_split_rhat(shine_euclid: object) -> None:
    rng = np.random.default_rng(1)
    for shape in [(2, 1000), (4, 301), (1, 50), (3, 4)]:
        draws = rng.normal(size=shape) + rng.normal(size=(shape[0], 1))
        assert split_rhat(draws) == pytest.approx(_split_rhat_by_definition(draws), rel=1e-12)
    good = rng.normal(size=(2, 2000))
    assert split_rhat(good) == pytest.approx(1.0, abs=0.01)
    bad = good + np.array([[0.0], [3.0]])
    assert split_rhat(bad) > 1.5
    trend = np.linspace(0.0, 10.0, 1000)[None, :] + rng.normal(size=(1, 1000))
    assert split_rhat(trend) > 1.5  # one chain: split halves disagree
    assert np.isnan(split_rhat(np.zeros((1, 3))))
    with pytest.raises(ValueError, match="chain"):
        split_rhat(np.zeros(10))


def test_summarize_posterior_map_point() -> None:
    post = {
        "g1": np.array([[[0.02]]]),  # (chain, draw, 1) as SHINE's MAP InferenceData
        "g2": np.array([[[-0.01]]]),
        "flux": np.array([[[10.0, 20.0, 30.0, 1.0]]]),
        "hlr": np.array([[[0.3, 0.4, 0.5, 0.5]]]),
    }
    out = summarize_posterior(post, [111, 222, 333], [2, 0, 1], with_errors=True)
    assert (out.g1, out.g2) == (pytest.approx(0.02), pytest.approx(-0.01))
    assert out.g1_err is None
    assert out.g2_err is None
    assert out.g1_g2_cov is None
    t = out.sources
    assert t.column("object_id").to_pylist() == [111, 222, 333]
    assert t.column("flux").to_pylist() == [30.0, 10.0, 20.0]
    assert t.column("hlr").to_pylist() == pytest.approx([0.5, 0.3, 0.4])
    assert t.column("e1").to_pylist() == [None, None, None]  # not in the posterior
    assert t.column("flux_err").null_count == 3
    assert t.schema.field("object_id").type == pa.int64()
    for name in ("flux", "hlr", "e1", "e2", "dx", "dy"):
        assert t.schema.field(name).type == pa.float64()
        assert t.schema.field(f"{name}_err").type == pa.float64()


def test_summarize_posterior_draws_give_errors_and_covariance() -> None:
    rng = np.random.default_rng(3)
    cov = np.array([[1e-4, 5e-5], [5e-5, 4e-4]])
    g = rng.multivariate_normal([0.01, -0.03], cov, size=(2, 4000))  # (chain, draw, 2)
    e1 = rng.normal([0.1, -0.2], [0.05, 0.1], size=(2, 4000, 2))
    post = {"g1": g[..., 0], "g2": g[..., 1], "e1": e1}
    out = summarize_posterior(post, [7, 8], [1, 0], with_errors=True)
    assert out.g1 == pytest.approx(0.01, abs=1e-3)
    assert out.g2 == pytest.approx(-0.03, abs=1e-3)
    assert out.g1_err == pytest.approx(0.01, rel=0.05)
    assert out.g2_err == pytest.approx(0.02, rel=0.05)
    assert out.g1_g2_cov == pytest.approx(5e-5, rel=0.1)
    assert out.sources.column("e1").to_pylist() == pytest.approx([-0.2, 0.1], abs=0.01)
    assert out.sources.column("e1_err").to_pylist() == pytest.approx([0.1, 0.05], rel=0.05)
    with pytest.raises(ValueError, match="g1"):
        summarize_posterior({"g2": g[..., 1]}, [], [], with_errors=True)


def test_shear_drift() -> None:
    g1 = np.linspace(0.0, 0.1, 101)
    g2 = np.zeros(101)
    assert shear_drift(g1, g2) == pytest.approx(0.01)  # last 10 of 100 steps
    assert np.isnan(shear_drift(np.zeros(1), np.zeros(1)))


# --------------------------------------------------------------------------- install hint


def test_missing_shine_raises_backend_error_with_install_hint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # a None entry makes "import shine.euclid" fail even where SHINE is installed
    monkeypatch.setitem(sys.modules, "shine", None)
    monkeypatch.setitem(sys.modules, "shine.euclid", None)
    with pytest.raises(BackendError) as info:
        ShineBackend(ScienceConfig())
    message = str(info.value)
    assert "git+https://github.com/CosmoStat/SHINE" in message
    assert "shine.euclid" in message
    assert INSTALL_HINT in message


def test_get_backend_reports_the_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    from constellation.config import Settings
    from constellation.inference import clear_backends, get_backend

    monkeypatch.setitem(sys.modules, "shine", None)
    monkeypatch.setitem(sys.modules, "shine.euclid", None)
    clear_backends()
    with pytest.raises(BackendError, match="CosmoStat/SHINE"):
        get_backend(Settings(), "shine")


# --------------------------------------------------------------------------- with SHINE


@pytest.mark.shine
def test_psf_bridge_puts_the_galaxy_at_its_wcs_position(shine_euclid: object) -> None:
    """SHINE's renderer, fed our stamp, centres the light on the exact sub-pixel position
    with the PSF in the pixel frame, also for a mirrored quadrant."""
    import jax.numpy as jnp
    from shine.euclid.scene import render_model_images

    from constellation.inference import shine as backend

    ny = nx = 80
    truth = (40.3, 37.8)  # 0-based pixel position
    psf_pix = _gauss(sx=0.8, sy=1.6)  # elongated along pixel y
    out = {}
    for name, jac in {"normal": [0.1, 0, 0, 0.1], "mirrored": [-0.1, 0, 0, 0.1]}.items():
        pos = np.round(truth)
        centre = pos - 64 // 2 + (64 - 1) / 2.0
        stamp = psf_for_shine(psf_pix, jac, (truth[0] - centre[0], truth[1] - centre[1]))
        eset = shine_euclid.ExposureSet(  # type: ignore[attr-defined]
            images=jnp.zeros((1, ny, nx)),
            noise_sigma=jnp.ones((1, ny, nx)),
            masks=jnp.ones((1, ny, nx), dtype=bool),
            flag_maps=np.zeros((1, ny, nx), dtype=np.int32),
            backgrounds=jnp.zeros(1),
            pixel_positions=jnp.asarray(pos[None, None, :]),
            wcs_jacobians=jnp.asarray(np.array(jac, dtype=float)[None, None, :]),
            psf_images=jnp.asarray(stamp[None, None]),
            source_visible=jnp.ones((1, 1), dtype=bool),
            catalog_flux_adu=jnp.ones(1),
            catalog_hlr_arcsec=jnp.ones(1) * 0.05,
            catalog_ra=np.zeros(1),
            catalog_dec=np.zeros(1),
            source_stamp_tier=np.zeros(1, dtype=np.int32),
            exposure_corners_sky=np.zeros((1, 4, 2)),
            source_ids=[1],
            n_exposures=1,
            n_sources=1,
            image_ny=ny,
            image_nx=nx,
        )
        params = {
            "g1": 0.0, "g2": 0.0, "flux": jnp.ones(1) * 1000.0, "hlr": jnp.ones(1) * 0.05,
            "e1": jnp.zeros(1), "e2": jnp.zeros(1), "dx": jnp.zeros(1), "dy": jnp.zeros(1),
        }  # fmt: skip
        img = np.asarray(render_model_images(params, eset, stamp_sizes=[64]))[0]
        out[name] = img
        cx, cy = _centroid(img)
        assert cx == pytest.approx(truth[0], abs=0.03), name
        assert cy == pytest.approx(truth[1], abs=0.03), name
        # the PSF stays elongated along pixel y in both frames
        y, x = np.mgrid[0:ny, 0:nx]
        vx = (img * (x - cx) ** 2).sum() / img.sum()
        vy = (img * (y - cy) ** 2).sum() / img.sum()
        assert vy > 1.5 * vx, name
    assert backend.MASKED_SIGMA == 1e10


def _tiny_subtile(seed: int = 0) -> SubTileData:
    """Two 96 x 96 exposures of noise, three sources: the third visible only in the second
    exposure (so that the sparse model gathers different slots per exposure)."""
    rng = np.random.default_rng(seed)
    ny = nx = 96
    positions = np.array([[40.0, 40.0], [60.0, 55.0], [34.0, 60.0]])
    exps = []
    for j in range(2):
        psfs = np.stack([psf_for_shine(_gauss(), [0.1, 0, 0, 0.1], (0.5, 0.5))] * 3)
        exps.append(
            ExposureData(
                key=f"e{j}",
                quadrant="3-4.F",
                image=rng.normal(0, 1, (ny, nx)).astype(np.float32),
                sigma=np.ones((ny, nx), dtype=np.float32),
                valid=np.ones((ny, nx), dtype=bool),
                background=0.0,
                positions=positions + j,
                visible=np.array([True, True, j == 1]),
                jacobians=np.array([[0.1, 0, 0, 0.1]] * 3),
                psfs=psfs,
                corners_sky=np.zeros((4, 2)),
            )
        )
    return SubTileData(
        exposures=exps,
        object_ids=np.array([5, 9, 11]),
        ra=np.zeros(3),
        dec=np.zeros(3),
        flux_adu=np.array([100.0, 200.0, 150.0]),
        hlr=np.array([0.3, 0.3, 0.4]),
        tiers=np.array([0, 0, 0]),
        n_rejected=0,
        n_masked_invisible=0,
        reference_magzerop=24.5,
        reference_exptime=560.0,
    )


@pytest.mark.shine
def test_sparse_and_dense_models_agree_and_reuse_their_compiled_pieces(
    shine_euclid: object,
) -> None:
    """From the same start, the same Adam steps: the model of only the visible sources on
    each exposure's own crop gives the whole-scene model's shear and parameters."""
    from constellation.inference.shine.model import MapSettings

    backend = ShineBackend(ScienceConfig())
    cfg = backend._config(_tiny_manifest(), "memory://x/manifest.json")
    data = _tiny_subtile()
    # a canvas per window (packed canvases: the next test)
    fixed = MapSettings(learning_rate=0.01, max_steps=4, fixed_steps=True, canvas_side=0)
    dense = backend.dense.fit(cfg, data, fixed)
    sparse = backend.sparse.fit(cfg, data, fixed)
    assert dense.extras["image_ny"] == dense.extras["image_nx"] == 128
    assert dense.extras["rendered_slots"] == 4 * 2  # 3 sources padded to 4, 2 exposures
    assert sparse.extras["source_exposure_pairs"] == 2 + 3  # what each exposure sees
    # their stamps overlap: one window per exposure, the bounding box of its stamps, on
    # an image of its own with sides on the ladder
    assert sparse.extras["windows"] == sparse.extras["canvases"] == 2
    assert sparse.extras["window_pixels"] == 84 * 79 + 90 * 84
    assert sparse.extras["term_pixels"] == 96 * 80 + 96 * 96 < dense.extras["term_pixels"]
    assert dense.g1_path.shape == sparse.g1_path.shape == (4,)
    np.testing.assert_allclose(sparse.g1_path, dense.g1_path, atol=1e-6)
    np.testing.assert_allclose(sparse.g2_path, dense.g2_path, atol=1e-6)
    assert abs(sparse.g1_path[-1]) > 1e-3  # the shear moved: the comparison is not idle
    for name, value in dense.point.items():
        if np.ndim(value):
            np.testing.assert_allclose(
                sparse.point[name][sparse.slot_of], value[dense.slot_of], rtol=1e-4, atol=1e-6
            )
    # a second sub-tile of the same buckets compiles nothing new
    n_dense, n_sparse = len(backend.dense.compiled), len(backend.sparse.compiled)
    again = backend.sparse.fit(cfg, _tiny_subtile(seed=1), fixed)
    backend.dense.fit(cfg, _tiny_subtile(seed=1), fixed)
    assert (len(backend.dense.compiled), len(backend.sparse.compiled)) == (n_dense, n_sparse)
    assert n_sparse == 3  # two window buckets + the prior/update of this slot count
    assert again.extras["compiled_now"] == 0
    out = summarize_posterior(
        {k: v[None, None, ...] for k, v in sparse.point.items()},
        data.object_ids,
        sparse.slot_of,
        with_errors=False,
    )
    assert out.sources.column("object_id").to_pylist() == [5, 9, 11]
    assert all(np.isfinite(v) for v in out.sources.column("flux").to_pylist())


@pytest.mark.shine
def test_windows_packed_on_canvases_give_the_same_fit(shine_euclid: object) -> None:
    from constellation.inference.shine.model import MapSettings

    backend = ShineBackend(ScienceConfig())
    cfg = backend._config(_tiny_manifest(), "memory://x/manifest.json")
    data = _tiny_subtile()
    own = backend.sparse.fit(cfg, data, MapSettings(max_steps=4, fixed_steps=True, canvas_side=0))
    packed = backend.sparse.fit(
        cfg, data, MapSettings(max_steps=4, fixed_steps=True, canvas_side=256)
    )
    assert (own.extras["canvases"], packed.extras["canvases"]) == (2, 1)  # both windows on one
    np.testing.assert_allclose(packed.g1_path, own.g1_path, atol=1e-6)
    np.testing.assert_allclose(packed.g2_path, own.g2_path, atol=1e-6)
    for name, value in own.point.items():
        if np.ndim(value):
            np.testing.assert_allclose(packed.point[name], value, rtol=1e-4, atol=1e-6)


@pytest.mark.shine
def test_the_sparse_fit_stops_at_convergence_or_says_it_did_not(shine_euclid: object) -> None:
    from constellation.inference.shine.model import MapSettings

    backend = ShineBackend(ScienceConfig())
    cfg = backend._config(_tiny_manifest(), "memory://x/manifest.json")
    data = _tiny_subtile()
    loose = MapSettings(max_steps=50, tolerance=1.0, window=3, check_every=2)
    fit = backend.sparse.fit(cfg, data, loose)
    assert (fit.converged, fit.n_steps) == (True, 4)  # the first check after `window` steps
    assert fit.g1_path.shape == (4,)
    strict = MapSettings(max_steps=6, tolerance=1e-12, window=3, check_every=2)
    fit = backend.sparse.fit(cfg, data, strict)
    assert (fit.converged, fit.n_steps) == (False, 6)
    assert fit.drift > 1e-12


@pytest.mark.shine
def test_lbfgs_converges_below_adams_loss_and_adam_leaving_the_domain_is_typed(
    shine_euclid: object,
) -> None:
    from constellation.inference.base import NonFiniteFitError
    from constellation.inference.shine.model import MapSettings

    backend = ShineBackend(ScienceConfig())
    cfg = backend._config(_tiny_manifest(), "memory://x/manifest.json")
    data = _tiny_subtile()
    lbfgs = backend.sparse.fit(
        cfg, data, MapSettings(max_steps=150, optimizer="lbfgs", window=5, check_every=1)
    )
    assert lbfgs.converged is True
    assert lbfgs.n_steps < 150
    adam = backend.sparse.fit(cfg, data, MapSettings(max_steps=60, fixed_steps=True))
    assert adam.extras["evaluations"] == 60
    assert lbfgs.final_loss is not None
    assert adam.final_loss is not None
    assert lbfgs.final_loss < adam.final_loss
    assert np.isfinite(lbfgs.g1_path[-1])
    # on this noise-only scene Adam's fixed steps push an ellipticity past |e| = 1
    # within 100 steps: a typed, permanent failure, not a runtime error of JAX
    with pytest.raises(NonFiniteFitError, match="domain"):
        backend.sparse.fit(cfg, data, MapSettings(max_steps=100, fixed_steps=True))


def _tiny_manifest():  # type: ignore[no-untyped-def]
    from constellation.manifest.subtile import (
        ManifestGeometry,
        ManifestIdentity,
        ManifestSources,
        PlaneBox,
        ShinePassThrough,
        SkyPolygon,
        SubTileManifest,
    )

    box = PlaneBox(x_min_arcmin=0, x_max_arcmin=1, y_min_arcmin=0, y_max_arcmin=1)
    poly = SkyPolygon(ra_deg=[0, 1, 1, 0], dec_deg=[0, 0, 1, 1])
    return SubTileManifest(
        identity=ManifestIdentity(
            tile_id=1, row=0, col=0, preparation_hash="0" * 16, code_version="x"
        ),
        geometry=ManifestGeometry(
            tile_ra_deg=0,
            tile_dec_deg=0,
            tile_core_size_arcmin=1,
            margin_arcmin=0,
            core=box,
            extended=box,
            core_polygon=poly,
            extended_polygon=poly,
        ),
        sources=ManifestSources(uri="sources.parquet", n_extended=2, n_core=2),
        shine=ShinePassThrough(
            inference={"method": "map", "map_config": {"enabled": True, "num_steps": 3}},
            sources={"min_snr": 5.0},
        ),
    )
