"""Assemble sub-tile results into the Iceberg shear catalog: batched, idempotent, concurrent-safe.

Steps (``docs/catalog.md`` has the full story):

1. **Find** the done markers (``_RESULT.json``) of the selected tiles, or of every
   tile under the work root, and read them concurrently.
2. **Select** the results not yet committed: a marker whose sha256 equals the
   ``result_sha256`` committed for its sub-tile is *unchanged* and skipped without
   reading its result. By default only results of the current science config hash
   are assembled.
3. **Read** the pending results concurrently (pyarrow decodes without the GIL),
   one batch ahead of the commits, check each file's sha256 and keep only the
   source rows the sub-tile owns (its own tile/row/col, and none for a sub-tile
   that is not ``ok``).
4. **Write** each batch's data files once (both tables, one or more files per
   partition pixel), then **commit** per table one transaction that deletes every
   existing row of the batch's sub-tile keys and appends the new files — so
   reprocessing a sub-tile replaces its rows, and re-running adds nothing. A commit
   that loses a race with another writer (``CommitConflictError``) is retried
   against the refreshed table, with backoff, reusing the written files: two
   assemblers at once end with every row exactly once.

The ``sources`` table is committed before ``subtiles``: a crash in between leaves
the sub-tile's ``result_sha256`` unchanged, so the next run redoes the sub-tile and
its source rows are replaced, not duplicated.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import re
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from constellation import __version__
from constellation.catalog.iceberg import (
    ASSEMBLED_AT_COLUMN,
    KEY_COLUMN,
    PARTITION_COLUMN,
    SHA_COLUMN,
    SOURCES,
    SUBTILES,
    CommitConflictError,
    ShearCatalog,
    open_catalog,
    partition_pixels,
    subtile_key,
)
from constellation.config import Settings
from constellation.io.storage import Storage, storage_from_config
from constellation.manifest import layout
from constellation.results.store import ResultMarker, decode_result, read_marker

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "AssembleReport",
    "ResultRef",
    "assemble",
    "assemble_results",
    "find_results",
]

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 1000
"""Sub-tiles per Iceberg commit (one transaction per table per batch)."""

#: Snapshot summary properties written with every commit.
PROP_RUN_ID = "constellation.run-id"
PROP_CONFIG_HASH = "constellation.config-hash"
PROP_CODE_VERSION = "constellation.code-version"
PROP_BATCH = "constellation.batch"
PROP_SUBTILES = "constellation.subtiles"

_SUBTILE_DIR = re.compile(r"/tiles/(\d+)/subtiles/r(\d+)_c(\d+)/?$")


@dataclass(frozen=True)
class ResultRef:
    """A sub-tile result found under the work root: identity, directory and marker."""

    tile_id: int
    row: int
    col: int
    directory: str
    marker: ResultMarker

    @property
    def key(self) -> int:
        """The sub-tile key (see :func:`~constellation.catalog.iceberg.subtile_key`)."""
        return subtile_key(self.tile_id, self.row, self.col)


@dataclass
class AssembleReport:
    """What one assembly did.

    Attributes
    ----------
    run_id
        Run id written into the snapshot summaries.
    found
        Result markers found.
    subtiles_committed
        Sub-tile rows committed (ok, failed and skipped sub-tiles).
    sources_committed
        Source rows committed.
    failed_committed
        Of ``subtiles_committed``, those with status ``failed`` (error recorded).
    skipped_unchanged
        Results already committed with the same sha256 (not read).
    skipped_other_config
        Results of another science config hash (not assembled).
    unreadable
        Results whose file could not be read or decoded (not committed; retried next run).
    dropped_sources
        Source rows dropped because the sub-tile does not own them.
    batches
        Batches committed.
    commits
        Iceberg commits made (one per table per batch, plus any schema evolution).
    conflicts
        Commits retried after losing a race with another writer.
    data_files
        Data files written.
    seconds
        Wall time.
    """

    run_id: str
    found: int = 0
    subtiles_committed: int = 0
    sources_committed: int = 0
    failed_committed: int = 0
    skipped_unchanged: int = 0
    skipped_other_config: int = 0
    unreadable: int = 0
    dropped_sources: int = 0
    batches: int = 0
    commits: int = 0
    conflicts: int = 0
    data_files: int = 0
    seconds: float = 0.0
    unreadable_dirs: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line for humans."""
        return (
            f"assembled {self.subtiles_committed} sub-tiles ({self.failed_committed} failed) and "
            f"{self.sources_committed} sources in {self.batches} batches "
            f"({self.commits} commits, {self.conflicts} retried, {self.data_files} data files) "
            f"in {self.seconds:.2f} s; {self.skipped_unchanged} unchanged, "
            f"{self.skipped_other_config} of another config, {self.unreadable} unreadable; "
            f"run {self.run_id}"
        )


