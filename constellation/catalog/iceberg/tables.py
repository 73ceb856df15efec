"""Opening the catalog (embedded SQLite or any pyiceberg catalog) and
:class:`ShearCatalog`, the facade the assembler, the validator and maintenance use."""

from __future__ import annotations

import bisect
import contextlib
import functools
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import numpy as np
import pyarrow as pa
from pyiceberg.catalog import Catalog, load_catalog
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.exceptions import (
    CommitFailedException,
    NamespaceAlreadyExistsError,
    NoSuchTableError,
    TableAlreadyExistsError,
    ValidationException,
)
from pyiceberg.expressions import (
    AlwaysFalse,
    AlwaysTrue,
    And,
    BooleanExpression,
    EqualTo,
    GreaterThanOrEqual,
    In,
    LessThan,
    Or,
)
from pyiceberg.manifest import DataFile, ManifestContent
from pyiceberg.partitioning import (
    PartitionField,
    PartitionSpec,
)
from pyiceberg.table import Table
from pyiceberg.table.sorting import SortField, SortOrder
from pyiceberg.transforms import IdentityTransform
from tenacity import Retrying, retry_if_exception, stop_after_attempt

from constellation.catalog.iceberg.datafiles import (
    DataFileWriter,
    _conform,
    _file_schema,
    _may_hold,
)
from constellation.catalog.iceberg.schemas import (
    LONG_BOUND,
    PARTITION_OF_SUBTILE,
    PROP_PARTITION_OF,
    PROP_PARTITION_ORDER,
    SOURCES,
    SUBTILES,
    SUBTILES_ORDER_OFFSET,
    TABLE_PROPERTIES,
    CommitConflictError,
    iceberg_schema,
    sources_arrow_schema,
    subtiles_arrow_schema,
)
from constellation.config import ConfigError, Settings
from constellation.io.storage import backoff, local_path
from constellation.results.schema import (
    KEY_COLUMN,
    PARTITION_COLUMN,
)

log = logging.getLogger(__name__)
_T = TypeVar("_T")

#: Most values of one ``IN`` term of a delete (pyiceberg's metrics evaluators treat a
#: larger set as matching every file).
_IN_LIMIT = 200


# --------------------------------------------------------------------------- catalog


def _embedded_root(settings: Settings) -> Path:
    """``{work_uri}/catalog`` (absolute) for the embedded SQLite catalog."""
    work = settings.runtime.storage.work_uri
    root = local_path(work)
    if root is None:
        raise ConfigError(
            f"runtime.catalog.properties is empty and runtime.storage.work_uri ({work}) is not "
            "a local path: the embedded SQLite catalog needs a local directory. Configure a "
            "catalog, e.g. runtime.catalog.properties: {type: rest, uri: https://..., "
            "warehouse: s3://...} or {type: sql, uri: postgresql+psycopg2://..., "
            "warehouse: s3://...}."
        )
    return (root / "catalog").resolve()


def catalog_properties(settings: Settings) -> dict[str, str]:
    """The pyiceberg properties of the configured catalog (the SQLite default filled in).

    A configured catalog whose ``warehouse`` is an ``s3://`` URL and that names no
    ``s3.endpoint`` gets ``runtime.storage.endpoint_url`` (when set): the warehouse is
    then in the same object store as the work root unless the properties say otherwise.

    Raises
    ------
    ConfigError
        When no properties are configured and ``work_uri`` is not a local path.
    """
    configured = dict(settings.runtime.catalog.properties)
    if configured:
        endpoint = settings.runtime.storage.endpoint_url
        if endpoint and str(configured.get("warehouse", "")).startswith(("s3://", "s3a://")):
            configured.setdefault("s3.endpoint", endpoint)
        return configured
    base = _embedded_root(settings)
    return {
        "type": "sql",
        "uri": f"sqlite:///{base / 'catalog.db'}",
        "warehouse": (base / "warehouse").as_uri(),
    }


def embedded_catalog_missing(settings: Settings) -> str | None:
    """The path of the embedded SQLite catalog when it does not exist yet (nothing has
    been assembled under this work root), else None; None for a configured catalog
    (``runtime.catalog.properties``), whose existence only its server knows."""
    if settings.runtime.catalog.properties:
        return None
    db = _embedded_root(settings) / "catalog.db"
    return None if db.exists() else str(db)


