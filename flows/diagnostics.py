"""Orchestration overhead, measured: Prefect tasks on Ray against plain Ray tasks.

``measure_overhead`` runs ``n`` no-op tasks three ways on the Ray instance this
process is connected to — plain Ray remote functions, prefect-ray's stock
``RayTaskRunner`` and constellation's :class:`~flows.runner.SubTileRayTaskRunner`
— and returns milliseconds per task (submission to result, after a warm-up).
``benchmarks/pipeline.py`` prints them; operators can run it against a cluster.
"""

from __future__ import annotations

import time
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

__all__ = ["measure_overhead", "noop"]


@task(name="noop", cache_policy=NO_CACHE, persist_result=False)
def noop(x: int) -> int:
    """Does nothing: what is left is orchestration cost."""
    return x


def _time_flow(runner: Any, n: int, num_cpus: float) -> float:
    from prefect_ray.context import remote_options

    @flow(name="overhead-probe", task_runner=runner, persist_result=False)
    def probe() -> float:
        with remote_options(num_cpus=num_cpus, max_calls=0):
            [f.result() for f in [noop.submit(i) for i in range(8)]]  # warm the workers
            t0 = time.perf_counter()
            [f.result() for f in [noop.submit(i) for i in range(n)]]
            return time.perf_counter() - t0

    return float(probe()) / n * 1e3


def measure_overhead(n: int = 200, num_cpus: float = 0.5) -> dict[str, float]:
    """Per-task milliseconds: ``plain_ray_ms``, ``prefect_ray_ms``, ``constellation_ms``.

    Ray must already be initialised (the runners then join it).
    """
    import ray
    from prefect_ray import RayTaskRunner

    from flows.runner import SubTileRayTaskRunner

    if not ray.is_initialized():
        raise RuntimeError("measure_overhead needs an initialised Ray (ray.init first)")

    @ray.remote(num_cpus=num_cpus)
    def plain(x: int) -> int:
        return x

    ray.get([plain.remote(i) for i in range(8)])
    t0 = time.perf_counter()
    ray.get([plain.remote(i) for i in range(n)])
    plain_ms = (time.perf_counter() - t0) / n * 1e3
    return {
        "plain_ray_ms": plain_ms,
        "prefect_ray_ms": _time_flow(RayTaskRunner(), n, num_cpus),
        "constellation_ms": _time_flow(SubTileRayTaskRunner(), n, num_cpus),
    }
