"""The end-to-end pipeline flow: index -> prepare -> infer (Ray) -> assemble -> validate."""

from __future__ import annotations

import time
from typing import Any

from prefect import flow, get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner

from flows.assemble import assemble_task, report_task, validate_task
from flows.common import load_settings, new_run_id, settings_json
from flows.index import build_index_task, resolve_registry_task
from flows.infer import run_inference
from flows.prepare import run_prepare
from flows.reprocess import save_state

__all__ = ["pipeline", "run_pipeline"]


def run_pipeline(
    config: str | None,
    tiles: list[int] | None,
    run_id: str | None,
    report: bool = True,
    settings: Any | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """The body of :func:`pipeline` (inside a flow run)."""
    log = get_run_logger()
    settings = settings or load_settings(config)
    payload = settings_json(settings)
    rid = run_id or new_run_id()
    times: dict[str, float] = {}

    t = time.perf_counter()
    known = resolve_registry_task(payload, tiles)
    chosen = sorted(set(tiles or settings.runtime.tiles or known))
    index = build_index_task(payload)
    times["index_s"] = time.perf_counter() - t

    t = time.perf_counter()
    prepared = run_prepare(payload, chosen)
    times["prepare_s"] = time.perf_counter() - t

    t = time.perf_counter()
    inferred = run_inference(settings, chosen, rid, force)
    times["infer_s"] = time.perf_counter() - t

    t = time.perf_counter()
    assembled = assemble_task(payload, chosen, rid)
    validated = validate_task(payload, chosen)
    times["assemble_s"] = time.perf_counter() - t
    figures = report_task(payload) if report else None
    save_state(settings, payload, chosen)  # baseline for the reprocessing flow
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


@flow(
    name="constellation-pipeline",
    task_runner=ThreadPoolTaskRunner(max_workers=4),  # type: ignore[arg-type]
    log_prints=False,
    persist_result=False,
)
def pipeline(
    config: str | None = None,
    tiles: list[int] | None = None,
    run_id: str | None = None,
    report: bool = True,
    force: bool = False,
) -> dict[str, Any]:
    """Run the whole pipeline for ``tiles`` (default: ``runtime.tiles``, else every tile);
    ``force`` re-infers sub-tiles that already have a result."""
    return run_pipeline(config, tiles, run_id, report, force=force)
