"""Prepare flow: per tile, the sub-tile manifests and source tables (idempotent)."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from constellation.io.registry import read_work_registry
from flows.common import load_settings, settings_from_json, settings_json, storage_for

__all__ = ["prepare_tile_task", "prepare_tiles", "run_prepare"]


@task(name="prepare-tile", cache_policy=NO_CACHE, persist_result=False, retries=1)
def prepare_tile_task(payload: str, item_json: str) -> dict[str, Any]:
    """Prepare one tile (see :func:`constellation.stages.prepare.run_one`), through the
    configured storage (endpoint, credentials mode, retries)."""
    from constellation.stages.prepare import PrepareItem, run_one

    item = PrepareItem.model_validate_json(item_json)
    return run_one(item, storage_for(payload)).model_dump()


def run_prepare(payload: str, tiles: list[int] | None) -> dict[str, Any]:
    """Submit one prepare task per tile and gather the results (inside a flow)."""
    from constellation.stages.prepare import plan

    log = get_run_logger()
    settings = settings_from_json(payload)
    registry = read_work_registry(storage_for(payload), settings.runtime.storage.work_uri)
    chosen = tiles or settings.runtime.tiles or [int(t) for t in registry.tile_id]
    items = plan(settings, registry, chosen)
    futures = [prepare_tile_task.submit(payload, item.model_dump_json()) for item in items]
    results = [f.result() for f in futures]
    written = [r["tile_id"] for r in results if r["written"]]
    log.info(
        "prepared %d tiles: %d with sub-tiles (re)written, %d already up to date",
        len(results), len(written), sum(r["skipped"] or not r["written"] for r in results),
    )  # fmt: skip
    return {
        "tiles": [r["tile_id"] for r in results],
        "changed_tiles": written,
        "subtiles": sum(r["subtiles"] for r in results),
        "subtiles_written": sum(r["written"] for r in results),
        "missing_catalog": [r["tile_id"] for r in results if r["missing_catalog"]],
    }


@flow(
    name="prepare-tiles",
    task_runner=ThreadPoolTaskRunner(max_workers=4),  # type: ignore[arg-type]
    log_prints=False,
    persist_result=False,
)
def prepare_tiles(config: str | None = None, tiles: list[int] | None = None) -> dict[str, Any]:
    """Write the sub-tile manifests and source tables of ``tiles`` (default: all)."""
    return run_prepare(settings_json(load_settings(config)), tiles)
