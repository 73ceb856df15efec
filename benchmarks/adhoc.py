"""Benchmark what an operator waits for: the demo's rerun and one ad-hoc tile.

Run from the repository root::

    uv run python benchmarks/adhoc.py [--repeat 3] [--out DIR] [--skip-ray]

Each case runs the CLI as a user does (a new ``python -m constellation`` process,
Prefect's temporary server, no ``PREFECT_API_URL``), ``--repeat`` times, and prints
the median wall time as ``name=value`` lines (``uv run`` in front of the command adds
its own start, ~0.1-0.5 s here):

``adhoc_demo_first_s``
    ``constellation demo --out DIR/demo`` into a new folder (simulate 2x2 tiles, run
    everything). Run once.
``adhoc_demo_rerun_s``
    The same command again: nothing to do (issue target: at most 20 s on 2 cores).
``adhoc_tile_local_s``
    ``run --tile T --backend mock --local`` on a work root where tile ``T`` is prepared
    (16 sub-tiles; each repeat starts from a copy of that work root): the sub-tiles run
    in the command's own process (issue target: at most 30 s on 2 cores).
``adhoc_tile_ray_s``
    The same with ``--cpu`` instead of ``--local``: the sub-tiles on a local Ray.
``adhoc_*_exit`` are the exit codes of the last repeat (0 expected).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

CLI = [sys.executable, "-m", "constellation"]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PREFECT_API_URL", None)  # the operator's default: the temporary server
    env.setdefault("DO_NOT_TRACK", "1")
    return env


def timed(args: list[str], cwd: Path) -> tuple[float, int]:
    """Wall time and exit code of one CLI command."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        [*CLI, *args], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=900
    )
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        print(proc.stdout[-2000:], proc.stderr[-2000:], sep="\n", file=sys.stderr)
    return seconds, proc.returncode


def _check(args: list[str], cwd: Path) -> None:
    proc = subprocess.run([*CLI, *args], cwd=cwd, env=_env(), capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(args)} failed:\n{proc.stdout}{proc.stderr}")


def _median(
    args: list[str], cwd: Path, repeat: int, before: Callable[[], None] | None = None
) -> tuple[float, int]:
    times, code = [], 0
    for _ in range(repeat):
        if before is not None:
            before()
        seconds, code = timed(args, cwd)
        times.append(seconds)
    return statistics.median(times), code


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="Runs per case (median).")
    parser.add_argument("--out", type=Path, default=None, help="Folder (default: a temp one).")
    parser.add_argument("--skip-ray", action="store_true", help="Leave out adhoc_tile_ray_s.")
    args = parser.parse_args()
    base = args.out or Path(tempfile.mkdtemp(prefix="constellation-adhoc-"))
    base.mkdir(parents=True, exist_ok=True)
    repo = Path(__file__).resolve().parents[1]

    demo = base / "demo"
    seconds, code = timed(["demo", "--out", str(demo)], repo)
    print(f"adhoc_demo_first_s={seconds:.1f}")
    print(f"adhoc_demo_first_exit={code}")
    seconds, code = _median(["demo", "--out", str(demo)], repo, args.repeat)
    print(f"adhoc_demo_rerun_s={seconds:.1f}")
    print(f"adhoc_demo_rerun_exit={code}")

    # a second work root on the demo's field, with one tile prepared (not inferred)
    config = base / "tile.yaml"
    prepared, work = base / "prepared", base / "work"
    config.write_text(
        "science:\n  backend:\n    name: mock\nruntime:\n  storage:\n"
        f"    data_uri: {(demo / 'input').as_posix()}\n    work_uri: {work.as_posix()}\n"
    )
    shutil.rmtree(work, ignore_errors=True)
    _check(["-c", str(config), "tiles", "resolve"], repo)
    _check(["-c", str(config), "index"], repo)
    import pyarrow.parquet as pq

    tile = str(pq.read_table(work / "registry.parquet").column("tile_id")[0].as_py())
    _check(["-c", str(config), "prepare", "--tile", tile], repo)
    shutil.rmtree(prepared, ignore_errors=True)
    shutil.copytree(work, prepared)

    def fresh() -> None:
        shutil.rmtree(work)
        shutil.copytree(prepared, work)

    run = ["-c", str(config), "run", "--tile", tile, "--backend", "mock"]
    seconds, code = _median([*run, "--local"], repo, args.repeat, fresh)
    print(f"adhoc_tile_local_s={seconds:.1f}")
    print(f"adhoc_tile_local_exit={code}")
    if not args.skip_ray:
        seconds, code = _median([*run, "--cpu"], repo, args.repeat, fresh)
        print(f"adhoc_tile_ray_s={seconds:.1f}")
        print(f"adhoc_tile_ray_exit={code}")
    print(f"cpu_count={os.cpu_count()}")
    if args.out is None:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
