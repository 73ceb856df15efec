"""Access to the Apache Iceberg shear catalog: the only module that imports pyiceberg.

Catalog
    :func:`open_catalog` builds a pyiceberg catalog from ``runtime.catalog``: with no
    ``properties`` an embedded SQL catalog on SQLite, ``{work_uri}/catalog/catalog.db``,
    with its warehouse in ``{work_uri}/catalog/warehouse`` (local work roots only);
    otherwise any pyiceberg catalog (REST, Glue, Hive, SQL on PostgreSQL, ...) from
    its properties. The namespace and the tables are created on first use.

Tables (see ``docs/catalog.md``)
    ``subtiles`` — :data:`~constellation.results.schema.SUBTILE_SCHEMA` plus the
    bookkeeping columns :data:`KEY_COLUMN`, ``result_sha256``, ``assembled_at`` and
    :data:`PARTITION_COLUMN`; ``sources`` —
    :data:`~constellation.results.schema.SOURCE_SCHEMA` plus :data:`KEY_COLUMN` and
    :data:`PARTITION_COLUMN`. Both are partitioned by identity on
    :data:`PARTITION_COLUMN`, the nested HEALPix pixel at the coarse
    ``science.healpix.partition_order`` (``healpix >> 2 (order - k)``): Iceberg's
    ``truncate[4**(29-k)]`` of the order-29 index would group the same rows without an
    extra column, but pyiceberg 0.12 writes truncate partitions only with the optional
    ``pyiceberg-core`` package, and a column is also easier to filter on. Field docs
    come from the Arrow field metadata ``doc``.

Writes
    :meth:`ShearCatalog.write_files` writes a batch's Parquet data files once (split
    by partition here: pyiceberg's own split filters the whole batch once per
    partition); :meth:`ShearCatalog.replace` then commits, in one transaction, the
    deletion of every existing row of the batch's sub-tile keys and the append of
    those files. A concurrent commit makes it raise :class:`CommitConflictError`;
    the caller retries against the refreshed table with the same files.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyiceberg.catalog import Catalog, load_catalog
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.exceptions import (
    CommitFailedException,
    NamespaceAlreadyExistsError,
    NoSuchTableError,
    TableAlreadyExistsError,
    ValidationException,
)
from pyiceberg.expressions import AlwaysTrue, And, BooleanExpression, EqualTo, In
from pyiceberg.io.pyarrow import (
    compute_statistics_plan,
    data_file_statistics_from_parquet_metadata,
    parquet_path_to_id_mapping,
    schema_to_pyarrow,
)
from pyiceberg.manifest import DataFile, DataFileContent, FileFormat
from pyiceberg.partitioning import (
    PartitionField,
    PartitionFieldValue,
    PartitionKey,
    PartitionSpec,
)
from pyiceberg.schema import Schema
from pyiceberg.table import Table
from pyiceberg.table.locations import load_location_provider
from pyiceberg.table.sorting import SortField, SortOrder
from pyiceberg.transforms import IdentityTransform
from pyiceberg.types import (
    BooleanType,
    DateType,
    DoubleType,
    FloatType,
    IcebergType,
    IntegerType,
    LongType,
    NestedField,
    StringType,
    TimestampType,
    TimestamptzType,
)

from constellation.config import ConfigError, Settings
from constellation.io.storage import local_path
from constellation.results.schema import SOURCE_SCHEMA, SUBTILE_SCHEMA

__all__ = [
    "ASSEMBLED_AT_COLUMN",
    "KEY_COLUMN",
    "PARTITION_COLUMN",
    "PROP_PARTITION_ORDER",
    "SHA_COLUMN",
    "SOURCES",
    "SUBTILES",
    "SUBTILES_ORDER_OFFSET",
    "CommitConflictError",
    "ShearCatalog",
    "SnapshotInfo",
    "WrittenFiles",
    "catalog_properties",
    "iceberg_schema",
    "open_catalog",
    "partition_pixels",
    "sources_arrow_schema",
    "split_key",
    "subtile_key",
    "subtiles_arrow_schema",
]

log = logging.getLogger(__name__)
_T = TypeVar("_T")

SUBTILES = "subtiles"
"""Name of the sub-tile shear table."""

SOURCES = "sources"
"""Name of the per-source parameter table."""

KEY_COLUMN = "subtile_key"
"""``tile_id * 10000 + subtile_row * 100 + subtile_col`` (rows and columns are < 100)."""

PARTITION_COLUMN = "partition_healpix"
"""Nested HEALPix pixel at the partition order; the identity partition of both tables."""

PROP_PARTITION_ORDER = "constellation.partition-order"
"""Table property: the HEALPix order of :data:`PARTITION_COLUMN`."""

SUBTILES_ORDER_OFFSET = 3
"""The ``subtiles`` table is partitioned this many orders coarser than ``sources``
(64x larger pixels): it has ~1000x fewer rows, and at the sources' order (about one
tile per pixel) it would get one tiny file per tile and batch."""

SHA_COLUMN = "result_sha256"
"""``subtiles`` bookkeeping: sha256 of the assembled ``result.parquet``."""

ASSEMBLED_AT_COLUMN = "assembled_at"
"""``subtiles`` bookkeeping: when the row was committed."""

#: Properties every table gets. ``commit.retry.num-retries = 0``: the assembler retries
#: conflicts itself, after re-reading which keys have rows. pyiceberg's own retry would
#: re-apply a batch's append on top of a concurrent writer's rows of the same sub-tiles
#: without any check (appends are never validated), duplicating them.
_TABLE_PROPERTIES = {
    "write.parquet.compression-codec": "zstd",
    "commit.retry.num-retries": "0",
}


class CommitConflictError(RuntimeError):
    """Another writer committed to the table first; refresh and try again."""


# --------------------------------------------------------------------------- keys


def subtile_key(tile_id: int, row: int, col: int) -> int:
    """The int64 key of a sub-tile: ``tile_id * 10000 + row * 100 + col``."""
    if not (0 <= row < 100 and 0 <= col < 100):
        raise ValueError(f"sub-tile row/col must be in [0, 100), got ({row}, {col})")
    return int(tile_id) * 10_000 + int(row) * 100 + int(col)


def split_key(key: int) -> tuple[int, int, int]:
    """``(tile_id, row, col)`` of a :func:`subtile_key`."""
    tile, rest = divmod(int(key), 10_000)
    return tile, rest // 100, rest % 100


def partition_pixels(
    healpix: pa.Array | pa.ChunkedArray,
    order: int | pa.Array | pa.ChunkedArray,
    partition_order: int,
) -> pa.Array:
    """Nested pixels at ``partition_order`` of nested indices at ``order`` (int64).

    Coarser orders shift right; an index at an order below ``partition_order`` maps to
    its first child pixel.
    """
    hp = np.asarray(healpix, dtype=np.int64)
    orders = np.asarray(order, dtype=np.int64)
    shift = 2 * (orders - partition_order)
    out = np.where(shift >= 0, hp >> np.maximum(shift, 0), hp << np.maximum(-shift, 0))
    return pa.array(out, pa.int64())


# --------------------------------------------------------------------------- schemas


def _doc_field(name: str, typ: pa.DataType, nullable: bool, doc: str) -> pa.Field:
    return pa.field(name, typ, nullable=nullable, metadata={"doc": doc})


def _key_field() -> pa.Field:
    return _doc_field(
        KEY_COLUMN, pa.int64(), False, "Sub-tile key: tile_id * 10000 + subtile_row * 100 + col."
    )


def _partition_field(partition_order: int) -> pa.Field:
    return _doc_field(
        PARTITION_COLUMN,
        pa.int64(),
        False,
        f"Nested HEALPix pixel at order {partition_order} (healpix >> 2 (order - "
        f"{partition_order})); the table's partition.",
    )


def subtiles_arrow_schema(partition_order: int) -> pa.Schema:
    """Arrow schema of the ``subtiles`` table: :data:`SUBTILE_SCHEMA` plus bookkeeping."""
    return pa.schema(
        [
            *SUBTILE_SCHEMA,
            _key_field(),
            _doc_field(SHA_COLUMN, pa.string(), False, "SHA-256 of the assembled result.parquet."),
            _doc_field(
                ASSEMBLED_AT_COLUMN,
                pa.timestamp("us", tz="UTC"),
                False,
                "When the row was committed to the catalog (UTC).",
            ),
            _partition_field(partition_order),
        ]
    )


def sources_arrow_schema(partition_order: int) -> pa.Schema:
    """Arrow schema of the ``sources`` table: :data:`SOURCE_SCHEMA` plus bookkeeping."""
    return pa.schema([*SOURCE_SCHEMA, _key_field(), _partition_field(partition_order)])


def _iceberg_type(typ: pa.DataType) -> IcebergType:
    if pa.types.is_int64(typ):
        return LongType()
    if pa.types.is_int32(typ) or pa.types.is_int16(typ) or pa.types.is_int8(typ):
        return IntegerType()
    if pa.types.is_float64(typ):
        return DoubleType()
    if pa.types.is_float32(typ):
        return FloatType()
    if pa.types.is_string(typ) or pa.types.is_large_string(typ):
        return StringType()
    if pa.types.is_boolean(typ):
        return BooleanType()
    if pa.types.is_date32(typ):
        return DateType()
    if pa.types.is_timestamp(typ) and typ.unit == "us":
        return TimestamptzType() if typ.tz is not None else TimestampType()
    raise TypeError(f"no Iceberg type for Arrow type {typ}")


def iceberg_schema(schema: pa.Schema) -> Schema:
    """The Iceberg schema of a flat Arrow schema: ids 1.., ``required`` from nullability,
    field docs from the metadata key ``doc``."""
    fields = []
    for i, field in enumerate(schema, start=1):
        doc = (field.metadata or {}).get(b"doc")
        fields.append(
            NestedField(
                field_id=i,
                name=field.name,
                field_type=_iceberg_type(field.type),
                required=not field.nullable,
                doc=doc.decode() if doc else None,
            )
        )
    return Schema(*fields)


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

    Raises
    ------
    ConfigError
        When no properties are configured and ``work_uri`` is not a local path.
    """
    configured = dict(settings.runtime.catalog.properties)
    if configured:
        return configured
    base = _embedded_root(settings)
    return {
        "type": "sql",
        "uri": f"sqlite:///{base / 'catalog.db'}",
        "warehouse": (base / "warehouse").as_uri(),
    }


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


