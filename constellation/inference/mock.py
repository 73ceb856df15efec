"""The **mock** inference backend: a clearly fake stand-in for SHINE.

It lets the whole pipeline run and be verified without a GPU or SHINE. Results
are deterministic per sub-tile: the random stream is seeded from the tile id,
row, column and the science-config hash, so the same sub-tile under the same
configuration always gives the same numbers (whichever worker runs it).

Modes (``science.backend.mock.mode``):

``truth``
    The injected shear of a simulated field at the sub-tile's core centre plus
    Gaussian noise of ``sigma = shape_noise / sqrt(n_core)`` (the error reported), and per
    source the simulated truth (flux in µJy, half-light radius in arcsec,
    intrinsic ellipticity; ``dx = dy = 0``). Needs the field's ``truth/`` folder.
``random``
    Plausible random values: ``g ~ N(0, 0.03)`` plus the same noise, catalog
    fluxes and sizes, random ellipticities.

``sleep_s`` adds a simulated run time; ``fail_rate`` makes that fraction of
sub-tiles fail (deterministically) to exercise failure handling. Like SHINE, it has
nothing to fit in a sub-tile without sources or without exposures
(:class:`~constellation.inference.base.NothingToFitError`: the sub-tile is skipped).
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from constellation import __version__
from constellation.config import MockBackendConfig
from constellation.inference.base import (
    BackendOutput,
    BackendUnavailableError,
    NothingToFitError,
    SubTileDataError,
    SubTileInput,
    core_centre,
)
from constellation.io.storage import Storage
from constellation.truth import TruthField, load_truth_field, load_truth_sources

__all__ = ["MockBackend", "MockFailureError", "subtile_seed"]


class MockFailureError(SubTileDataError):
    """The failure the mock backend injects for ``fail_rate``: deterministic, like a
    data problem (the same sub-tile fails the same way every time)."""


def subtile_seed(tile_id: int, row: int, col: int, preparation_hash: str) -> int:
    """A 64-bit seed from the sub-tile identity and the manifest's preparation hash."""
    key = f"{int(tile_id)}/{int(row)}/{int(col)}/{preparation_hash}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little")


class MockBackend:
    """Deterministic fake shear; see the module docstring."""

    name = "mock"
    version = __version__

    def __init__(self, config: MockBackendConfig, truth_uri: str) -> None:
        self.config = config
        self.truth_uri = truth_uri
        self._lock = threading.Lock()
        self._truth: tuple[TruthField, dict[int, int], pa.Table] | None = None

    # -- truth, loaded once per process ------------------------------------------------

    def _load_truth(self, storage: Storage) -> tuple[TruthField, dict[int, int], pa.Table]:
        with self._lock:
            if self._truth is None:
                try:
                    field = load_truth_field(storage, self.truth_uri)
                    table = load_truth_sources(storage, self.truth_uri)
                except FileNotFoundError as exc:
                    raise BackendUnavailableError(
                        f"mock backend in 'truth' mode needs a simulated field's truth folder; "
                        f"nothing at {self.truth_uri} ({exc}). Set science.backend.mock.truth_uri "
                        f"or use mode 'random'."
                    ) from exc
                ids = table.column("object_id").to_numpy()
                index = {int(v): i for i, v in enumerate(ids)}
                self._truth = (field, index, table)
            return self._truth

    # -- the backend ---------------------------------------------------------------------

    def run(self, item: SubTileInput) -> BackendOutput:
        t0 = time.perf_counter()
        ident = item.manifest.identity
        if item.sources.num_rows == 0:
            raise NothingToFitError("no sources", "the sub-tile has no sources")
        if not item.manifest.exposures:
            raise NothingToFitError("no exposures", "the sub-tile has no quadrant exposures")
        rng = np.random.default_rng(
            subtile_seed(ident.tile_id, ident.row, ident.col, ident.preparation_hash)
        )
        fail_draw, noise1, noise2 = rng.random(), rng.standard_normal(), rng.standard_normal()
        core = item.core_sources
        n_core = core.num_rows
        cfg = self.config
        if cfg.mode == "truth":
            truth = self._load_truth(item.storage)
        t_load = time.perf_counter() - t0

        if cfg.sleep_s > 0:
            time.sleep(cfg.sleep_s)
        if fail_draw < cfg.fail_rate:
            raise MockFailureError(
                f"mock backend: injected failure (fail_rate={cfg.fail_rate}) for tile "
                f"{ident.tile_id} r{ident.row}_c{ident.col}"
            )
        sigma = cfg.shape_noise / math.sqrt(n_core) if n_core else float("nan")
        ra, dec = core_centre(item.manifest)
        if cfg.mode == "truth":
            g1_true, g2_true = truth[0].shear_at([ra], [dec])
            g1, g2 = float(g1_true[0]), float(g2_true[0])
            sources = self._truth_sources(core, truth[1], truth[2])
        else:
            g1, g2 = 0.03 * rng.standard_normal(), 0.03 * rng.standard_normal()
            sources = self._random_sources(core, rng)
        if n_core:
            g1 += sigma * noise1
            g2 += sigma * noise2
        return BackendOutput(
            g1=g1,
            g2=g2,
            g1_err=sigma if n_core else None,
            g2_err=sigma if n_core else None,
            g1_g2_cov=0.0 if n_core else None,
            method=f"mock-{cfg.mode}",
            n_sources_modelled=item.sources.num_rows,
            sources=sources,
            t_load_s=t_load,
            t_infer_s=time.perf_counter() - t0 - t_load,
        )

    @staticmethod
    def _truth_sources(core: pa.Table, index: dict[int, int], truth: pa.Table) -> pa.Table:
        ids = core.column("object_id").to_numpy()
        rows = np.array([index.get(int(v), -1) for v in ids], dtype=np.int64)
        found = rows >= 0
        taken = truth.take(pa.array(np.where(found, rows, 0)))
        mask = pa.array(~found)

        def col(name: str) -> pa.Array:
            values = taken.column(name).combine_chunks().cast(pa.float64())
            return pc.if_else(mask, pa.scalar(None, pa.float64()), values)

        zeros = pc.if_else(mask, pa.scalar(None, pa.float64()), pa.array(np.zeros(len(ids))))
        columns: dict[str, Any] = {
            "object_id": pa.array(ids, pa.int64()),
            "flux": col("flux_ujy"),
            "hlr": col("hlr_arcsec"),
            "e1": col("e1_intrinsic"),
            "e2": col("e2_intrinsic"),
            "dx": zeros,
            "dy": zeros,
        }
        return pa.table(columns)

    @staticmethod
    def _random_sources(core: pa.Table, rng: np.random.Generator) -> pa.Table:
        n = core.num_rows
        names = set(core.column_names)
        flux = (
            core.column("flux_detection_total").to_numpy(zero_copy_only=False).astype(np.float64)
            if "flux_detection_total" in names
            else rng.lognormal(1.0, 1.0, n)
        )
        hlr = (
            0.1 * core.column("semimajor_axis").to_numpy(zero_copy_only=False).astype(np.float64)
            if "semimajor_axis" in names
            else rng.lognormal(-1.2, 0.4, n)
        )
        return pa.table(
            {
                "object_id": core.column("object_id").cast(pa.int64()),
                "flux": pa.array(flux, pa.float64()),
                "hlr": pa.array(hlr, pa.float64()),
                "e1": pa.array(0.25 * rng.standard_normal(n)),
                "e2": pa.array(0.25 * rng.standard_normal(n)),
                "dx": pa.array(0.02 * rng.standard_normal(n)),
                "dy": pa.array(0.02 * rng.standard_normal(n)),
            }
        )