def open_catalog(settings: Settings) -> ShearCatalog:
    """The configured catalog, with the namespace and partition orders of ``settings``."""
    cfg = settings.runtime.catalog
    props = catalog_properties(settings)
    catalog: Catalog
    if cfg.properties:
        catalog = load_catalog(cfg.name, **props)
    else:
        base = _embedded_root(settings)
        (base / "warehouse").mkdir(parents=True, exist_ok=True)
        catalog = _retry_locked(lambda: SqlCatalog(cfg.name, **props))
    return ShearCatalog(
        catalog,
        cfg.namespace,
        partition_order=settings.science.healpix.partition_order,
        source_order=settings.science.healpix.source_order,
    )


def is_locked(exc: BaseException) -> bool:
    """SQLite's answer to concurrent writers (``database is locked``)."""
    return "database is locked" in str(exc)


def _retry_locked(fn: Callable[[], _T], attempts: int = 20) -> _T:
    """Run ``fn``, retrying SQLite's ``database is locked`` (concurrent first use)."""
    retrying = Retrying(
        stop=stop_after_attempt(attempts),
        wait=backoff(0.05, 1.0),
        retry=retry_if_exception(is_locked),
        reraise=True,
    )
    return retrying(fn)


# --------------------------------------------------------------------------- catalog facade


#: Columns with (nearly) one value per row: dictionary encoding only costs time there.
@dataclass(frozen=True)
class WrittenFiles:
    """Data files written for table ``table`` and not committed yet."""

    table: str
    files: tuple[DataFile, ...]

    @property
    def count(self) -> int:
        """Number of files."""
        return len(self.files)

    @property
    def rows(self) -> int:
        """Rows in the files."""
        return sum(int(f.record_count) for f in self.files)


@dataclass(frozen=True)
class SnapshotInfo:
    """One snapshot of a table: id, time, operation and summary properties."""

    snapshot_id: int
    timestamp: datetime
    operation: str
    summary: dict[str, str]


