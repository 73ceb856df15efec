"""Prepare flow: per tile, the sub-tile manifests and source tables (idempotent).

A thin wrapper over the prepare stage (:mod:`constellation.stages.prepare`) with the
error rule every driver shares (:func:`constellation.stages.base.run_guarded`): a tile
whose inputs are bad is recorded as failed and the other tiles go on; the flow run
ends ``Failed`` naming the tiles, as ``constellation prepare`` exits 1.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from constellation.io.registry import read_work_registry
from flows.common import end_state, load_settings, settings_from_json, settings_json, storage_for

__all__ = ["failed_tiles_message", "prepare_tile_task", "prepare_tiles", "run_prepare"]


@task(name="prepare-tile", cache_policy=NO_CACHE, persist_result=False)
def prepare_tile_task(payload: str, item_json: str) -> dict[str, Any]:
    """Prepare one tile through the configured storage; returns the outcome as a dict:
    the :class:`~constellation.stages.prepare.PrepareResult` fields and ``status``, or a
    :class:`~constellation.stages.base.Failure`'s fields."""
    from constellation.stages.base import run_guarded
    from constellation.stages.prepare import PrepareItem, PrepareResult, PrepareStage

    settings = settings_from_json(payload)
    item = PrepareItem.model_validate_json(item_json)
    outcome = run_guarded(
        PrepareStage(), item, storage_for(payload), retries=settings.runtime.task_retries
    )
    if isinstance(outcome, PrepareResult):
        return {**outcome.model_dump(), "status": outcome.status}
    return {**outcome.to_dict(), "tile_id": item.tile.tile_id}  # type: ignore[attr-defined]


def run_prepare(payload: str, tiles: list[int] | None) -> dict[str, Any]:
    """Submit one prepare task per tile and gather the outcomes (inside a flow)."""
    from constellation.stages.prepare import PrepareResult, plan, summary_line

    log = get_run_logger()
    settings = settings_from_json(payload)
    registry = read_work_registry(storage_for(payload), settings.runtime.storage.work_uri)
    chosen = tiles or settings.runtime.tiles or [int(t) for t in registry.tile_id]
    items = plan(settings, registry, chosen)
    futures = [prepare_tile_task.submit(payload, item.model_dump_json()) for item in items]
    outcomes = [f.result() for f in futures]
    failed = [o for o in outcomes if o["status"] == "failed"]
    fields = set(PrepareResult.model_fields)
    results = [
        PrepareResult.model_validate({k: v for k, v in o.items() if k in fields})
        for o in outcomes
        if o["status"] != "failed"
    ]
    log.info(summary_line(results))
    for o in failed:
        log.error("%s: %s", o["label"], o["error"])
    return {
        "tiles": [r.tile_id for r in results],
        "changed_tiles": [r.tile_id for r in results if r.written],
        "subtiles": sum(r.subtiles for r in results),
        "subtiles_written": sum(r.written for r in results),
        "missing_catalog": [r.tile_id for r in results if r.missing_catalog],
        "failed": [{"tile_id": o["tile_id"], "error": o["message"]} for o in failed],
    }


def failed_tiles_message(prepared: dict[str, Any]) -> str | None:
    """ "N tile(s) not prepared: T (error); ..." for a :func:`run_prepare` result, or None."""
    from constellation.stages.base import failures_line

    failed = prepared.get("failed") or []
    if not failed:
        return None
    return failures_line("tile(s) not prepared", [(f["tile_id"], f["error"]) for f in failed])


@flow(
    name="prepare-tiles",
    task_runner=ThreadPoolTaskRunner(max_workers=4),  # type: ignore[arg-type]
    log_prints=False,
    persist_result=False,
)
def prepare_tiles(config: str | None = None, tiles: list[int] | None = None) -> dict[str, Any]:
    """Write the sub-tile manifests and source tables of ``tiles`` (default: all)."""
    out = run_prepare(settings_json(load_settings(config)), tiles)
    return end_state(out, failed_tiles_message(out))
