"""Infer flow: one Prefect task per sub-tile, run on Ray with GPUs.

Structure of a run::

    infer-subtiles (flow)                 Ray started / joined once, then the preflight
      infer-batch (sub-flow) x ceil(tiles / runtime.tiles_per_subflow)
        infer-subtile (task) x sub-tiles  RayTaskRunner, remote_options(num_gpus=...)

* Before any sub-tile is dispatched, :func:`flows.preflight.preflight` checks that
  the cluster can ever hold a task's resource request and that the backend builds
  on a worker; otherwise the run stops at once with the cause and the fix.
* Each task is the infer stage's ``run_one`` (:class:`constellation.stages.infer.InferStage`);
  its inputs are the settings JSON, a manifest URL and the run id; the manifests are
  listed by the stage's ``plan``.
* Ray workers are reused across tasks (``max_calls=0``) so the backend (SHINE and
  its compiled model) stays warm in each worker process.
* At most ``runtime.max_in_flight`` sub-tiles are submitted at a time (Ray's
  "limit pending tasks" pattern): a flow never floods the scheduler.
* Outcomes are typed (:mod:`constellation.stages.infer`): a ``skipped`` sub-tile
  completes; a ``failed`` one writes its result and fails the task, which Prefect
  retries (``runtime.task_retries``) only when the failure is retryable (I/O); a
  lost worker is retried by Ray (``runtime.ray.max_retries``); a backend that cannot
  run stops the batch. The summary groups failures and skips by cause.
* Resumable: sub-tiles with an ``ok`` or ``skipped`` result from the same manifest
  bytes and backend return ``done`` at once.
* SIGINT / SIGTERM: the sub-tiles in flight are cancelled on Ray (their workers
  killed, so no result is half-written: results are written atomically) and the
  flow runs end ``Cancelled``.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from constellation.inference import BackendUnavailableError, get_backend
from constellation.manifest import layout
from constellation.stages.infer import (
    InferOutcome,
    InferStage,
    OutcomeSummary,
    SubTileFailedError,
    already_done,
    classify,
    plan,
)
from flows.common import (
    STOP_SIGNALS,
    cancellable,
    deferred_stop_signals,
    end_state,
    executor_session,
    failed_subtiles_message,
    load_settings,
    new_run_id,
    prefect_api_url,
    progress,
    settings_from_json,
    settings_json,
    storage_for,
    task_runner,
)

__all__ = [
    "BackendUnavailableError",
    "SubTileFailedError",
    "infer_batch",
    "infer_subtile_task",
    "infer_subtiles",
    "run_inference",
]


def _retry_if_retryable(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect retry condition: only failures that a retry can fix (by exception type)."""
    try:
        state.result()
    except Exception as exc:
        return classify(exc).retryable
    return False


def _task_run_name() -> str:
    """``infer-{tile}-r{row}_c{col}``: the sub-tile a task run is about, in the UI."""
    from prefect.runtime import task_run

    try:
        ident = layout.SubTileId.from_url(str(task_run.parameters.get("manifest_url", "")))
    except ValueError:
        return "infer-subtile"
    return f"infer-{ident.tile_id}-{layout.subtile_name(ident.row, ident.col)}"


@task(
    name="infer-subtile",
    task_run_name=_task_run_name,
    cache_policy=NO_CACHE,
    persist_result=False,
    retry_condition_fn=_retry_if_retryable,
)
def infer_subtile_task(payload: str, manifest_url: str, run_id: str, force: bool) -> dict[str, Any]:
    """Infer one sub-tile (see :func:`constellation.stages.infer.infer_subtile`).

    Returns the outcome (ok, skipped, done); raises :class:`SubTileFailedError` for a
    failed sub-tile (its result is written) and :class:`BackendUnavailableError` when
    the backend cannot run here.
    """
    settings = settings_from_json(payload)
    stage = InferStage.from_settings(settings, get_backend(settings), run_id, force=force)
    outcome = stage.run_one(manifest_url, storage_for(payload))
    if outcome.status == "failed":
        raise SubTileFailedError.from_outcome(outcome)
    if outcome.status == "unavailable":
        raise BackendUnavailableError(outcome.error or "the backend cannot run")
    return {**asdict(outcome), "node": _node_id()}


