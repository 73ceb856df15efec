"""Catalog access, table layout, schema evolution, conflicts and reading the data files."""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from constellation.catalog.assemble import assemble
from constellation.catalog.iceberg import (
    BOUNDED_COLUMNS,
    KEY_COLUMN,
    PARTITION_COLUMN,
    SOURCES,
    SUBTILES,
    CommitConflictError,
    ShearCatalog,
    WrittenFiles,
    catalog_properties,
    open_catalog,
    partition_pixels,
    sources_arrow_schema,
    split_key,
    subtile_key,
)
from constellation.config import ConfigError, Settings
from constellation.manifest import layout
from constellation.sky.healpix import coarsen, radec_to_index
from tests.catalog.conftest import Field, make_field


def test_default_catalog_is_sqlite_under_the_work_root(field: Field) -> None:
    props = catalog_properties(field.settings)
    work = Path(field.work).resolve()
    assert props["type"] == "sql"
    assert props["uri"] == f"sqlite:///{work / 'catalog' / 'catalog.db'}"
    assert props["warehouse"] == (work / "catalog" / "warehouse").as_uri()
    cat = open_catalog(field.settings)
    assert not cat.exists(SOURCES)
    cat.table(SOURCES)  # created on demand, namespace included
    assert cat.exists(SOURCES)
    assert (work / "catalog" / "catalog.db").is_file()
    assert cat.table(SOURCES).name() == ("shear", "sources")


def test_remote_work_root_needs_catalog_properties(tmp_path: Path) -> None:
    remote = Settings.model_validate({"runtime": {"storage": {"work_uri": "s3://bucket/work"}}})
    with pytest.raises(ConfigError, match=r"runtime\.catalog\.properties"):
        catalog_properties(remote)
    # Any pyiceberg catalog by its properties: here an SQL catalog somewhere else.
    props = {"type": "sql", "uri": f"sqlite:///{tmp_path / 'other.db'}",
             "warehouse": (tmp_path / "wh").as_uri()}  # fmt: skip
    configured = Settings.model_validate(
        {"runtime": {"storage": {"work_uri": "s3://bucket/work"},
                     "catalog": {"name": "mine", "namespace": "lensing", "properties": props}}}
    )  # fmt: skip
    assert catalog_properties(configured) == props
    # an S3 warehouse takes the storage's endpoint unless the properties name one
    on_s3 = {**props, "warehouse": "s3://bucket/warehouse"}
    storage = {"work_uri": "s3://bucket/work", "endpoint_url": "http://127.0.0.1:9"}
    filled = Settings.model_validate(
        {"runtime": {"storage": storage, "catalog": {"properties": on_s3}}}
    )
    assert catalog_properties(filled) == {**on_s3, "s3.endpoint": "http://127.0.0.1:9"}
    mine = {**on_s3, "s3.endpoint": "http://elsewhere:9000"}
    kept = Settings.model_validate(
        {"runtime": {"storage": storage, "catalog": {"properties": mine}}}
    )
    assert catalog_properties(kept) == mine
    local_wh = Settings.model_validate(
        {"runtime": {"storage": storage, "catalog": {"properties": props}}}
    )
    assert catalog_properties(local_wh) == props  # not an S3 warehouse: nothing added
    cat = open_catalog(configured)
    cat.table(SUBTILES)
    assert (tmp_path / "other.db").is_file()
    assert cat.catalog.name == "mine"
    assert cat.table(SUBTILES).name() == ("lensing", "subtiles")


def test_table_layout(field: Field) -> None:
    cat = field.catalog()
    order = field.settings.science.healpix.partition_order
    for name, expected_order in ((SOURCES, order), (SUBTILES, order - 3)):
        table = cat.table(name)
        spec = table.spec()
        assert len(spec.fields) == 1
        source = table.schema().find_field(spec.fields[0].source_id)
        assert source.name == PARTITION_COLUMN
        assert str(spec.fields[0].transform) == "identity"
        assert cat.table_partition_order(name) == expected_order
        sort = table.sort_order()
        assert [table.schema().find_field(f.source_id).name for f in sort.fields] == [KEY_COLUMN]
        # The assembler retries conflicts itself (see test_concurrency).
        assert table.properties["commit.retry.num-retries"] == "0"
    # A table whose retries were switched back on gets them off again when opened.
    with cat.table(SOURCES).transaction() as tx:
        tx.set_properties({"commit.retry.num-retries": "4"})
    assert field.catalog().table(SOURCES).properties["commit.retry.num-retries"] == "0"
    schema = cat.table(SOURCES).schema()
    assert schema.find_field("e1").doc == "Intrinsic ellipticity e1 (same frame as g1)."
    assert schema.find_field("object_id").required
    assert not schema.find_field("e1").required
    assert cat.table(SUBTILES).schema().find_field("result_sha256").required


