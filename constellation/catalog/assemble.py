"""Assemble sub-tile results into the Iceberg shear catalog: batched, idempotent, concurrent-safe.

Steps (``docs/catalog.md`` has the full story):

1. **Find** the done markers (``_RESULT.json``) of the selected tiles, or of every
   tile under the work root, and read them concurrently.
2. **Select** the results not yet committed: a marker whose sha256 equals the
   ``result_sha256`` committed for its sub-tile is *unchanged* and skipped without
   reading its result. By default only results of the current science config hash
   are assembled.
3. **Read** the pending results concurrently, one batch ahead of the commits. A
   ``result.parquet`` is written by the infer stage in the ``sources`` table's file
   layout (its columns and field ids, the sub-tile key and partition pixel in every
   row), so the footer alone tells whether it can be **stored as it is**: the table's
   schema, and statistics showing only rows of its own sub-tile (none unless ``ok``).
   Such a file is copied byte for byte into the warehouse as the sub-tile's data file;
   any other is decoded, filtered to the rows the sub-tile owns and re-encoded.
4. **Commit** per table one transaction per batch that deletes every existing row of
   the batch's sub-tile keys (in their partitions only; a file holding one sub-tile is
   dropped without being read) and appends the new files — so reprocessing a
   sub-tile replaces its rows, and re-running adds nothing. A commit that loses a race
   with another writer (``CommitConflictError``) is retried against the refreshed
   table, with backoff, reusing the written files: two assemblers at once end with
   every row exactly once.

The ``sources`` table is committed before ``subtiles``: a crash in between leaves
the sub-tile's ``result_sha256`` unchanged, so the next run redoes the sub-tile and
its source rows are replaced, not duplicated.

Every sub-tile's source rows are one data file: a catalog after many batches has
many small files, which ``constellation`` maintenance compacts.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt

from constellation import __version__
from constellation.catalog.iceberg import (
    ASSEMBLED_AT_COLUMN,
    KEY_COLUMN,
    PARTITION_COLUMN,
    SHA_COLUMN,
    SOURCES,
    SUBTILES,
    CommitConflictError,
    DataFile,
    DataFileWriter,
    LocalOrigin,
    ShearCatalog,
    WrittenFiles,
    open_catalog,
    partition_pixels,
    subtile_key,
)
from constellation.config import ConfigError, Settings
from constellation.io.storage import Storage, backoff, local_path, storage_from_config
from constellation.manifest import layout
from constellation.results.schema import partition_pixel
from constellation.results.store import (
    decode_result,
    read_footer,
    read_marker,
    subtile_record,
    subtile_rows,
)

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


@dataclass(frozen=True)
class ResultRef:
    """A sub-tile result found under the work root: identity and directory."""

    tile_id: int
    row: int
    col: int
    directory: str

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
    added_as_is
        Of the ``sources`` data files, result files stored byte for byte (the rest were
        decoded and re-encoded: an older result layout or an evolved table).
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
    added_as_is: int = 0
    seconds: float = 0.0
    unreadable_dirs: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line for humans."""
        return (
            f"assembled {self.subtiles_committed} sub-tiles ({self.failed_committed} failed) and "
            f"{self.sources_committed} sources in {self.batches} batches "
            f"({self.commits} commits, {self.conflicts} retried, {self.data_files} data files, "
            f"{self.added_as_is} results added as they are) "
            f"in {self.seconds:.2f} s; {self.skipped_unchanged} unchanged, "
            f"{self.skipped_other_config} of another config, {self.unreadable} unreadable; "
            f"run {self.run_id}"
        )


# --------------------------------------------------------------------------- discovery


def find_results(
    storage: Storage,
    work_uri: str,
    tiles: Iterable[int] | None = None,
) -> list[ResultRef]:
    """The results (with a done marker) of ``tiles``, or of every tile under
    ``work_uri``, sorted by sub-tile key (the markers are not read)."""
    if tiles is None:
        patterns = [layout.join(work_uri, "tiles", "*", "subtiles", "*", layout.RESULT_DONE_NAME)]
    else:
        patterns = [
            layout.join(layout.tile_dir(work_uri, t), "subtiles", "*", layout.RESULT_DONE_NAME)
            for t in sorted({int(t) for t in tiles})
        ]
    refs: list[ResultRef] = []
    for pattern in patterns:
        for url in storage.glob(pattern):
            try:
                ident = layout.SubTileId.from_url(url)
            except ValueError:
                continue
            refs.append(ResultRef(ident.tile_id, ident.row, ident.col, ident.directory(work_uri)))
    refs.sort(key=lambda r: r.key)
    return refs


