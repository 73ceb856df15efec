"""Benchmark the pipeline: the cold demo, steady-state throughput, per-task overhead.

Run from the repository root::

    uv run python benchmarks/pipeline.py [--skip-demo] [--tiles 2x2] [--tasks 200]

Prints ``name=value`` lines:

``demo_wall_s``
    Wall time of ``constellation demo`` into a new folder (simulate a 2x2-tile field,
    start Prefect's temporary server and a local Ray, index, prepare, infer 64
    sub-tiles with the mock backend, assemble, validate, report). Target <= 90 s.
``demo_peak_rss_mb``
    Peak of the summed resident memory of the demo process and all its descendants
    (Prefect server, Ray's GCS/raylet and workers), sampled every 0.1 s. Target <= 4000.
``subtiles``, ``pipeline_s``, ``subtiles_per_s``
    The pipeline flow on a ``--field`` field (default 4x4 tiles: 256 sub-tiles;
    simulated like the demo's, same config) with every sub-tile re-inferred
    (``force``) and re-assembled, after one warm-up run of the same: Prefect and Ray
    started, modules imported, Ray workers warm (start-up excluded); the median of 3
    runs. Target >= 10 sub-tiles/s.
``infer_s``, ``infer_subtiles_per_s``
    The infer part of that run alone; ``stage_*_s``: each stage of that run.
``plain_ray_ms``, ``prefect_ray_ms``, ``overhead_ms_per_subtile``
    Milliseconds per no-op task (``--tasks`` of them after a warm-up): plain Ray
    tasks; Prefect tasks through prefect-ray's stock ``RayTaskRunner``; and through
    constellation's ``SubTileRayTaskRunner`` (what the infer flow uses). See
    ``flows/runner.py`` for where the stock runner's time goes.
``cpu_count``
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # tests.fixtures.faults: the process tree helper


def _tree_rss_mb(root: int) -> float:
    from tests.fixtures.faults import process_children

    tree = process_children()
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        todo.extend(tree.get(pid, []))
        try:
            with open(f"/proc/{pid}/status", encoding="ascii") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            continue
    return total / 1024.0


def run_demo(out: Path, tiles: str) -> tuple[float, float]:
    """Run the demo as a subprocess; return (wall s, peak tree RSS MiB)."""
    exe = Path(sys.executable).with_name("constellation")
    cmd = [str(exe), "demo", "--out", str(out), "--tiles", tiles]
    peak = 0.0
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout or []), daemon=True)
    reader.start()
    while proc.poll() is None:
        peak = max(peak, _tree_rss_mb(proc.pid))
        time.sleep(0.1)
    wall = time.perf_counter() - t0
    reader.join(timeout=5)
    if proc.returncode != 0:
        sys.stderr.write("".join(lines[-40:]))
        raise SystemExit(f"demo failed with exit code {proc.returncode}")
    return wall, peak


def steady_state(config: Path, n_tasks: int) -> dict[str, float]:
    """Pipeline throughput with Prefect and Ray up and workers warm, then task overheads."""
    import ray
    from prefect import flow

    from constellation.config import load_config
    from flows.common import prefect_api_url, ray_session
    from flows.diagnostics import measure_overhead
    from flows.pipeline import run_pipeline

    settings = load_config(config)

    @flow(name="pipeline-benchmark", persist_result=False)
    def bench() -> dict[str, float]:
        with ray_session(settings, prefect_api_url()):
            # first, on a quiet Prefect server (the pipeline runs leave it events to store)
            overhead = measure_overhead(n_tasks, settings.runtime.ray.num_cpus_per_task)
            # warm-up: this process imports every stage, every Ray worker the backend
            run_pipeline(
                str(config), None, "bench-warm", report=False, settings=settings, force=True
            )
            runs = []
            for i in range(3):  # median of 3: the machine's other load varies
                t0 = time.perf_counter()
                out = run_pipeline(
                    str(config), None, f"bench-{i}", report=False, settings=settings, force=True
                )
                runs.append((time.perf_counter() - t0, out))
            runs.sort(key=lambda r: r[0])
            wall, out = runs[1]
            ray_ok = ray.is_initialized()
        n = int(out["infer"]["subtiles"])
        return {
            "subtiles": n,
            "pipeline_s": wall,
            "subtiles_per_s": n / wall,
            "infer_s": float(out["infer"]["seconds"]),
            "infer_subtiles_per_s": n / float(out["infer"]["seconds"]),
            "ray_was_up": float(ray_ok),
            **{f"stage_{k}": float(v) for k, v in out["times"].items()},
            **overhead,
        }

    return bench()


def field_config(root: Path, tiles: str) -> Path:
    """Simulate a field like the demo's and write a demo-like config for it."""
    from constellation.commands.run import _DEMO_CONFIG
    from constellation.io.storage import Storage
    from constellation.simulate import FieldSpec
    from constellation.simulate.run import simulate_field

    n_ra, n_dec = (int(v) for v in tiles.lower().split("x"))
    data, work = root / "input", root / "work"
    if not (data / "truth" / "field.json").exists():
        spec = FieldSpec(n_tiles_ra=n_ra, n_tiles_dec=n_dec, density_per_arcmin2=10.0)
        simulate_field(spec, Storage(), str(data))
    config = root / "config.yaml"
    config.write_text(_DEMO_CONFIG.format(data=data.as_posix(), work=work.as_posix()))
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--skip-demo", action="store_true", help="reuse --out if it has a demo")
    parser.add_argument("--out", type=Path, default=None, help="demo folder (default: temporary)")
    parser.add_argument("--tiles", default="2x2", help="demo field")
    parser.add_argument("--field", default="4x4", help="field of the throughput runs")
    parser.add_argument("--tasks", type=int, default=200, help="no-op tasks for the overheads")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="constellation-pipeline-") as tmp:
        out = args.out or Path(tmp) / "demo"
        figures: dict[str, object] = {}
        if not args.skip_demo:
            wall, peak = run_demo(out, args.tiles)
            figures["demo_wall_s"] = f"{wall:.1f}"
            figures["demo_peak_rss_mb"] = f"{peak:.0f}"
        steady = steady_state(field_config(Path(tmp) / "field", args.field), args.tasks)
        figures["subtiles"] = int(steady["subtiles"])
        figures["pipeline_s"] = f"{steady['pipeline_s']:.2f}"
        figures["subtiles_per_s"] = f"{steady['subtiles_per_s']:.1f}"
        figures["infer_s"] = f"{steady['infer_s']:.2f}"
        figures["infer_subtiles_per_s"] = f"{steady['infer_subtiles_per_s']:.1f}"
        for key in sorted(k for k in steady if k.startswith("stage_")):
            figures[key] = f"{steady[key]:.2f}"
        figures["plain_ray_ms"] = f"{steady['plain_ray_ms']:.2f}"
        figures["prefect_ray_ms"] = f"{steady['prefect_ray_ms']:.1f}"
        figures["overhead_ms_per_subtile"] = f"{steady['constellation_ms']:.1f}"
        figures["cpu_count"] = os.cpu_count()
        for name, value in figures.items():
            print(f"{name}={value}")


if __name__ == "__main__":
    main()
