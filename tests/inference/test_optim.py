"""The host L-BFGS of the sparse SHINE model (numpy only)."""

from __future__ import annotations

import itertools

import numpy as np
from numpy.typing import NDArray

from constellation.inference.shine.optim import lbfgs


def _rosenbrock(x: NDArray[np.float64]) -> tuple[float, NDArray[np.float64]]:
    a, b = x
    value = (1 - a) ** 2 + 100 * (b - a * a) ** 2
    grad = np.array([-2 * (1 - a) - 400 * a * (b - a * a), 200 * (b - a * a)])
    return float(value), grad


def test_lbfgs_finds_the_minimum_of_a_curved_valley() -> None:
    path = list(lbfgs(_rosenbrock, np.array([-1.2, 1.0]), max_iter=500))
    x, value = path[-1]
    np.testing.assert_allclose(x, [1.0, 1.0], atol=1e-4)
    assert value < 1e-8
    assert 10 < len(path) < 200  # quasi-Newton: far fewer iterations than gradient descent
    # every accepted iterate lowers the loss
    assert all(b <= a for (_, a), (_, b) in itertools.pairwise(path))


def test_lbfgs_shortens_steps_into_a_region_where_the_loss_is_undefined() -> None:
    """A loss that cannot be evaluated at x >= 1 (as JAX-GalSim refuses |e| >= 1) returns
    inf there: the line search backs off, every iterate stays inside, and the fit creeps
    to the edge of the domain, towards the minimum of the loss beyond it."""
    calls = []

    def loss(x: NDArray[np.float64]) -> tuple[float, NDArray[np.float64]]:
        calls.append(float(x[0]))
        if x[0] >= 1:
            return np.inf, np.full_like(x, np.nan)
        return float((x[0] - 2.0) ** 2), np.array([2 * (x[0] - 2.0)])

    path = list(lbfgs(loss, np.array([0.0]), max_iter=200))
    assert any(c >= 1 for c in calls)  # it did try beyond the edge
    assert all(x[0] < 1 for x, _ in path)
    assert path[-1][0][0] > 0.99


def test_lbfgs_follows_the_gradient_where_the_loss_is_flat_to_its_precision() -> None:
    """A float32 loss whose changes near the minimum are below its precision (a large
    constant plus a small bowl) still has an exact gradient: the line search accepts
    steps that the slope along the line shows to be towards the minimum, and L-BFGS
    gets there instead of stopping at the start."""
    centre = np.array([0.3, -0.2, 0.05])

    def loss(x: NDArray[np.float64]) -> tuple[float, NDArray[np.float64]]:
        bowl = 1e-4 * float(((x - centre) ** 2).sum())
        return float(np.float32(1000.0 + bowl)), 2e-4 * (x - centre)

    assert loss(np.zeros(3))[0] == loss(centre)[0]  # flat to float32 precision
    path = list(lbfgs(loss, np.zeros(3), max_iter=50))
    assert path
    np.testing.assert_allclose(path[-1][0], centre, atol=1e-6)


def test_prior_scales_are_the_prior_widths_of_the_sampled_sites() -> None:
    """L-BFGS runs on the parameters divided by their prior widths: a Normal's or a
    LogNormal logarithm's sigma per site, 1 where the prior has none, shaped as the
    start values (per source or global)."""
    from types import SimpleNamespace

    from constellation.inference.shine.params import prior_scales

    ns = SimpleNamespace

    gal = ns(
        shear=ns(g1=ns(sigma=1.0), g2=ns(sigma=0.05)),
        flux=ns(sigma=0.5),
        half_light_radius=ns(sigma=0.3),
        ellipticity=ns(e1=ns(sigma=0.001), e2=ns(sigma=None)),
        position=ns(dx=ns(sigma=0.05), dy=0.0),
    )
    init = {"g1": np.zeros(()), "g2": np.zeros(()), "flux": np.ones(4), "hlr": np.ones(4),
            "e1": np.zeros(4), "e2": np.zeros(4), "dx": np.zeros(4)}  # fmt: skip
    scales = prior_scales(ns(gal=gal), init)
    assert set(scales) == set(init)
    assert {k: v.shape for k, v in scales.items()} == {k: v.shape for k, v in init.items()}
    widths = {k: float(np.unique(v)[0]) for k, v in scales.items()}
    assert widths == {"g1": 1.0, "g2": 0.05, "flux": 0.5, "hlr": 0.3, "e1": 0.001,
                      "e2": 1.0, "dx": 0.05}  # fmt: skip
