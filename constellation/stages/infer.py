"""The infer stage: one sub-tile manifest in, one result (+ done marker) out.

:func:`infer_subtile` reads the manifest and the sub-tile source table, runs the
backend, keeps the *core* sources, fills in the sub-tile row of the results
contract (:mod:`constellation.results.schema`) and writes ``result.parquet`` and
``_RESULT.json`` next to the manifest. A sub-tile whose ``ok`` or ``skipped``
result already exists for the same manifest and backend is ``done`` (resume).

What happens to a sub-tile is decided by the *type* of what the backend raised
(:func:`classify`), never by its message:

``ok``
    a fit; the result carries the shear and the core sources.
``skipped``
    nothing to fit (:class:`~constellation.inference.base.NothingToFitError`): the
    result is written with the reason, committed like any other, and never retried.
``failed``, retryable
    I/O and network errors (``OSError``, missing files excepted): the result is
    written, and the caller may try again (Prefect task retries, Ray retries of a
    lost worker).
``failed``, permanent
    deterministic data or configuration errors, non-finite fits, anything else:
    recorded once, not retried.
``unavailable``
    the backend cannot run (:class:`~constellation.inference.base.BackendUnavailableError`):
    nothing is written and the caller stops the run.

Every outcome carries its *cause*: the skip reason, or the exception's type name,
so that a run's summary can group sub-tiles by cause.
"""

from __future__ import annotations

import hashlib
import io
import logging
import time
from collections.abc import Iterable
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
from constellation.stages.base import (
    UNCONVERGED,
    Classified,
    OutcomeStatus,
    OutcomeSummary,
    SubTileFailedError,
    classify,
    error_text,
)

__all__ = [
    "UNCONVERGED",
    "Classified",
    "InferOutcome",
    "InferStage",
    "OutcomeStatus",
    "OutcomeSummary",
    "SubTileFailedError",
    "already_done",
    "classify",
    "infer_subtile",
    "plan",
    "subtile_dir_of",
    "tiles_without_manifests",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InferOutcome:
    """What happened to one sub-tile.

    ``status``: ok, skipped, failed, unavailable (the backend cannot run; nothing
    written), or done (an ok or skipped result was already there). ``cause`` is set
    for every status but ok and done; ``retryable`` only for failures worth retrying.
    """

    tile_id: int
    row: int
    col: int
    status: OutcomeStatus
    seconds: float
    n_sources: int = 0
    error: str | None = None
    cause: str | None = None
    retryable: bool = False
    converged: bool | None = None  # of an ok fit: met its stopping rule (None: no rule)
    n_steps: int | None = None

    @property
    def label(self) -> str:
        """``tile T rR_cC``."""
        return f"tile {self.tile_id} r{self.row}_c{self.col}"


def _read_manifest(
    manifest_url: str, storage: Storage, expected_preparation_hash: str | None
) -> tuple[SubTileManifest, str]:
    """The manifest and the SHA-256 of its bytes; a manifest prepared under another
    configuration is a ``ValueError`` when ``expected_preparation_hash`` is given."""
    manifest_bytes = storage.read_bytes(manifest_url)
    manifest = parse_manifest(manifest_bytes)
    ident = manifest.identity
    if (
        expected_preparation_hash is not None
        and ident.preparation_hash != expected_preparation_hash
    ):
        raise ValueError(
            f"{manifest_url}: prepared under preparation hash {ident.preparation_hash}, but "
            f"the current configuration's is {expected_preparation_hash}; run 'constellation "
            "prepare' again"
        )
    return manifest, hashlib.sha256(manifest_bytes).hexdigest()


def already_done(
    manifest_url: str,
    storage: Storage,
    backend_name: str,
    config_hash: str,
    expected_preparation_hash: str | None = None,
) -> InferOutcome | None:
    """The ``done`` outcome of a sub-tile whose final result :func:`infer_subtile` would
    find (same manifest bytes, science configuration and backend), else None: lets a
    driver skip it without dispatching anything. Raises as :func:`infer_subtile` does
    for an unreadable manifest or one prepared under another configuration."""
    manifest, sha = _read_manifest(manifest_url, storage, expected_preparation_hash)
    ident = manifest.identity
    if is_done(storage, subtile_dir_of(manifest_url), config_hash, backend_name, sha):
        return InferOutcome(ident.tile_id, ident.row, ident.col, "done", 0.0)
    return None


def subtile_dir_of(manifest_url: str) -> str:
    """The folder holding a manifest (results are written next to it)."""
    return manifest_url.rstrip("/").rsplit("/", 1)[0]


def _source_rows(
    core: pa.Table,
    fitted: pa.Table | None,
    manifest: SubTileManifest,
    run_id: str,
    config_hash: str,
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
    base["config_hash"] = pa.array([config_hash] * n, pa.string())
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
    config_hash: str,
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
        "config_hash": config_hash,
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
            converged=out.converged,
            n_steps=out.n_steps,
            n_sources_modelled=out.n_sources_modelled,
            t_load_s=out.t_load_s,
            t_infer_s=out.t_infer_s,
        )
        if out.n_exposures is not None:
            row["n_exposures"] = out.n_exposures
    return row


def infer_subtile(
    manifest_url: str,
    storage: Storage,
    backend: InferenceBackend,
    *,
    run_id: str,
    config_hash: str,
    healpix_order: int,
    partition_order: int = DEFAULT_PARTITION_ORDER,
    skip_done: bool = True,
    expected_preparation_hash: str | None = None,
) -> InferOutcome:
    """Infer one sub-tile and write its result next to the manifest.

    Parameters
    ----------
    manifest_url
        The sub-tile's manifest.
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
        Return ``done`` without running when an ``ok`` or ``skipped`` result of this
        backend and science configuration from the same manifest bytes exists. Failed
        sub-tiles are run again.
    config_hash
        The run's science configuration hash (``Settings.config_hash``), recorded in
        every row and compared by the done check.
    expected_preparation_hash
        When given, a manifest prepared under another configuration is an error
        (re-run ``prepare``) rather than silently mixing configurations.

    Returns
    -------
    InferOutcome
        What happened; exceptions of the backend are classified (:func:`classify`),
        never raised.

    Raises
    ------
    OSError
        When the manifest cannot be read (retryable unless the file is missing).
    ValueError
        When the manifest cannot be parsed or belongs to another configuration —
        there is no sub-tile identity to write a ``failed`` result under.
    """
    t0 = time.perf_counter()
    manifest, manifest_sha = _read_manifest(manifest_url, storage, expected_preparation_hash)
    ident = manifest.identity
    chash = config_hash
    folder = subtile_dir_of(manifest_url)
    if skip_done and is_done(storage, folder, chash, backend.name, manifest_sha):
        return InferOutcome(ident.tile_id, ident.row, ident.col, "done", 0.0)

    out: BackendOutput | None = None
    error: str | None = None
    verdict: Classified | None = None
    core = None
    n_modelled = manifest.sources.n_extended
    try:
        src_url = layout.resolve_relative(manifest_url, manifest.sources.uri)
        sources = pq.read_table(io.BytesIO(storage.read_bytes(src_url)))
        core = sources.filter(sources.column("in_core"))
        out = backend.run(SubTileInput(manifest, manifest_url, sources, storage))
        rows = _source_rows(core, out.sources, manifest, run_id, chash)
    except Exception as exc:  # classified by type: skipped, failed or unavailable
        verdict = classify(exc)
        error = error_text(exc)
        label = str(layout.SubTileId(ident.tile_id, ident.row, ident.col))
        if verdict.status == "unavailable":
            # nothing happened to the sub-tile: no result, the caller stops the run
            return InferOutcome(
                ident.tile_id, ident.row, ident.col, "unavailable",
                time.perf_counter() - t0, error=error, cause=verdict.cause,
            )  # fmt: skip
        if verdict.status == "skipped":
            log.info("%s skipped: %s", label, exc)
        else:
            log.warning("%s failed (%s): %s", label, verdict.cause, exc)
        out = None
        rows = SOURCE_SCHEMA.empty_table()
    status: OutcomeStatus = "ok" if verdict is None else verdict.status
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
        config_hash=chash,
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
        cause=None if verdict is None else verdict.cause,
        retryable=verdict is not None and verdict.retryable,
        converged=None if out is None else out.converged,
        n_steps=None if out is None else out.n_steps,
    )