# --------------------------------------------------------------------------- discovery


def _parse_dir(directory: str) -> tuple[int, int, int] | None:
    m = _SUBTILE_DIR.search(directory)
    if m is None:
        return None
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


def find_results(
    storage: Storage,
    work_uri: str,
    tiles: Iterable[int] | None = None,
    *,
    executor: ThreadPoolExecutor | None = None,
) -> list[ResultRef]:
    """The results (with a readable done marker) of ``tiles``, or of every tile under
    ``work_uri``, sorted by sub-tile key."""
    if tiles is None:
        patterns = [layout.join(work_uri, "tiles", "*", "subtiles", "*", layout.RESULT_DONE_NAME)]
    else:
        patterns = [
            layout.join(layout.tile_dir(work_uri, t), "subtiles", "*", layout.RESULT_DONE_NAME)
            for t in sorted({int(t) for t in tiles})
        ]
    dirs: list[tuple[str, tuple[int, int, int]]] = []
    for pattern in patterns:
        for url in storage.glob(pattern):
            directory = url.rsplit("/", 1)[0]
            ident = _parse_dir(directory)
            if ident is not None:
                dirs.append((directory, ident))

    def load(item: tuple[str, tuple[int, int, int]]) -> ResultRef | None:
        directory, (tile, row, col) = item
        marker = read_marker(storage, directory)
        return None if marker is None else ResultRef(tile, row, col, directory, marker)

    if executor is None:
        found = [load(d) for d in dirs]
    else:
        found = list(executor.map(load, dirs))
    refs = [r for r in found if r is not None]
    return sorted(refs, key=lambda r: r.key)


# --------------------------------------------------------------------------- batches


@dataclass(frozen=True)
class _Decoded:
    ref: ResultRef
    sha256: str
    subtile: pa.Table
    sources: pa.Table


def _read_one(storage: Storage, ref: ResultRef) -> _Decoded | str:
    """Read and decode one result; an error message when it cannot be."""
    url = layout.join(ref.directory, layout.RESULT_NAME)
    try:
        data = storage.read_bytes(url)
        result = decode_result(data)
    except (OSError, ValueError, pa.ArrowException) as exc:
        return f"{url}: {type(exc).__name__}: {exc}"
    if result.subtile.num_rows != 1:
        return f"{url}: expected one sub-tile row, got {result.subtile.num_rows}"
    return _Decoded(ref, hashlib.sha256(data).hexdigest(), result.subtile, result.sources)


@dataclass
class _Batch:
    keys: list[int]
    subtiles: pa.Table
    sources: pa.Table
    failed: int
    dropped: int