def test_partition_pixels_are_parents_and_truncation() -> None:
    rng = np.random.default_rng(3)
    ra, dec = rng.uniform(0, 360, 1000), rng.uniform(-90, 90, 1000)
    hp29 = radec_to_index(ra, dec, 29)
    for k in (0, 4, 7, 12):
        pix = np.asarray(partition_pixels(pa.array(hp29), 29, k))
        np.testing.assert_array_equal(pix, coarsen(hp29, 29, k))
        np.testing.assert_array_equal(pix, radec_to_index(ra, dec, k))
        # The same grouping as Iceberg's truncate[4**(29-k)] of the order-29 index.
        width = 4 ** (29 - k)
        np.testing.assert_array_equal(hp29 - hp29 % width, pix * width)
    # Per-row orders (the subtiles table), coarser than the partition: first child.
    out = np.asarray(partition_pixels(pa.array([5, 5]), pa.array([29, 3]), 4))
    np.testing.assert_array_equal(out, [5 >> 50, 5 << 2])


def test_subtile_key_round_trip() -> None:
    assert subtile_key(102018211, 3, 12) == 1020182110312
    assert split_key(1020182110312) == (102018211, 3, 12)
    with pytest.raises(ValueError, match="row/col"):
        subtile_key(1, 100, 0)


def test_schema_evolution_adds_nullable_columns(field: Field) -> None:
    """A table made by an older version (no ``dy_err`` column) gains the new nullable
    column: old rows read back null, new rows carry values."""
    old_schema = sources_arrow_schema(7)
    old_schema = old_schema.remove(old_schema.get_field_index("dy_err"))
    cat = field.catalog()
    table = cat.table(SOURCES, schema=old_schema)
    assert "dy_err" not in [f.name for f in table.schema().fields]
    # A row written by the old version.
    old_row = {f.name: 1 for f in old_schema if pa.types.is_integer(f.type)}
    old_row |= {f.name: 0.5 for f in old_schema if pa.types.is_floating(f.type)}
    old_row |= {"run_id": "old", "config_hash": "0" * 16, KEY_COLUMN: 1, PARTITION_COLUMN: 0}
    old = pa.Table.from_pylist([old_row], schema=old_schema)
    cat.replace(SOURCES, [1], cat.write_files(SOURCES, old), {})

    field.write(field.tiles[:1], n_sources=3)
    report = assemble(field.settings)  # evolves the table, then appends
    assert report.sources_committed == 48
    cat = field.catalog()
    assert [f.name for f in cat.table(SOURCES).schema().fields][-1] == "dy_err"
    assert cat.table(SOURCES).schema().find_field("dy_err").doc == "Error of dy."
    src = cat.read(SOURCES)
    assert src.num_rows == 49
    old_back = src.filter(pc.equal(src.column(KEY_COLUMN), 1))
    assert old_back.column("dy_err").to_pylist() == [None]
    assert old_back.column("flux").to_pylist() == [0.5]
    assert src.column("dy_err").null_count == 1
    # Required columns cannot be added to a table with rows.
    wider = cat.arrow_schema(SOURCES).append(pa.field("extra", pa.int64(), nullable=False))
    with pytest.raises(ValueError, match="must be nullable"):
        cat.evolve(SOURCES, wider)
    # A nullable one can; batches without it are written with nulls.
    added = cat.evolve(SOURCES, cat.arrow_schema(SOURCES).append(pa.field("extra", pa.int64())))
    assert added == ["extra"]
    field.write(field.tiles[1:], n_sources=3)
    assemble(field.settings)
    src = field.catalog().read(SOURCES)
    assert src.num_rows == 97
    assert src.column("extra").null_count == 97


def test_stale_commit_conflicts_then_succeeds_without_duplicates(field: Field) -> None:
    field.write(n_sources=5)
    assemble(field.settings)
    one, two = field.catalog(), field.catalog()
    key = subtile_key(field.tiles[0].tile_id, 0, 0)
    rows = one.read(SOURCES, keys=[key]).select(list(sources_arrow_schema(7).names))
    files_one = one.write_files(SOURCES, rows)
    files_two = two.write_files(SOURCES, rows)
    # ``two`` commits first; ``one`` still holds the older table metadata.
    two.replace(SOURCES, [key], files_two, {"who": "two"})
    with pytest.raises(CommitConflictError):
        one.replace(SOURCES, [key], files_one, {"who": "one"})
    # After the refresh (done by replace) the retry deletes two's rows and adds its own.
    one.replace(SOURCES, [key], files_one, {"who": "one"})
    src = field.catalog().read(SOURCES)
    assert src.num_rows == 32 * 5
    assert pc.count_distinct(src.column("object_id")).as_py() == 32 * 5
    assert field.catalog().snapshots(SOURCES)[-1].summary["who"] == "one"


