"""Stamp windows packed onto canvases (the sparse SHINE model's layout; no SHINE needed)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from constellation.inference.shine.buckets import IMAGE_LADDER
from constellation.inference.shine.packing import bucket_windows, pack_windows, stamp_windows

SIZES = [64, 128, 256]


def _field(n_sources: int, n_exposures: int, box: float, seed: int) -> SimpleNamespace:
    """Sources placed at random in a box, seen by quadrant-sized exposures placed at
    random over it (a source is visible where its stamp lies inside the quadrant)."""
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, box, (n_sources, 2))
    tiers = rng.choice(3, n_sources, p=[0.8, 0.15, 0.05])
    half = np.asarray(SIZES)[tiers][:, None] / 2
    exposures = []
    for _ in range(n_exposures):
        pos = xy - rng.uniform([-2048, -2066], [box, box])
        inside = (pos - half >= 0).all(axis=1) & (pos + half <= [2048, 2066]).all(axis=1)
        exposures.append(SimpleNamespace(positions=pos, visible=inside))
    return SimpleNamespace(exposures=exposures, tiers=tiers)


def _check_layout(data: SimpleNamespace, side: int) -> list:  # type: ignore[type-arg]
    layout = pack_windows if side else (lambda d, sizes, _: bucket_windows(d, sizes))
    canvases = layout(data, SIZES, side)
    seen = []
    for c in canvases:
        covered = np.zeros((c.ny, c.nx), dtype=np.int32)
        used = np.zeros(3, dtype=np.int64)
        for w, y, x in c.placements:
            assert (y >= 0, x >= 0) == (True, True)
            assert (y + w.ny <= c.ny, x + w.nx <= c.nx) == (True, True)
            covered[y : y + w.ny, x : x + w.nx] += 1
            used += np.bincount(data.tiers[w.sources], minlength=3)
            seen += [(w.exposure, int(s)) for s in w.sources]
        assert covered.max() == 1  # windows never overlap on a canvas
        assert np.all(used <= np.asarray(c.slots))
    # every visible (exposure, source) pair on exactly one canvas
    visible = [(j, int(s)) for j, e in enumerate(data.exposures) for s in np.flatnonzero(e.visible)]
    assert sorted(seen) == sorted(visible)
    return canvases


def test_a_survey_density_subtile_packs_onto_few_canvas_shapes() -> None:
    # ~27 sources per arcmin^2 over a 9.5' box (0.1" pixels), 50 quadrant exposures
    data = _field(2400, 50, 5700.0, seed=3)
    windows = stamp_windows(data, SIZES)  # type: ignore[arg-type]
    own = _check_layout(data, 0)
    assert len(own) == len(windows)  # a canvas per window, bucketed
    assert all(c.ny in IMAGE_LADDER and c.nx in IMAGE_LADDER for c in own)
    packed = _check_layout(data, 1024)
    shared = [c for c in packed if len(c.placements) > 1]
    assert len({c.key for c in shared}) == 1  # one compiled shape holds most windows
    assert sum(len(c.placements) for c in shared) > 0.9 * len(windows)
    assert len({c.key for c in packed}) < len({c.key for c in own}) / 5
    assert len(packed) < len(windows) / 10
    # the slots of the shared canvases are mostly used (padding is rendered work)
    used = np.sum([c.used for c in shared], axis=0)
    slots = np.sum([c.slots for c in shared], axis=0)
    assert np.all(used / slots > 0.6)


def test_few_windows_get_a_smaller_canvas() -> None:
    data = _field(12, 3, 1500.0, seed=1)
    canvases = _check_layout(data, 512)
    assert canvases
    assert all(c.ny < 512 for c in canvases)


def test_no_visible_source_no_canvas() -> None:
    data = SimpleNamespace(
        exposures=[SimpleNamespace(positions=np.zeros((2, 2)), visible=np.zeros(2, bool))],
        tiers=np.zeros(2, dtype=np.int64),
    )
    assert pack_windows(data, SIZES) == []  # type: ignore[arg-type]
