"""Writing Iceberg data files: Parquet written once per partition, their statistics
and :class:`DataFileWriter`."""

from __future__ import annotations

import errno
import itertools
import os
import struct
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from pyiceberg.io.pyarrow import (
    MetricModeTypes,
    StatisticsCollector,
    StatsAggregator,
    compute_statistics_plan,
    data_file_statistics_from_parquet_metadata,
    parquet_path_to_id_mapping,
    schema_to_pyarrow,
)
from pyiceberg.manifest import DataFile, DataFileContent, FileFormat, ManifestFile
from pyiceberg.partitioning import (
    PartitionFieldValue,
    PartitionKey,
)
from pyiceberg.schema import Schema
from pyiceberg.table import Table
from pyiceberg.table.locations import SimpleLocationProvider, load_location_provider
from pyiceberg.types import (
    DoubleType,
    FloatType,
    IcebergType,
    IntegerType,
    LongType,
)

from constellation.catalog.iceberg.schemas import (
    LONG_BOUND,
)
from constellation.io.storage import local_path
from constellation.results.schema import (
    PARTITION_COLUMN,
)

_UNIQUE_COLUMNS = frozenset({"object_id", "healpix"})


def _dictionary_columns(schema: pa.Schema) -> list[str]:
    """Columns worth dictionary encoding: strings and the low-cardinality integers (ids,
    rows, columns, keys, partition pixels), not floats nor unique ids. Dictionary
    encoding of measured floats (all distinct) made writing 3x slower for larger files."""
    return [
        f.name for f in schema if not pa.types.is_floating(f.type) and f.name not in _UNIQUE_COLUMNS
    ]


# --------------------------------------------------------------------------- data files


@dataclass(frozen=True)
class LocalOrigin:
    """A local file as it was read: path, device and inode (see
    :meth:`DataFileWriter.add` and
    :meth:`~constellation.io.storage.Storage.read_bytes_and_inode`)."""

    path: Path
    device: int
    inode: int


def _link_same_file(origin: LocalOrigin, target: Path) -> bool:
    """Hard-link ``origin.path`` at ``target``; True when ``target`` is now the file that
    was read (else nothing is left at ``target``)."""
    try:
        os.link(origin.path, target)
    except OSError as exc:
        if exc.errno in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.ENOENT):
            return False
        raise
    stat = os.stat(target)
    if (stat.st_dev, stat.st_ino) == (origin.device, origin.inode):
        return True
    target.unlink()  # the result was replaced after it was read: write what was read
    return False


def _may_hold(manifest: ManifestFile, pixels: set[int]) -> bool:
    """Whether a manifest's partition summary admits any of ``pixels``."""
    summaries = manifest.partitions or []
    if len(summaries) != 1:
        return True
    low, high = summaries[0].lower_bound, summaries[0].upper_bound
    if low is None or high is None:
        return True
    first, last = LONG_BOUND.unpack(low)[0], LONG_BOUND.unpack(high)[0]
    return any(first <= p <= last for p in pixels)


def _conform(data: pa.Table, target: pa.Schema, table: str) -> pa.Table:
    """See :meth:`ShearCatalog.conform` (``table`` names the table in errors)."""
    names = data.column_names
    extra = sorted(set(names) - set(target.names))
    if extra:
        raise ValueError(f"{table} has no columns {extra}: evolve it first")
    columns = []
    for field in target:
        if field.name in names:
            column = data.column(field.name)
            columns.append(column if column.type == field.type else column.cast(field.type))
        elif field.nullable:
            columns.append(pa.nulls(data.num_rows, field.type))
        else:
            raise ValueError(f"batch lacks required column {field.name!r} of {table}")
    return pa.Table.from_arrays(columns, schema=target)


def _file_schema(schema: Schema) -> pa.Schema:
    """See :meth:`ShearCatalog.file_schema`."""
    arrow = schema_to_pyarrow(schema, include_field_ids=True)
    return pa.schema(
        [f.with_type(pa.string()) if pa.types.is_large_string(f.type) else f for f in arrow]
    )


def _split_offset(column: pq.ColumnChunkMetaData) -> int:
    """Where a row group's data starts (its first column's dictionary or data page)."""
    data, dictionary = column.data_page_offset, column.dictionary_page_offset
    if column.has_dictionary_page and dictionary is not None and dictionary < data:
        return int(dictionary)
    return int(data)


#: Iceberg's single-value binary form of the bounds of the numeric types (little-endian).
_PACKERS: dict[type[IcebergType], Callable[[Any], bytes]] = {
    LongType: struct.Struct("<q").pack,
    IntegerType: struct.Struct("<i").pack,
    DoubleType: struct.Struct("<d").pack,
    FloatType: struct.Struct("<f").pack,
}


