"""The end-to-end pipeline flow: preflight -> index -> prepare -> infer (Ray) -> assemble
-> validate -> report.

The preflight (:mod:`flows.preflight`) comes first: a run whose sub-tiles could
never run stops within seconds, before indexing and preparing. The validation at
the end checks *this run's* backend and science configuration: it never passes on
results made by another backend or under another configuration.

The flow run ends ``Failed`` (its message names the causes; its data is the
summary) when a sub-tile failed or the validation failed, unless
``allow_failures``; ``Cancelled`` when stopped by SIGINT / SIGTERM.
"""

from __future__ import annotations

import importlib
import logging
import signal
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

from prefect import flow, get_run_logger
from prefect.exceptions import CancelledRun
from prefect.states import Failed
from prefect.task_runners import ThreadPoolTaskRunner

from flows.assemble import assemble_task, report_task, validate_task
from flows.common import (
    cancellable,
    executor_session,
    failed_subtiles_message,
    last_stop_signal,
    load_settings,
    new_run_id,
    prefect_api_url,
    progress,
    settings_json,
    storage_for,
)
from flows.index import build_index_task, resolve_registry_task
from flows.infer import run_inference
from flows.prepare import failed_tiles_message, run_prepare
from flows.reprocess import save_state

__all__ = [
    "RunEnd",
    "failure_message",
    "import_stage_modules",
    "pipeline",
    "preflight_first",
    "run_here",
    "run_pipeline",
]


def run_pipeline(
    config: str | None,
    tiles: list[int] | None,
    run_id: str | None,
    report: bool = True,
    settings: Any | None = None,
    force: bool = False,
    allow_failures: bool = False,
    allow_unconverged: bool = False,
) -> dict[str, Any]:
    """The body of :func:`pipeline` (inside a flow run)."""
    from flows.preflight import preflight, report_probe

    log = get_run_logger()
    settings = settings or load_settings(config)
    payload = settings_json(settings)
    rid = run_id or new_run_id()
    times: dict[str, float] = {}

    known = resolve_registry_task(payload, tiles)
    chosen = sorted(set(tiles or settings.runtime.tiles or known))
    first = preflight_first(settings, chosen)
    with ExitStack() as stack:
        if first:
            stack.enter_context(executor_session(settings, prefect_api_url()))
            t = time.perf_counter()
            report_probe(preflight(settings, payload), settings)
            times["preflight_s"] = time.perf_counter() - t
        t = time.perf_counter()
        index = build_index_task(payload)
        times["index_s"] = time.perf_counter() - t
        progress(f"index: {index['quadrant_exposures']} quadrant exposures")

        t = time.perf_counter()
        prepared = run_prepare(payload, chosen)
        times["prepare_s"] = time.perf_counter() - t
        progress(f"prepare: {len(chosen)} tiles, {prepared['subtiles']} sub-tiles")
        if prepared["failed"]:  # reported at the end; the other tiles go on
            bad = {f["tile_id"] for f in prepared["failed"]}
            progress(failed_tiles_message(prepared) or "")
            chosen = [t for t in chosen if t not in bad]
            if not chosen:
                raise ValueError(failed_tiles_message(prepared))

        t = time.perf_counter()
        # starts Ray and runs the preflight itself if it was deferred and there is work
        inferred = run_inference(settings, chosen, rid, force, check=not first)
        times["infer_s"] = time.perf_counter() - t

    t = time.perf_counter()
    assembled = assemble_task(payload, chosen, rid)
    validated = validate_task(
        payload,
        chosen,
        expect_run=True,
        allow_failed=allow_failures,
        allow_unconverged=allow_unconverged,
    )
    times["assemble_s"] = time.perf_counter() - t
    progress(
        f"assemble: {assembled['subtiles_committed']} sub-tiles committed; {validated['summary']}"
    )
    figures = report_task(payload) if report else None
    # baseline for the reprocessing flow and for preflight_first
    unprepared = [int(f["tile_id"]) for f in prepared["failed"]]
    if inferred["counts"].get("failed"):
        save_state(settings, payload, [], chosen + unprepared)
    else:
        save_state(settings, payload, chosen, unprepared)
    log.info("run %s: %s", rid, validated["summary"])
    return {
        "run_id": rid,
        "tiles": chosen,
        "index": {k: index[k] for k in ("exposures", "quadrant_exposures", "det_read")},
        "prepare": prepared,
        "infer": inferred,
        "assemble": assembled,
        "validate": validated,
        "report": figures,
        "times": times,
    }


#: What the stages import on first use: healpy (with matplotlib) and pyiceberg take
#: ~4.5 s of the first run of a process on 2 cores.
STAGE_MODULES = (
    "healpy",
    "constellation.io.quadrant_index",
    "constellation.stages.prepare",
    "constellation.catalog.assemble",
    "constellation.catalog.report",
)


