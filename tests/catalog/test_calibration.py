"""m and c from recovered against injected shear, with bootstrap errors over sub-tiles."""

from __future__ import annotations

import math

import numpy as np
import pytest

from constellation.catalog.calibration import fit_calibration

#: Calibration fields: constant shears of -0.02, 0 and +0.02 per component.
_VALUES = np.array([-0.02, 0.0, 0.02])


def _injected(per_field: int) -> np.ndarray:
    g1, g2 = np.meshgrid(_VALUES, _VALUES, indexing="ij")
    fields = np.stack([g1.ravel(), g2.ravel()], axis=1)  # 9 fields
    return np.repeat(fields, per_field, axis=0)


def test_known_biases_are_recovered_within_their_errors() -> None:
    rng = np.random.default_rng(1)
    inj = _injected(per_field=20)
    m, c = np.array([0.012, -0.007]), np.array([4e-4, -9e-4])
    rec = (1 + m) * inj + c + rng.normal(0.0, 5e-4, inj.shape)
    cal = fit_calibration(inj, rec, n_boot=400, seed=3)
    assert cal.n == 180
    for comp, m_true, c_true in ((cal.g1, m[0], c[0]), (cal.g2, m[1], c[1])):
        assert 0 < comp.m_err < 5e-3
        assert 0 < comp.c_err < 1e-4
        assert comp.m == pytest.approx(m_true, abs=4 * comp.m_err)
        assert comp.c == pytest.approx(c_true, abs=4 * comp.c_err)
    figures = cal.figures()
    assert figures["calib_abs_m_max"] == pytest.approx(max(abs(cal.g1.m), abs(cal.g2.m)))
    assert figures["calib_subtiles"] == 180
    assert set(figures) >= {"calib_m1", "calib_m2_err", "calib_c1", "calib_c2_err"}


def test_perfect_recovery_is_zero_bias() -> None:
    inj = _injected(per_field=3)
    cal = fit_calibration(inj, inj.copy(), n_boot=50)
    assert cal.abs_m_max < 1e-12
    assert cal.abs_c_max < 1e-12


@pytest.mark.parametrize(
    ("name", "transform"),
    [
        ("components swapped", lambda g: g[:, ::-1]),
        ("g1 sign flipped", lambda g: g * np.array([-1.0, 1.0])),
        ("g2 sign flipped", lambda g: g * np.array([1.0, -1.0])),
    ],
)
def test_a_swapped_component_or_sign_is_a_large_bias(name: str, transform: object) -> None:
    """What a calibration run exists to catch: it must not pass with m near 0."""
    inj = _injected(per_field=4)
    rec = transform(inj)  # type: ignore[operator]
    cal = fit_calibration(inj, rec, n_boot=50)
    assert cal.abs_m_max > 0.9, name


def test_bad_input_is_refused_and_a_constant_component_has_no_m() -> None:
    with pytest.raises(ValueError, match=r"\(n, 2\)"):
        fit_calibration(np.zeros((4, 3)), np.zeros((4, 3)))
    with pytest.raises(ValueError, match="at least 2 sub-tiles"):
        fit_calibration([[0.01, 0.0], [np.nan, 0.0]], [[0.01, 0.0], [0.02, 0.0]])
    inj = np.array([[0.02, 0.01], [-0.02, 0.01], [0.0, 0.01]])
    cal = fit_calibration(inj, inj, n_boot=20)
    assert math.isnan(cal.g2.m)  # one injected g2 value: no slope to fit
    assert cal.g1.m == pytest.approx(0.0, abs=1e-12)


def test_groups_draw_the_same_subtile_of_every_field_together() -> None:
    """Five fields of the same 30 sub-tiles, each sub-tile with one noise of its own in
    every field: the slope carries no noise at all, and only a bootstrap over whole
    sub-tiles says so (drawing rows alone breaks the pairing and inflates the errors)."""
    rng = np.random.default_rng(2)
    shears = np.array([[-0.02, 0.0], [0.0, 0.0], [0.02, 0.0], [0.0, -0.02], [0.0, 0.02]])
    noise = rng.normal(0.0, 0.01, (30, 2))
    inj = np.repeat(shears, 30, axis=0)
    rec = inj + np.tile(noise, (5, 1))
    keys = np.tile(np.arange(30), 5)
    paired = fit_calibration(inj, rec, groups=keys, n_boot=200)
    rows = fit_calibration(inj, rec, n_boot=200)
    assert paired.abs_m_max < 1e-12
    assert paired.g1.m_err < 1e-9
    assert rows.g1.m_err > 0.05
    assert paired.g1.c_err == pytest.approx(0.01 / np.sqrt(30), rel=0.35)
    with pytest.raises(ValueError, match="one label per row"):
        fit_calibration(inj, rec, groups=keys[:-1])