@dataclass(frozen=True)
class _ColumnPlan:
    """How the statistics of one Parquet column become Iceberg metrics."""

    field_id: int
    collector: StatisticsCollector
    #: Packs a bound of a numeric column kept in full; None: pyiceberg's aggregator.
    pack: Callable[[Any], bytes] | None


class FileStatistics:
    """The Iceberg metrics of Parquet files of one flat schema, from their footers.

    Gives what pyiceberg's ``data_file_statistics_from_parquet_metadata`` gives, except
    that columns whose metrics mode is ``none`` get no column size either (pyiceberg
    records one; readers treat it as unknown). Files of more than one row group are
    handed to pyiceberg. ~3x cheaper for one row group, ~10x for files of
    ``parquet_schema`` with few measured columns: each column's mode is resolved once,
    only measured columns are visited, numeric bounds are packed directly.
    """

    def __init__(
        self,
        schema: Schema,
        properties: Mapping[str, str],
        parquet_schema: pq.ParquetSchema | None = None,
    ) -> None:
        self._plan = compute_statistics_plan(schema, dict(properties))
        self._field_ids = parquet_path_to_id_mapping(schema)
        self._columns: dict[str, _ColumnPlan] = {}
        for path, field_id in self._field_ids.items():
            collector = self._plan[field_id]
            full = collector.mode.type is MetricModeTypes.FULL
            pack = _PACKERS.get(type(collector.iceberg_type)) if full else None
            self._columns[path] = _ColumnPlan(field_id, collector, pack)
        #: For files of exactly ``parquet_schema``: the positions of the measured columns.
        self._schema = parquet_schema
        self._measured: list[tuple[int, _ColumnPlan]] = []
        if parquet_schema is not None:
            for pos in range(len(parquet_schema)):
                plan = self._columns[parquet_schema.column(pos).path]
                if plan.collector.mode.type is not MetricModeTypes.NONE:
                    self._measured.append((pos, plan))

    def __call__(self, metadata: pq.FileMetaData) -> dict[str, Any]:
        """The metrics of a file as ``DataFile.from_args`` keywords."""
        if metadata.num_row_groups != 1:
            stats = data_file_statistics_from_parquet_metadata(
                parquet_metadata=metadata,
                stats_columns=self._plan,
                parquet_column_mapping=self._field_ids,
            ).to_serialized_dict()
            kept = set(stats["value_counts"])
            stats["column_sizes"] = {k: v for k, v in stats["column_sizes"].items() if k in kept}
            return stats
        group = metadata.row_group(0)
        if self._schema is not None and metadata.schema.equals(self._schema):
            columns = [(group.column(pos), plan) for pos, plan in self._measured]
        else:
            columns = []
            for pos in range(metadata.num_columns):
                column = group.column(pos)
                plan = self._columns[column.path_in_schema]
                if plan.collector.mode.type is not MetricModeTypes.NONE:
                    columns.append((column, plan))
        sizes: dict[int, int] = {}
        values: dict[int, int] = {}
        nulls: dict[int, int] = {}
        lower: dict[int, bytes] = {}
        upper: dict[int, bytes] = {}
        for column, plan in columns:
            field_id = plan.field_id
            sizes[field_id] = column.total_compressed_size
            values[field_id] = column.num_values
            if not column.is_stats_set:
                continue
            stats = column.statistics
            if stats.has_null_count:
                nulls[field_id] = stats.null_count
            if plan.collector.mode.type is MetricModeTypes.COUNTS or not stats.has_min_max:
                continue
            if plan.pack is not None:
                lower[field_id] = plan.pack(stats.min)
                upper[field_id] = plan.pack(stats.max)
                continue
            agg = StatsAggregator(
                plan.collector.iceberg_type, stats.physical_type, plan.collector.mode.length
            )
            agg.update_min(stats.min)
            agg.update_max(stats.max)
            low, high = agg.min_as_bytes(), agg.max_as_bytes()
            if low is not None:
                lower[field_id] = low
            if high is not None:
                upper[field_id] = high
        return {
            "record_count": metadata.num_rows,
            "column_sizes": sizes,
            "value_counts": values,
            "null_value_counts": nulls,
            "nan_value_counts": {},
            "lower_bounds": lower,
            "upper_bounds": upper,
            "split_offsets": [_split_offset(group.column(0))] if metadata.num_columns else [],
        }


