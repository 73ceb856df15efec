"""Statistics and compaction of the shear tables: the first step of
:func:`constellation.catalog.maintenance.maintain`.

Compaction (:func:`compact_table`)
    Per partition pixel with more data files than it needs (at least ``min_files``),
    the live rows of the files of one snapshot are read, sorted by the table's sort
    key (``subtile_key``; a sub-tile's rows keep their order) and rewritten as few
    files of about ``target_file_bytes``, split only between sub-tiles. One
    ``overwrite`` commit per group of partitions deletes exactly the files read and
    adds the new ones: the rows are the same values, the partitioning and sort order
    are unchanged. Concurrent writers: the commit requires the branch head to be the
    snapshot it was built on (pyiceberg's ``AssertRefSnapshotId``; the tables have
    ``commit.retry.num-retries = 0``). When another writer committed first, the table
    is reloaded and the commit is rebuilt on the new head with the files already
    written, for the partitions whose read files are all still live; a partition
    whose files another writer replaced (an assembler re-committing a sub-tile) is
    dropped from this run and its new files deleted. Rows are never lost or
    duplicated: a committed compaction removes exactly the rows it rewrote.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyiceberg.exceptions import CommitFailedException, ValidationException
from pyiceberg.expressions import AlwaysTrue, In
from pyiceberg.io.pyarrow import ArrowScan
from pyiceberg.manifest import DataFile
from pyiceberg.table import FileScanTask, Table
from pyiceberg.table.snapshots import Snapshot
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt

from constellation.catalog.iceberg.tables import ShearCatalog, is_locked
from constellation.io.storage import backoff
from constellation.results.schema import KEY_COLUMN, PARTITION_COLUMN

log = logging.getLogger(__name__)

DEFAULT_MIN_FILES = 2
"""Partitions with fewer data files are not compacted."""

DEFAULT_TARGET_FILE_BYTES = 512 * 2**20
"""Target size of a compacted data file (Iceberg's ``write.target-file-size-bytes``
default); a table's own property of that name takes precedence."""

READ_GROUP = 256
"""Partitions whose rows compaction holds in memory at once."""

PROP_OPERATION = "constellation.maintenance"
"""Snapshot summary property of a compaction commit."""

_TARGET_SIZE_PROPERTY = "write.target-file-size-bytes"


# --------------------------------------------------------------------------- statistics


@dataclass(frozen=True)
class TableStats:
    """The size of one table at its current snapshot."""

    table: str
    data_files: int
    data_bytes: int
    records: int
    partitions: int
    snapshots: int
    snapshot_id: int | None

    def line(self) -> str:
        """One line for humans."""
        return (
            f"{self.table}: {self.data_files} data files, {in_mb(self.data_bytes)}, "
            f"{self.records} rows in {self.partitions} partitions, {self.snapshots} snapshots"
        )


