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
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from constellation import __version__
from constellation.inference.base import (
    BackendOutput,
    BackendUnavailableError,
    InferenceBackend,
    NothingToFitError,
    SubTileDataError,
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

__all__ = [
    "Classified",
    "InferOutcome",
    "OutcomeSummary",
    "SubTileFailedError",
    "classify",
    "infer_subtile",
    "subtile_dir_of",
]

log = logging.getLogger(__name__)


OutcomeStatus = Literal["ok", "skipped", "failed", "unavailable", "done"]

#: ``OSError`` subclasses that a retry cannot fix: the input is not there or not allowed.
_PERMANENT_OS_ERRORS: tuple[type[OSError], ...] = (
    FileNotFoundError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
)


@dataclass(frozen=True)
class Classified:
    """What an exception means for a sub-tile (see the module docstring)."""

    status: Literal["skipped", "failed", "unavailable"]
    cause: str
    retryable: bool = False


def classify(exc: BaseException) -> Classified:
    """Classify an exception raised while inferring a sub-tile, by its type only."""
    if isinstance(exc, NothingToFitError):
        return Classified("skipped", exc.reason)
    if isinstance(exc, BackendUnavailableError):
        return Classified("unavailable", type(exc).__name__)
    if isinstance(exc, SubTileFailedError):
        return Classified("failed", exc.cause, exc.retryable)
    if isinstance(exc, SubTileDataError):
        return Classified("failed", type(exc).__name__)
    if isinstance(exc, OSError) and not isinstance(exc, _PERMANENT_OS_ERRORS):
        return Classified("failed", type(exc).__name__, retryable=True)
    return Classified("failed", type(exc).__name__)


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


class SubTileFailedError(RuntimeError):
    """A sub-tile's result was written as ``failed`` (raised by callers that need an
    exception, e.g. so that Prefect marks the task failed and retries it only when
    ``retryable``). Carries the outcome's cause; safe to pickle."""

    def __init__(self, label: str, error: str, cause: str, retryable: bool) -> None:
        super().__init__(f"{label}: {error}")
        self.label = label
        self.error = error
        self.cause = cause
        self.retryable = retryable

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.label, self.error, self.cause, self.retryable))

    @classmethod
    def from_outcome(cls, outcome: InferOutcome) -> SubTileFailedError:
        return cls(outcome.label, outcome.error or "", outcome.cause or "", outcome.retryable)


#: The cause an ``ok`` outcome carries when its fit did not converge within its budget.
UNCONVERGED = "not converged within the step budget"


@dataclass
class OutcomeSummary:
    """Counts by status, and failures and skips grouped by cause with one example each."""

    counts: Counter[str] = field(default_factory=Counter)
    #: (status, cause) -> number of sub-tiles
    by_cause: Counter[tuple[str, str]] = field(default_factory=Counter)
    #: (status, cause) -> one example: "tile T rR_cC: message"
    examples: dict[tuple[str, str], str] = field(default_factory=dict)

    def add(self, status: str, cause: str | None = None, example: str | None = None) -> None:
        self.counts[status] += 1
        if cause is not None:
            key = (status, cause)
            self.by_cause[key] += 1
            if example is not None:
                self.examples.setdefault(key, example)

    def add_outcome(self, outcome: InferOutcome) -> None:
        if outcome.status == "ok" and outcome.converged is False:
            self.add("ok", UNCONVERGED, f"{outcome.label}: stopped after {outcome.n_steps} steps")
        else:
            self.add(outcome.status, outcome.cause, f"{outcome.label}: {outcome.error}")

    def merge(self, other: OutcomeSummary) -> None:
        self.counts.update(other.counts)
        self.by_cause.update(other.by_cause)
        for key, text in other.examples.items():
            self.examples.setdefault(key, text)

    @property
    def n_failed(self) -> int:
        return self.counts.get("failed", 0)

    @property
    def n_unconverged(self) -> int:
        return self.by_cause.get(("ok", UNCONVERGED), 0)

    def lines(
        self, statuses: Iterable[str] = ("failed", "unavailable", "skipped", "ok")
    ) -> list[str]:
        """One line per (status, cause), most frequent first: count, cause, example."""
        wanted = tuple(statuses)
        keys = sorted(
            (k for k in self.by_cause if k[0] in wanted),
            key=lambda k: (wanted.index(k[0]), -self.by_cause[k], k[1]),
        )
        return [
            f"{status} {self.by_cause[(status, cause)]}: {cause} "
            f"(e.g. {self.examples.get((status, cause), '?')})"
            for status, cause in keys
        ]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (flow results)."""
        return {
            "counts": dict(self.counts),
            "causes": [
                {"status": s, "cause": c, "count": n, "example": self.examples.get((s, c))}
                for (s, c), n in self.by_cause.most_common()
            ],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OutcomeSummary:
        out = cls(counts=Counter(data.get("counts", {})))
        for row in data.get("causes", []):
            key = (str(row["status"]), str(row["cause"]))
            out.by_cause[key] += int(row["count"])
            if row.get("example"):
                out.examples.setdefault(key, str(row["example"]))
        return out


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
    config_hash: str | None = None,
    expected_preparation_hash: str | None = None,
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
        Return ``done`` without running when an ``ok`` or ``skipped`` result of this
        backend and science configuration from the same manifest bytes exists. Failed
        sub-tiles are run again.
    config_hash
        The run's science configuration hash (``Settings.config_hash``), recorded in
        every row; None: the manifest's preparation hash (tools without settings).
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
    chash = config_hash if config_hash is not None else ident.preparation_hash
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
        error = _error_text(exc)
        label = f"tile {ident.tile_id} r{ident.row}_c{ident.col}"
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
