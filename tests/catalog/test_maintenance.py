"""Catalog maintenance: compaction, snapshot expiry and orphan removal on real SQLite
catalogs (pyiceberg, nothing mocked).

The large case builds the ``sources`` table of 10,000 sub-tiles as assembly with one
sub-tile per commit would leave it: every sub-tile's rows in their own data file (one
file per sub-tile and partition pixel: 10,000+ files), but registered in 10 append
commits of ~1000 files instead of 10,000 commits (a real commit costs 0.1-1 s on
SQLite; ``benchmarks/maintenance.py`` measures real per-sub-tile commits). The smaller
cases run the real assembler (one commit per sub-tile, re-committed sub-tiles), race
it against a compaction, and drive the CLI.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from typer.testing import CliRunner

from constellation.catalog.assemble import assemble
from constellation.catalog.iceberg import (
    KEY_COLUMN,
    PARTITION_COLUMN,
    SOURCES,
    SUBTILES,
    ShearCatalog,
    open_catalog,
    partition_pixels,
    subtile_key,
)
from constellation.catalog.maintenance import (
    compact_table,
    expire_snapshots,
    maintain,
    table_stats,
)
from constellation.catalog.synthetic import synthetic_result, synthetic_tiles
from constellation.cli import app
from constellation.config import Settings
from constellation.manifest import layout
from constellation.results.schema import SOURCE_PARAMETERS, SOURCE_SCHEMA
from constellation.results.store import write_result
from constellation.sky.healpix import radec_to_index
from constellation.sky.tiling import SubTileGrid
from tests.catalog.conftest import Field

GRID = SubTileGrid(4, 4, 1.0)
N_SIDE = 25  # 25 x 25 tiles of 4 x 4 sub-tiles: 10,000 sub-tiles
SOURCES_PER_SUBTILE = 2
SORT = [(KEY_COLUMN, "ascending"), ("object_id", "ascending")]
SORT_KEY = {SOURCES: SORT, SUBTILES: [(KEY_COLUMN, "ascending")]}
runner = CliRunner()


def _source_rows(seed: int) -> pa.Table:
    """Core sources of the 10,000 sub-tiles (``synthetic``-like random values, within
    half an arcminute of the core centre), with the key and partition columns, sorted
    by key."""
    rng = np.random.default_rng(seed)
    k = SOURCES_PER_SUBTILE
    ident, ra, dec = [], [], []
    for tile in synthetic_tiles(N_SIDE, N_SIDE):
        subs = list(tile.iter_subtiles(GRID))
        x = np.repeat([st.core.center[0] for st in subs], k) + rng.uniform(-0.5, 0.5, k * 16)
        y = np.repeat([st.core.center[1] for st in subs], k) + rng.uniform(-0.5, 0.5, k * 16)
        r, d = tile.to_sky(x, y)
        ra.append(np.asarray(r))
        dec.append(np.asarray(d))
        ident.extend([(st.tile_id, st.row, st.col)] * k for st in subs)
    ids = np.asarray(ident, dtype=np.int64).reshape(-1, 3)
    ra_all, dec_all = np.concatenate(ra), np.concatenate(dec)
    n = ids.shape[0]
    keys = ids[:, 0] * 10_000 + ids[:, 1] * 100 + ids[:, 2]
    columns: dict[str, object] = {
        "object_id": keys * 100 + np.tile(np.arange(k), n // k),
        "tile_id": ids[:, 0],
        "subtile_row": ids[:, 1].astype(np.int32),
        "subtile_col": ids[:, 2].astype(np.int32),
        "ra": ra_all,
        "dec": dec_all,
        "healpix": radec_to_index(ra_all, dec_all, 29),
    }
    for name, _doc in SOURCE_PARAMETERS:
        columns[name] = rng.normal(0.0, 0.1, n)
        columns[f"{name}_err"] = rng.uniform(0.01, 0.02, n)
    columns["run_id"] = pa.array(["maintenance-test"] * n)
    columns["config_hash"] = pa.array(["0" * 16] * n)
    data = pa.table(columns, schema=SOURCE_SCHEMA)
    data = data.append_column(pa.field(KEY_COLUMN, pa.int64(), nullable=False), pa.array(keys))
    return data.append_column(
        pa.field(PARTITION_COLUMN, pa.int64(), nullable=False),
        partition_pixels(data.column("healpix"), 29, 7),
    )


def _runs(data: pa.Table) -> list[tuple[int, int, int]]:
    """``(pixel, start, stop)`` of the runs of equal (key, pixel): one data file each."""
    keys = np.asarray(data.column(KEY_COLUMN))
    pixels = np.asarray(data.column(PARTITION_COLUMN))
    change = np.r_[True, (keys[1:] != keys[:-1]) | (pixels[1:] != pixels[:-1])]
    starts = np.flatnonzero(change)
    stops = np.r_[starts[1:], keys.size]
    return [(int(pixels[a]), int(a), int(b)) for a, b in zip(starts, stops, strict=True)]


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> tuple[ShearCatalog, pa.Table]:
    """The 10,000-sub-tile ``sources`` table (see the module doc) and its expected rows."""
    root = tmp_path_factory.mktemp("big")
    settings = Settings.model_validate({"runtime": {"storage": {"work_uri": str(root / "w")}}})
    catalog = open_catalog(settings)
    data = catalog.conform(SOURCES, _source_rows(seed=1))

    # One data file per run of (sub-tile, pixel), as one-sub-tile commits write them;
    # written in rounds of one run per pixel (write_partitions writes a file per pixel).
    by_pixel: dict[int, list[pa.Table]] = {}
    for pixel, a, b in _runs(data):
        by_pixel.setdefault(pixel, []).append(data.slice(a, b - a))
    files = []
    with ThreadPoolExecutor(4) as pool:
        for k in range(max(len(v) for v in by_pixel.values())):
            groups = {p: [runs[k]] for p, runs in by_pixel.items() if k < len(runs)}
            files.extend(catalog.write_partitions(SOURCES, groups, executor=pool).files)
    table = catalog.table(SOURCES)
    step = -(-len(files) // 10)
    for start in range(0, len(files), step):
        with table.transaction() as tx, tx.update_snapshot().fast_append() as append:
            for data_file in files[start : start + step]:
                append.append_data_file(data_file)
    return catalog, data


@pytest.mark.slow  # ~60 s on 2 cores; the other compaction tests stay in the fast loop
def test_compaction_of_10000_subtiles(big: tuple[ShearCatalog, pa.Table]) -> None:
    catalog, expected = big
    small_files = catalog.data_files(SOURCES)
    assert len(small_files) >= 10_000
    assert catalog.count(SOURCES) == expected.num_rows == 10_000 * SOURCES_PER_SUBTILE
    snapshots = len(catalog.snapshots(SOURCES))
    # a spatial query: one partition pixel, a box in ra/dec inside it
    pixel = int(pc.mode(expected.column(PARTITION_COLUMN))[0]["mode"].as_py())

    def spatial() -> pa.Table:
        rows = catalog.read(SOURCES, partitions=[pixel])
        ra, dec = rows.column("ra"), rows.column("dec")
        box = pc.and_(pc.less(ra, pc.mean(ra)), pc.greater(dec, pc.min(dec).as_py() + 0.01))
        return rows.filter(box).sort_by(SORT)

    spatial_before = spatial()
    assert spatial_before.num_rows > 0

    dry = compact_table(catalog, SOURCES, dry_run=True)
    assert dry.partitions_planned > 0
    assert dry.files_before == len(small_files)
    assert len(catalog.snapshots(SOURCES)) == snapshots  # a dry run commits nothing
    report = compact_table(catalog, SOURCES)
    after = table_stats(catalog, SOURCES)
    assert report.files_before == len(small_files)
    assert report.files_after == after.data_files == dry.files_after
    assert report.bytes_after == after.data_bytes
    assert after.data_files * 10 <= len(small_files)
    assert after.data_files == after.partitions  # one file per partition (tiny files)
    assert report.commits == 1
    assert report.partitions_compacted == dry.partitions_planned
    assert after.records == expected.num_rows
    # identical query results: the whole table, and the spatial query
    full = catalog.read(SOURCES).sort_by(SORT)
    assert full.equals(expected.sort_by(SORT).cast(full.schema))
    assert spatial().equals(spatial_before)
    # the rows of a partition are in sub-tile key order in its file
    rows = catalog.read(SOURCES, [KEY_COLUMN], partitions=[pixel]).column(KEY_COLUMN)
    assert np.all(np.diff(np.asarray(rows)) >= 0)
    # a second run finds nothing to do
    assert compact_table(catalog, SOURCES).partitions_compacted == 0

    # expiry: every snapshot but the current one goes, with the files only they reached
    expired = expire_snapshots(catalog, SOURCES, older_than=timedelta(0), retain_last=1)
    assert expired.snapshots_before == snapshots + 1 == 11
    assert expired.snapshots_after == len(catalog.snapshots(SOURCES)) == 1
    gone = set(small_files) - set(catalog.data_files(SOURCES))
    assert len(gone) == report.files_rewritten
    assert expired.files_deleted > len(gone)  # the small files, manifests, manifest lists
    assert not any(os.path.exists(p.removeprefix("file://")) for p in gone)
    assert catalog.read(SOURCES).sort_by(SORT).equals(full)


# --------------------------------------------------------------------------- real assembly


def _assembled(field: Field, *, again: bool) -> ShearCatalog:
    """The field's 32 sub-tiles (20 sources each) assembled 8 per commit; with ``again``,
    one tile re-inferred and re-assembled (its rows replaced)."""
    field.write(n_sources=20)
    assemble(field.settings, batch_size=8)
    if again:
        field.write([field.tiles[0]], n_sources=20, seed=1)
        assemble(field.settings, batch_size=8)
    return field.catalog()


def _rewrite_one(field: Field, seed: int) -> int:
    """Re-infer one sub-tile (new values), as a concurrent pipeline would; its key."""
    st = next(iter(field.tiles[1].iter_subtiles(GRID)))
    rng = np.random.default_rng([seed, st.tile_id])
    res = synthetic_result(st, n_sources=20, rng=rng, config_hash=field.settings.config_hash)
    write_result(field.storage, layout.subtile_dir(field.work, st.tile_id, st.row, st.col),
                 res.row, res.sources)  # fmt: skip
    return subtile_key(st.tile_id, st.row, st.col)


def _cli(field: Field, *args: str, code: int = 0) -> str:
    result = runner.invoke(app, ["-c", str(field.config_path), "catalog", *args])
    assert result.exit_code == code, result.output
    return result.output


def test_maintain_an_assembled_catalog(field: Field) -> None:
    """The CLI and :func:`maintain` on a catalog made by the assembler; assembly goes on
    over the compacted files."""
    catalog = _assembled(field, again=True)
    expected = {name: catalog.read(name).sort_by(SORT_KEY[name]) for name in SORT_KEY}
    files = {name: len(catalog.data_files(name)) for name in SORT_KEY}
    snapshots = {name: len(catalog.snapshots(name)) for name in SORT_KEY}
    assert "sources:" in _cli(field, "status")
    assert "would compact" in _cli(field, "compact", "--table", "sources", "--dry-run")
    assert len(field.catalog().data_files(SOURCES)) == files[SOURCES]
    assert "after" in _cli(field, "compact", "--table", "sources")
    compacted = len(field.catalog().data_files(SOURCES))
    assert compacted < files[SOURCES]
    assert "unknown table" in _cli(field, "compact", "--table", "nope", code=2)
    _cli(field, "expire", "--table", "sources", "--older-than-days", "0", "--retain-last", "2",
         "--no-orphans")  # fmt: skip
    assert len(field.catalog().snapshots(SOURCES)) == 2
    # an orphan: data files written by an assembler that died before committing
    key0 = expected[SOURCES].column(KEY_COLUMN)[0].as_py()
    orphans = catalog.write_files(SOURCES, catalog.read(SOURCES, keys=[key0]))
    orphan_paths = [f.file_path.removeprefix("file://") for f in orphans.files]
    old = time.time() - 7200
    os.utime(orphan_paths[0], (old, old))  # old enough; any other is young and kept
    report = maintain(
        field.catalog(), storage=field.storage, older_than=timedelta(0), retain_last=1,
        orphan_min_age=timedelta(hours=1),
    )  # fmt: skip
    assert report.before[SOURCES].data_files == compacted
    assert report.after[SUBTILES].data_files < files[SUBTILES]
    # its compaction commit is the one snapshot left
    assert report.expire[SUBTILES].snapshots_expired == snapshots[SUBTILES]
    for name in SORT_KEY:
        assert report.after[name].snapshots == 1
        assert field.catalog().read(name).sort_by(SORT_KEY[name]).equals(expected[name])
    assert report.orphans[SOURCES].orphans == 1
    assert not os.path.exists(orphan_paths[0])
    assert all(os.path.exists(p) for p in orphan_paths[1:])
    assert report.orphans[SUBTILES].orphans == 0
    # the assembler goes on over compacted files: a re-inferred sub-tile is replaced
    key = _rewrite_one(field, seed=5)
    assert assemble(field.settings).subtiles_committed == 1
    rows = field.catalog().read(SOURCES)
    assert rows.num_rows == expected[SOURCES].num_rows
    assert pc.count_distinct(rows.column("object_id")).as_py() == rows.num_rows
    changed = rows.filter(pc.equal(rows.column(KEY_COLUMN), key)).sort_by(SORT)
    before = expected[SOURCES].filter(pc.equal(expected[SOURCES].column(KEY_COLUMN), key))
    assert changed.num_rows == before.num_rows
    assert not changed.column("ra").equals(before.sort_by(SORT).column("ra"))


def test_compaction_against_a_concurrent_assembler(field: Field) -> None:
    catalog = _assembled(field, again=False)
    state: dict[str, object] = {}

    def race() -> None:
        # The first commit attempt finds that an assembler replaced a sub-tile meanwhile.
        if state:
            return
        state["key"] = _rewrite_one(field, seed=7)
        assert assemble(field.settings).subtiles_committed == 1
        state["expected"] = field.catalog().read(SOURCES).sort_by(SORT)

    report = compact_table(catalog, SOURCES, before_commit=race)
    assert report.conflicts >= 1
    assert report.partitions_conflicted >= 1  # the re-committed sub-tile's pixel(s)
    assert report.partitions_compacted >= 1  # the others, rebuilt on the new snapshot
    assert report.commits == 1
    rows = field.catalog().read(SOURCES).sort_by(SORT)
    assert rows.equals(state["expected"])  # nothing lost, nothing duplicated


def test_export_writes_the_live_rows_not_every_data_file(field: Field, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    catalog = _assembled(field, again=True)  # one tile's rows replaced: old files remain
    live = catalog.read(SOURCES).num_rows
    out = tmp_path / "sources.parquet"
    assert f"wrote {live} rows" in _cli(field, "export", str(out))
    assert pq.read_table(out).num_rows == live == 32 * 20
    # globbing the warehouse also reads the files that the replacement deleted
    warehouse = Path(field.work) / "catalog" / "warehouse"
    files = [p for p in warehouse.rglob("*.parquet") if "sources" in p.as_posix()]
    assert sum(pq.read_metadata(p).num_rows for p in files) > live
    tile = field.tiles[1].tile_id
    small = tmp_path / "g.parquet"
    _cli(field, "export", str(small), "--table", "subtiles", "--tile", str(tile),
         "--column", "g1", "--column", "g2")  # fmt: skip
    got = pq.read_table(small)
    assert (got.num_rows, got.column_names) == (16, ["g1", "g2"])
    assert "unknown column" in _cli(field, "export", str(small), "--column", "nope", code=2)
