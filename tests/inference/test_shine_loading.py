"""Loading a sub-tile for SHINE, without SHINE: ranged cropped reads, masks, the photometric
reference and PSF stamps, with a plain PSF model in place of SHINE's."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from constellation.inference.base import NothingToFitError, SubTileInput
from constellation.inference.shine import MASKED_SIGMA, read_sources
from constellation.inference.shine.loading import LoadSettings, load_subtile
from constellation.io.storage import Storage
from constellation.manifest import layout
from constellation.manifest.subtile import load_manifest
from tests.fixtures.fields import PixelsField


class GaussianPsf:
    """A round Gaussian PSF stamp (21 x 21 px, sigma 1.2 px), the same everywhere."""

    def __init__(self) -> None:
        y, x = np.mgrid[0:21, 0:21] - 10.0
        stamp = np.exp(-(x**2 + y**2) / (2 * 1.2**2))
        self.stamp = stamp / stamp.sum()
        self.calls = 0

    def interpolate_at(self, x: float, y: float) -> Any:
        self.calls += 1
        return self.stamp


def _load(field: PixelsField, row: int, col: int, psf: GaussianPsf) -> Any:
    storage = Storage()
    url = layout.manifest_url(str(field.work), field.tile_id, row, col)
    manifest = load_manifest(url, storage)
    item = SubTileInput(manifest, url, read_sources(storage, manifest, url), storage)
    settings = LoadSettings(selection={"min_snr": 10.0})
    return manifest, load_subtile(item, settings, lambda *_: psf)


def _sees_rendered(field: PixelsField, row: int, col: int) -> bool:
    url = layout.manifest_url(str(field.work), field.tile_id, row, col)
    manifest = load_manifest(url, Storage())
    return any(e.quadrant == field.RENDERED for e in manifest.exposures)


def test_a_subtile_with_rendered_pixels_loads(pixels_field: PixelsField) -> None:
    psf = GaussianPsf()
    rendered = [(r, c) for r in range(8) for c in range(8) if _sees_rendered(pixels_field, r, c)]
    assert 1 <= len(rendered) <= 4  # the quadrant is on the tile's edge
    loaded = 0
    for row, col in rendered:
        try:
            manifest, data = _load(pixels_field, row, col, psf)
        except NothingToFitError:  # it may see the quadrant but no source in it
            continue
        loaded += 1
        assert {e.quadrant for e in data.exposures} == {pixels_field.RENDERED}
        n = data.object_ids.size
        assert n >= 1
        assert np.all(np.diff(data.tiers) >= 0)  # slot order: by stamp tier
        assert np.all(data.flux_adu >= 1.0)
        for e in data.exposures:
            h, w = e.image.shape
            assert e.sigma.shape == e.valid.shape == (h, w)
            assert e.valid.any()
            assert np.all(np.isfinite(e.image))
            assert np.all(e.sigma[e.valid] > 0)
            assert np.all(e.sigma[~e.valid] == MASKED_SIGMA)
            assert np.all(e.image[~e.valid] == 0)
            assert e.visible.shape == (n,)
            for i in np.flatnonzero(e.visible):
                x, y = e.positions[i]
                stamp = 64 if data.tiers[i] == 0 else 128
                # SHINE's stamp, around the rounded position, lies inside the crop
                x0, y0 = x - stamp // 2, y - stamp // 2
                assert 0 <= x0 <= w - stamp
                assert 0 <= y0 <= h - stamp
                assert e.psfs[i].sum() == pytest.approx(1.0, abs=1e-6)
                assert np.all(np.abs(e.jacobians[i]) < 0.11)  # ~0.1"/px, any orientation
        # every modelled source is visible somewhere; none of them is a rejected one
        seen = np.zeros(n, dtype=bool)
        for e in data.exposures:
            seen |= e.visible
        assert seen.all()
        assert data.n_rejected + n <= manifest.sources.n_extended
    assert loaded >= 1
    assert psf.calls > 0  # the PSF model comes from the caller


def test_a_subtile_without_rendered_pixels_has_nothing_to_fit(
    pixels_field: PixelsField,
) -> None:
    row, col = next(
        (r, c) for r in range(8) for c in range(8) if not _sees_rendered(pixels_field, r, c)
    )
    psf = GaussianPsf()
    with pytest.raises(NothingToFitError) as info:
        _load(pixels_field, row, col, psf)
    assert info.value.reason == "no valid pixels"
    assert psf.calls == 0  # no crop had a usable noise value: no PSF needed


def _clipped_median_by_definition(values: np.ndarray, sigma: float, iters: int) -> float:
    """Up to ``iters`` rounds: drop what lies more than ``sigma`` standard deviations
    (population) from the median; stop when a round drops nothing."""
    v = np.asarray(values, dtype=np.float64)
    for _ in range(iters):
        keep = np.abs(v - np.median(v)) <= sigma * v.std()
        if keep.all():
            break
        v = v[keep]
    return float(np.median(v))


def test_the_background_is_a_sigma_clipped_median() -> None:
    from constellation.inference.shine.loading import _sigma_clipped_median

    rng = np.random.default_rng(4)
    sky = (100.0 + rng.normal(0.0, 5.0, 20_000)).astype(np.float32)
    sky[rng.integers(0, sky.size, 2_000)] += rng.lognormal(5.0, 1.0, 2_000).astype(np.float32)
    clipped = _sigma_clipped_median(sky)
    assert clipped == pytest.approx(_clipped_median_by_definition(sky, 3.0, 5), abs=1e-4)
    assert abs(clipped - 100.0) < abs(float(np.median(sky)) - 100.0)  # the sources are clipped
    assert _sigma_clipped_median(np.array([], dtype=np.float32)) == 0.0