# --------------------------------------------------------------------------- batches


@dataclass(frozen=True)
class _Prepared:
    """One result, read and checked, its ``sources`` data file written."""

    ref: ResultRef
    sha256: str
    status: str
    #: The sub-tile row (see :func:`~constellation.results.store.subtile_record`).
    subtile: dict[str, Any]
    #: The sub-tile's partition pixel in the ``sources`` table.
    pixel: int
    #: Its ``sources`` data file (None: no source rows).
    file: DataFile | None
    rows: int
    dropped: int
    #: Whether the result file was added as it is (not decoded and re-encoded).
    as_is: bool


@dataclass(frozen=True)
class _Target:
    """What a reader needs to turn results into ``sources`` data files."""

    writer: DataFileWriter
    partition_order: int
    #: Column positions of the identity checks: (column index, result attribute).
    checks: tuple[tuple[int, str], ...]
    #: Only results of this science config hash are assembled (None: any).
    config_hash: str | None

    @classmethod
    def of(cls, catalog: ShearCatalog, config_hash: str | None) -> _Target:
        writer = catalog.file_writer(SOURCES)
        names = ("tile_id", "subtile_row", "subtile_col", KEY_COLUMN, PARTITION_COLUMN)
        attrs = ("tile_id", "row", "col", "key", "pixel")
        checks = tuple(
            (writer.arrow_schema.get_field_index(n), a) for n, a in zip(names, attrs, strict=True)
        )
        return cls(writer, catalog.table_partition_order(SOURCES), checks, config_hash)

    def as_is(self, metadata: pq.FileMetaData, values: dict[str, int], status: str) -> bool:
        """Whether a result file can become a data file as it is: the table's schema, and
        (from the footer's statistics, without reading a row) only rows of its own
        sub-tile and partition — and none unless the sub-tile is ``ok``."""
        if not self.writer.accepts(metadata):
            return False
        if metadata.num_rows == 0:
            return True
        if status != "ok" or metadata.num_row_groups != 1:
            return False
        group = metadata.row_group(0)
        for index, attr in self.checks:
            stats = group.column(index).statistics
            if stats is None or not stats.has_min_max:
                return False
            if stats.min != values[attr] or stats.max != values[attr]:
                return False
        return True


@dataclass(frozen=True)
class _OtherConfig:
    """A result of another science config hash (not assembled)."""


def _prepare_one(
    storage: Storage, ref: ResultRef, target: _Target
) -> _Prepared | _OtherConfig | str:
    """Read and check one result and write its ``sources`` data file (runs on a reader
    thread); an error message when it cannot be read.

    A result written in the table's file layout (the normal case) becomes the data file
    byte for byte — hard-linked into the warehouse when both are local; any other (an
    older layout, an evolved table, rows it does not own) is decoded, filtered and
    re-encoded.
    """
    url = layout.join(ref.directory, layout.RESULT_NAME)
    writer = target.writer
    try:
        data, inode = storage.read_bytes_and_inode(url)
        local = local_path(url)
        origin = None if inode is None or local is None else LocalOrigin(local, *inode)
        metadata = read_footer(data)
        sub = subtile_record(metadata.metadata)
        ident = (sub["tile_id"], sub["subtile_row"], sub["subtile_col"])
        expected = (ref.tile_id, ref.row, ref.col)
        if ident != expected:
            return f"{url}: the result is for sub-tile {ident}, not {expected}"
        if target.config_hash is not None and sub["config_hash"] != target.config_hash:
            return _OtherConfig()
        status = str(sub["status"])
        pixel = partition_pixel(sub["healpix"], sub["healpix_order"], target.partition_order)
        sha = hashlib.sha256(data).hexdigest()
        values = {"tile_id": ref.tile_id, "row": ref.row, "col": ref.col, "key": ref.key}
        values["pixel"] = pixel
        if target.as_is(metadata, values, status):
            rows = metadata.num_rows
            data_file = writer.add(data, metadata, pixel, origin) if rows else None
            return _Prepared(ref, sha, status, sub, pixel, data_file, rows, 0, as_is=True)
        src = decode_result(data).sources
    except (OSError, ValueError, TypeError, KeyError, pa.ArrowException) as exc:
        return f"{url}: {type(exc).__name__}: {exc}"
    n = src.num_rows
    # Defensive ownership filter: only the sub-tile's own core rows, none unless ok.
    if status != "ok":
        own = np.zeros(n, dtype=bool)
    else:
        own = (
            (np.asarray(src.column("tile_id")) == ref.tile_id)
            & (np.asarray(src.column("subtile_row")) == ref.row)
            & (np.asarray(src.column("subtile_col")) == ref.col)
        )
    kept = int(np.count_nonzero(own))
    if kept != n:
        src = src.filter(pa.array(own))
    src = src.append_column(KEY_COLUMN, pa.array(np.full(kept, ref.key, np.int64)))
    src = src.append_column(PARTITION_COLUMN, pa.array(np.full(kept, pixel, np.int64)))
    data_file = writer.write(writer.conform(src), pixel) if kept else None
    return _Prepared(ref, sha, status, sub, pixel, data_file, kept, n - kept, as_is=False)


