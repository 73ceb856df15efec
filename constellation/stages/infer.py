"""The infer stage: one sub-tile manifest in, one result (+ done marker) out.

:func:`infer_subtile` reads the manifest and the sub-tile source table, runs the
backend, keeps the *core* sources, fills in the sub-tile row of the results
contract (:mod:`constellation.results.schema`) and writes ``result.parquet`` and
``_RESULT.json`` next to the manifest. A backend exception becomes a ``failed``
result carrying the error, so a field never has a silent gap; a sub-tile whose
``ok`` result already exists for the manifest's config hash is skipped (resume).
"""

from __future__ import annotations

import hashlib
import io
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from constellation import __version__
from constellation.inference.base import (
    BackendOutput,
    InferenceBackend,
    SubTileInput,
    core_centre,
)
from constellation.io.storage import Storage
from constellation.manifest import layout
from constellation.manifest.subtile import SubTileManifest, parse_manifest
from constellation.results.schema import (
    SHEAR_CONVENTION,
    SOURCE_PARAMETERS,
    SOURCE_SCHEMA,
)
from constellation.results.store import DEFAULT_PARTITION_ORDER, is_done, write_result
from constellation.sky import healpix

__all__ = ["InferOutcome", "infer_subtile", "subtile_dir_of"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InferOutcome:
    """What happened to one sub-tile. ``status``: ok, failed, or done (already had a result)."""

    tile_id: int
    row: int
    col: int
    status: str
    seconds: float
    n_sources: int = 0
    error: str | None = None


def subtile_dir_of(manifest_url: str) -> str:
    """The folder holding a manifest (results are written next to it)."""
    return manifest_url.rstrip("/").rsplit("/", 1)[0]


def _source_rows(
    core: pa.Table, fitted: pa.Table | None, manifest: SubTileManifest, run_id: str
) -> pa.Table:
    """Core sources with the fitted parameters (null where the backend gave none)."""
    ident = manifest.identity
    n = core.num_rows
    base: dict[str, Any] = {
        "object_id": core.column("object_id").cast(pa.int64()),
        "tile_id": core.column("tile_id").cast(pa.int64()),
        "subtile_row": pa.array(np.full(n, ident.row, np.int32)),
        "subtile_col": pa.array(np.full(n, ident.col, np.int32)),
        "ra": core.column("right_ascension").cast(pa.float64()),
        "dec": core.column("declination").cast(pa.float64()),
        "healpix": core.column("healpix").cast(pa.int64()),
    }
    params = [c for name, _ in SOURCE_PARAMETERS for c in (name, f"{name}_err")]
    if fitted is not None and fitted.num_rows:
        if "object_id" not in fitted.column_names:
            raise ValueError("backend source table has no object_id column")
        ids = fitted.column("object_id").to_numpy(zero_copy_only=False).astype(np.int64)
        order = {int(v): i for i, v in enumerate(ids)}
        if len(order) != len(ids):
            raise ValueError("backend source table has duplicate object_id values")
        core_ids = base["object_id"].to_numpy(zero_copy_only=False)
        pos = np.array([order.get(int(v), -1) for v in core_ids], dtype=np.int64)
        missing = pa.array(pos < 0)
        take = pa.array(np.where(pos < 0, 0, pos))
        for name in params:
            if name in fitted.column_names:
                values = fitted.column(name).cast(pa.float64()).take(take).combine_chunks()
                base[name] = pa.compute.if_else(missing, pa.scalar(None, pa.float64()), values)
            else:
                base[name] = pa.nulls(n, pa.float64())
    else:
        for name in params:
            base[name] = pa.nulls(n, pa.float64())
    base["run_id"] = pa.array([run_id] * n, pa.string())
    base["config_hash"] = pa.array([ident.config_hash] * n, pa.string())
    return pa.table(base).select(SOURCE_SCHEMA.names).cast(SOURCE_SCHEMA)


def _subtile_row(
    manifest: SubTileManifest,
    *,
    backend: InferenceBackend,
    out: BackendOutput | None,
    n_core: int,
    n_modelled: int,
    status: str,
    error: str | None,
    t_total: float,
    run_id: str,
    healpix_order: int,
) -> dict[str, Any]:
    ident = manifest.identity
    ra, dec = core_centre(manifest)
    hp = int(healpix.radec_to_index(np.array([ra]), np.array([dec]), healpix_order)[0])
    row: dict[str, Any] = {
        "tile_id": ident.tile_id,
        "subtile_row": ident.row,
        "subtile_col": ident.col,
        "ra": ra,
        "dec": dec,
        "healpix": hp,
        "healpix_order": healpix_order,
        "n_sources_modelled": n_modelled,
        "n_sources_core": n_core,
        "n_exposures": len(manifest.exposures),
        "n_quadrants": manifest.n_quadrants,
        "method": str(manifest.shine.inference.get("method", "unknown")),
        "backend": backend.name,
        "backend_version": backend.version,
        "status": status,
        "error": error,
        "t_load_s": 0.0,
        "t_infer_s": 0.0,
        "t_total_s": t_total,
        "finished_at": datetime.now(UTC),
        "run_id": run_id,
        "config_hash": ident.config_hash,
        "code_version": __version__,
        "shear_convention": SHEAR_CONVENTION,
    }
    if out is not None:
        row.update(
            g1=out.g1,
            g2=out.g2,
            g1_err=out.g1_err,
            g2_err=out.g2_err,
            g1_g2_cov=out.g1_g2_cov,
            method=out.method,
            convergence=out.convergence,
            convergence_kind=out.convergence_kind,
            n_sources_modelled=out.n_sources_modelled,
            t_load_s=out.t_load_s,
            t_infer_s=out.t_infer_s,
        )
        if out.n_exposures is not None:
            row["n_exposures"] = out.n_exposures
    return row


def _error_text(exc: BaseException, limit: int = 2000) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def infer_subtile(
    manifest_url: str,
    storage: Storage,
    backend: InferenceBackend,
    *,
    run_id: str,
    healpix_order: int,
    partition_order: int = DEFAULT_PARTITION_ORDER,
    skip_done: bool = True,
    expected_config_hash: str | None = None,
) -> InferOutcome:
    """Infer one sub-tile and write its result next to the manifest.

    Parameters
    ----------
    manifest_url
        The sub-tile's ``manifest.yaml``.
    storage, backend
        Where to read and write; the backend to run (built once per process).
    run_id
        Recorded in every row.
    healpix_order
        Order of the sub-tile centre's HEALPix index (``science.healpix.source_order``).
    partition_order
        ``science.healpix.partition_order``: the result file carries the pixel of the
        sub-tile centre at this order (the catalog's partition).
    skip_done
        Return ``done`` without running when an ``ok`` result of this backend from
        the same manifest bytes (hence the same config hash and inputs) exists.
    expected_config_hash
        When given, a manifest prepared under another science configuration is an
        error (re-run ``prepare``) rather than silently mixing configurations.

    Raises
    ------
    ValueError
        When the manifest cannot be read or belongs to another configuration —
        there is no sub-tile identity to write a ``failed`` result under.
    """
    t0 = time.perf_counter()
    manifest_bytes = storage.read_bytes(manifest_url)
    manifest_sha = hashlib.sha256(manifest_bytes).hexdigest()
    manifest = parse_manifest(manifest_bytes)
    ident = manifest.identity
    if expected_config_hash is not None and ident.config_hash != expected_config_hash:
        raise ValueError(
            f"{manifest_url}: prepared with science config {ident.config_hash}, but the "
            f"current one is {expected_config_hash}; run 'constellation prepare' again"
        )
    folder = subtile_dir_of(manifest_url)
    if skip_done and is_done(storage, folder, ident.config_hash, backend.name, manifest_sha):
        return InferOutcome(ident.tile_id, ident.row, ident.col, "done", 0.0)

    out: BackendOutput | None = None
    error: str | None = None
    core = None
    n_modelled = manifest.sources.n_extended
    try:
        src_url = layout.resolve_relative(manifest_url, manifest.sources.uri)
        sources = pq.read_table(io.BytesIO(storage.read_bytes(src_url)))
        core = sources.filter(sources.column("in_core"))
        out = backend.run(SubTileInput(manifest, manifest_url, sources, storage))
        rows = _source_rows(core, out.sources, manifest, run_id)
    except Exception as exc:  # any backend/application error becomes a failed result
        log.warning("sub-tile %s r%d_c%d failed: %s", ident.tile_id, ident.row, ident.col, exc)
        error = _error_text(exc)
        out = None
        rows = SOURCE_SCHEMA.empty_table()
    status = "ok" if error is None else "failed"
    n_core = core.num_rows if core is not None else manifest.sources.n_core
    row = _subtile_row(
        manifest,
        backend=backend,
        out=out,
        n_core=n_core,
        n_modelled=n_modelled,
        status=status,
        error=error,
        t_total=time.perf_counter() - t0,
        run_id=run_id,
        healpix_order=healpix_order,
    )
    write_result(
        storage, folder, row, rows, manifest_sha256=manifest_sha, partition_order=partition_order
    )
    return InferOutcome(
        ident.tile_id,
        ident.row,
        ident.col,
        status,
        time.perf_counter() - t0,
        n_sources=rows.num_rows,
        error=error,
    )
