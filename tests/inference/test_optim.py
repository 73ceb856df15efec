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