def test_data_files_read_by_duckdb(field: Field) -> None:
    field.write(n_sources=10)
    assemble(field.settings, batch_size=10)
    cat = field.catalog()
    paths = [p.removeprefix("file://") for p in cat.data_files(SOURCES)]
    assert len(paths) >= 2
    assert all(Path(p).is_file() for p in paths)
    con = duckdb.connect()
    n, n_ids, g = con.execute(
        "SELECT count(*), count(DISTINCT object_id), sum(e1) FROM read_parquet(?)", [paths]
    ).fetchone()  # type: ignore[misc]
    src = cat.read(SOURCES)
    assert n == n_ids == src.num_rows == 320
    assert g == pytest.approx(pc.sum(src.column("e1")).as_py())
    # Reading the sub-tile rows the same way, per partition pixel.
    sub_paths = [p.removeprefix("file://") for p in cat.data_files(SUBTILES)]
    per_pixel = con.execute(
        f"SELECT {PARTITION_COLUMN}, count(*) FROM read_parquet(?) GROUP BY 1", [sub_paths]
    ).fetchall()
    assert sum(c for _, c in per_pixel) == 32


def test_fresh_catalog_handle(tmp_path: Path) -> None:
    """Two handles on one SQLite catalog see each other's commits."""
    f = make_field(tmp_path / "x", n_tiles=1)
    f.write(n_sources=2)
    assemble(f.settings)
    other: ShearCatalog = f.catalog()
    assert other.count(SOURCES) == 32
    assert other.count(SUBTILES) == 16


def test_file_statistics_equal_pyiceberg(field: Field) -> None:
    """The footer-to-metrics shortcut gives what pyiceberg computes, for the table's
    metrics settings (bounds on identity/position columns only) and for pyiceberg's
    defaults (truncated string bounds, every column), nulls included."""
    from pyiceberg.io.pyarrow import (
        compute_statistics_plan,
        data_file_statistics_from_parquet_metadata,
        parquet_path_to_id_mapping,
    )

    from constellation.catalog.iceberg import FileStatistics

    field.write(field.tiles[:1], n_sources=50)
    url = layout.result_url(field.work, field.tiles[0].tile_id, 1, 2)
    data = field.storage.read_bytes(url)
    with_nulls = pq.read_table(pa.BufferReader(data))
    with_nulls = with_nulls.set_column(
        with_nulls.schema.get_field_index("flux"),
        with_nulls.schema.field("flux"),
        pa.array([None] * 10 + with_nulls.column("flux").to_pylist()[10:], pa.float64()),
    )
    buf = pa.BufferOutputStream()
    pq.write_table(with_nulls, buf)
    table = field.catalog().table(SOURCES)
    schema = table.schema()
    for props in (dict(table.properties), {}):
        ours = FileStatistics(schema, props)
        for payload in (data, buf.getvalue().to_pybytes()):
            metadata = pq.read_metadata(pa.BufferReader(payload))
            theirs = data_file_statistics_from_parquet_metadata(
                parquet_metadata=metadata,
                stats_columns=compute_statistics_plan(schema, props),
                parquet_column_mapping=parquet_path_to_id_mapping(schema),
            ).to_serialized_dict()
            # Columns with metrics mode "none" get no size here (pyiceberg keeps one).
            measured = set(theirs["value_counts"])
            theirs["column_sizes"] = {
                k: v for k, v in theirs["column_sizes"].items() if k in measured
            }
            assert ours(metadata) == theirs
            with_schema = FileStatistics(schema, props, metadata.schema)
            assert with_schema(metadata) == theirs
    # Bounds kept by the table's settings: identity and position columns only.
    footer = pq.read_metadata(pa.BufferReader(data))
    bounded = FileStatistics(schema, dict(table.properties))(footer)
    names = {schema.find_field(i).name for i in bounded["lower_bounds"]}
    assert names == set(BOUNDED_COLUMNS)


def test_replace_drops_whole_files_and_rewrites_shared_ones(field: Field) -> None:
    """A sub-tile's own file is dropped without being read; from a file shared with other
    sub-tiles (as compaction makes) only its rows are removed."""
    field.write(field.tiles[:1], n_sources=4)
    assemble(field.settings)
    cat = field.catalog()
    tile = field.tiles[0].tile_id
    a, b, c = (subtile_key(tile, 0, col) for col in range(3))
    # Merge the files of a, b and c into one (per partition), as a compaction would.
    rows = cat.read(SOURCES, keys=[a, b, c]).select(cat.arrow_schema(SOURCES).names)
    merged = cat.write_files(SOURCES, rows.sort_by(KEY_COLUMN))
    cat.replace(SOURCES, [a, b, c], merged, {})
    before = set(cat.data_files(SOURCES))
    d = subtile_key(tile, 3, 3)
    # Replace d (its own file) and b (inside the merged file) with no new rows.
    empty = WrittenFiles(SOURCES, ())
    cat.replace(SOURCES, [b, d], empty, {})
    src = field.catalog().read(SOURCES)
    keys = set(src.column(KEY_COLUMN).to_pylist())
    assert not {b, d} & keys
    assert {a, c} <= keys
    assert src.num_rows == 16 * 4 - 2 * 4
    after = set(field.catalog().data_files(SOURCES))
    # Files of the 13 untouched sub-tiles are the same files; d's is gone; the merged
    # one was rewritten (a new file holding a and c).
    assert len(before - after) == 1 + len(merged.files)
    assert len(after - before) == len(merged.files)