def _is_locked(exc: BaseException) -> bool:
    """SQLite's answer to concurrent writers (``database is locked``)."""
    return "database is locked" in str(exc)


def _retry_locked(fn: Callable[[], _T], attempts: int = 20) -> _T:
    """Run ``fn``, retrying SQLite's ``database is locked`` (concurrent first use)."""
    for i in range(attempts):
        try:
            return fn()
        except Exception as exc:
            if not _is_locked(exc) or i == attempts - 1:
                raise
            time.sleep(0.05 * (i + 1))
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------- catalog facade

#: Columns with (nearly) one value per row: dictionary encoding only costs time there.
_UNIQUE_COLUMNS = frozenset({"object_id", "healpix"})


def _dictionary_columns(schema: pa.Schema) -> list[str]:
    """Columns worth dictionary encoding: strings and the low-cardinality integers (ids,
    rows, columns, keys, partition pixels), not floats nor unique ids. Dictionary
    encoding of measured floats (all distinct) made writing 3x slower for larger files."""
    return [
        f.name for f in schema if not pa.types.is_floating(f.type) and f.name not in _UNIQUE_COLUMNS
    ]


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
        properties = {**_TABLE_PROPERTIES, PROP_PARTITION_ORDER: str(self.default_order(name))}
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
        """Give a table made elsewhere (or by an older version) the :data:`_TABLE_PROPERTIES`
        it lacks (and ``commit.retry.num-retries = 0`` whatever it had); the commit that does
        so is made once per table."""
        props = table.properties
        missing = {
            k: v
            for k, v in _TABLE_PROPERTIES.items()
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
    ) -> pa.Table:
        """Rows of table ``name`` (all, or those of the given sub-tile keys, tiles or
        partition pixels), optionally only some ``columns``."""
        key_list = None if keys is None else list(keys)
        tile_list = None if tiles is None else list(tiles)
        part_list = None if partitions is None else list(partitions)
        if any(v is not None and not v for v in (key_list, tile_list, part_list)):
            table = self.table(name)
            schema = table.schema().as_arrow()
            if columns is not None:
                schema = pa.schema([schema.field(c) for c in columns])
            return schema.empty_table()
        scan = self.table(name).scan(
            row_filter=self._filter(key_list, tile_list, part_list),
            selected_fields=tuple(columns) if columns is not None else ("*",),
        )
        return scan.to_arrow()

    def existing_keys(self, name: str, keys: Iterable[int]) -> set[int]:
        """Which of ``keys`` have rows in table ``name`` (reads only the key column of the
        data files whose statistics allow a match)."""
        found = self.read(name, [KEY_COLUMN], keys=keys).column(KEY_COLUMN)
        return {int(v) for v in pc.unique(found).to_pylist()}

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
        schema = schema_to_pyarrow(self.table(name).schema(), include_field_ids=True)
        return pa.schema(
            [f.with_type(pa.string()) if pa.types.is_large_string(f.type) else f for f in schema]
        )

    def conform(self, name: str, data: pa.Table, schema: pa.Schema | None = None) -> pa.Table:
        """``data`` cast to :meth:`file_schema` (pass it as ``schema`` to save its
        construction): nullable columns the batch lacks become nulls (an older writer, a
        newer table); extra columns are an error (call :meth:`evolve` first)."""
        target = schema if schema is not None else self.file_schema(name)
        names = data.column_names
        extra = sorted(set(names) - set(target.names))
        if extra:
            raise ValueError(f"{self.identifier(name)} has no columns {extra}: evolve it first")
        columns = []
        for field in target:
            if field.name in names:
                column = data.column(field.name)
                columns.append(column if column.type == field.type else column.cast(field.type))
            elif field.nullable:
                columns.append(pa.nulls(data.num_rows, field.type))
            else:
                raise ValueError(f"batch lacks required column {field.name!r} of {name}")
        return pa.Table.from_arrays(columns, schema=target)

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
        table = self.table(name)
        meta = table.metadata
        schema = meta.schema()
        spec = meta.spec()
        if len(spec.fields) != 1 or spec.fields[0].name != PARTITION_COLUMN:
            raise ValueError(f"{self.identifier(name)}: unexpected partition spec {spec}")
        field = spec.fields[0]
        props = dict(meta.properties)
        codec = props.get("write.parquet.compression-codec", "zstd")
        level = props.get("write.parquet.compression-level")
        locations = load_location_provider(meta.location, props)
        stats_plan = compute_statistics_plan(schema, props)
        id_mapping = parquet_path_to_id_mapping(schema)
        write_uuid = uuid.uuid4()
        io = table.io

        def write_one(task: tuple[int, int, Sequence[pa.Table]]) -> DataFile:
            task_id, pixel, pieces = task
            data = pa.concat_tables(pieces)
            dict_columns = _dictionary_columns(data.schema)
            key = PartitionKey(
                field_values=[PartitionFieldValue(field=field, value=pixel)],
                partition_spec=spec,
                schema=schema,
            )
            path = locations.new_data_location(
                data_file_name=f"00000-{task_id}-{write_uuid}.parquet", partition_key=key
            )
            output = io.new_output(path)
            with output.create(overwrite=True) as stream:
                writer = pq.ParquetWriter(
                    stream,
                    data.schema,
                    compression=codec,
                    compression_level=None if level is None else int(level),
                    use_dictionary=dict_columns,
                )
                writer.write_table(data, row_group_size=1 << 20)
                writer.close()
            stats = data_file_statistics_from_parquet_metadata(
                parquet_metadata=writer.writer.metadata,
                stats_columns=stats_plan,
                parquet_column_mapping=id_mapping,
            )
            return DataFile.from_args(
                content=DataFileContent.DATA,
                file_path=path,
                file_format=FileFormat.PARQUET,
                partition=key.partition,
                file_size_in_bytes=len(output),
                sort_order_id=None,
                spec_id=meta.default_spec_id,
                equality_ids=None,
                key_metadata=None,
                **stats.to_serialized_dict(),
            )

        tasks = [
            (i, int(pixel), pieces)
            for i, (pixel, pieces) in enumerate(sorted(groups.items()))
            if sum(p.num_rows for p in pieces)
        ]
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

    def replace(
        self,
        name: str,
        keys: Iterable[int],
        files: WrittenFiles,
        properties: Mapping[str, str],
    ) -> int:
        """Commit, in one transaction, the deletion of every row of ``keys`` and the
        append of ``files``; returns the new snapshot id.

        Raises
        ------
        CommitConflictError
            When another writer committed first (the table is refreshed; retry).
        """
        if files.table != name:
            raise ValueError(f"files written for {files.table!r} cannot be committed to {name!r}")
        table = self.table(name)
        props = dict(properties)
        existing = self.existing_keys(name, keys)
        try:
            with table.transaction() as tx:
                if existing:
                    tx.delete(self._filter(keys=existing), snapshot_properties=props)
                with tx.update_snapshot(snapshot_properties=props).merge_append() as append:
                    for data_file in files.files:
                        append.append_data_file(data_file)
        except (CommitFailedException, ValidationException) as exc:
            self.refresh()
            raise CommitConflictError(f"{self.identifier(name)}: {exc}") from exc
        except Exception as exc:
            if _is_locked(exc):
                self.refresh()
                raise CommitConflictError(f"{self.identifier(name)}: {exc}") from exc
            raise
        # The transaction left ``table`` at the metadata it committed.
        snapshot = table.current_snapshot()
        return -1 if snapshot is None else int(snapshot.snapshot_id)
