"""Benchmark catalog assembly: sub-tile results -> the Iceberg tables on SQLite.

Run from the repository root::

    uv run python benchmarks/assemble.py [--quick] [--subtiles N] [--sources N] [--batch-size N]
        [--workers N]

Set-up (not timed): ``--subtiles`` results (default 1000, the first sub-tiles of a
block of 4 x 4-sub-tile tiles) of ``--sources`` core sources each (default 1000),
written with :func:`constellation.results.store.write_result` into a temporary
work root (positions uniform over each sub-tile core, random fitted parameters: about
150 kB of Parquet per result), and a fresh embedded catalog.

Prints ``name=value`` lines:

``assemble_subtiles``, ``assemble_rows``
    Sub-tiles and source rows committed.
``assemble_seconds``
    Wall time of :func:`constellation.catalog.assemble.assemble` (finding the markers,
    reading and decoding the results concurrently, writing the data files, the commits).
``assemble_rows_per_s``
    ``assemble_rows / assemble_seconds``. Target >= 1e6 on 2 cores.
``assemble_cpu_s``
    CPU time (all threads) of that call; ``assemble_cpu_s_per_mrow``: per 1e6 rows.
    Unlike the wall time it hardly depends on other load on the machine.
``assemble_batches``, ``assemble_commits``
    Batches, and Iceberg commits on the ``sources`` table (must equal the batches;
    ``subtiles`` gets the same number).
``assemble_data_files``, ``assemble_data_mb``
    Data files written (both tables) and their size.
``assemble_added_as_is``
    Result files committed byte for byte (hard-linked), not decoded and re-encoded.
``assemble_baseline_rss_mb``, ``assemble_peak_rss_mb``
    Resident memory before the call and the process peak after it.
``decode_result_ms``
    CPU time of one :func:`~constellation.results.store.decode_result` of a result
    (single thread, mean over 100): the floor of the assembly's cost per sub-tile.
``assemble_noop_seconds``
    A second assembly with nothing new (every result unchanged).
``assemble_reprocess_seconds``
    Assembly after 10 results were rewritten with new values (delete + append of
    those sub-tiles' rows, in one batch).
``cpu_count``, ``pyiceberg_version``, ``pyarrow_version``
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from constellation.catalog.assemble import DEFAULT_BATCH_SIZE, assemble
from constellation.catalog.iceberg import SOURCES, SUBTILES, open_catalog
from constellation.catalog.synthetic import synthetic_result, synthetic_tiles
from constellation.config import Settings
from constellation.io.storage import Storage
from constellation.manifest import layout
from constellation.results.store import decode_result, write_result
from constellation.sky.tiling import SubTile, SubTileGrid


def _rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _subtiles(n: int) -> list[SubTile]:
    grid = SubTileGrid(4, 4, 1.0)
    side = max(1, int(np.ceil(np.sqrt(n / grid.n_subtiles))))
    out: list[SubTile] = []
    for tile in synthetic_tiles(side, side):
        out.extend(tile.iter_subtiles(grid))
    return out[:n]


def _write(
    storage: Storage, work: str, subtiles: list[SubTile], n: int, cfg: str, seed: int
) -> None:
    for st in subtiles:
        rng = np.random.default_rng([seed, st.tile_id, st.row, st.col])
        res = synthetic_result(st, n_sources=n, rng=rng, noise=0.01, config_hash=cfg,
                               shear=lambda ra, dec: (0.01, -0.01))  # fmt: skip
        write_result(storage, layout.subtile_dir(work, st.tile_id, st.row, st.col), res.row,
                     res.sources)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="48 sub-tiles x 200 sources")
    parser.add_argument("--subtiles", type=int, default=1000)
    parser.add_argument("--sources", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args()
    n_sub, n_src, batch = args.subtiles, args.sources, args.batch_size
    if args.quick:
        n_sub, n_src, batch = 48, 200, 16

    with tempfile.TemporaryDirectory(prefix="constellation-assemble-") as tmp:
        work = str(Path(tmp) / "work")
        settings = Settings.model_validate({"runtime": {"storage": {"work_uri": work}}})
        storage = Storage()
        subtiles = _subtiles(n_sub)
        _write(storage, work, subtiles, n_src, settings.config_hash, seed=0)
        open_catalog(settings)  # create the SQLite file before timing

        # decode_result alone, one thread.
        sample = subtiles[: min(100, len(subtiles))]
        payloads = [
            storage.read_bytes(layout.result_url(work, st.tile_id, st.row, st.col)) for st in sample
        ]
        decode_result(payloads[0])
        c0 = time.process_time()
        for data in payloads:
            decode_result(data)
        decode_ms = (time.process_time() - c0) / len(payloads) * 1e3

        baseline = _rss_mb()
        cpu0, t0 = _cpu_s(), time.perf_counter()
        report = assemble(settings, batch_size=batch, run_id="bench", workers=args.workers)
        seconds = time.perf_counter() - t0
        cpu = _cpu_s() - cpu0
        peak = _peak_rss_mb()

        cat = open_catalog(settings)
        commits = [
            s for s in cat.snapshots(SOURCES) if s.summary.get("constellation.run-id") == "bench"
        ]
        sub_commits = [
            s for s in cat.snapshots(SUBTILES) if s.summary.get("constellation.run-id") == "bench"
        ]
        if len(commits) != report.batches or len(sub_commits) != report.batches:
            raise SystemExit(f"commits {len(commits)}/{len(sub_commits)} != {report.batches}")
        if cat.count(SOURCES) != n_sub * n_src or report.sources_committed != n_sub * n_src:
            raise SystemExit("row count mismatch")
        data_mb = 0.0
        for name in (SOURCES, SUBTILES):
            data_mb += sum(os.path.getsize(p.removeprefix("file://")) for p in cat.data_files(name))

        t1 = time.perf_counter()
        noop = assemble(settings, batch_size=batch)
        noop_s = time.perf_counter() - t1
        if noop.subtiles_committed:
            raise SystemExit("the second assembly committed something")

        _write(storage, work, subtiles[:10], n_src, settings.config_hash, seed=1)
        t2 = time.perf_counter()
        again = assemble(settings, batch_size=batch)
        reprocess_s = time.perf_counter() - t2
        if again.subtiles_committed != 10 or open_catalog(settings).count(SOURCES) != n_sub * n_src:
            raise SystemExit("reprocessing did not replace exactly 10 sub-tiles")

    import pyiceberg

    rows = report.sources_committed
    figures = {
        "assemble_subtiles": report.subtiles_committed,
        "assemble_rows": rows,
        "assemble_seconds": f"{seconds:.3f}",
        "assemble_rows_per_s": f"{rows / seconds:.0f}",
        "assemble_cpu_s": f"{cpu:.3f}",
        "assemble_cpu_s_per_mrow": f"{cpu / rows * 1e6:.3f}",
        "assemble_batches": report.batches,
        "assemble_commits": len(commits),
        "assemble_data_files": report.data_files,
        "assemble_added_as_is": report.added_as_is,
        "assemble_data_mb": f"{data_mb / 2**20:.1f}",
        "assemble_baseline_rss_mb": f"{baseline:.0f}",
        "assemble_peak_rss_mb": f"{peak:.0f}",
        "decode_result_ms": f"{decode_ms:.3f}",
        "assemble_noop_seconds": f"{noop_s:.3f}",
        "assemble_reprocess_seconds": f"{reprocess_s:.3f}",
        "cpu_count": os.cpu_count(),
        "pyiceberg_version": pyiceberg.__version__,
        "pyarrow_version": pa.__version__,
    }
    for name, value in figures.items():
        print(f"{name}={value}")


if __name__ == "__main__":
    main()
