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
    WrittenFiles,
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

    found = [load(d) for d in dirs] if executor is None else list(executor.map(load, dirs))
    refs = [r for r in found if r is not None]
    return sorted(refs, key=lambda r: r.key)


# --------------------------------------------------------------------------- batches


@dataclass(frozen=True)
class _Prepared:
    """One result, read and decoded, its source rows ready for the data files."""

    ref: ResultRef
    sha256: str
    status: str
    subtile: pa.Table
    #: Owned source rows conformed to the file schema, grouped by partition pixel.
    sources: pa.Table
    #: ``(pixel, start, stop)`` runs of ``sources``.
    runs: tuple[tuple[int, int, int], ...]
    dropped: int


@dataclass(frozen=True)
class _Target:
    """What a reader needs to prepare source rows for the ``sources`` files."""

    schema: pa.Schema
    source_order: int
    partition_order: int


def _prepare_one(storage: Storage, ref: ResultRef, target: _Target) -> _Prepared | str:
    """Read, decode and prepare one result (runs on a reader thread); an error message
    when it cannot be read."""
    url = layout.join(ref.directory, layout.RESULT_NAME)
    try:
        data = storage.read_bytes(url)
        result = decode_result(data)
    except (OSError, ValueError, pa.ArrowException) as exc:
        return f"{url}: {type(exc).__name__}: {exc}"
    sub = result.subtile
    ident = tuple(sub.column(c)[0].as_py() for c in ("tile_id", "subtile_row", "subtile_col"))
    if ident != (ref.tile_id, ref.row, ref.col):
        return f"{url}: the result is for sub-tile {ident}, not {(ref.tile_id, ref.row, ref.col)}"
    src = result.sources
    n = src.num_rows
    # Defensive ownership filter: only the sub-tile's own core rows, none unless ok.
    status = str(sub.column("status")[0].as_py())
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
    pixels = np.asarray(
        partition_pixels(src.column("healpix"), target.source_order, target.partition_order)
    )
    if kept and np.any(pixels[1:] != pixels[:-1]):
        order = np.argsort(pixels, kind="stable")
        src = src.take(order)
        pixels = pixels[order]
    src = src.append_column(
        pa.field(KEY_COLUMN, pa.int64(), nullable=False), pa.array(np.full(kept, ref.key))
    )
    src = src.append_column(
        pa.field(PARTITION_COLUMN, pa.int64(), nullable=False), pa.array(pixels)
    )
    runs: tuple[tuple[int, int, int], ...] = ()
    if kept:
        starts = np.flatnonzero(np.r_[True, pixels[1:] != pixels[:-1]])
        stops = np.r_[starts[1:], kept]
        runs = tuple((int(pixels[a]), int(a), int(b)) for a, b in zip(starts, stops, strict=True))
    return _Prepared(
        ref=ref,
        sha256=hashlib.sha256(data).hexdigest(),
        status=status,
        subtile=sub,
        sources=_conform(src, target.schema),
        runs=runs,
        dropped=n - kept,
    )


def _conform(data: pa.Table, schema: pa.Schema) -> pa.Table:
    """``data`` cast to a data-file schema; columns it lacks become nulls."""
    names = set(data.column_names)
    columns = [
        (data.column(f.name) if data.schema.field(f.name).type == f.type
         else data.column(f.name).cast(f.type))
        if f.name in names
        else pa.nulls(data.num_rows, f.type)
        for f in schema
    ]  # fmt: skip
    return pa.Table.from_arrays(columns, schema=schema)


def _subtile_rows(
    prepared: Sequence[_Prepared], *, partition_order: int, assembled_at: datetime
) -> pa.Table:
    """The batch's ``subtiles`` rows with their bookkeeping columns."""
    n = len(prepared)
    sub = pa.concat_tables([p.subtile for p in prepared])
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
        Threads reading results and writing data files (default: ``min(8, 2 * cpus)``).
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
    props = {PROP_RUN_ID: run, PROP_CONFIG_HASH: config_hash, PROP_CODE_VERSION: __version__}

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
        if not pending:
            report.seconds = time.perf_counter() - t0
            log.info("%s", report.summary())
            return report
        _evolve(catalog, report, max_attempts)
        target = _Target(
            schema=catalog.file_schema(SOURCES),
            source_order=catalog.source_order,
            partition_order=catalog.table_partition_order(SOURCES),
        )
        subtile_order = catalog.table_partition_order(SUBTILES)
        batches = list(_chunks(pending, batch_size))

        def submit(batch: Sequence[ResultRef]) -> list[Future[_Prepared | str]]:
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
                    max_attempts=max_attempts, rng=rng,
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
    rng: random.Random,
) -> None:
    keys = [p.ref.key for p in prepared]
    groups: dict[int, list[pa.Table]] = {}
    for p in prepared:
        for pixel, start, stop in p.runs:
            groups.setdefault(pixel, []).append(p.sources.slice(start, stop - start))
    now = datetime.now(UTC)
    subtiles = _subtile_rows(prepared, partition_order=subtile_order, assembled_at=now)
    # Data files are written once; a commit that loses a race is retried with them.
    source_files = catalog.write_partitions(SOURCES, groups, executor=pool)
    subtile_files = catalog.write_files(SUBTILES, subtiles, executor=pool)
    # Sources first: see the module docstring.
    for name, files in ((SOURCES, source_files), (SUBTILES, subtile_files)):

        def commit(name: str = name, files: WrittenFiles = files) -> int:
            return catalog.replace(name, keys, files, props)

        _with_retries(commit, catalog, report, max_attempts, rng)
        report.commits += 1
    report.batches += 1
    report.data_files += source_files.count + subtile_files.count
    report.subtiles_committed += subtiles.num_rows
    report.sources_committed += source_files.rows
    report.failed_committed += sum(p.status == "failed" for p in prepared)
    report.dropped_sources += sum(p.dropped for p in prepared)


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