# --------------------------------------------------------------------------- the stage


def plan(storage: Storage, work_uri: str, tiles: Iterable[int | str] | None = None) -> list[str]:
    """The manifests of the prepared sub-tiles of ``tiles`` (None: every prepared
    tile), in tile, row, column order: one listing per tile, nothing read or written.

    Every driver of the infer stage (``constellation infer``, the infer flow) lists
    its work here; :func:`tiles_without_manifests` tells which tiles had none.
    """
    names: list[int | str] = ["*"] if tiles is None else sorted(set(tiles), key=str)
    urls: list[str] = []
    for name in names:
        urls.extend(storage.glob(layout.manifest_pattern(work_uri, name)))
    return sorted(set(urls), key=_order)


def _order(url: str) -> tuple[Any, ...]:
    try:
        return (0, layout.SubTileId.from_url(url), url)
    except ValueError:
        return (1, url)


def tiles_without_manifests(urls: Iterable[str], tiles: Iterable[int]) -> list[int]:
    """The tiles of ``tiles`` that no manifest of ``urls`` belongs to."""
    have = set()
    for url in urls:
        try:
            have.add(layout.SubTileId.from_url(url).tile_id)
        except ValueError:
            continue
    return sorted(set(tiles) - have)


@dataclass(frozen=True)
class InferStage:
    """The infer stage: items are sub-tile manifest URLs, outcomes :class:`InferOutcome`.

    Built once per process (the backend keeps its compiled model); :meth:`run_one` is
    :func:`infer_subtile` with the run's identity filled in.
    """

    backend: InferenceBackend
    run_id: str
    config_hash: str
    preparation_hash: str
    healpix_order: int
    partition_order: int = DEFAULT_PARTITION_ORDER
    skip_done: bool = True
    name: str = "infer"

    @classmethod
    def from_settings(
        cls, settings: Any, backend: InferenceBackend, run_id: str, *, force: bool = False
    ) -> InferStage:
        """The stage for ``settings`` (a :class:`~constellation.config.Settings`)."""
        return cls(
            backend=backend,
            run_id=run_id,
            config_hash=settings.config_hash,
            preparation_hash=settings.preparation_hash,
            healpix_order=settings.science.healpix.source_order,
            partition_order=settings.science.healpix.partition_order,
            skip_done=not force,
        )

    def label(self, item: str) -> str:
        try:
            return str(layout.SubTileId.from_url(item))
        except ValueError:
            return item

    def run_one(self, item: str, storage: Storage) -> InferOutcome:
        return infer_subtile(
            item, storage, self.backend, run_id=self.run_id,
            healpix_order=self.healpix_order, partition_order=self.partition_order,
            skip_done=self.skip_done, config_hash=self.config_hash,
            expected_preparation_hash=self.preparation_hash,
        )  # fmt: skip
