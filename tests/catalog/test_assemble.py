"""Assembly into the Iceberg catalog: batches, idempotency, reprocessing, failures."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from typer.testing import CliRunner

from constellation import __version__
from constellation.catalog.assemble import assemble
from constellation.catalog.iceberg import KEY_COLUMN, SOURCES, SUBTILES, subtile_key
from constellation.catalog.synthetic import synthetic_result
from constellation.cli import app
from constellation.manifest import layout
from constellation.results.schema import SOURCE_SCHEMA
from constellation.results.store import read_result, write_result
from tests.catalog.conftest import GRID, Field


def _rows(table: pa.Table) -> list[dict[str, object]]:
    """The rows of ``table`` in the result schema, sorted by object id."""
    return table.select(SOURCE_SCHEMA.names).sort_by("object_id").to_pylist()


def test_assemble_commits_batches_and_reads_back(field: Field) -> None:
    markers = field.write(n_sources=20)
    report = assemble(field.settings, batch_size=5, run_id="run-1")
    assert report.found == report.subtiles_committed == 32
    assert report.sources_committed == 32 * 20
    assert report.batches == 7  # ceil(32 / 5)
    assert report.commits == 2 * 7  # one transaction per table per batch
    assert report.skipped_unchanged == report.unreadable == report.dropped_sources == 0
    assert report.added_as_is == 32  # every result file became a data file byte for byte

    cat = field.catalog()
    sub = cat.read(SUBTILES)
    src = cat.read(SOURCES)
    assert sub.num_rows == 32
    assert src.num_rows == 640
    # Exactly the values that were written, bookkeeping columns included.
    key = subtile_key(field.tiles[1].tile_id, 2, 3)
    directory = layout.subtile_dir(field.work, field.tiles[1].tile_id, 2, 3)
    written = read_result(field.storage, layout.join(directory, layout.RESULT_NAME))
    row = sub.filter(pc.equal(sub.column(KEY_COLUMN), key)).to_pylist()[0]
    assert row["g1"] == written.row["g1"]
    assert row["ra"] == written.row["ra"]
    assert row["result_sha256"] == markers[(field.tiles[1].tile_id, 2, 3)].sha256
    got = src.filter(pc.equal(src.column(KEY_COLUMN), key))
    assert _rows(got) == _rows(written.sources)
    # A source's partition pixel is the order-k parent of its sub-tile centre's index.
    k = cat.table_partition_order(SOURCES)
    assert k == field.settings.science.healpix.partition_order
    centre = dict(
        zip(sub.column(KEY_COLUMN).to_pylist(), sub.column("healpix").to_pylist(), strict=True)
    )
    expected = [centre[key] >> 2 * (29 - k) for key in src.column(KEY_COLUMN).to_pylist()]
    assert src.column("partition_healpix").to_pylist() == expected
    # One data file per sub-tile, each in its sub-tile's partition.
    assert len(cat.data_files(SOURCES)) == 32
    # One commit per batch, each with the run id, config hash and code version.
    snaps = cat.snapshots(SOURCES)
    assert len(snaps) == 7
    for snap in snaps:
        assert snap.summary["constellation.run-id"] == "run-1"
        assert snap.summary["constellation.config-hash"] == field.settings.config_hash
        assert snap.summary["constellation.code-version"] == __version__
    assert len(cat.snapshots(SUBTILES)) == 7


def test_rerun_adds_nothing(field: Field) -> None:
    field.write()
    assemble(field.settings, batch_size=8)
    cat = field.catalog()
    before = (cat.count(SOURCES), len(cat.snapshots(SOURCES)), len(cat.snapshots(SUBTILES)))
    again = assemble(field.settings, batch_size=8)
    assert again.subtiles_committed == again.sources_committed == again.commits == 0
    assert again.skipped_unchanged == 32
    cat = field.catalog()
    after = (cat.count(SOURCES), len(cat.snapshots(SOURCES)), len(cat.snapshots(SUBTILES)))
    assert after == before
    assert cat.read(SOURCES).num_rows == 32 * 20
    assert cat.read(SUBTILES).num_rows == 32


def test_reprocessed_subtile_replaces_its_rows(field: Field) -> None:
    field.write(n_sources=20)
    assemble(field.settings, batch_size=32)
    tile = field.tiles[0]
    st = tile.subtile(GRID, 1, 2)
    key = subtile_key(tile.tile_id, 1, 2)
    # Reprocessing: different values and a different number of sources.
    new = synthetic_result(
        st, n_sources=7, rng=np.random.default_rng(99), shear=lambda ra, dec: (0.05, -0.02),
        config_hash=field.settings.config_hash, run_id="rerun",
    )  # fmt: skip
    write_result(
        field.storage, layout.subtile_dir(field.work, tile.tile_id, 1, 2), new.row, new.sources
    )
    report = assemble(field.settings, batch_size=32)
    assert (report.subtiles_committed, report.sources_committed) == (1, 7)
    assert report.skipped_unchanged == 31
    cat = field.catalog()
    sub = cat.read(SUBTILES)
    src = cat.read(SOURCES)
    assert sub.num_rows == 32
    assert src.num_rows == 31 * 20 + 7
    mine = sub.filter(pc.equal(sub.column(KEY_COLUMN), key)).to_pylist()
    assert len(mine) == 1
    assert mine[0]["g1"] == 0.05
    assert mine[0]["run_id"] == "rerun"
    rows = src.filter(pc.equal(src.column(KEY_COLUMN), key))
    assert rows.num_rows == 7
    assert set(rows.column("run_id").to_pylist()) == {"rerun"}
    np.testing.assert_array_equal(
        np.sort(np.asarray(rows.column("flux"))), np.sort(np.asarray(new.sources.column("flux")))
    )
    # Nothing else changed and nothing is duplicated.
    assert pc.count_distinct(src.column("object_id")).as_py() == src.num_rows
    assert pc.count_distinct(sub.column(KEY_COLUMN)).as_py() == 32


def test_repeated_partial_reassembly(field: Field) -> None:
    """Sub-tiles re-assembled round after round, alone and in groups: a key whose own
    ``subtiles`` file lies inside another file's key range is deleted once, not twice."""
    tile = field.tiles[0]
    field.write([tile], n_sources=3)
    assemble(field.settings, batch_size=16)
    rounds = [[(1, 1)], [(1, 1), (1, 2)], [(1, 1)], [(0, 0), (1, 1), (3, 3)]]
    for i, cells in enumerate(rounds):
        for row, col in cells:
            res = synthetic_result(
                tile.subtile(GRID, row, col), n_sources=3, rng=np.random.default_rng(i),
                config_hash=field.settings.config_hash, run_id=f"round-{i}",
            )  # fmt: skip
            directory = layout.subtile_dir(field.work, tile.tile_id, row, col)
            write_result(field.storage, directory, res.row, res.sources)
        report = assemble(field.settings, batch_size=16)
        assert report.subtiles_committed == len(cells)
        assert report.conflicts == 0
    cat = field.catalog()
    sub = cat.read(SUBTILES)
    assert sub.num_rows == 16
    assert pc.count_distinct(sub.column(KEY_COLUMN)).as_py() == 16
    assert cat.read(SOURCES).num_rows == 48
    last = sub.filter(pc.equal(sub.column(KEY_COLUMN), subtile_key(tile.tile_id, 3, 3)))
    assert last.column("run_id").to_pylist() == ["round-3"]