def _build_batch(
    decoded: Sequence[_Decoded], *, partition_order: int, source_order: int, assembled_at: datetime
) -> _Batch:
    keys = [d.ref.key for d in decoded]
    sub = pa.concat_tables([d.subtile for d in decoded])
    status = sub.column("status")
    # Identity columns come from the directory the result was found in.
    n = len(decoded)
    sub = sub.set_column(
        sub.schema.get_field_index("tile_id"),
        sub.schema.field("tile_id"),
        pa.array([d.ref.tile_id for d in decoded], pa.int64()),
    )
    sub = sub.append_column(
        sub.schema.field("tile_id").with_name(KEY_COLUMN), pa.array(keys, pa.int64())
    )
    sub = sub.append_column(
        pa.field(SHA_COLUMN, pa.string(), nullable=False), pa.array([d.sha256 for d in decoded])
    )
    sub = sub.append_column(
        pa.field(ASSEMBLED_AT_COLUMN, pa.timestamp("us", tz="UTC"), nullable=False),
        pa.array([assembled_at] * n, pa.timestamp("us", tz="UTC")),
    )
    sub = sub.append_column(
        pa.field(PARTITION_COLUMN, pa.int64(), nullable=False),
        partition_pixels(sub.column("healpix"), sub.column("healpix_order"), partition_order),
    )
    if len(set(sub.column("tile_id").to_pylist())) and sub.num_rows != n:
        raise AssertionError("one sub-tile row per result")

    src = pa.concat_tables([d.sources for d in decoded])
    counts = np.array([d.sources.num_rows for d in decoded], dtype=np.int64)
    owner = np.repeat(np.array(keys, dtype=np.int64), counts)
    ok = np.repeat(np.asarray(pc.equal(status, "ok")), counts)
    row_key = (
        np.asarray(src.column("tile_id"), dtype=np.int64) * 10_000
        + np.asarray(src.column("subtile_row"), dtype=np.int64) * 100
        + np.asarray(src.column("subtile_col"), dtype=np.int64)
    )
    own = (row_key == owner) & ok
    dropped = int(own.size - np.count_nonzero(own))
    if dropped:
        src = src.filter(pa.array(own))
        owner = owner[own]
    src = src.append_column(pa.field(KEY_COLUMN, pa.int64(), nullable=False), pa.array(owner))
    src = src.append_column(
        pa.field(PARTITION_COLUMN, pa.int64(), nullable=False),
        partition_pixels(src.column("healpix"), source_order, partition_order),
    )
    failed = int(np.count_nonzero(np.asarray(pc.equal(status, "failed"))))
    return _Batch(keys, sub, src, failed, dropped)