def _subtile_rows(
    prepared: Sequence[_Prepared], *, partition_order: int, assembled_at: datetime
) -> pa.Table:
    """The batch's ``subtiles`` rows with their bookkeeping columns."""
    n = len(prepared)
    sub = subtile_rows([p.subtile for p in prepared])
    ts = pa.timestamp("us", tz="UTC")
    extra = [
        (KEY_COLUMN, pa.int64(), [p.ref.key for p in prepared]),
        (SHA_COLUMN, pa.string(), [p.sha256 for p in prepared]),
        (ASSEMBLED_AT_COLUMN, ts, [assembled_at] * n),
    ]
    for name, typ, values in extra:
        sub = sub.append_column(pa.field(name, typ, nullable=False), pa.array(values, typ))
    pixels = partition_pixels(sub.column("healpix"), sub.column("healpix_order"), partition_order)
    return sub.append_column(pa.field(PARTITION_COLUMN, pa.int64(), nullable=False), pixels)


def _chunks(items: Sequence[ResultRef], size: int) -> Iterator[Sequence[ResultRef]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# --------------------------------------------------------------------------- commits


def _with_retries(
    fn: Callable[[], int], catalog: ShearCatalog, report: AssembleReport, max_attempts: int
) -> int:
    """Run a commit, retrying conflicts against the refreshed catalog (tenacity, waiting
    :func:`~constellation.io.storage.backoff`)."""

    def conflict(state: RetryCallState) -> None:
        report.conflicts += 1
        exc = state.outcome.exception() if state.outcome else None
        log.info(
            "commit conflict (%s); retry %d in %.2f s", exc, state.attempt_number,
            state.upcoming_sleep,
        )  # fmt: skip

    retrying = Retrying(
        stop=stop_after_attempt(max_attempts),
        wait=backoff(0.02, 2.0),
        retry=retry_if_exception_type(CommitConflictError),
        before_sleep=conflict,
        before=lambda state: catalog.refresh() if state.attempt_number > 1 else None,
        reraise=True,
    )
    return retrying(fn)


def _evolve(catalog: ShearCatalog, report: AssembleReport, max_attempts: int) -> None:
    for name in (SOURCES, SUBTILES):
        schema = catalog.arrow_schema(name)

        def evolve(name: str = name, schema: pa.Schema = schema) -> int:
            return len(catalog.evolve(name, schema))

        if _with_retries(evolve, catalog, report, max_attempts):
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
        Threads reading results and writing data files (default: one per CPU for a
        local work root, ``min(16, 4 * cpus)`` on an object store).
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
    cpus = os.cpu_count() or 1
    # Locally a result costs ~0.4 ms of mostly GIL-held work: more threads than cores
    # only contend; an object store's latency wants many requests in flight.
    nworkers = workers or (cpus if local_path(work_uri) is not None else min(16, 4 * cpus))
    tile_list = None if tiles is None else sorted({int(t) for t in tiles})
    props = {PROP_RUN_ID: run, PROP_CONFIG_HASH: config_hash, PROP_CODE_VERSION: __version__}

    with ThreadPoolExecutor(nworkers, thread_name_prefix="assemble") as pool:
        refs = find_results(storage, work_uri, tile_list)
        report.found = len(refs)
        committed_table = catalog.read(SUBTILES, [KEY_COLUMN, SHA_COLUMN], tiles=tile_list)
        committed = dict(
            zip(
                committed_table.column(KEY_COLUMN).to_pylist(),
                committed_table.column(SHA_COLUMN).to_pylist(),
                strict=True,
            )
        )
        # Markers are read only where there is a committed result to compare with; a new
        # sub-tile's config hash is checked when its result is read.
        known = [r for r in refs if r.key in committed]
        markers = dict(zip(known, pool.map(lambda r: read_marker(storage, r.directory), known),
                           strict=True))  # fmt: skip
        pending: list[ResultRef] = []
        for ref in refs:
            marker = markers.get(ref)
            if marker is not None and only_config and marker.config_hash != config_hash:
                report.skipped_other_config += 1
            elif marker is not None and marker.sha256 == committed[ref.key]:
                report.skipped_unchanged += 1
            else:
                pending.append(ref)
        if not pending:
            report.seconds = time.perf_counter() - t0
            log.info("%s", report.summary())
            return report
        if not catalog.partitioned_by_subtile(SOURCES):
            raise ConfigError(
                f"Iceberg table {catalog.identifier(SOURCES)} was made by an older constellation "
                "that partitioned sources by their own pixel; this version partitions them by "
                "their sub-tile's centre. Drop the table (or delete the embedded catalog "
                "directory, {work_uri}/catalog) and assemble again."
            )
        _evolve(catalog, report, max_attempts)
        target = _Target.of(catalog, config_hash if only_config else None)
        subtile_order = catalog.table_partition_order(SUBTILES)
        batches = list(_chunks(pending, batch_size))

        def submit(batch: Sequence[ResultRef]) -> list[Future[_Prepared | _OtherConfig | str]]:
            return [pool.submit(_prepare_one, storage, ref, target) for ref in batch]

        # Read one batch ahead of the commits.
        queued = submit(batches[0])
        done = 0
        for i, batch in enumerate(batches):
            items = [f.result() for f in queued]
            queued = submit(batches[i + 1]) if i + 1 < len(batches) else []
            prepared = []
            for ref, item in zip(batch, items, strict=True):
                if isinstance(item, str):
                    log.warning("skipping unreadable result: %s", item)
                    report.unreadable += 1
                    report.unreadable_dirs.append(ref.directory)
                elif isinstance(item, _OtherConfig):
                    report.skipped_other_config += 1
                else:
                    prepared.append(item)
            done += len(batch)
            if prepared:
                batch_props = {
                    **props,
                    PROP_BATCH: f"{i + 1}/{len(batches)}",
                    PROP_SUBTILES: str(len(prepared)),
                }
                _commit_batch(
                    catalog, prepared, report, pool,
                    props=batch_props, subtile_order=subtile_order,
                    max_attempts=max_attempts,
                )  # fmt: skip
            if progress is not None:
                progress(done, len(pending))
    report.seconds = time.perf_counter() - t0
    log.info("%s", report.summary())
    return report


def _commit_batch(
    catalog: ShearCatalog,
    prepared: Sequence[_Prepared],
    report: AssembleReport,
    pool: ThreadPoolExecutor,
    *,
    props: dict[str, str],
    subtile_order: int,
    max_attempts: int,
) -> None:
    now = datetime.now(UTC)
    subtiles = _subtile_rows(prepared, partition_order=subtile_order, assembled_at=now)
    # Data files are written once; a commit that loses a race is retried with them.
    source_files = WrittenFiles(SOURCES, tuple(p.file for p in prepared if p.file is not None))
    subtile_files = catalog.write_files(SUBTILES, subtiles, executor=pool)
    # The batch's keys by the partition of their sub-tile, per table.
    keys: dict[str, dict[int, list[int]]] = {SOURCES: {}, SUBTILES: {}}
    subtile_pixels = subtiles.column(PARTITION_COLUMN).to_pylist()
    for p, subtile_pixel in zip(prepared, subtile_pixels, strict=True):
        keys[SOURCES].setdefault(p.pixel, []).append(p.ref.key)
        keys[SUBTILES].setdefault(subtile_pixel, []).append(p.ref.key)
    # Sources first: see the module docstring.
    for name, files in ((SOURCES, source_files), (SUBTILES, subtile_files)):

        def commit(name: str = name, files: WrittenFiles = files) -> int:
            return catalog.replace(name, keys[name], files, props)

        _with_retries(commit, catalog, report, max_attempts)
        report.commits += 1
    report.batches += 1
    report.data_files += source_files.count + subtile_files.count
    report.subtiles_committed += subtiles.num_rows
    report.sources_committed += source_files.rows
    report.failed_committed += sum(p.status == "failed" for p in prepared)
    report.dropped_sources += sum(p.dropped for p in prepared)
    report.added_as_is += sum(p.as_is and p.file is not None for p in prepared)


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