def test_failed_subtiles_recorded_without_sources(field: Field) -> None:
    t = field.tiles[0].tile_id
    field.write(failed=((t, 0, 0), (t, 3, 1)))
    report = assemble(field.settings)
    assert report.failed_committed == 2
    assert report.subtiles_committed == 32
    cat = field.catalog()
    sub = cat.read(SUBTILES)
    failed = sub.filter(pc.equal(sub.column("status"), "failed")).to_pylist()
    assert {(r["subtile_row"], r["subtile_col"]) for r in failed} == {(0, 0), (3, 1)}
    assert all(r["error"] and r["g1"] is None for r in failed)
    src = cat.read(SOURCES)
    assert src.num_rows == 30 * 20
    failed_keys = [subtile_key(t, 0, 0), subtile_key(t, 3, 1)]
    assert not pc.any(pc.is_in(src.column(KEY_COLUMN), pa.array(failed_keys))).as_py()


def test_tile_selection_and_config_filter(field: Field) -> None:
    a, b = field.tiles
    field.write([a])
    field.write([b], config_hash="f" * 16)  # results of another science configuration
    only_a = assemble(field.settings, tiles=[a.tile_id])
    assert only_a.found == only_a.subtiles_committed == 16
    report = assemble(field.settings)
    assert report.found == 32
    assert report.skipped_unchanged == 16
    assert report.skipped_other_config == 16
    assert report.subtiles_committed == 0
    report = assemble(field.settings, only_config=False)
    assert report.subtiles_committed == 16
    assert field.catalog().read(SUBTILES).num_rows == 32