def in_mb(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def table_stats(catalog: ShearCatalog, name: str) -> TableStats:
    """Data files, bytes, rows and partitions of the current snapshot of table ``name``,
    and its number of snapshots (from the metadata; no data file is read)."""
    table = catalog.table(name)
    snapshot = table.current_snapshot()
    tasks = _tasks(table, snapshot)
    return _stats(name, table, snapshot, tasks)


def _tasks(table: Table, snapshot: Snapshot | None) -> list[FileScanTask]:
    """The data files of ``snapshot`` (none without a snapshot)."""
    if snapshot is None:
        return []
    return list(table.scan(snapshot_id=snapshot.snapshot_id).plan_files())


def _stats(
    name: str, table: Table, snapshot: Snapshot | None, tasks: Sequence[FileScanTask]
) -> TableStats:
    return TableStats(
        table=name,
        data_files=len(tasks),
        data_bytes=sum(int(t.file.file_size_in_bytes) for t in tasks),
        records=sum(int(t.file.record_count) for t in tasks),
        partitions=len({int(t.file.partition[0]) for t in tasks}),
        snapshots=len(table.metadata.snapshots),
        snapshot_id=None if snapshot is None else int(snapshot.snapshot_id),
    )


# --------------------------------------------------------------------------- compaction


@dataclass
class CompactReport:
    """What one compaction of a table did (or would do, with ``dry_run``).

    Attributes
    ----------
    partitions_total
        Partitions of the table.
    partitions_planned
        Partitions selected for compaction (more files than they need).
    partitions_compacted
        Of those, rewritten and committed.
    partitions_conflicted
        Dropped because another writer replaced some of their files meanwhile
        (compacted by a later run).
    files_before, files_after
        Data files of the table before and after.
    files_rewritten, files_written
        Data files removed by the compaction commits, and files they added.
    rows_rewritten
        Rows read and written again.
    bytes_before, bytes_after
        Bytes of the table's data files before and after.
    commits, conflicts
        Compaction commits, and commits rebuilt after another writer won a race.
    seconds
        Wall time.
    """

    table: str
    dry_run: bool = False
    partitions_total: int = 0
    partitions_planned: int = 0
    partitions_compacted: int = 0
    partitions_conflicted: int = 0
    files_before: int = 0
    files_after: int = 0
    files_rewritten: int = 0
    files_written: int = 0
    rows_rewritten: int = 0
    bytes_before: int = 0
    bytes_after: int = 0
    commits: int = 0
    conflicts: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        """One line for humans."""
        verb = "would compact" if self.dry_run else "compacted"
        done = self.partitions_planned if self.dry_run else self.partitions_compacted
        return (
            f"{self.table}: {verb} {done} of {self.partitions_total} partitions; "
            f"data files {self.files_before} -> "
            f"{self.files_after}, {in_mb(self.bytes_before)} -> {in_mb(self.bytes_after)}; "
            f"{self.rows_rewritten} rows rewritten in {self.commits} commits "
            f"({self.conflicts} rebuilt, {self.partitions_conflicted} partitions left for "
            f"later) in {self.seconds:.2f} s"
        )


@dataclass(frozen=True)
class _Partition:
    """One partition pixel's data files at the planned snapshot."""

    pixel: int
    tasks: tuple[FileScanTask, ...]

    @property
    def files(self) -> tuple[DataFile, ...]:
        return tuple(t.file for t in self.tasks)

    @property
    def nbytes(self) -> int:
        return sum(int(t.file.file_size_in_bytes) for t in self.tasks)

    @property
    def rows(self) -> int:
        return sum(int(t.file.record_count) for t in self.tasks)

    def wanted_files(self, target_bytes: int) -> int:
        """Files this partition needs at ``target_bytes`` per file."""
        return max(1, math.ceil(self.nbytes / target_bytes))


def _target_bytes(table: Table, target_file_bytes: int | None) -> int:
    if target_file_bytes is not None:
        if target_file_bytes < 1:
            raise ValueError(f"target_file_bytes must be >= 1, got {target_file_bytes}")
        return int(target_file_bytes)
    return int(table.properties.get(_TARGET_SIZE_PROPERTY, DEFAULT_TARGET_FILE_BYTES))


def _plan(
    table: Table,
    tasks: Iterable[FileScanTask],
    *,
    min_files: int,
    target_bytes: int,
    only: set[int] | None,
) -> list[_Partition]:
    """The partitions worth compacting among the files ``tasks`` of one snapshot."""
    by_pixel: dict[int, list[FileScanTask]] = {}
    for task in tasks:
        by_pixel.setdefault(int(task.file.partition[0]), []).append(task)
    planned = []
    for pixel, group in sorted(by_pixel.items()):
        if only is not None and pixel not in only:
            continue
        part = _Partition(pixel, tuple(sorted(group, key=lambda t: t.file.file_path)))
        if len(group) < max(2, min_files) or len(group) <= part.wanted_files(target_bytes):
            continue
        if any(t.delete_files for t in group):
            log.warning("partition %d of %s has delete files: not compacted", pixel, table.name())
            continue
        planned.append(part)
    return planned


_FIELD_ID = b"PARQUET:field_id"


def _field_ids(schema: pa.Schema) -> dict[int, int]:
    """Iceberg field id -> column index of a Parquet file's Arrow schema."""
    return {
        int(f.metadata[_FIELD_ID]): i
        for i, f in enumerate(schema)
        if f.metadata is not None and _FIELD_ID in f.metadata
    }


def _read_file(table: Table, path: str, target: pa.Schema) -> pa.Table | None:
    """A data file's rows projected onto ``target`` (the data-file schema) by Iceberg
    field id: columns the file lacks become nulls, narrower types are cast. ``None`` when
    the file has no field ids (pyiceberg's own scan reads it then)."""
    with table.io.new_input(path).open() as stream:
        data = pq.ParquetFile(stream).read(use_threads=False)
    by_id = _field_ids(data.schema)
    if not by_id:
        return None
    columns = []
    for f in target:
        index = by_id.get(int(f.metadata[_FIELD_ID]))
        if index is None:
            if not f.nullable:
                raise ValueError(f"{path}: no column for required field {f.name!r}")
            columns.append(pa.nulls(data.num_rows, f.type))
        else:
            column = data.column(index)
            columns.append(column if column.type == f.type else column.cast(f.type))
    return pa.Table.from_arrays(columns, schema=target)


def _sorted_rows(
    catalog: ShearCatalog,
    name: str,
    table: Table,
    part: _Partition,
    target: pa.Schema,
    executor: Executor,
) -> pa.Table:
    """The rows of ``part``'s files (which have no delete files) in the data-file schema,
    sorted by sub-tile key; the sort is stable, so a sub-tile's rows, which one file
    holds, keep their order."""
    paths = [t.file.file_path for t in part.tasks]
    pieces = list(executor.map(lambda p: _read_file(table, p, target), paths))
    if any(p is None for p in pieces):
        scan = ArrowScan(table.metadata, table.io, table.schema(), AlwaysTrue())
        data = catalog.conform(name, scan.to_table(part.tasks), target)
    else:
        data = pa.concat_tables([p for p in pieces if p is not None])
    return data.take(pc.sort_indices(data.column(KEY_COLUMN)))


def _chunks(data: pa.Table, n_files: int) -> list[pa.Table]:
    """``data`` split into about ``n_files`` slices of similar size, cut only where the
    sub-tile key changes."""
    if n_files <= 1 or data.num_rows == 0:
        return [data]
    keys = np.asarray(data.column(KEY_COLUMN), dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    wanted = np.arange(1, n_files) * (data.num_rows / n_files)
    found = np.searchsorted(starts, wanted)
    cuts = sorted({int(starts[i]) for i in found if 0 < i < starts.size})
    edges = [0, *cuts, data.num_rows]
    return [data.slice(a, b - a) for a, b in itertools.pairwise(edges)]


def _write_group(
    catalog: ShearCatalog,
    name: str,
    table: Table,
    parts: Sequence[_Partition],
    target_bytes: int,
    executor: Executor,
) -> dict[int, tuple[DataFile, ...]]:
    """Read and rewrite ``parts``; the new data files per pixel."""
    pieces: dict[int, list[pa.Table]] = {}
    target = catalog.file_schema(name)
    for part in parts:
        data = _sorted_rows(catalog, name, table, part, target, executor)
        if data.num_rows != part.rows:
            raise RuntimeError(
                f"{catalog.identifier(name)} partition {part.pixel}: read {data.num_rows} rows, "
                f"the metadata says {part.rows}"
            )
        pieces[part.pixel] = _chunks(data, part.wanted_files(target_bytes))
    written: dict[int, list[DataFile]] = {p: [] for p in pieces}
    # write_partitions writes one file per pixel: round k writes the k-th piece of each.
    rounds = max((len(v) for v in pieces.values()), default=0)
    for k in range(rounds):
        groups = {pixel: [chunks[k]] for pixel, chunks in pieces.items() if k < len(chunks)}
        files = catalog.write_partitions(name, groups, executor=executor)
        for data_file in files.files:
            written[int(data_file.partition[0])].append(data_file)
    return {pixel: tuple(files) for pixel, files in written.items()}


def _live_paths(table: Table, pixels: Iterable[int]) -> set[str]:
    """Paths of the live data files of ``pixels`` at the table's current snapshot."""
    wanted = sorted(set(pixels))
    if not wanted or table.current_snapshot() is None:
        return set()
    scan = table.scan(row_filter=In(term=PARTITION_COLUMN, literals=wanted))
    return {t.file.file_path for t in scan.plan_files()}


def delete_paths(table: Table, paths: Iterable[str]) -> None:
    """Delete files (concurrently; a missing one is fine, a failure is logged)."""

    def delete(path: str) -> None:
        try:
            table.io.delete(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("could not delete %s: %s", path, exc)

    with ThreadPoolExecutor(8, thread_name_prefix="delete") as pool:
        list(pool.map(delete, paths))


def _delete_files(table: Table, files: Iterable[DataFile]) -> None:
    delete_paths(table, (f.file_path for f in files))


def _commit_group(
    catalog: ShearCatalog,
    name: str,
    parts: Sequence[_Partition],
    written: dict[int, tuple[DataFile, ...]],
    report: CompactReport,
    *,
    properties: dict[str, str],
    max_attempts: int,
    before_commit: Callable[[], None] | None,
) -> list[_Partition]:
    """Commit one group's rewrite (see the module doc for the conflict rules); the
    partitions committed. Conflicts are retried by tenacity, waiting
    :func:`~constellation.io.storage.backoff`."""
    remaining = list(parts)

    def attempt() -> list[_Partition]:
        nonlocal remaining
        table = catalog.table(name)
        if before_commit is not None:
            before_commit()
        try:
            with table.transaction() as tx:
                snapshot = tx.update_snapshot(snapshot_properties=properties)
                with snapshot.overwrite() as overwrite:
                    for part in remaining:
                        for data_file in part.files:
                            overwrite.delete_data_file(data_file)
                        for data_file in written[part.pixel]:
                            overwrite.append_data_file(data_file)
        except (CommitFailedException, ValidationException) as exc:
            conflict: Exception = exc
        except Exception as exc:
            if not is_locked(exc):
                _delete_files(table, (f for p in remaining for f in written[p.pixel]))
                raise
            conflict = exc
        else:
            report.commits += 1
            report.partitions_compacted += len(remaining)
            report.files_rewritten += sum(len(p.tasks) for p in remaining)
            report.files_written += sum(len(written[p.pixel]) for p in remaining)
            report.rows_rewritten += sum(p.rows for p in remaining)
            return remaining
        # Another writer committed first: keep the partitions whose files are all live.
        report.conflicts += 1
        log.info("%s: compaction commit conflict (%s); rebuilding", name, conflict)
        catalog.refresh()
        live = _live_paths(catalog.table(name), (p.pixel for p in remaining))
        kept = [p for p in remaining if all(f.file_path in live for f in p.files)]
        dropped = [p for p in remaining if p not in kept]
        if dropped:
            log.info(
                "%s: partitions %s changed meanwhile; left for a later compaction",
                name,
                [p.pixel for p in dropped],
            )
            report.partitions_conflicted += len(dropped)
            _delete_files(table, (f for p in dropped for f in written[p.pixel]))
        remaining = kept
        if not remaining:
            return []
        raise _ConflictError(conflict)

    retrying = Retrying(
        stop=stop_after_attempt(max_attempts),
        wait=backoff(0.05, 2.0),
        retry=retry_if_exception_type(_ConflictError),
        reraise=True,
    )
    try:
        return retrying(attempt)
    except _ConflictError:
        report.partitions_conflicted += len(remaining)
        _delete_files(catalog.table(name), (f for p in remaining for f in written[p.pixel]))
        log.warning("%s: compaction gave up after %d attempts", name, max_attempts)
        return []


class _ConflictError(Exception):
    """A compaction commit lost a race and partitions remain to commit (tenacity retries)."""


def compact_table(
    catalog: ShearCatalog,
    name: str,
    *,
    min_files: int = DEFAULT_MIN_FILES,
    target_file_bytes: int | None = None,
    partitions: Iterable[int] | None = None,
    partitions_per_commit: int | None = None,
    max_attempts: int = 10,
    dry_run: bool = False,
    workers: int | None = None,
    run_id: str | None = None,
    before_commit: Callable[[], None] | None = None,
) -> CompactReport:
    """Rewrite the small data files of table ``name`` (see the module doc).

    Parameters
    ----------
    min_files
        Compact only partitions with at least this many data files (and more than
        they need at ``target_file_bytes``).
    target_file_bytes
        Size of the compacted files (default: the table's
        ``write.target-file-size-bytes``, else :data:`DEFAULT_TARGET_FILE_BYTES`).
    partitions
        Only these partition pixels (default: all).
    partitions_per_commit
        Partitions per commit (default: all in one commit). A commit rewrites the
        table's manifests, so fewer commits are cheaper; smaller ones lose less work
        to a conflict that drops partitions. Rows are read and written
        :data:`READ_GROUP` partitions at a time whatever this is.
    max_attempts
        Attempts per commit when other writers keep winning.
    dry_run
        Plan and report only: nothing is written.
    workers
        Threads reading and writing data files (default: 4).
    before_commit
        Called before every commit attempt (tests use it to race a writer).

    The report's ``files_after`` and ``bytes_after`` are the figures before, less the
    files rewritten, plus the files written (other writers' changes meanwhile are not
    counted).
    """
    if partitions_per_commit is not None and partitions_per_commit < 1:
        raise ValueError(f"partitions_per_commit must be >= 1, got {partitions_per_commit}")
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
    t0 = time.perf_counter()
    catalog.refresh()
    table = catalog.table(name)
    snapshot = table.current_snapshot()
    tasks = _tasks(table, snapshot)
    before = _stats(name, table, snapshot, tasks)
    report = CompactReport(
        table=name,
        dry_run=dry_run,
        files_before=before.data_files,
        bytes_before=before.data_bytes,
        partitions_total=before.partitions,
    )
    target = _target_bytes(table, target_file_bytes)
    only = None if partitions is None else {int(p) for p in partitions}
    planned = _plan(table, tasks, min_files=min_files, target_bytes=target, only=only)
    del tasks
    report.partitions_planned = len(planned)
    if dry_run:
        report.files_after = before.data_files - sum(
            len(p.tasks) - p.wanted_files(target) for p in planned
        )
        report.bytes_after = before.data_bytes
        report.seconds = time.perf_counter() - t0
        return report
    run = run_id or f"compact-{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"
    props = {PROP_OPERATION: "compact", "constellation.run-id": run}
    per_commit = partitions_per_commit or max(1, len(planned))
    added_bytes = 0
    with ThreadPoolExecutor(workers or 4, thread_name_prefix="compact") as pool:
        for start in range(0, len(planned), per_commit):
            group = planned[start : start + per_commit]
            written: dict[int, tuple[DataFile, ...]] = {}
            for first in range(0, len(group), READ_GROUP):
                chunk = group[first : first + READ_GROUP]
                written.update(_write_group(catalog, name, table, chunk, target, pool))
            committed = _commit_group(
                catalog, name, group, written, report,
                properties=props, max_attempts=max_attempts, before_commit=before_commit,
            )  # fmt: skip
            removed = sum(p.nbytes for p in committed)
            added_bytes += (
                sum(int(f.file_size_in_bytes) for p in committed for f in written[p.pixel])
                - removed
            )
    report.files_after = before.data_files - report.files_rewritten + report.files_written
    report.bytes_after = before.data_bytes + added_bytes
    report.seconds = time.perf_counter() - t0
    log.info("%s", report.summary())
    return report