def _node_id() -> str:
    """The Ray node running this task ("local": the local executor's process)."""
    ray = sys.modules.get("ray")  # the local executor's threads do not import it
    is_initialized = getattr(ray, "is_initialized", None)  # None: being imported
    if ray is None or is_initialized is None or not is_initialized():
        return "local"
    return str(ray.get_runtime_context().get_node_id())


def tile_manifests(payload: str, tiles: list[int]) -> list[str]:
    """The prepared manifests of ``tiles`` (the infer stage's plan)."""
    settings = settings_from_json(payload)
    return plan(storage_for(payload), settings.runtime.storage.work_uri, tiles)


def _wait_any(pending: list[Any], check: Callable[[], None]) -> list[Any]:
    """Block until at least one of ``pending`` (futures of the Ray or the local task
    runner) is finished; return every finished one.

    Waits in slices of half a second, calling ``check`` (which raises on SIGINT /
    SIGTERM, see :func:`flows.common.deferred_stop_signals`) between them.
    """
    if pending and not _on_ray(pending[0]):
        return _wait_any_local(pending, check)
    import ray

    refs = {f.wrapped_future: f for f in pending}
    ready: list[Any] = []
    while not ready:
        check()
        ready, _ = ray.wait(list(refs), num_returns=1, timeout=0.5)
    # then everything else that is ready too: one pass of the driver loop per wake-up
    ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=0)
    return [refs[r] for r in ready]


def _on_ray(fut: Any) -> bool:
    return not isinstance(fut.wrapped_future, concurrent.futures.Future)


def _wait_any_local(pending: list[Any], check: Callable[[], None]) -> list[Any]:
    """:func:`_wait_any` for the local executor's futures (threads of this process)."""
    by_future = {f.wrapped_future: f for f in pending}
    done: set[Any] = set()
    while not done:
        check()
        done, _ = concurrent.futures.wait(
            list(by_future), timeout=0.5, return_when=concurrent.futures.FIRST_COMPLETED
        )
    return [by_future[f] for f in by_future if f in done]


def _cancel(pending: list[Any]) -> None:
    """Cancel sub-tile tasks: on Ray their workers are killed (results are atomic); the
    local executor drops those not started (running ones finish their sub-tile)."""
    for fut in pending:
        try:
            if _on_ray(fut):
                import ray

                ray.cancel(fut.wrapped_future, force=True)
            else:
                fut.wrapped_future.cancel()
        except Exception as exc:  # already finished, or Ray is going away
            logging.getLogger(__name__).debug("cancel: %s", exc)


def _not_done(payload: str, urls: list[str], summary: OutcomeSummary) -> list[str]:
    """The manifests whose sub-tile still needs a run; the others are added to
    ``summary`` as ``done``. A manifest that cannot be read here is left to the task
    (which reports it as the run's outcome)."""
    settings = settings_from_json(payload)
    storage = storage_for(payload)
    todo = []
    for url in urls:
        try:
            done = already_done(
                url, storage, settings.science.backend.name, settings.config_hash,
                settings.preparation_hash,
            )  # fmt: skip
        except (OSError, ValueError):
            done = None
        if done is None:
            todo.append(url)
        else:
            summary.add_outcome(done)
    return todo


def _ray_options(**options: Any) -> Any:
    """prefect-ray's ``remote_options`` block (imported only for the Ray executor)."""
    from prefect_ray.context import remote_options

    return remote_options(**options)


