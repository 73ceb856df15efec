"""Index flow: tile registry + quadrant index (header reads only; incremental)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from constellation.manifest import layout
from flows.common import load_settings, settings_from_json, settings_json, storage_for

__all__ = ["build_index_task", "index_observations", "resolve_registry_task"]


@task(name="resolve-registry", cache_policy=NO_CACHE, persist_result=False, retries=2)
def resolve_registry_task(payload: str, tiles: list[int] | None = None) -> list[int]:
    """Resolve (or read the cached) tile registry; return its tile ids."""
    from constellation.io.registry import load_or_resolve_registry

    settings = settings_from_json(payload)
    storage = storage_for(payload)
    cache = layout.registry_url(settings.runtime.storage.work_uri)
    mer = layout.join(settings.runtime.storage.data_uri, "q1", "MER")
    registry = load_or_resolve_registry(cache, storage, mer, tiles, skip_missing=True)
    return [int(t) for t in registry.tile_id]


@task(name="build-quadrant-index", cache_policy=NO_CACHE, persist_result=False)
def build_index_task(payload: str, full: bool = False) -> dict[str, Any]:
    """Build or update the quadrant index (:class:`constellation.stages.index.IndexStage`
    under the drivers' error rule); return its summary. Raises ``ValueError`` with the
    CLI's message when nothing could be indexed."""
    from constellation.stages import index as stage
    from constellation.stages.base import Failure, run_guarded

    settings = settings_from_json(payload)
    (item,) = stage.plan(settings, full=full)
    outcome = run_guarded(
        stage.IndexStage(), item, storage_for(payload), retries=settings.runtime.task_retries
    )
    if isinstance(outcome, Failure):
        raise ValueError(outcome.message)
    assert isinstance(outcome, stage.IndexOutcome)
    summary = outcome.summary
    log = get_run_logger()
    for key, problem in sorted(summary.failed.items()):
        log.warning("exposure %s not indexed: %s", key, problem)
    if outcome.status == "failed":
        raise ValueError(outcome.error)
    doc = asdict(summary)
    doc["unmatched"] = len(summary.unmatched)
    doc["incomplete"] = len(summary.incomplete)
    return doc


@flow(name="index-observations", log_prints=False, persist_result=False)
def index_observations(config: str | None = None, full: bool = False) -> dict[str, Any]:
    """Resolve the tile registry and build the quadrant index of the VIS exposures."""
    log = get_run_logger()
    payload = settings_json(load_settings(config))
    tiles = resolve_registry_task(payload)
    summary = build_index_task(payload, full)
    log.info(
        "registry: %d tiles; quadrant index: %d exposures, %d quadrant exposures, "
        "%d DET files read (%d unchanged), %d exposures not indexed (see the warnings) "
        "in %.1f s",
        len(tiles), summary["exposures"], summary["quadrant_exposures"],
        summary["det_read"], summary["det_skipped"], len(summary["failed"]), summary["seconds"],
    )  # fmt: skip
    return {"tiles": len(tiles), "index": summary}
