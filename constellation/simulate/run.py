"""Simulate a whole field: plan it, draw its sources, write every file and the truth."""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from constellation.simulate.field import FieldPlan, FieldSpec, plan_field
from constellation.simulate.sources import SourceSet, draw_sources
from constellation.simulate.writers import field_truth_json, write_field_files

if TYPE_CHECKING:
    from constellation.io.storage import Storage

__all__ = ["FieldSummary", "count_files", "simulate_field"]


@dataclass(frozen=True)
class FieldSummary:
    """What :func:`simulate_field` wrote."""

    root: str
    plan: FieldPlan
    n_sources: int
    n_files: int
    bytes_written: dict[str, int]
    seconds: float

    @property
    def total_bytes(self) -> int:
        return sum(self.bytes_written.values())


def count_files(spec: FieldSpec) -> int:
    """How many files :func:`simulate_field` writes for ``spec`` (for progress bars)."""
    plan = plan_field(spec)
    return len(plan.obs_ids) + 3 * len(plan.exposures) + 2 * len(plan.tiles) + 3


def simulate_field(
    spec: FieldSpec,
    storage: Storage,
    root: str,
    progress: Callable[[str], None] | None = None,
) -> FieldSummary:
    """Write a synthetic field under ``root`` (any URL the storage layer reaches).

    Same ``spec`` (seed included), same bytes. Besides the Q1-layout files,
    writes ``truth/field.json`` (spec, shear-field form, tiles, exposures),
    ``truth/sources.parquet`` (per-source truth) and ``truth/registry.parquet``
    (the tile registry of the field).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    t0 = time.perf_counter()
    plan = plan_field(spec)
    sources: SourceSet = draw_sources(plan)
    written = write_field_files(plan, sources, storage, root, progress)
    n_files = len(plan.obs_ids) + 3 * len(plan.exposures) + 2 * len(plan.tiles)

    def put_parquet(key: str, table: pa.Table) -> None:
        buf = io.BytesIO()
        pq.write_table(table, buf)
        data = buf.getvalue()
        storage.write_bytes(storage.join(root, key), data)
        written["TRUTH"] = written.get("TRUTH", 0) + len(data)
        if progress:
            progress(key)

    put_parquet("truth/sources.parquet", pa.table(sources.truth))
    put_parquet("truth/registry.parquet", plan.tiles.to_arrow())
    doc = field_truth_json(plan, written)
    storage.write_bytes(storage.join(root, "truth/field.json"), doc)
    if progress:
        progress("truth/field.json")
    return FieldSummary(root, plan, len(sources), n_files + 3, written, time.perf_counter() - t0)