def _chunks(items: Sequence[ResultRef], size: int) -> Iterator[Sequence[ResultRef]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# --------------------------------------------------------------------------- commits


def _with_retries(
    fn: Callable[[], int],
    catalog: ShearCatalog,
    report: AssembleReport,
    max_attempts: int,
    rng: random.Random,
) -> int:
    """Run a commit, retrying conflicts with jittered exponential backoff."""
    for attempt in range(1, max_attempts + 1):
        try:
            return fn()
        except CommitConflictError as exc:
            if attempt == max_attempts:
                raise
            report.conflicts += 1
            delay = min(2.0, 0.02 * 2 ** (attempt - 1)) * (0.5 + rng.random())
            log.info("commit conflict (%s); retry %d in %.2f s", exc, attempt, delay)
            time.sleep(delay)
            catalog.refresh()
    raise AssertionError("unreachable")


def _evolve(catalog: ShearCatalog, report: AssembleReport, max_attempts: int) -> None:
    rng = random.Random()
    for name in (SOURCES, SUBTILES):
        schema = catalog.arrow_schema(name)

        def evolve(name: str = name, schema: pa.Schema = schema) -> int:
            return len(catalog.evolve(name, schema))

        if _with_retries(evolve, catalog, report, max_attempts, rng):
            report.commits += 1


def assemble_results(
    storage: Storage,
    work_uri: str,
    catalog: ShearCatalog,
    *,
    tiles: Iterable[int] | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    run_id: str | None = None,
    config_hash: str,
    only_config: bool = True,
    workers: int | None = None,
    max_attempts: int = 30,
    progress: Callable[[int, int], None] | None = None,
) -> AssembleReport:
    """Commit the results under ``work_uri`` not yet in ``catalog`` (see the module doc).

    Parameters
    ----------
    tiles
        Tile ids to assemble; ``None``: every tile under ``work_uri``.
    batch_size
        Sub-tiles per commit.
    run_id
        Written into the snapshot summaries (default: a new ``assemble-...`` id).
    config_hash
        The current science config hash (snapshot summaries; result selection).
    only_config
        Assemble only results whose marker has ``config_hash``.
    workers
        Threads reading markers and results (default: ``min(8, 2 * cpus)``).
    max_attempts
        Attempts per commit when other writers keep winning.
    progress
        Called with ``(sub-tiles done, sub-tiles pending)`` after every batch.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    t0 = time.perf_counter()
    run = run_id or f"assemble-{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"
    report = AssembleReport(run_id=run)
    nworkers = workers or min(8, 2 * (os.cpu_count() or 1))
    tile_list = None if tiles is None else sorted({int(t) for t in tiles})
    rng = random.Random()
    partition_order = catalog.table_partition_order(SOURCES)
    if catalog.table_partition_order(SUBTILES) != partition_order:
        raise ValueError("the subtiles and sources tables have different partition orders")

    with ThreadPoolExecutor(nworkers, thread_name_prefix="assemble") as pool:
        refs = find_results(storage, work_uri, tile_list, executor=pool)
        report.found = len(refs)
        if only_config:
            selected = [r for r in refs if r.marker.config_hash == config_hash]
            report.skipped_other_config = len(refs) - len(selected)
            refs = selected
        committed_table = catalog.read(SUBTILES, [KEY_COLUMN, SHA_COLUMN], tiles=tile_list)
        committed = dict(
            zip(
                committed_table.column(KEY_COLUMN).to_pylist(),
                committed_table.column(SHA_COLUMN).to_pylist(),
                strict=True,
            )
        )
        pending = [r for r in refs if committed.get(r.key) != r.marker.sha256]
        report.skipped_unchanged = len(refs) - len(pending)
        if pending:
            _evolve(catalog, report, max_attempts)

        batches = list(_chunks(pending, batch_size))

        def submit(batch: Sequence[ResultRef]) -> list[Future[_Decoded | str]]:
            return [pool.submit(_read_one, storage, ref) for ref in batch]

        queued = submit(batches[0]) if batches else []
        done = 0
        for i, batch in enumerate(batches):
            decoded_or_errors = [f.result() for f in queued]
            queued = submit(batches[i + 1]) if i + 1 < len(batches) else []
            decoded = []
            for ref, item in zip(batch, decoded_or_errors, strict=True):
                if isinstance(item, str):
                    log.warning("skipping unreadable result: %s", item)
                    report.unreadable += 1
                    report.unreadable_dirs.append(ref.directory)
                else:
                    decoded.append(item)
            done += len(batch)
            if decoded:
                _commit_batch(
                    catalog,
                    decoded,
                    report,
                    props={
                        PROP_RUN_ID: run,
                        PROP_CONFIG_HASH: config_hash,
                        PROP_CODE_VERSION: __version__,
                        PROP_BATCH: f"{i + 1}/{len(batches)}",
                    },
                    partition_order=partition_order,
                    max_attempts=max_attempts,
                    rng=rng,
                )
            if progress is not None:
                progress(done, len(pending))
    report.seconds = time.perf_counter() - t0
    log.info("%s", report.summary())
    return report


def _commit_batch(
    catalog: ShearCatalog,
    decoded: Sequence[_Decoded],
    report: AssembleReport,
    *,
    props: dict[str, str],
    partition_order: int,
    max_attempts: int,
    rng: random.Random,
) -> None:
    batch = _build_batch(
        decoded,
        partition_order=partition_order,
        source_order=catalog.source_order,
        assembled_at=datetime.now(UTC),
    )
    props = {**props, PROP_SUBTILES: str(len(batch.keys))}
    source_files = catalog.write_files(SOURCES, batch.sources, sort_by="healpix")
    subtile_files = catalog.write_files(SUBTILES, batch.subtiles, sort_by=KEY_COLUMN)
    # Sources first: see the module docstring.
    for name, files in ((SOURCES, source_files), (SUBTILES, subtile_files)):

        def commit(name: str = name, files: list[object] = files) -> int:  # type: ignore[assignment]
            return catalog.replace(name, batch.keys, files, props)  # type: ignore[arg-type]

        _with_retries(commit, catalog, report, max_attempts, rng)
        report.commits += 1
    report.batches += 1
    report.data_files += len(source_files) + len(subtile_files)
    report.subtiles_committed += batch.subtiles.num_rows
    report.sources_committed += batch.sources.num_rows
    report.failed_committed += batch.failed
    report.dropped_sources += batch.dropped


def assemble(
    settings: Settings,
    *,
    tiles: Iterable[int] | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    run_id: str | None = None,
    only_config: bool = True,
    workers: int | None = None,
    storage: Storage | None = None,
    catalog: ShearCatalog | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> AssembleReport:
    """Assemble the results under ``settings.runtime.storage.work_uri`` into the configured
    catalog (see :func:`assemble_results`)."""
    return assemble_results(
        storage or storage_from_config(settings.runtime.storage),
        settings.runtime.storage.work_uri,
        catalog or open_catalog(settings),
        tiles=tiles,
        batch_size=batch_size,
        run_id=run_id,
        config_hash=settings.config_hash,
        only_config=only_config,
        workers=workers,
        progress=progress,
    )
