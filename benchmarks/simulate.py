"""Benchmark ``constellation simulate``: a 2 x 2-tile field in light mode.

Run from the repository root::

    uv run python benchmarks/simulate.py [--tiles 2] [--mode light] [--keep DIR]

Prints ``name=value`` lines (progress on stderr):

``simulate_tiles``, ``simulate_exposures``, ``simulate_files``, ``simulate_sources``
    What was written.
``simulate_s``
    Wall time of ``simulate_field`` (plan, sources, every file, truth) into a
    fresh local directory.
``simulate_disk_mb``
    Disk space the field occupies (allocated blocks, MB = 1e6 bytes; for
    sparse files this is what the holes save).
``simulate_apparent_mb``
    Sum of the file sizes (MB = 1e6 bytes).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path


def _sizes(root: Path) -> tuple[int, int, int]:
    files = [p for p in root.rglob("*") if p.is_file()]
    apparent = sum(p.stat().st_size for p in files)
    disk = sum(p.stat().st_blocks * 512 for p in files)
    return len(files), apparent, disk


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--tiles", type=int, default=2, help="N for an N x N-tile field")
    parser.add_argument("--mode", default="light", choices=["light", "sparse", "pixels"])
    parser.add_argument("--keep", type=Path, default=None, help="write here and keep it")
    args = parser.parse_args(argv)

    from constellation.io.storage import Storage
    from constellation.simulate import FieldSpec
    from constellation.simulate.run import simulate_field

    spec = FieldSpec(n_tiles_ra=args.tiles, n_tiles_dec=args.tiles, mode=args.mode)
    with tempfile.TemporaryDirectory(prefix="constellation-bench-sim-") as tmp:
        root = args.keep or Path(tmp)
        print(f"simulating into {root}", file=sys.stderr)
        t0 = time.perf_counter()
        summary = simulate_field(spec, Storage(), str(root))
        elapsed = time.perf_counter() - t0
        n_files, apparent, disk = _sizes(root)
    figures = {
        "simulate_tiles": len(summary.plan.tiles),
        "simulate_exposures": len(summary.plan.exposures),
        "simulate_files": n_files,
        "simulate_sources": summary.n_sources,
        "simulate_s": round(elapsed, 2),
        "simulate_disk_mb": round(disk / 1e6, 1),
        "simulate_apparent_mb": round(apparent / 1e6, 1),
        "cpu_count": os.cpu_count(),
    }
    for k, v in figures.items():
        print(f"{k}={v}")


if __name__ == "__main__":
    main()
