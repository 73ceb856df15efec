"""Access to the Apache Iceberg shear catalog: the only package that imports pyiceberg.

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

from pyiceberg.manifest import DataFile

from constellation.catalog.iceberg.datafiles import (
    DataFileWriter,
    FileStatistics,
    LocalOrigin,
)
from constellation.catalog.iceberg.schemas import (
    ASSEMBLED_AT_COLUMN,
    BOUNDED_COLUMNS,
    PARTITION_OF_SUBTILE,
    PROP_PARTITION_OF,
    PROP_PARTITION_ORDER,
    SHA_COLUMN,
    SOURCES,
    SUBTILES,
    SUBTILES_ORDER_OFFSET,
    CommitConflictError,
    iceberg_schema,
    sources_arrow_schema,
    subtiles_arrow_schema,
)
from constellation.catalog.iceberg.tables import (
    ShearCatalog,
    SnapshotInfo,
    WrittenFiles,
    catalog_properties,
    embedded_catalog_missing,
    is_locked,
    open_catalog,
)
from constellation.results.schema import (
    KEY_COLUMN,
    PARTITION_COLUMN,
    partition_pixels,
    split_key,
    subtile_key,
)

__all__ = [
    "ASSEMBLED_AT_COLUMN",
    "BOUNDED_COLUMNS",
    "KEY_COLUMN",
    "PARTITION_COLUMN",
    "PARTITION_OF_SUBTILE",
    "PROP_PARTITION_OF",
    "PROP_PARTITION_ORDER",
    "SHA_COLUMN",
    "SOURCES",
    "SUBTILES",
    "SUBTILES_ORDER_OFFSET",
    "CommitConflictError",
    "DataFile",
    "DataFileWriter",
    "FileStatistics",
    "LocalOrigin",
    "ShearCatalog",
    "SnapshotInfo",
    "WrittenFiles",
    "catalog_properties",
    "embedded_catalog_missing",
    "iceberg_schema",
    "is_locked",
    "open_catalog",
    "partition_pixels",
    "sources_arrow_schema",
    "split_key",
    "subtile_key",
    "subtiles_arrow_schema",
]