class DataFileWriter:
    """Writes data files of one table (at the metadata it was made with) and describes
    them for a commit: Parquet written here, or result files added as they are.

    Thread-safe: the assembler's reader threads share one.
    """

    def __init__(self, identifier: str, table: Table) -> None:
        meta = table.metadata
        spec = meta.spec()
        if len(spec.fields) != 1 or spec.fields[0].name != PARTITION_COLUMN:
            raise ValueError(f"{identifier}: unexpected partition spec {spec}")
        self.identifier = identifier
        self._io = table.io
        self._schema = meta.schema()
        self._spec = spec
        self._spec_id = meta.default_spec_id
        self._field = spec.fields[0]
        props = dict(meta.properties)
        self._codec = props.get("write.parquet.compression-codec", "zstd")
        level = props.get("write.parquet.compression-level")
        self._level = None if level is None else int(level)
        self._locations = load_location_provider(meta.location, props)
        self._uuid = uuid.uuid4()
        self._counter = itertools.count()
        self._folders: set[str] = set()
        self._partitions: dict[int, tuple[str | None, PartitionKey]] = {}
        self.arrow_schema = _file_schema(self._schema)
        buf = pa.BufferOutputStream()
        pq.write_table(self.arrow_schema.empty_table(), buf)
        #: The Parquet schema (with field ids) of the files this table reads as they are.
        self.parquet_schema = pq.read_metadata(pa.BufferReader(buf.getvalue())).schema
        self._statistics = FileStatistics(self._schema, props, self.parquet_schema)

    def _location(self, pixel: int) -> tuple[str, PartitionKey]:
        cached = self._partitions.get(pixel)
        if cached is None:
            key = PartitionKey(
                field_values=[PartitionFieldValue(field=self._field, value=pixel)],
                partition_spec=self._spec,
                schema=self._schema,
            )
            # The folder of the partition, where the provider puts files by partition
            # alone (the default); None where the file name matters (object storage).
            probe = self._locations.new_data_location(data_file_name="-", partition_key=key)
            folder = probe[:-1] if isinstance(self._locations, SimpleLocationProvider) else None
            cached = self._partitions[pixel] = (folder, key)
        folder, key = cached
        name = f"{next(self._counter):05d}-{self._uuid}.parquet"
        if folder is not None:
            return folder + name, key
        return self._locations.new_data_location(data_file_name=name, partition_key=key), key

    def _data_file(
        self, path: str, key: PartitionKey, metadata: pq.FileMetaData, size: int
    ) -> DataFile:
        return DataFile.from_args(
            content=DataFileContent.DATA,
            file_path=path,
            file_format=FileFormat.PARQUET,
            partition=key.partition,
            file_size_in_bytes=size,
            sort_order_id=None,
            spec_id=self._spec_id,
            equality_ids=None,
            key_metadata=None,
            **self._statistics(metadata),
        )

    def accepts(self, metadata: pq.FileMetaData) -> bool:
        """Whether a Parquet file with this footer can be added as it is: the table's
        columns, types and field ids exactly."""
        return bool(metadata.schema.equals(self.parquet_schema))

    def _ensure_folder(self, folder: Path) -> None:
        name = str(folder)
        if name not in self._folders:
            folder.mkdir(parents=True, exist_ok=True)
            self._folders.add(name)

    def add(
        self,
        data: bytes,
        metadata: pq.FileMetaData,
        pixel: int,
        origin: LocalOrigin | None = None,
    ) -> DataFile:
        """Store the Parquet file ``data`` (whose footer is ``metadata``; see
        :meth:`accepts`) byte for byte as a data file of partition ``pixel``.

        With ``origin`` (the local file ``data`` was read from) and a local warehouse on
        the same file system, the file is hard-linked instead of written, and kept only
        if the link is the very file that was read (same inode): result files are
        replaced by renaming, never rewritten in place, so that file still holds
        ``data``. Otherwise (another file system, or the result replaced meanwhile)
        ``data`` is written.
        """
        if not self.accepts(metadata):
            raise ValueError(f"{self.identifier}: the file's schema is not the table's")
        path, key = self._location(pixel)
        local = local_path(path)
        if local is None:
            with self._io.new_output(path).create(overwrite=True) as stream:
                stream.write(data)
            return self._data_file(path, key, metadata, len(data))
        self._ensure_folder(local.parent)
        if origin is None or not _link_same_file(origin, local):
            with open(local, "wb") as f:  # ~5x cheaper than through the FileIO for ~150 kB
                f.write(data)
        return self._data_file(path, key, metadata, len(data))

    def conform(self, data: pa.Table) -> pa.Table:
        """``data`` cast to :attr:`arrow_schema` (see :meth:`ShearCatalog.conform`)."""
        return _conform(data, self.arrow_schema, self.identifier)

    def write(self, data: pa.Table, pixel: int) -> DataFile:
        """Write ``data`` (conformed to :attr:`arrow_schema`; see
        :meth:`ShearCatalog.conform`) as one data file of partition ``pixel``."""
        path, key = self._location(pixel)
        output = self._io.new_output(path)
        with output.create(overwrite=True) as stream:
            writer = pq.ParquetWriter(
                stream,
                data.schema,
                compression=self._codec,
                compression_level=self._level,
                use_dictionary=_dictionary_columns(data.schema),
            )
            writer.write_table(data, row_group_size=1 << 20)
            writer.close()
        return self._data_file(path, key, writer.writer.metadata, len(output))
