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
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from constellation.catalog.iceberg import (
    KEY_COLUMN,
    PARTITION_COLUMN,
    SOURCES,
    ShearCatalog,
    open_catalog,
    partition_pixels,
)
from constellation.catalog.maintenance import (
    compact_table,
    expire_snapshots,
    table_stats,
)
from constellation.catalog.synthetic import synthetic_tiles
from constellation.config import Settings
from constellation.results.schema import SOURCE_PARAMETERS, SOURCE_SCHEMA
from constellation.sky.healpix import radec_to_index
from constellation.sky.tiling import SubTileGrid

GRID = SubTileGrid(4, 4, 1.0)
N_SIDE = 25  # 25 x 25 tiles of 4 x 4 sub-tiles: 10,000 sub-tiles
SOURCES_PER_SUBTILE = 2
SORT = [(KEY_COLUMN, "ascending"), ("object_id", "ascending")]


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