def import_stage_modules() -> threading.Thread:
    """Import :data:`STAGE_MODULES` in a background thread, for a caller that waits
    anyway (the CLI, while Prefect's temporary server boots); the stages then find
    them imported. A failed import is left to the stage that needs the module."""

    def run() -> None:
        for name in STAGE_MODULES:
            try:
                importlib.import_module(name)
            except Exception as exc:
                logging.getLogger(__name__).debug("import %s: %s", name, exc)

    thread = threading.Thread(target=run, name="import-stage-modules", daemon=True)
    thread.start()
    return thread


def preflight_first(settings: Any, tiles: list[int] | None) -> bool:
    """Whether a pipeline run of ``tiles`` starts with Ray and the preflight (before
    the index), which stops a run that could never run within seconds.

    A rerun of tiles that all finished a run under this configuration defers them
    until a sub-tile is left to dispatch (most reruns have none: no Ray is started).
    Its index and preparation are then the cheap, incremental kind; a configuration
    or backend change, or a tile not run before, puts the preflight first again.
    ``tiles`` None means ``runtime.tiles``, else every tile of the work registry.
    """
    from constellation.io.registry import read_work_registry
    from constellation.stages import changes

    storage = storage_for(settings_json(settings))
    work = settings.runtime.storage.work_uri
    chosen = tiles or settings.runtime.tiles
    if not chosen:
        try:
            chosen = [int(t) for t in read_work_registry(storage, work).tile_id]
        except (OSError, ValueError):
            return True
    state = changes.read_state(storage, work)
    return not changes.ran_before(state, settings.config_hash, chosen)


def failure_message(out: dict[str, Any]) -> str | None:
    """Why a pipeline run should count as failed (tiles not prepared, failed sub-tiles,
    then a failed validation), or None."""
    failed = failed_tiles_message(out["prepare"]) or failed_subtiles_message(out["infer"])
    if failed is not None:
        return failed
    if not out["validate"]["ok"]:
        return str(out["validate"]["summary"])
    return None


@flow(
    name="constellation-pipeline",
    task_runner=ThreadPoolTaskRunner(max_workers=4),  # type: ignore[arg-type]
    log_prints=False,
    persist_result=False,
)
@cancellable
def pipeline(
    config: str | None = None,
    tiles: list[int] | None = None,
    run_id: str | None = None,
    report: bool = True,
    force: bool = False,
    allow_failures: bool = False,
    allow_unconverged: bool = False,
) -> dict[str, Any]:
    """Run the whole pipeline for ``tiles`` (default: ``runtime.tiles``, else every tile);
    ``force`` re-infers sub-tiles that already have a result; ``allow_failures`` lets the
    run end Completed although sub-tiles failed; ``allow_unconverged`` accepts fits that
    did not converge within their step budget (they stay marked in the catalog)."""
    out = run_pipeline(
        config,
        tiles,
        run_id,
        report,
        force=force,
        allow_failures=allow_failures,
        allow_unconverged=allow_unconverged,
    )
    message = failure_message(out)
    if message is not None and not (allow_failures and out["validate"]["ok"]):
        # the flow run is Failed with the cause as its message; the summary is its data
        return Failed(message=message, data=out)  # type: ignore[return-value]
    return out


@dataclass(frozen=True)
class RunEnd:
    """How an in-process pipeline run ended: ``summary`` (it ran; failures are in it),
    ``error`` (the run raised it), or ``stop_signal`` (cancelled by that signal)."""

    summary: dict[str, Any] | None = None
    error: BaseException | None = None
    stop_signal: int | None = None


def run_here(
    config: str | None,
    *,
    tiles: list[int] | None = None,
    run_id: str | None = None,
    report: bool = True,
    allow_failures: bool = False,
    allow_unconverged: bool = False,
) -> RunEnd:
    """Run :func:`pipeline` in this process and say how it ended (never raises for the
    run's own failures or a stop by signal)."""
    try:
        state = pipeline(
            config=config,
            tiles=tiles,
            run_id=run_id,
            report=report,
            allow_failures=allow_failures,
            allow_unconverged=allow_unconverged,
            return_state=True,
        )
    except (CancelledRun, KeyboardInterrupt):  # before or after the flow run proper
        return RunEnd(stop_signal=last_stop_signal() or int(signal.SIGINT))
    if state.is_cancelled():
        return RunEnd(stop_signal=last_stop_signal() or int(signal.SIGINT))
    result = state.result(raise_on_failure=False)
    if isinstance(result, BaseException):
        return RunEnd(error=result)
    return RunEnd(summary=result)
