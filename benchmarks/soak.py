"""Soak: a simulated field of >= 1,000 sub-tiles through the whole pipeline under random faults.

Run from the repository root::

    uv run python benchmarks/soak.py [--tiles 2x2] [--grid 16] [--seed 1]

What it does:

1. Simulates a light field (``--tiles``, each cut into ``--grid`` x ``--grid``
   sub-tiles: 2x2 tiles of 16x16 = 1,024 by default) and uploads it to a local S3
   server (moto on 127.0.0.1).
2. Puts a fault-injecting proxy (``tests/fixtures/faults.py``) between the pipeline
   and that server: each request to the input data is answered, at random
   (``--s3-fault-rate`` of the requests), ``503 SlowDown``, ``500 InternalError``, a stall
   past the client's read timeout or a truncated body.
3. Starts a temporary Prefect server and a local Ray (2 fake GPUs) and runs the
   pipeline (``constellation run``) as separate driver processes joining that Ray,
   with the mock backend (``--fail-rate``: sub-tiles whose inference raises, every
   time, so Prefect retries them and they end ``failed``) while a thread kills
   random Ray workers in the middle of a sub-tile (``--worker-kills``):

   a. the first run is killed (SIGKILL) once ``--kill-at`` of the sub-tiles have a
      result;
   b. the second run is killed as soon as its assembly has written data files
      (between writing data files and committing, or between commits);
   c. the third run completes.

4. Reads the Iceberg catalog and counts, per prepared sub-tile: its rows in
   ``subtiles`` (exactly one expected) and its rows in ``sources`` against the rows
   of its ``result.parquet``; object ids must be unique.

Prints ``name=value`` lines: ``soak_subtiles``, ``faults_injected`` and per kind
``faults_app`` (failed inference attempts), ``faults_worker_kill``, ``faults_s3``
(and ``faults_s3_<kind>``), ``faults_pipeline_kill``, ``faults_assembly_kill``;
``subtiles_failed`` / ``subtiles_failed_expected``; ``rows_expected``,
``rows_catalog``, ``rows_lost``, ``rows_duplicated``, ``subtiles_missing``,
``subtiles_duplicated``; ``s3_requests``; per phase wall times; ``wall_s``.
Exits with status 1 if anything was lost or duplicated.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # tests.fixtures.faults: the fault proxy and the worker killer

BUCKET = "soak-data"


# --------------------------------------------------------------------------- accounting


def account(settings: Any) -> dict[str, int]:
    """Compare the catalog with the prepared sub-tiles and their result files.

    Expected: one ``subtiles`` row per prepared sub-tile (a manifest under the work
    root) and, per sub-tile, one ``sources`` row per source of its ``result.parquet``
    (none unless its status is ``ok``), matched by object id. A source row is *lost*
    when its object id is missing under its sub-tile; a catalog row is *duplicated*
    when it repeats an expected row or is not expected under its sub-tile at all (an
    object committed under two sub-tiles counts once). Returns the counts printed by
    the soak.
    """
    from constellation.catalog.iceberg import KEY_COLUMN, SOURCES, SUBTILES, open_catalog
    from constellation.catalog.iceberg import subtile_key as key_of
    from constellation.io.storage import storage_from_config
    from constellation.manifest import layout
    from constellation.results.store import read_result

    storage = storage_from_config(settings.runtime.storage)
    work = settings.runtime.storage.work_uri
    dirs = [u.rsplit("/", 1)[0] for u in storage.glob(layout.manifest_pattern(work))]

    def expected_ids(directory: str) -> tuple[int, set[int], str]:
        tile = int(directory.rstrip("/").split("/")[-3])
        row, col = (int(v[1:]) for v in directory.rstrip("/").split("/")[-1].split("_"))
        url = layout.join(directory, layout.RESULT_NAME)
        if not storage.exists(url):
            return key_of(tile, row, col), set(), "none"
        result = read_result(storage, url)
        status = str(result.row["status"])
        ids = set(result.sources.column("object_id").to_pylist()) if status == "ok" else set()
        return key_of(tile, row, col), ids, status

    with ThreadPoolExecutor(8) as pool:
        found = list(pool.map(expected_ids, dirs))
    expected = {k: ids for k, ids, _ in found}
    statuses = Counter(s for _, _, s in found)

    catalog = open_catalog(settings)
    sub = catalog.read(SUBTILES, [KEY_COLUMN])
    src = catalog.read(SOURCES, [KEY_COLUMN, "object_id"])
    sub_counts = Counter(sub.column(KEY_COLUMN).to_pylist())
    pairs = Counter(
        zip(src.column(KEY_COLUMN).to_pylist(), src.column("object_id").to_pylist(), strict=True)
    )
    lost = sum(1 for k, ids in expected.items() for oid in ids if (k, oid) not in pairs)
    # extra copies of an expected row; rows nobody expects under that sub-tile
    duplicated = sum(n - 1 if oid in expected.get(k, ()) else n for (k, oid), n in pairs.items())
    return {
        "soak_subtiles": len(expected),
        "subtiles_ok": statuses.get("ok", 0),
        "subtiles_failed": statuses.get("failed", 0),
        "subtiles_without_result": statuses.get("none", 0),
        "subtiles_missing": sum(1 for k in expected if k not in sub_counts),
        "subtiles_duplicated": sum(c - 1 for c in sub_counts.values() if c > 1),
        "subtiles_unexpected": sum(1 for k in sub_counts if k not in expected),
        "rows_expected": sum(len(ids) for ids in expected.values()),
        "rows_catalog": src.num_rows,
        "rows_lost": lost,
        "rows_duplicated": duplicated,
    }


def failing_subtiles(settings: Any, tiles: list[int]) -> set[tuple[int, int, int]]:
    """The sub-tiles of ``tiles`` the mock backend fails (its draw is below ``fail_rate``)."""
    import numpy as np

    from constellation.inference.mock import subtile_seed

    rate = settings.science.backend.mock.fail_rate
    grid = settings.science.tiling
    out = set()
    for tile in tiles:
        for r in range(grid.n_rows):
            for c in range(grid.n_cols):
                seed = subtile_seed(tile, r, c, settings.preparation_hash)
                if np.random.default_rng(seed).random() < rate:
                    out.add((tile, r, c))
    return out


# --------------------------------------------------------------------------- set-up


def simulate(root: Path, tiles: str, density: float, seed: int) -> None:
    from constellation.io.storage import Storage
    from constellation.simulate import FieldSpec
    from constellation.simulate.run import simulate_field

    n_ra, n_dec = (int(v) for v in tiles.lower().split("x"))
    spec = FieldSpec(
        n_tiles_ra=n_ra, n_tiles_dec=n_dec, density_per_arcmin2=density, light_binning=64,
        seed=seed,
    )  # fmt: skip
    simulate_field(spec, Storage(), str(root))


def start_s3(root: Path) -> tuple[Any, str]:
    """A moto S3 server on 127.0.0.1 holding the field (public-read) in ``BUCKET``."""
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "NO_PROXY": "127.0.0.1,localhost",
    }.items():
        os.environ[name] = value
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    files = sorted(p for p in root.rglob("*") if p.is_file())

    def put(path: Path) -> None:
        client.put_object(
            Bucket=BUCKET, Key=path.relative_to(root).as_posix(), Body=path.read_bytes(),
            ACL="public-read",
        )  # fmt: skip

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(put, files))
    return server, endpoint


def write_config(path: Path, args: argparse.Namespace, endpoint: str, work: Path) -> Path:
    import ray
    import yaml

    doc = {
        "science": {
            "tiling": {"n_rows": args.grid, "n_cols": args.grid},
            "backend": {
                "name": "mock",
                "mock": {"sleep_s": args.sleep_s, "fail_rate": args.fail_rate},
            },
        },
        "runtime": {
            "storage": {
                "data_uri": f"s3://{BUCKET}",
                "work_uri": str(work),
                "endpoint_url": endpoint,
                "max_attempts": 6,
                "base_delay_s": 0.05,
                "max_delay_s": 1.0,
                "connect_timeout_s": 2.0,
                "read_timeout_s": 2.0,
            },
            "ray": {
                "address": ray.get_runtime_context().gcs_address,
                "num_gpus_per_task": 1,
                "num_cpus_per_task": 0.5,
            },
            "max_in_flight": 16,
            "task_retries": 1,
        },
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


# --------------------------------------------------------------------------- phases


def _count(pattern: str, root: Path) -> int:
    return sum(1 for _ in root.glob(pattern))


def run_driver(
    config: Path,
    run_id: str,
    log: Path,
    api_url: str,
    kill_when: Callable[[], bool] | None = None,
    timeout_s: float = 3600,
) -> tuple[int | None, float]:
    """``constellation run`` as a separate driver process; SIGKILLed once ``kill_when()``
    is true. Returns (exit code, or None when killed; seconds)."""
    exe = Path(sys.executable).with_name("constellation")
    cmd = [str(exe), "--config", str(config), "run", "--run-id", run_id, "--no-report"]
    env = dict(os.environ, PREFECT_API_URL=api_url)
    t0 = time.perf_counter()
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            while proc.poll() is None:
                if kill_when is not None and kill_when():
                    proc.send_signal(signal.SIGKILL)
                    proc.wait(timeout=60)
                    return None, time.perf_counter() - t0
                if time.perf_counter() - t0 > timeout_s:
                    raise SystemExit(f"{run_id}: no end after {timeout_s:.0f} s; see {log}")
                time.sleep(0.02)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return proc.returncode, time.perf_counter() - t0


def failed_attempts() -> int:
    """Inference attempts that failed (Prefect task runs of ``infer-subtile``)."""
    from prefect import get_client
    from prefect.client.schemas.filters import (
        TaskRunFilter,
        TaskRunFilterName,
        TaskRunFilterState,
        TaskRunFilterStateName,
    )

    total, offset = 0, 0
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_task_runs(
                task_run_filter=TaskRunFilter(
                    name=TaskRunFilterName(like_="infer-subtile"),
                    state=TaskRunFilterState(name=TaskRunFilterStateName(any_=["Failed"])),
                ),
                limit=200,
                offset=offset,
            )
            total += sum(max(1, int(r.run_count)) for r in runs)
            if len(runs) < 200:
                return total
            offset += 200


# --------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--tiles", default="2x2", help="field size: tiles east-west x rings")
    parser.add_argument("--grid", type=int, default=16, help="sub-tiles per tile side")
    parser.add_argument("--density", type=float, default=5.0, help="sources per arcmin²")
    parser.add_argument("--fail-rate", type=float, default=0.01, help="mock fail_rate")
    parser.add_argument("--s3-fault-rate", type=float, default=0.05, help="faults per request")
    parser.add_argument("--worker-kills", type=int, default=12, help="Ray workers to kill")
    parser.add_argument("--kill-at", type=float, default=0.3, help="kill run 1 at this fraction")
    parser.add_argument("--sleep-s", type=float, default=0.02, help="mock time per sub-tile")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="keep everything here")
    args = parser.parse_args()

    import ray
    from prefect.testing.utilities import prefect_test_harness

    from constellation.config import load_config
    from flows.common import prefect_api_url
    from tests.fixtures.faults import FaultProxy, WorkerKiller

    t_start = time.perf_counter()
    figures: dict[str, Any] = {}
    tmp = tempfile.TemporaryDirectory(prefix="constellation-soak-")
    base = args.out or Path(tmp.name)
    base.mkdir(parents=True, exist_ok=True)
    data, work = base / "input", base / "work"

    t = time.perf_counter()
    simulate(data, args.tiles, args.density, args.seed)
    server, moto_url = start_s3(data)
    figures["setup_s"] = time.perf_counter() - t
    r = args.s3_fault_rate
    rates = {"503": 0.5 * r, "500": 0.2 * r, "truncate": 0.2 * r, "stall": 0.1 * r}
    proxy = FaultProxy(moto_url, rates=rates, stall_s=5.0, seed=args.seed).start()
    ray_tmp = base / "ray"
    ray_tmp.mkdir(exist_ok=True)
    os.environ["RAY_TMPDIR"] = str(ray_tmp)
    killer = WorkerKiller(args.worker_kills, interval_s=3.0, jitter=True, seed=args.seed)
    ok = False
    try:
        with prefect_test_harness(server_startup_timeout=120):
            api = prefect_api_url()
            assert api
            ray.init(
                num_cpus=2, num_gpus=2, include_dashboard=False, logging_level="WARNING",
                runtime_env={"env_vars": {"PREFECT_API_URL": api, "DO_NOT_TRACK": "1"}},
            )  # fmt: skip
            config = write_config(base / "config.yaml", args, proxy.url, work)
            settings = load_config(config)
            n_expected = args.grid**2 * len(_tile_ids(data))
            results = "tiles/*/subtiles/*/_RESULT.json"
            killer.start()

            # a. killed mid-inference
            code, secs = run_driver(
                config, "soak-a", base / "run-a.log", api,
                kill_when=lambda: _count(results, work) >= args.kill_at * n_expected,
            )  # fmt: skip
            figures["run_a_s"] = secs
            figures["faults_pipeline_kill"] = int(code is None)
            if code is not None:
                print(f"run a ended by itself (exit {code}) before being killed", file=sys.stderr)

            # b. killed as soon as its assembly has written data files
            warehouse = work / "catalog" / "warehouse"
            code, secs = run_driver(
                config, "soak-b", base / "run-b.log", api,
                kill_when=lambda: _count("**/data/**/*.parquet", warehouse) > 0,
            )  # fmt: skip
            figures["run_b_s"] = secs
            figures["faults_assembly_kill"] = int(code is None)
            figures["rows_visible_after_assembly_kill"] = _visible_rows(settings)

            # c. the operator reruns the same command
            code, secs = run_driver(config, "soak-c", base / "run-c.log", api)
            figures["run_c_s"] = secs
            figures["run_c_exit"] = code
            killed = killer.stop()

            figures.update(account(settings))
            failing = failing_subtiles(settings, _tile_ids(data))
            figures["subtiles_failed_expected"] = len(failing)
            figures["faults_app"] = failed_attempts()
            ray.shutdown()
    finally:
        killer.stop()
        proxy.stop()
        server.stop()
    figures["faults_worker_kill"] = len(killed)
    s3 = proxy.stats()
    figures["faults_s3"] = s3["injected_total"]
    for kind in sorted(rates):
        figures[f"faults_s3_{kind}"] = s3["injected"].get(kind, 0)
    figures["s3_requests"] = s3["requests"]
    figures["faults_injected"] = (
        figures["faults_app"]
        + figures["faults_worker_kill"]
        + figures["faults_s3"]
        + figures["faults_pipeline_kill"]
        + figures["faults_assembly_kill"]
    )
    figures["wall_s"] = time.perf_counter() - t_start
    figures["cpu_count"] = os.cpu_count()
    order = [
        "soak_subtiles", "faults_injected", "faults_app", "faults_worker_kill", "faults_s3",
        *[f"faults_s3_{k}" for k in sorted(rates)], "faults_pipeline_kill",
        "faults_assembly_kill", "rows_visible_after_assembly_kill", "subtiles_ok",
        "subtiles_failed", "subtiles_failed_expected",
        "subtiles_without_result", "rows_expected", "rows_catalog", "rows_lost",
        "rows_duplicated", "subtiles_missing", "subtiles_duplicated", "subtiles_unexpected",
        "s3_requests", "setup_s", "run_a_s", "run_b_s", "run_c_s", "run_c_exit", "wall_s",
        "cpu_count",
    ]  # fmt: skip
    for name in order:
        value = figures[name]
        print(f"{name}={value:.1f}" if isinstance(value, float) else f"{name}={value}")
    ok = (
        figures["soak_subtiles"] == n_expected
        and figures["rows_lost"] == 0
        and figures["rows_duplicated"] == 0
        and figures["subtiles_missing"] == 0
        and figures["subtiles_duplicated"] == 0
        and figures["subtiles_unexpected"] == 0
        and figures["subtiles_without_result"] == 0
        and figures["subtiles_failed"] == figures["subtiles_failed_expected"]
        and figures["run_c_exit"] in (0, 1)  # 1: validation lists the failed sub-tiles
    )
    if args.out is None:
        tmp.cleanup()
    return 0 if ok else 1


def _visible_rows(settings: Any) -> str:
    """``subtiles/sources`` rows a reader sees now (``-`` for a table not created yet)."""
    from constellation.catalog.iceberg import SOURCES, SUBTILES, open_catalog

    catalog = open_catalog(settings)
    return "/".join(
        str(catalog.count(name)) if catalog.exists(name) else "-" for name in (SUBTILES, SOURCES)
    )


def _tile_ids(data: Path) -> list[int]:
    """Tile ids of the simulated field (its MER catalogs)."""
    import re

    names = (p.name for p in (data / "q1").rglob("EUC_MER_FINAL-CAT_TILE*.fits"))
    return sorted({int(m.group(1)) for n in names if (m := re.search(r"TILE(\d+)", n))})


if __name__ == "__main__":
    sys.exit(main())
