"""Shear calibration: multiplicative and additive bias from recovered against injected shear.

For each component ``i``, ``g_i(recovered) = (1 + m_i) g_i(injected) + c_i``, fitted by
least squares over sub-tiles (each sub-tile's mean recovered shear of its sources against
the shear injected there). The errors come from a bootstrap over sub-tiles: the fit is
redone on sub-tiles drawn with replacement, so they hold whatever the per-source errors
leave out (shape noise, model mismatch that varies across the field). Stage IV budgets
for comparison: a total multiplicative bias below 4e-3 (Massey et al. 2013), of which shear
measurement is usually allotted |m| of about 2e-3 (Cropper et al. 2013).

Pure numpy; the calibration flow and benchmark feed it from the catalog.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike, NDArray

if TYPE_CHECKING:
    import pyarrow as pa

    from constellation.truth import TruthField

__all__ = ["Calibration", "ComponentBias", "fit_calibration", "subtile_shears"]


@dataclass(frozen=True)
class ComponentBias:
    """``m`` and ``c`` of one shear component with their bootstrap errors."""

    m: float
    m_err: float
    c: float
    c_err: float


@dataclass(frozen=True)
class Calibration:
    """The biases of both components over ``n`` sub-tiles (``n_boot`` resamplings)."""

    g1: ComponentBias
    g2: ComponentBias
    n: int
    n_boot: int

    @property
    def abs_m_max(self) -> float:
        return max(abs(self.g1.m), abs(self.g2.m))

    @property
    def abs_c_max(self) -> float:
        return max(abs(self.g1.c), abs(self.g2.c))

    def figures(self) -> dict[str, float]:
        """``calib_*`` figures (the benchmark's and the calibration table's names)."""
        out: dict[str, float] = {}
        for name, comp in (("1", self.g1), ("2", self.g2)):
            out[f"calib_m{name}"] = comp.m
            out[f"calib_m{name}_err"] = comp.m_err
            out[f"calib_c{name}"] = comp.c
            out[f"calib_c{name}_err"] = comp.c_err
        out["calib_abs_m_max"] = self.abs_m_max
        out["calib_abs_c_max"] = self.abs_c_max
        out["calib_subtiles"] = float(self.n)
        return out

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _line(x: NDArray[np.float64], y: NDArray[np.float64]) -> tuple[float, float]:
    """Least-squares ``y = (1 + m) x + c``; NaN when ``x`` does not vary."""
    if x.size < 2 or float(np.ptp(x)) == 0.0:
        return math.nan, math.nan
    slope, c = np.polyfit(x, y, 1)
    return float(slope) - 1.0, float(c)


def fit_calibration(
    injected: ArrayLike,
    recovered: ArrayLike,
    *,
    groups: ArrayLike | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> Calibration:
    """Fit ``m`` and ``c`` per component.

    ``injected`` and ``recovered`` are ``(n, 2)`` arrays of (g1, g2), one row per
    sub-tile. Each component's injected values must take at least two values (several
    calibration fields, or a field with a shear pattern); else its ``m`` is NaN. Errors
    are the standard deviation of ``n_boot`` bootstrap fits. ``groups`` (one label per
    row) makes the bootstrap draw whole groups: the same sub-tile in every calibration
    field shares its galaxies (and their noise), so its rows are drawn together;
    without it each row is drawn on its own.
    """
    inj = np.asarray(injected, dtype=np.float64)
    rec = np.asarray(recovered, dtype=np.float64)
    if inj.shape != rec.shape or inj.ndim != 2 or inj.shape[1] != 2:
        raise ValueError(
            f"injected and recovered must both be (n, 2) arrays, got {inj.shape} and {rec.shape}"
        )
    labels = np.arange(inj.shape[0]) if groups is None else np.asarray(groups)
    if labels.shape != (inj.shape[0],):
        raise ValueError(f"groups must have one label per row, got shape {labels.shape}")
    keep = np.isfinite(inj).all(axis=1) & np.isfinite(rec).all(axis=1)
    inj, rec, labels = inj[keep], rec[keep], labels[keep]
    n = int(inj.shape[0])
    if n < 2:
        raise ValueError(f"need at least 2 sub-tiles with finite shears to calibrate, got {n}")
    rng = np.random.default_rng(seed)
    _, group_of = np.unique(labels, return_inverse=True)
    members = [np.flatnonzero(group_of == g) for g in range(int(group_of.max()) + 1)]
    picks = rng.integers(0, len(members), size=(n_boot, len(members)))
    draws = [np.concatenate([members[g] for g in row]) for row in picks]
    comps = []
    for i in range(2):
        m, c = _line(inj[:, i], rec[:, i])
        boot = np.array([_line(inj[d, i], rec[d, i]) for d in draws])
        ok = np.isfinite(boot).all(axis=1)
        m_err, c_err = (
            (float(boot[ok, 0].std(ddof=1)), float(boot[ok, 1].std(ddof=1)))
            if ok.sum() > 1
            else (math.nan, math.nan)
        )
        comps.append(ComponentBias(m=m, m_err=m_err, c=c, c_err=c_err))
    return Calibration(g1=comps[0], g2=comps[1], n=n, n_boot=n_boot)


def subtile_shears(
    subtiles: pa.Table, truth: TruthField
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.int64]]:
    """``(injected, recovered, keys)`` for the ``ok`` rows of a ``subtiles`` table (Arrow,
    as the catalog returns it): ``(n, 2)`` arrays of the mean recovered shear of each
    sub-tile against the shear ``truth`` (:class:`~constellation.truth.TruthField`)
    injected at its centre, and each row's sub-tile as ``tile_id * 10000 + row * 100 + col``."""
    ok: NDArray[np.bool_] = np.asarray(subtiles.column("status").to_pylist()) == "ok"

    def col(name: str) -> NDArray[np.float64]:
        values = np.asarray(subtiles.column(name).to_numpy(zero_copy_only=False), np.float64)
        return np.asarray(values[ok], np.float64)

    t1, t2 = truth.shear_at(col("ra"), col("dec"))
    injected = np.stack([np.asarray(t1, np.float64), np.asarray(t2, np.float64)], axis=1)
    recovered = np.stack([col("g1"), col("g2")], axis=1)
    keys = (
        col("tile_id").astype(np.int64) * 10_000
        + col("subtile_row").astype(np.int64) * 100
        + col("subtile_col").astype(np.int64)
    )
    return injected, recovered, keys
