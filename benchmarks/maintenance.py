"""Benchmark catalog maintenance on a catalog built by real one-sub-tile assembly commits.

Run from the repository root::

    uv run python benchmarks/maintenance.py [--quick] [--subtiles N] [--sources N]
                                            [--build-budget-s S]

Set-up: ``--subtiles`` synthetic results (default 10,000) of ``--sources`` core
sources each (default 20) in a temporary work root, then assembled tile by tile with
``batch_size=1``: every sub-tile is its own commit on each table, as an assembler
running after every sub-tile would leave the catalog. The build stops after the tile
during which ``--build-budget-s`` (default 900) ran out; ``subtiles`` says how many
were assembled. Then both tables are compacted and their snapshots expired (all but
the current one), and the full tables are compared before and after.

Prints ``name=value`` lines:

``subtiles``, ``rows``
    Sub-tiles assembled (one commit each per table) and source rows.
``assembly_commits``, ``assemble_s``, ``assemble_ms_per_commit``
    Commits on both tables, the wall time of the build and per commit.
``files_before``, ``files_after``, ``reduction``
    Data files of both tables before and after compaction, and their ratio.
``bytes_before_mb``, ``bytes_after_mb``
    Their size.
``snapshots_before``, ``snapshots_after``
    Snapshots of both tables before and after expiry.
``compact_s``, ``expire_s``, ``expire_files_deleted``
    Wall time of the compaction (both tables), of the expiry (with deletion of the
    files only the expired snapshots used) and the files it deleted.
``identical``
    1 when both tables read the same rows after maintenance as before.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import numpy as np

from constellation.catalog.assemble import assemble
from constellation.catalog.iceberg import KEY_COLUMN, SOURCES, SUBTILES, open_catalog
from constellation.catalog.maintenance import (
    TABLES,
    compact_table,
    expire_snapshots,
    table_stats,
)
from constellation.catalog.synthetic import synthetic_tiles, write_results
from constellation.config import Settings
from constellation.io.storage import Storage
from constellation.sky.tiling import SubTileGrid

SORT = {SOURCES: [(KEY_COLUMN, "ascending"), ("object_id", "ascending")],
        SUBTILES: [(KEY_COLUMN, "ascending")]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="32 sub-tiles x 5 sources")
    parser.add_argument("--subtiles", type=int, default=10_000)
    parser.add_argument("--sources", type=int, default=20)
    parser.add_argument("--build-budget-s", type=float, default=900.0)
    args = parser.parse_args()
    n_sub, n_src = (32, 5) if args.quick else (args.subtiles, args.sources)
    grid = SubTileGrid(4, 4, 1.0)
    side = max(1, int(np.ceil(np.sqrt(n_sub / grid.n_subtiles))))
    tiles = synthetic_tiles(side, side)[: -(-n_sub // grid.n_subtiles)]

    with tempfile.TemporaryDirectory(prefix="constellation-maintenance-") as tmp:
        work = str(Path(tmp) / "work")
        settings = Settings.model_validate({"runtime": {"storage": {"work_uri": work}}})
        storage = Storage()
        write_results(storage, work, tiles, grid, n_sources=n_src,
                      config_hash=settings.config_hash)  # fmt: skip
        open_catalog(settings)
        t0 = time.perf_counter()
        subtiles = rows = 0
        for tile in tiles:
            report = assemble(settings, tiles=[tile.tile_id], batch_size=1)
            subtiles += report.subtiles_committed
            rows += report.sources_committed
            if time.perf_counter() - t0 > args.build_budget_s:
                break
        assemble_s = time.perf_counter() - t0

        catalog = open_catalog(settings)
        before = {name: table_stats(catalog, name) for name in TABLES}
        commits = sum(
            1
            for name in TABLES
            for s in catalog.snapshots(name)
            if s.summary.get("constellation.subtiles")
        )
        expected = {name: catalog.read(name).sort_by(SORT[name]) for name in TABLES}
        t1 = time.perf_counter()
        for name in TABLES:
            compact_table(catalog, name)
        compact_s = time.perf_counter() - t1
        t2 = time.perf_counter()
        deleted = 0
        for name in TABLES:
            deleted += expire_snapshots(
                catalog, name, older_than=timedelta(0), retain_last=1
            ).files_deleted
        expire_s = time.perf_counter() - t2
        after = {name: table_stats(catalog, name) for name in TABLES}
        identical = all(
            catalog.read(name).sort_by(SORT[name]).equals(expected[name]) for name in TABLES
        )

    files_before = sum(s.data_files for s in before.values())
    files_after = sum(s.data_files for s in after.values())
    figures = {
        "subtiles": subtiles,
        "rows": rows,
        "assembly_commits": commits,
        "assemble_s": f"{assemble_s:.1f}",
        "assemble_ms_per_commit": f"{assemble_s / max(1, commits) * 1e3:.1f}",
        "files_before": files_before,
        "files_after": files_after,
        "reduction": f"{files_before / max(1, files_after):.1f}",
        "bytes_before_mb": f"{sum(s.data_bytes for s in before.values()) / 2**20:.2f}",
        "bytes_after_mb": f"{sum(s.data_bytes for s in after.values()) / 2**20:.2f}",
        "snapshots_before": sum(s.snapshots for s in before.values()),
        "snapshots_after": sum(s.snapshots for s in after.values()),
        "compact_s": f"{compact_s:.2f}",
        "expire_s": f"{expire_s:.2f}",
        "expire_files_deleted": deleted,
        "identical": int(identical),
    }
    for name, value in figures.items():
        print(f"{name}={value}")


if __name__ == "__main__":
    main()
