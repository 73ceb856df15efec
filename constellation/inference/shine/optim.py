"""Optimisers of the sparse model that run on the host: limited-memory BFGS.

numpy only; the loss and its gradient come from a callable (compiled JAX on the
device, in :class:`~constellation.inference.shine.model.SparseModel`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
from numpy.typing import NDArray

__all__ = ["lbfgs"]


def lbfgs(
    loss: Callable[[NDArray[np.float64]], tuple[float, NDArray[np.float64]]],
    x0: NDArray[np.float64],
    max_iter: int,
    history: int = 10,
) -> Iterator[tuple[NDArray[np.float64], float]]:
    """Limited-memory BFGS with a backtracking line search, on the host in float64;
    yields ``(x, loss)`` after each iteration and stops at a zero gradient or when the
    line search finds no acceptable step.

    A step is accepted on sufficient decrease (Armijo) or, where the float32 loss is
    flat to its precision (near the minimum, or along a weakly constrained direction
    such as the shear of one faint galaxy), when the slope along the line shows that
    the step went towards the line's minimum without overshooting it (approximate
    Wolfe): without that, a fit stopped where the loss stopped changing, with the
    shear still moving.

    ``loss(x)`` returns the loss and its gradient; a point where the loss is not finite
    (``loss`` returns ``inf`` where the model cannot be evaluated) is too far: the step
    is shortened.
    """
    x = np.asarray(x0, dtype=np.float64)
    value, grad = loss(x)
    s_hist: list[NDArray[np.float64]] = []
    y_hist: list[NDArray[np.float64]] = []
    for _ in range(max_iter):
        if not np.any(grad):  # a stationary point
            return
        q = grad.copy()
        alphas = []
        for s_i, y_i in zip(reversed(s_hist), reversed(y_hist), strict=True):
            rho = 1.0 / float(y_i @ s_i)
            a_i = rho * float(s_i @ q)
            q -= a_i * y_i
            alphas.append((rho, a_i))
        if s_hist:
            q *= float(s_hist[-1] @ y_hist[-1]) / float(y_hist[-1] @ y_hist[-1])
            step0 = 1.0
        else:  # no curvature yet: a small step along the gradient
            step0 = min(1.0, 1e-2 / max(float(np.abs(grad).max()), 1e-30))
        for (rho, a_i), s_i, y_i in zip(reversed(alphas), s_hist, y_hist, strict=True):
            b_i = rho * float(y_i @ q)
            q += s_i * (a_i - b_i)
        direction = -q
        slope = float(grad @ direction)
        if not slope < 0:  # not a descent direction: forget the curvature
            s_hist.clear()
            y_hist.clear()
            direction = -grad
            slope = -float(grad @ grad)
        alpha = step0
        # float32 noise of the loss: near the minimum a descent step lowers it by less,
        # and only the gradient can still tell a good step from a bad one
        noise = 4.0 * float(np.finfo(np.float32).eps) * max(1.0, abs(value))
        for _ in range(30):
            x_new = x + alpha * direction
            new_value, new_grad = loss(x_new)
            if new_value < value and new_value <= value + 1e-4 * alpha * slope:
                break  # sufficient decrease (Armijo)
            new_slope = float(new_grad @ direction)
            if new_value <= value + noise and slope <= new_slope <= -0.8 * slope:
                break  # flat to the loss's precision, and the slope along the line says
                # the step did not overshoot the line's minimum (approximate Wolfe,
                # Hager & Zhang 2005)
            alpha *= 0.5
        else:
            return
        s_vec, y_vec = x_new - x, new_grad - grad
        if float(s_vec @ y_vec) > 1e-12 * float(y_vec @ y_vec):
            s_hist.append(s_vec)
            y_hist.append(y_vec)
            if len(s_hist) > history:
                s_hist.pop(0)
                y_hist.pop(0)
        x, value, grad = x_new, new_value, new_grad
        yield x, value