def test_unreadable_and_foreign_rows(field: Field) -> None:
    field.write()
    a, b = field.tiles
    # A result whose file is corrupt (its marker is there): skipped, retried next time.
    broken = layout.subtile_dir(field.work, a.tile_id, 0, 1)
    field.storage.write_bytes(layout.join(broken, layout.RESULT_NAME), b"not parquet")
    # A result with one source row that belongs to another sub-tile: dropped.
    st = b.subtile(GRID, 2, 2)
    res = synthetic_result(st, n_sources=5, rng=np.random.default_rng(1),
                           config_hash=field.settings.config_hash)  # fmt: skip
    rows = res.sources.to_pylist()
    rows[0]["subtile_col"] = 3
    write_result(
        field.storage,
        layout.subtile_dir(field.work, b.tile_id, 2, 2),
        res.row,
        pa.Table.from_pylist(rows, schema=SOURCE_SCHEMA),
    )
    report = assemble(field.settings)
    assert report.unreadable == 1
    assert report.unreadable_dirs == [broken]
    assert report.dropped_sources == 1
    assert report.subtiles_committed == 31
    src = field.catalog().read(SOURCES)
    assert src.num_rows == 30 * 20 + 4


def test_result_of_an_older_layout_is_re_encoded(field: Field) -> None:
    markers = field.write(n_sources=20)
    tile = field.tiles[0].tile_id
    directory = layout.subtile_dir(field.work, tile, 1, 1)
    url = layout.join(directory, layout.RESULT_NAME)
    table = pq.read_table(pa.BufferReader(field.storage.read_bytes(url)))
    # As results were written before they took the table's layout: the source columns
    # only, no field ids, the sub-tile row in the metadata.
    bare = pa.schema([f.remove_metadata() for f in SOURCE_SCHEMA])
    old = pa.Table.from_arrays(table.select(SOURCE_SCHEMA.names).columns, schema=bare)
    buf = pa.BufferOutputStream()
    pq.write_table(old.replace_schema_metadata(table.schema.metadata), buf)
    payload = buf.getvalue().to_pybytes()
    field.storage.write_bytes(url, payload)
    marker = dataclasses.replace(markers[(tile, 1, 1)], sha256=hashlib.sha256(payload).hexdigest())
    field.storage.write_bytes(layout.join(directory, layout.RESULT_DONE_NAME), marker.to_bytes())

    report = assemble(field.settings)
    assert report.subtiles_committed == 32
    assert report.sources_committed == 32 * 20
    assert report.added_as_is == 31
    src = field.catalog().read(SOURCES)
    got = src.filter(pc.equal(src.column(KEY_COLUMN), subtile_key(tile, 1, 1)))
    assert _rows(got) == _rows(old)
    assert set(got.column("partition_healpix").to_pylist()) == {
        int(table.column("partition_healpix")[0].as_py())
    }
    assert assemble(field.settings).subtiles_committed == 0  # and it stays committed


def test_assemble_cli(field: Field) -> None:
    field.write(n_sources=2)
    args = ["--config", str(field.config_path), "assemble", "--batch-size", "10"]
    result = CliRunner().invoke(app, [*args, "--run-id", "cli-run", "--tile", "102000001"])
    assert result.exit_code == 0, result.output
    assert "assembled 16 sub-tiles (0 failed) and 32 sources in 2 batches" in result.output
    snaps = field.catalog().snapshots(SUBTILES)
    assert [s.summary["constellation.run-id"] for s in snaps] == ["cli-run", "cli-run"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "assembled 16 sub-tiles" in result.output
    assert "16 unchanged" in result.output
