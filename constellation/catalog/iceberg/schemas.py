"""Names, bookkeeping columns, table properties and the Arrow and Iceberg schemas of
the shear tables."""

from __future__ import annotations

import struct
import warnings

import pyarrow as pa
from pyiceberg.schema import Schema
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

from constellation.results.schema import (
    KEY_COLUMN,
    PARTITION_COLUMN,
    SUBTILE_SCHEMA,
    key_field,
    partition_field,
    source_file_schema,
)

# pyiceberg warns when a delete matches nothing: the usual case for new sub-tiles, whose
# keys every batch deletes (see ShearCatalog.replace). A filter, not catch_warnings,
# which is not thread-safe (assemblers may run in threads).
warnings.filterwarnings(
    "ignore", message="Delete operation did not match any records", category=UserWarning
)

SUBTILES = "subtiles"
"""Name of the sub-tile shear table."""

SOURCES = "sources"
"""Name of the per-source parameter table."""

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

PROP_PARTITION_OF = "constellation.partition-of"
"""Table property: whose position :data:`PARTITION_COLUMN` is the pixel of. Tables made
by this version say ``sub-tile centre`` (every row of a sub-tile in one partition);
``sources`` tables made before it partitioned each source by its own position."""

PARTITION_OF_SUBTILE = "sub-tile centre"

#: Columns whose metrics (counts, lower/upper bounds) are kept in the manifests:
#: position and identity, what queries filter on. The other columns keep none: the
#: fitted parameters of a file's ~1000 sources span nearly their whole range, so their
#: bounds would prune nothing, and their metrics were most of the manifests' size and
#: of the cost of adding a file (readers treat missing metrics as unknown).
BOUNDED_COLUMNS = (
    "object_id",
    "tile_id",
    "subtile_row",
    "subtile_col",
    "ra",
    "dec",
    "healpix",
    KEY_COLUMN,
    PARTITION_COLUMN,
)

#: Properties every table gets. ``commit.retry.num-retries = 0``: the assembler retries
#: conflicts itself, rebuilding the transaction (delete of the batch's keys, then append)
#: on the refreshed table. pyiceberg's own retry would re-apply a batch's append on top
#: of a concurrent writer's rows of the same sub-tiles without any check (appends are
#: never validated), duplicating them.
TABLE_PROPERTIES = {
    "write.parquet.compression-codec": "zstd",
    "commit.retry.num-retries": "0",
    "write.metadata.metrics.default": "none",
    # every commit writes a new metadata file listing all snapshots: keep the last 100
    "write.metadata.delete-after-commit.enabled": "true",
    "write.metadata.previous-versions-max": "100",
    **{f"write.metadata.metrics.column.{c}": "full" for c in BOUNDED_COLUMNS},
}


#: An Iceberg ``long`` bound (lower/upper bounds of a manifest entry): little-endian int64.
LONG_BOUND = struct.Struct("<q")


class CommitConflictError(RuntimeError):
    """Another writer committed to the table first; refresh and try again."""


# --------------------------------------------------------------------------- schemas


def _doc_field(name: str, typ: pa.DataType, nullable: bool, doc: str) -> pa.Field:
    return pa.field(name, typ, nullable=nullable, metadata={"doc": doc})


def subtiles_arrow_schema(partition_order: int) -> pa.Schema:
    """Arrow schema of the ``subtiles`` table: :data:`SUBTILE_SCHEMA` plus bookkeeping."""
    return pa.schema(
        [
            *SUBTILE_SCHEMA,
            key_field(),
            _doc_field(SHA_COLUMN, pa.string(), False, "SHA-256 of the assembled result.parquet."),
            _doc_field(
                ASSEMBLED_AT_COLUMN,
                pa.timestamp("us", tz="UTC"),
                False,
                "When the row was committed to the catalog (UTC).",
            ),
            partition_field(partition_order, "the sub-tile centre"),
        ]
    )


def sources_arrow_schema(partition_order: int) -> pa.Schema:
    """Arrow schema of the ``sources`` table: the result files' columns
    (:func:`~constellation.results.schema.source_file_schema`)."""
    return source_file_schema(partition_order)


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