class ShearCatalog:
    """The two shear tables in one namespace of a pyiceberg catalog.

    Tables are loaded (and created when absent) on first use and cached; call
    :meth:`refresh` after a :class:`CommitConflictError`.
    """

    def __init__(
        self,
        catalog: Catalog,
        namespace: str,
        *,
        partition_order: int = 7,
        source_order: int = 29,
    ) -> None:
        self.catalog = catalog
        self.namespace = namespace
        self.partition_order = partition_order
        self.source_order = source_order
        self._tables: dict[str, Table] = {}

    def __repr__(self) -> str:
        return f"ShearCatalog({self.catalog.name!r}, namespace={self.namespace!r})"

    # -- tables -----------------------------------------------------------------------

    def identifier(self, name: str) -> str:
        """``namespace.name``."""
        return f"{self.namespace}.{name}"

    def arrow_schema(self, name: str) -> pa.Schema:
        """The Arrow schema this code version writes to table ``name``."""
        if name == SUBTILES:
            return subtiles_arrow_schema(self.default_order(name))
        if name == SOURCES:
            return sources_arrow_schema(self.default_order(name))
        raise KeyError(f"unknown table {name!r} (expected {SUBTILES!r} or {SOURCES!r})")

    def exists(self, name: str) -> bool:
        """Whether table ``name`` exists (without creating it)."""
        return bool(self.catalog.table_exists(self.identifier(name)))

    def table(self, name: str, *, schema: pa.Schema | None = None) -> Table:
        """Table ``name``, created on first use with ``schema`` (default:
        :meth:`arrow_schema`), partitioned and sorted."""
        table = self._tables.get(name)
        if table is None:
            table = self._load_or_create(name, schema or self.arrow_schema(name))
            self._tables[name] = table
        return table

    def _load_or_create(self, name: str, schema: pa.Schema) -> Table:
        ident = self.identifier(name)
        try:
            return self._ensure_properties(self.catalog.load_table(ident))
        except NoSuchTableError:
            pass
        with contextlib.suppress(NamespaceAlreadyExistsError):
            self.catalog.create_namespace(self.namespace)
        ice = iceberg_schema(schema)
        part = ice.find_field(PARTITION_COLUMN)
        spec = PartitionSpec(
            PartitionField(
                source_id=part.field_id,
                field_id=1000,
                transform=IdentityTransform(),
                name=PARTITION_COLUMN,
            )
        )
        # Batches are written in sub-tile key order, so within a partition the files are
        # sorted by key (and each sub-tile's rows stay together).
        order = SortOrder(
            SortField(source_id=ice.find_field(KEY_COLUMN).field_id, transform=IdentityTransform())
        )
        properties = {
            **TABLE_PROPERTIES,
            PROP_PARTITION_ORDER: str(self.default_order(name)),
            PROP_PARTITION_OF: PARTITION_OF_SUBTILE,
        }
        try:
            table = self.catalog.create_table(
                ident, schema=ice, partition_spec=spec, sort_order=order, properties=properties
            )
            log.info("created Iceberg table %s", ident)
            return table
        except TableAlreadyExistsError:
            return self._ensure_properties(self.catalog.load_table(ident))

    @staticmethod
    def _ensure_properties(table: Table) -> Table:
        """Give a table made elsewhere (or by an older version) the :data:`TABLE_PROPERTIES`
        it lacks (and ``commit.retry.num-retries = 0`` whatever it had); the commit that does
        so is made once per table."""
        props = table.properties
        missing = {
            k: v
            for k, v in TABLE_PROPERTIES.items()
            if k not in props or (k == "commit.retry.num-retries" and props[k] != v)
        }
        if not missing:
            return table
        try:
            with table.transaction() as tx:
                tx.set_properties(missing)
        except CommitFailedException:
            pass  # someone else changed the table: they may have set them; checked next time
        return table.refresh()

    def default_order(self, name: str) -> int:
        """The partition order a new table ``name`` gets: ``partition_order`` for
        ``sources``; :data:`SUBTILES_ORDER_OFFSET` orders coarser for ``subtiles``."""
        if name == SUBTILES:
            return max(0, self.partition_order - SUBTILES_ORDER_OFFSET)
        return self.partition_order

    def table_partition_order(self, name: str) -> int:
        """The HEALPix order of :data:`PARTITION_COLUMN` in table ``name`` (its property)."""
        props = self.table(name).properties
        return int(props.get(PROP_PARTITION_ORDER, self.default_order(name)))

    def refresh(self) -> None:
        """Reload every cached table (after a commit conflict)."""
        for name, table in list(self._tables.items()):
            self._tables[name] = table.refresh()

    def column_names(self, name: str) -> list[str]:
        """The current column names of table ``name``."""
        return [f.name for f in self.table(name).schema().fields]

    # -- schema evolution ---------------------------------------------------------------

    def evolve(self, name: str, schema: pa.Schema) -> list[str]:
        """Add the columns of ``schema`` that table ``name`` lacks (``union_by_name``).

        Only nullable columns can be added to a table that has rows. Returns the added
        names (empty when the table already has them all).
        """
        table = self.table(name)
        present = set(self.column_names(name))
        new = [f for f in schema if f.name not in present]
        if not new:
            return []
        required = [f.name for f in new if not f.nullable]
        if required:
            raise ValueError(
                f"cannot add required columns {required} to existing table "
                f"{self.identifier(name)}; new columns must be nullable"
            )
        try:
            with table.update_schema() as update:
                update.union_by_name(iceberg_schema(schema))
        except CommitFailedException as exc:
            self.refresh()
            raise CommitConflictError(str(exc)) from exc
        self._tables[name] = table.refresh()
        log.info("table %s: added columns %s", self.identifier(name), [f.name for f in new])
        return [f.name for f in new]

    # -- reads ------------------------------------------------------------------------

    @staticmethod
    def _filter(
        keys: Iterable[int] | None = None,
        tiles: Iterable[int] | None = None,
        partitions: Iterable[int] | None = None,
    ) -> BooleanExpression:
        expr: BooleanExpression = AlwaysTrue()
        terms = ((KEY_COLUMN, keys), ("tile_id", tiles), (PARTITION_COLUMN, partitions))
        for column, values in terms:
            if values is None:
                continue
            vals = sorted({int(v) for v in values})
            term: BooleanExpression = (
                EqualTo(term=column, value=vals[0])
                if len(vals) == 1
                else In(term=column, literals=vals)
            )
            expr = term if isinstance(expr, AlwaysTrue) else And(expr, term)
        return expr

    def read(
        self,
        name: str,
        columns: Sequence[str] | None = None,
        *,
        keys: Iterable[int] | None = None,
        tiles: Iterable[int] | None = None,
        partitions: Iterable[int] | None = None,
        healpix_range: tuple[int, int] | None = None,
    ) -> pa.Table:
        """Rows of table ``name`` (all, or those of the given sub-tile keys, tiles,
        partition pixels and ``[lo, hi)`` range of ``healpix``), optionally only some
        ``columns``."""
        key_list = None if keys is None else list(keys)
        tile_list = None if tiles is None else list(tiles)
        part_list = None if partitions is None else list(partitions)
        if any(v is not None and not v for v in (key_list, tile_list, part_list)):
            table = self.table(name)
            schema = table.schema().as_arrow()
            if columns is not None:
                schema = pa.schema([schema.field(c) for c in columns])
            return schema.empty_table()
        row_filter = self._filter(key_list, tile_list, part_list)
        if healpix_range is not None:
            lo, hi = (int(v) for v in healpix_range)
            low = GreaterThanOrEqual(term="healpix", value=lo)
            high = LessThan(term="healpix", value=hi)
            row_filter = And(low, high) if isinstance(row_filter, AlwaysTrue) else (
                And(row_filter, And(low, high))
            )  # fmt: skip
        scan = self.table(name).scan(
            row_filter=row_filter,
            selected_fields=tuple(columns) if columns is not None else ("*",),
        )
        return scan.to_arrow()

    def count(self, name: str) -> int:
        """Number of rows of table ``name`` (from the data-file metadata)."""
        snapshot = self.table(name).current_snapshot()
        if snapshot is None or snapshot.summary is None:
            return 0
        return int(snapshot.summary.get("total-records", "0"))

    def partition_counts(self, name: str) -> dict[int, int]:
        """Rows per partition pixel of table ``name`` (from the data-file metadata)."""
        counts: dict[int, int] = {}
        for task in self.table(name).scan().plan_files():
            pixel = int(task.file.partition[0])
            counts[pixel] = counts.get(pixel, 0) + int(task.file.record_count)
        return counts

    def data_files(self, name: str) -> list[str]:
        """Paths (URLs) of the data files of the current snapshot of table ``name``."""
        return [task.file.file_path for task in self.table(name).scan().plan_files()]

    def snapshots(self, name: str) -> list[SnapshotInfo]:
        """The snapshots of table ``name``, oldest first."""
        out = []
        for snap in self.table(name).snapshots():
            summary = snap.summary
            extra = dict(summary.additional_properties) if summary is not None else {}
            out.append(
                SnapshotInfo(
                    snapshot_id=snap.snapshot_id,
                    timestamp=datetime.fromtimestamp(snap.timestamp_ms / 1000.0, tz=UTC),
                    operation=str(summary.operation.value) if summary is not None else "",
                    summary=extra,
                )
            )
        return out

    # -- writes -----------------------------------------------------------------------

    def file_schema(self, name: str) -> pa.Schema:
        """The Arrow schema of the data files of table ``name`` (current table schema, with
        Parquet field ids); :meth:`conform` casts batches to it. Strings stay ``string``
        (not pyiceberg's ``large_string``): the Parquet type is the same and no cast is
        needed."""
        return _file_schema(self.table(name).schema())

    def conform(self, name: str, data: pa.Table, schema: pa.Schema | None = None) -> pa.Table:
        """``data`` cast to :meth:`file_schema` (pass it as ``schema`` to save its
        construction): nullable columns the batch lacks become nulls (an older writer, a
        newer table); extra columns are an error (call :meth:`evolve` first)."""
        target = schema if schema is not None else self.file_schema(name)
        return _conform(data, target, self.identifier(name))

    def file_writer(self, name: str) -> DataFileWriter:
        """A :class:`DataFileWriter` for table ``name`` at its current metadata."""
        return DataFileWriter(self.identifier(name), self.table(name))

    def write_partitions(
        self,
        name: str,
        groups: Mapping[int, Sequence[pa.Table]],
        *,
        executor: Executor | None = None,
    ) -> WrittenFiles:
        """Write one Parquet data file per partition pixel from pieces already
        :meth:`conform`-ed (rows in the given order), without committing them (see
        :meth:`replace`). Files are written concurrently on ``executor`` when given."""
        writer = self.file_writer(name)
        tasks = [
            (int(pixel), pieces)
            for pixel, pieces in sorted(groups.items())
            if sum(p.num_rows for p in pieces)
        ]

        def write_one(task: tuple[int, Sequence[pa.Table]]) -> DataFile:
            pixel, pieces = task
            return writer.write(pa.concat_tables(pieces), pixel)

        if executor is None:
            files = tuple(write_one(t) for t in tasks)
        else:
            files = tuple(executor.map(write_one, tasks))
        return WrittenFiles(name, files)

    def write_files(
        self, name: str, data: pa.Table, *, executor: Executor | None = None
    ) -> WrittenFiles:
        """Write ``data`` as data files, one per partition pixel (rows keep their order
        within a pixel), without committing them (see :meth:`replace`)."""
        if data.num_rows == 0:
            return WrittenFiles(name, ())
        data = self.conform(name, data)
        pixels = np.asarray(data.column(PARTITION_COLUMN), dtype=np.int64)
        order = np.argsort(pixels, kind="stable")
        data = data.take(pa.array(order))
        pixels = pixels[order]
        starts = np.flatnonzero(np.r_[True, pixels[1:] != pixels[:-1]])
        stops = np.r_[starts[1:], pixels.size]
        groups = {
            int(pixels[a]): [data.slice(int(a), int(b - a))]
            for a, b in zip(starts, stops, strict=True)
        }
        return self.write_partitions(name, groups, executor=executor)

    def partitioned_by_subtile(self, name: str) -> bool:
        """Whether every row of a sub-tile of table ``name`` is in the partition of the
        sub-tile's centre (see :data:`PROP_PARTITION_OF`); ``subtiles`` always is."""
        if name == SUBTILES:
            return True
        return self.table(name).properties.get(PROP_PARTITION_OF) == PARTITION_OF_SUBTILE

    def _key_groups(
        self, name: str, keys: Mapping[int, Iterable[int]] | Iterable[int]
    ) -> dict[int | None, set[int]]:
        """``keys`` as ``{pixel: keys}``; one group ``None`` when the partitions are not
        given or the table is not :meth:`partitioned_by_subtile`."""
        if isinstance(keys, Mapping) and self.partitioned_by_subtile(name):
            return {int(p): {int(k) for k in values} for p, values in keys.items()}
        if isinstance(keys, Mapping):
            return {None: {int(k) for values in keys.values() for k in values}}
        return {None: {int(k) for k in keys}}

    def _delete_filter(self, groups: Mapping[int | None, set[int]]) -> BooleanExpression:
        """Rows of the keys of ``groups`` (see :meth:`_key_groups`); each term names one
        partition and at most :data:`_IN_LIMIT` keys (pyiceberg's metrics evaluators
        treat a larger ``IN`` as matching every file)."""
        terms: list[BooleanExpression] = []
        for pixel in sorted(groups, key=lambda p: -1 if p is None else p):
            ordered = sorted(groups[pixel])
            for start in range(0, len(ordered), _IN_LIMIT):
                chunk = ordered[start : start + _IN_LIMIT]
                term: BooleanExpression = (
                    EqualTo(term=KEY_COLUMN, value=chunk[0])
                    if len(chunk) == 1
                    else In(term=KEY_COLUMN, literals=chunk)
                )
                if pixel is not None:
                    term = And(EqualTo(term=PARTITION_COLUMN, value=pixel), term)
                terms.append(term)
        return functools.reduce(Or, terms) if terms else AlwaysFalse()

    def _files_with_keys(
        self, name: str, groups: Mapping[int | None, set[int]]
    ) -> tuple[list[DataFile], dict[int | None, set[int]]]:
        """The current data files holding rows of the keys of ``groups``: those holding
        nothing else (to drop whole), and the keys found in files that also hold other
        sub-tiles (after a compaction; their rows must be deleted one by one).

        Reads the manifests of the groups' partitions only, and decides on each file's
        ``subtile_key`` bounds: one predicate per file instead of pyiceberg evaluating
        the whole key filter on every file.
        """
        table = self.table(name)
        snapshot = table.current_snapshot()
        if snapshot is None:
            return [], {}
        key_id = table.schema().find_field(KEY_COLUMN).field_id
        pixels = None if None in groups else {p for p in groups if p is not None}
        wanted = {k for values in groups.values() for k in values}
        ordered = sorted(wanted)
        whole: list[tuple[int, DataFile]] = []
        mixed: dict[int | None, set[int]] = {}
        for manifest in snapshot.manifests(table.io):
            if manifest.content != ManifestContent.DATA:
                continue
            if pixels is not None and not _may_hold(manifest, pixels):
                continue
            for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=True):
                data_file = entry.data_file
                pixel = int(data_file.partition[0])
                if pixels is not None and pixel not in pixels:
                    continue
                lower = (data_file.lower_bounds or {}).get(key_id)
                upper = (data_file.upper_bounds or {}).get(key_id)
                low = LONG_BOUND.unpack(lower)[0] if lower is not None else ordered[0]
                high = LONG_BOUND.unpack(upper)[0] if upper is not None else ordered[-1]
                if low == high and lower is not None and upper is not None:
                    if low in wanted:
                        whole.append((low, data_file))
                    continue
                start = bisect.bisect_left(ordered, low)
                inside = ordered[start : bisect.bisect_right(ordered, high)]
                if inside:
                    mixed.setdefault(None if pixels is None else pixel, set()).update(inside)
        # A key deleted row by row (some file's range holds it) has its own files dropped
        # by that delete too: dropping them again would fail the commit.
        by_rows = {k for keys in mixed.values() for k in keys}
        return [f for k, f in whole if k not in by_rows], mixed

    def replace(
        self,
        name: str,
        keys: Mapping[int, Iterable[int]] | Iterable[int],
        files: WrittenFiles,
        properties: Mapping[str, str],
    ) -> int:
        """Commit, in one transaction, the deletion of every row of the sub-tile
        ``keys`` and the append of ``files``; returns the new snapshot id.

        Given as ``{pixel: keys}`` (the partition pixel of each sub-tile), only those
        partitions are looked at. A file holding only rows of the keys is dropped
        without being read; one that also holds other sub-tiles (after a compaction) is
        rewritten without them.

        Raises
        ------
        CommitConflictError
            When another writer committed first (the table is refreshed; retry).
        """
        if files.table != name:
            raise ValueError(f"files written for {files.table!r} cannot be committed to {name!r}")
        table = self.table(name)
        props = dict(properties)
        groups = self._key_groups(name, keys)
        whole, mixed = self._files_with_keys(name, groups)
        try:
            with table.transaction() as tx:
                if mixed:
                    tx.delete(self._delete_filter(mixed), props)
                if whole:
                    with tx.update_snapshot(snapshot_properties=props).overwrite() as update:
                        for data_file in whole:
                            update.delete_data_file(data_file)
                        for data_file in files.files:
                            update.append_data_file(data_file)
                else:
                    with tx.update_snapshot(snapshot_properties=props).merge_append() as append:
                        for data_file in files.files:
                            append.append_data_file(data_file)
        except (CommitFailedException, ValidationException) as exc:
            self.refresh()
            raise CommitConflictError(f"{self.identifier(name)}: {exc}") from exc
        except Exception as exc:
            if is_locked(exc):
                self.refresh()
                raise CommitConflictError(f"{self.identifier(name)}: {exc}") from exc
            raise
        # The transaction left ``table`` at the metadata it committed.
        snapshot = table.current_snapshot()
        return -1 if snapshot is None else int(snapshot.snapshot_id)
