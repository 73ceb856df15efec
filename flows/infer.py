"""Infer flow: one Prefect task per sub-tile, run on Ray with GPUs.

Structure of a run::

    infer-subtiles (flow)                 Ray started / joined once
      infer-batch (sub-flow) x ceil(tiles / runtime.tiles_per_subflow)
        infer-subtile (task) x sub-tiles  RayTaskRunner, remote_options(num_gpus=...)

* Each task wraps :func:`constellation.stages.infer.infer_subtile`; its inputs are
  the settings JSON, a manifest URL and the run id.
* Ray workers are reused across tasks (``max_calls=0``) so the backend (SHINE and
  its compiled model) stays warm in each worker process.
* At most ``runtime.max_in_flight`` sub-tiles are submitted at a time (Ray's
  "limit pending tasks" pattern): a flow never floods the scheduler.
* A sub-tile whose inference raises writes a ``failed`` result, and the task
  raises so Prefect retries it (``runtime.task_retries``); a lost worker is
  retried by Ray (``runtime.ray.max_retries``).
* Resumable: sub-tiles with an ``ok`` result from the same manifest bytes and
  backend return ``done`` at once.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import asdict
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from constellation.inference import BackendError, get_backend
from constellation.manifest import layout
from constellation.stages.infer import infer_subtile
from flows.common import (
    load_settings,
    new_run_id,
    prefect_api_url,
    ray_session,
    settings_from_json,
    settings_json,
    storage_for,
)

__all__ = [
    "BackendUnavailableError",
    "SubTileFailedError",
    "infer_batch",
    "infer_subtile_task",
    "infer_subtiles",
]


class SubTileFailedError(RuntimeError):
    """Raised by the task after writing a ``failed`` result, so Prefect retries it."""


class BackendUnavailableError(RuntimeError):
    """The backend cannot be built on the workers (e.g. SHINE not installed there)."""


def _retry_unless_backend_unavailable(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect retry condition: retrying cannot help when the backend cannot be built."""
    try:
        state.result()
    except BackendError:
        return False
    except Exception:
        return True
    return True


@task(
    name="infer-subtile",
    cache_policy=NO_CACHE,
    persist_result=False,
    retry_condition_fn=_retry_unless_backend_unavailable,
)
def infer_subtile_task(payload: str, manifest_url: str, run_id: str, force: bool) -> dict[str, Any]:
    """Infer one sub-tile (see :func:`constellation.stages.infer.infer_subtile`)."""
    settings = settings_from_json(payload)
    outcome = infer_subtile(
        manifest_url,
        storage_for(payload),
        get_backend(settings),
        run_id=run_id,
        healpix_order=settings.science.healpix.source_order,
        partition_order=settings.science.healpix.partition_order,
        skip_done=not force,
        expected_config_hash=settings.config_hash,
    )
    if outcome.status == "failed":
        raise SubTileFailedError(
            f"tile {outcome.tile_id} r{outcome.row}_c{outcome.col}: {outcome.error}"
        )
    return {**asdict(outcome), "node": _node_id()}


def _node_id() -> str | None:
    """The Ray node running this task (None outside Ray)."""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None


def tile_manifests(payload: str, tiles: list[int]) -> list[str]:
    """The prepared manifests of ``tiles`` (one listing per tile)."""
    settings = settings_from_json(payload)
    storage = storage_for(payload)
    work = settings.runtime.storage.work_uri
    urls: list[str] = []
    for tid in tiles:
        urls.extend(sorted(storage.glob(layout.manifest_pattern(work, tid))))
    return urls


def _wait_any(pending: list[Any]) -> list[Any]:
    """Block until at least one of ``pending`` (PrefectRayFutures) is finished; return those."""
    import ray

    refs = {f.wrapped_future: f for f in pending}
    ray.wait(list(refs), num_returns=1)
    # then everything else that is ready too: one pass of the driver loop per wake-up
    ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=0)
    return [refs[r] for r in ready]


