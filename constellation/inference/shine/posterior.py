"""Posterior summaries: shear and per-source parameters from draws or a MAP point,
split-R-hat (numpyro's), and the MAP convergence diagnostic (numpy)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
from numpy.typing import NDArray

from constellation.inference.shine.geometry import FloatArray
from constellation.results.schema import SOURCE_PARAMETERS

__all__ = ["PosteriorSummary", "shear_drift", "split_rhat", "summarize_posterior"]

#: Latent sites of SHINE's Euclid model, per source.
SOURCE_SITES: tuple[str, ...] = tuple(name for name, _ in SOURCE_PARAMETERS)


def split_rhat(draws: NDArray[np.floating[Any]]) -> float:
    """Split-R-hat (Gelman et al.) of ``(chain, draw)`` samples of one scalar: numpyro's
    ``split_gelman_rubin`` (numpyro comes with SHINE; imported here, so that this module
    loads without it). NaN with fewer than 4 draws per chain or constant draws."""
    from numpyro.diagnostics import split_gelman_rubin

    a = np.asarray(draws, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError("draws must be (chain, draw)")
    if a.shape[1] < 4:
        return float("nan")
    return float(split_gelman_rubin(a))


@dataclass(frozen=True)
class PosteriorSummary:
    """Shear and per-source parameters from posterior draws (or a MAP point)."""

    g1: float
    g2: float
    g1_err: float | None
    g2_err: float | None
    g1_g2_cov: float | None
    sources: pa.Table


def _draws(value: NDArray[Any]) -> NDArray[np.float64]:
    """Flatten ``(chain, draw, ...)`` into ``(samples, ...)``."""
    a = np.asarray(value, dtype=np.float64)
    if a.ndim < 2:
        raise ValueError("posterior arrays must be (chain, draw, ...)")
    return a.reshape((a.shape[0] * a.shape[1], *a.shape[2:]))


def summarize_posterior(
    posterior: Mapping[str, NDArray[Any]],
    object_ids: Sequence[int] | NDArray[np.int64],
    slots: Sequence[int] | NDArray[np.int64],
    *,
    with_errors: bool,
) -> PosteriorSummary:
    """Mean (and, ``with_errors``, std and g1-g2 covariance) of posterior draws.

    ``posterior`` maps site names to ``(chain, draw, ...)`` arrays (``g1``, ``g2``
    scalars per draw, possibly with a trailing length-1 axis; per-source sites
    ``(chain, draw, n_slots)``). ``slots[i]`` is the per-source slot of
    ``object_ids[i]``. Per-source columns absent from the posterior (e.g. fixed
    parameters) and all ``*_err`` without errors are null.
    """
    if "g1" not in posterior or "g2" not in posterior:
        raise ValueError("the posterior has no g1/g2")
    g1 = _draws(posterior["g1"]).reshape(-1)
    g2 = _draws(posterior["g2"]).reshape(-1)
    errors = with_errors and g1.size > 1
    cov = np.cov(np.stack([g1, g2])) if errors else None
    slot_idx = np.asarray(slots, dtype=np.int64)
    columns: dict[str, pa.Array] = {
        "object_id": pa.array(np.asarray(object_ids, dtype=np.int64), type=pa.int64())
    }
    n = slot_idx.size
    for name in SOURCE_SITES:
        value = posterior.get(name)
        mean: list[float | None] = [None] * n
        err: list[float | None] = [None] * n
        if value is not None:
            d = _draws(value)
            if d.ndim == 2 and n:
                sel = d[:, slot_idx]
                mean = [float(v) for v in sel.mean(axis=0)]
                if errors:
                    err = [float(v) for v in sel.std(axis=0, ddof=1)]
        columns[name] = pa.array(mean, type=pa.float64())
        columns[f"{name}_err"] = pa.array(err, type=pa.float64())
    return PosteriorSummary(
        g1=float(g1.mean()),
        g2=float(g2.mean()),
        g1_err=float(math.sqrt(cov[0, 0])) if cov is not None else None,
        g2_err=float(math.sqrt(cov[1, 1])) if cov is not None else None,
        g1_g2_cov=float(cov[0, 1]) if cov is not None else None,
        sources=pa.table(columns),
    )


def shear_drift(g1_path: FloatArray, g2_path: FloatArray, fraction: float = 0.1) -> float:
    """Largest change of g1 or g2 over the last ``fraction`` of an optimisation's steps."""
    a = np.asarray(g1_path, dtype=np.float64).reshape(-1)
    b = np.asarray(g2_path, dtype=np.float64).reshape(-1)
    if a.size < 2:
        return float("nan")
    k = max(1, round(a.size * fraction))
    return float(max(abs(a[-1] - a[-1 - k]), abs(b[-1] - b[-1 - k])))


def _chains(value: NDArray[Any]) -> NDArray[np.float64]:
    a = np.asarray(value, dtype=np.float64)
    return a.reshape(a.shape[0], a.shape[1])


def _posterior_arrays(idata: Any) -> dict[str, NDArray[Any]]:
    post = idata.posterior
    return {str(name): np.asarray(post[name].values) for name in post.data_vars}