def _record(summary: OutcomeSummary, nodes: Counter[str], fut: Any) -> str:
    """Add one finished future to the summary; return its status."""
    fut.wait()  # the object is ready: this records the final state returned by Ray
    state = fut.state
    if state.is_completed():
        value = dict(fut.result())
        nodes[str(value.pop("node"))] += 1
        summary.add_outcome(InferOutcome(**value))
        return str(value["status"])
    exc = state.result(raise_on_failure=False)
    if not isinstance(exc, BaseException):  # a crashed state without an exception
        summary.add("failed", state.name, str(state.message))
        return "failed"
    verdict = classify(exc)
    status = "unavailable" if verdict.status == "unavailable" else "failed"
    summary.add(status, verdict.cause, str(exc))
    return status


@flow(name="infer-batch", log_prints=False, persist_result=False)
@cancellable
def infer_batch(
    payload: str,
    tiles: list[int],
    run_id: str,
    force: bool = False,
    manifests: list[str] | None = None,
) -> dict[str, Any]:
    """Infer the prepared sub-tiles of ``tiles`` (a sub-flow run on Ray): ``manifests``
    when given (the driver already set aside the done ones), else every sub-tile of
    ``tiles`` not done yet."""
    settings = settings_from_json(payload)
    ray_cfg = settings.runtime.ray
    urls = tile_manifests(payload, tiles) if manifests is None else list(manifests)
    runner = infer_subtile_task.with_options(retries=settings.runtime.task_retries)
    summary = OutcomeSummary()
    todo = urls if force or manifests is not None else _not_done(payload, urls, summary)
    nodes: Counter[str] = Counter()
    pending: list[Any] = []
    unavailable = False
    t0 = time.perf_counter()
    step = max(1, len(urls) // 10)

    def collect(done: list[Any]) -> None:
        nonlocal unavailable
        for fut in done:
            pending.remove(fut)
            unavailable |= _record(summary, nodes, fut) == "unavailable"
            finished = sum(summary.counts.values())
            if finished % step == 0 or finished == len(urls):
                counts = ", ".join(f"{v} {k}" for k, v in sorted(summary.counts.items()))
                progress(
                    f"infer: {finished}/{len(urls)} sub-tiles of {len(tiles)} tile(s) "
                    f"({counts}) in {time.perf_counter() - t0:.1f} s"
                )

    options = (
        _ray_options(
            num_gpus=ray_cfg.num_gpus_per_task,
            num_cpus=ray_cfg.num_cpus_per_task,
            max_retries=ray_cfg.max_retries,
            max_calls=0,
        )
        if settings.runtime.executor == "ray"
        else contextlib.nullcontext()
    )
    try:
        with deferred_stop_signals() as check, options:
            for url in todo:
                while len(pending) >= settings.runtime.max_in_flight:
                    collect(_wait_any(pending, check))
                if unavailable:
                    break
                check()
                pending.append(runner.submit(payload, url, run_id, force))
            if unavailable:
                _cancel(pending)
            while pending:
                collect(_wait_any(pending, check))
    except STOP_SIGNALS:
        _cancel(pending)
        raise
    if unavailable:
        example = next(
            (summary.examples[k] for k in summary.by_cause if k[0] == "unavailable"), "?"
        )
        raise BackendUnavailableError(
            f"the {settings.science.backend.name!r} backend cannot run on the Ray workers; "
            f"stopped after {sum(summary.counts.values())} of {len(urls)} sub-tiles: {example}"
        )
    from prefect.runtime import flow_run

    return {
        "subtiles": len(urls),
        "dispatched": len(todo),
        "nodes": dict(nodes),
        "flow_run_id": str(flow_run.id),
        **summary.to_dict(),
    }


@flow(name="infer-subtiles", log_prints=False, persist_result=False)
@cancellable
def infer_subtiles(
    config: str | None = None,
    tiles: list[int] | None = None,
    run_id: str | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Infer the prepared sub-tiles of ``tiles`` (default: ``runtime.tiles``, else every
    prepared tile) on Ray, in sub-flow runs of ``runtime.tiles_per_subflow`` tiles. The
    flow run ends Failed, its message naming the causes, when a sub-tile failed."""
    settings = load_settings(config)
    out = run_inference(settings, tiles, run_id or new_run_id(), force)
    return end_state(out, failed_subtiles_message(out))


def prepared_tiles(payload: str) -> list[int]:
    """Tiles with a prepared sub-tile folder under the work root."""
    settings = settings_from_json(payload)
    storage = storage_for(payload)
    base = layout.join(settings.runtime.storage.work_uri, "tiles")
    found = storage.glob(layout.join(base, "*", "subtiles"))
    return sorted(layout.tile_id_from_url(u) for u in found)


def run_inference(
    settings: Any, tiles: list[int] | None, run_id: str, force: bool = False, check: bool = True
) -> dict[str, Any]:
    """The body of :func:`infer_subtiles`, callable from other flows.

    Sets aside, here on the driver, the sub-tiles whose final result is written (two
    small reads each, against a task's scheduling and a worker round trip). Only when
    something is left does it start or join Ray, run the preflight unless ``check`` is
    false (the caller ran it; :class:`flows.preflight.PreflightError` when the
    sub-tiles cannot run), and run the batches. The result's ``counts`` are per
    status, ``causes`` the failures and skips grouped by cause (one example each).
    """
    log = get_run_logger()
    payload = settings_json(settings)
    if tiles is None:
        tiles = settings.runtime.tiles or prepared_tiles(payload)
    chosen = sorted(set(tiles))
    summary = OutcomeSummary()
    t0 = time.perf_counter()
    todo: dict[int, list[str]] = {}
    n = 0
    for tid in chosen:
        urls = tile_manifests(payload, [tid])
        n += len(urls)
        left = urls if force else _not_done(payload, urls, summary)
        if left:
            todo[tid] = left
    dispatched = sum(len(v) for v in todo.values())
    if dispatched < n:
        progress(
            f"infer: {n - dispatched} of {n} sub-tiles of {len(chosen)} tile(s) already done "
            "(not dispatched)"
        )
    nodes: Counter[str] = Counter()
    batch_runs: list[str] = []
    if todo:
        _dispatch(settings, payload, todo, run_id, force, check, summary, nodes, batch_runs)
    seconds = time.perf_counter() - t0
    log.info(
        "inferred %d sub-tiles of %d tiles in %.1f s: %s",
        n, len(chosen), seconds, dict(summary.counts),
    )  # fmt: skip
    for line in summary.lines():
        log.warning("infer: %s", line)
    return {
        "run_id": run_id,
        "tiles": len(chosen),
        "subtiles": n,
        "dispatched": dispatched,  # sent to Ray (the others were already done)
        **summary.to_dict(),
        "nodes": dict(nodes),
        "batch_flow_runs": batch_runs,
        "backend": settings.science.backend.name,
        "config_hash": settings.config_hash,
        "seconds": seconds,
    }


def _dispatch(
    settings: Any,
    payload: str,
    todo: dict[int, list[str]],
    run_id: str,
    force: bool,
    check: bool,
    summary: OutcomeSummary,
    nodes: Counter[str],
    batch_runs: list[str],
) -> None:
    """Run the ``todo`` manifests (by tile) on the executor (Ray, or threads here) in
    sub-flow runs of ``runtime.tiles_per_subflow`` tiles, after the preflight when
    ``check``."""
    from flows.preflight import preflight, report_probe

    pending = sorted(todo)
    size = settings.runtime.tiles_per_subflow
    batches = [pending[i : i + size] for i in range(0, len(pending), size)]
    with executor_session(settings, prefect_api_url()):
        if check:
            report_probe(preflight(settings, payload), settings)
        for i, batch in enumerate(batches):
            sub = infer_batch.with_options(
                task_runner=task_runner(settings),
                flow_run_name=f"infer-batch-{i + 1}-of-{len(batches)}",
            )
            out = sub(payload, batch, run_id, force, [u for t in batch for u in todo[t]])
            summary.merge(OutcomeSummary.from_dict(out))
            nodes.update(out["nodes"])
            batch_runs.append(out["flow_run_id"])


logging.getLogger("ray").setLevel(logging.WARNING)