@flow(name="infer-batch", log_prints=False, persist_result=False)
def infer_batch(payload: str, tiles: list[int], run_id: str, force: bool = False) -> dict[str, Any]:
    """Infer every prepared sub-tile of ``tiles`` (a sub-flow run on Ray)."""
    from prefect_ray.context import remote_options

    log = get_run_logger()
    settings = settings_from_json(payload)
    ray_cfg = settings.runtime.ray
    urls = tile_manifests(payload, tiles)
    runner = infer_subtile_task.with_options(retries=settings.runtime.task_retries)
    counts: Counter[str] = Counter()
    nodes: Counter[str] = Counter()
    failures: list[str] = []
    broken: list[str] = []
    pending: list[Any] = []
    t0 = time.perf_counter()
    step = max(1, len(urls) // 10)

    def collect(done: list[Any]) -> None:
        for fut in done:
            pending.remove(fut)
            fut.wait()  # the object is ready: this records the final state returned by Ray
            state = fut.state
            if state.is_completed():
                value = fut.result()
                counts[value["status"]] += 1
                nodes[str(value["node"])] += 1
            else:
                counts["failed"] += 1
                message = str(state.message or state.name)
                failures.append(message)
                if "BackendError" in message:
                    broken.append(message)
            finished = sum(counts.values())
            if finished % step == 0 or finished == len(urls):
                log.info(
                    "infer: %d/%d sub-tiles (%s) in %.1f s",
                    finished, len(urls), dict(counts), time.perf_counter() - t0,
                )  # fmt: skip

    with remote_options(
        num_gpus=ray_cfg.num_gpus_per_task,
        num_cpus=ray_cfg.num_cpus_per_task,
        max_retries=ray_cfg.max_retries,
        max_calls=0,
    ):
        for url in urls:
            while len(pending) >= settings.runtime.max_in_flight:
                collect(_wait_any(pending))
            if broken:
                break
            pending.append(runner.submit(payload, url, run_id, force))
        while pending:
            collect(_wait_any(pending))
    if broken:
        raise BackendUnavailableError(
            f"the {settings.science.backend.name!r} backend cannot run on the Ray workers; "
            f"stopped after {sum(counts.values())} of {len(urls)} sub-tiles: {broken[0]}"
        )
    return {
        "subtiles": len(urls),
        "counts": dict(counts),
        "nodes": dict(nodes),
        "failures": failures[:50],
    }


@flow(name="infer-subtiles", log_prints=False, persist_result=False)
def infer_subtiles(
    config: str | None = None,
    tiles: list[int] | None = None,
    run_id: str | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Infer the prepared sub-tiles of ``tiles`` (default: ``runtime.tiles``, else every
    prepared tile) on Ray, in sub-flow runs of ``runtime.tiles_per_subflow`` tiles."""
    settings = load_settings(config)
    return run_inference(settings, tiles, run_id or new_run_id(), force)


def prepared_tiles(payload: str) -> list[int]:
    """Tiles with a prepared sub-tile folder under the work root."""
    settings = settings_from_json(payload)
    storage = storage_for(payload)
    base = layout.join(settings.runtime.storage.work_uri, "tiles")
    found = storage.glob(layout.join(base, "*", "subtiles"))
    return sorted(int(u.rstrip("/").split("/")[-2]) for u in found)


def run_inference(
    settings: Any, tiles: list[int] | None, run_id: str, force: bool = False
) -> dict[str, Any]:
    """The body of :func:`infer_subtiles`, callable from other flows."""
    from flows.runner import SubTileRayTaskRunner

    log = get_run_logger()
    payload = settings_json(settings)
    chosen = sorted(set(tiles or settings.runtime.tiles or prepared_tiles(payload)))
    size = settings.runtime.tiles_per_subflow
    batches = [chosen[i : i + size] for i in range(0, len(chosen), size)]
    totals: Counter[str] = Counter()
    nodes: Counter[str] = Counter()
    failures: list[str] = []
    n = 0
    t0 = time.perf_counter()
    with ray_session(settings, prefect_api_url()):
        for i, batch in enumerate(batches):
            sub = infer_batch.with_options(
                task_runner=SubTileRayTaskRunner(),
                flow_run_name=f"infer-batch-{i + 1}-of-{len(batches)}",
            )
            out = sub(payload, batch, run_id, force)
            n += out["subtiles"]
            totals.update(out["counts"])
            nodes.update(out["nodes"])
            failures.extend(out["failures"])
    seconds = time.perf_counter() - t0
    log.info(
        "inferred %d sub-tiles of %d tiles in %.1f s: %s", n, len(chosen), seconds, dict(totals)
    )
    return {
        "run_id": run_id,
        "tiles": len(chosen),
        "subtiles": n,
        "counts": dict(totals),
        "nodes": dict(nodes),
        "failures": failures[:50],
        "seconds": seconds,
    }


logging.getLogger("ray").setLevel(logging.WARNING)
