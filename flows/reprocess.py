"""Field reprocessing: find what changed since the last run and redo only the affected tiles.

1. the quadrant index is updated incrementally; rows added, removed or changed
   (new or reprocessed exposures, BKG, PSF) mark the tiles their footprints reach;
2. MER catalogs whose size/version differ from the state saved by the previous
   run mark their tile and the tiles that read them as neighbours;
3. tiles prepared under another science config hash (or never) are stale.

The affected tiles are re-prepared (manifests are rewritten only where their
bytes change), re-inferred (sub-tiles with an unchanged manifest are skipped) and
re-assembled (only results whose bytes changed are committed). A run with
nothing changed does no inference and commits nothing.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner

from constellation.io.registry import read_work_registry
from constellation.manifest import layout
from constellation.stages import changes
from flows.assemble import assemble_task, validate_task
from flows.common import (
    end_state,
    failed_subtiles_message,
    load_settings,
    new_run_id,
    settings_json,
    storage_for,
)
from flows.index import build_index_task, resolve_registry_task
from flows.infer import run_inference
from flows.prepare import run_prepare

__all__ = ["reprocess_field", "save_state"]


def save_state(settings: Any, payload: str, tiles: list[int], completed: bool) -> None:
    """Record the catalog fingerprints of ``tiles`` and their neighbours (the baseline
    the next reprocessing run compares against) and, when ``completed`` (no failed
    sub-tile), that ``tiles`` ran under this configuration."""
    from constellation.stages.prepare import plan

    storage = storage_for(payload)
    work = settings.runtime.storage.work_uri
    registry = read_work_registry(storage, work)
    items = plan(settings, registry, tiles)
    wanted = sorted(set(tiles) | {n for it in items for n in it.neighbours})
    now = changes.catalog_fingerprints(storage, settings.runtime.storage.data_uri, wanted)
    state = changes.read_state(storage, work)
    done = tiles if completed else []
    changes.write_state(storage, work, changes.next_state(state, now, settings.config_hash, done))


@flow(
    name="reprocess-field",
    task_runner=ThreadPoolTaskRunner(max_workers=4),  # type: ignore[arg-type]
    log_prints=False,
    persist_result=False,
)
def reprocess_field(
    config: str | None = None, tiles: list[int] | None = None, run_id: str | None = None
) -> dict[str, Any]:
    """Redo the tiles of the field (``tiles``, else ``runtime.tiles``, else all) that changed."""
    from constellation.stages.prepare import plan

    log = get_run_logger()
    settings = load_settings(config)
    payload = settings_json(settings)
    storage = storage_for(payload)
    work = settings.runtime.storage.work_uri
    rid = run_id or new_run_id("reprocess")

    known = resolve_registry_task(payload, tiles)
    field = sorted(set(tiles or settings.runtime.tiles or known))
    registry = read_work_registry(storage, work).subset(field)

    index_url = layout.quadrant_index_url(work)
    before = changes.read_index_keys(storage, index_url)
    build_index_task(payload)
    after = changes.read_index_keys(storage, index_url)
    moved = changes.changed_index_rows(before, after)
    margin = settings.science.tiling.margin_arcmin
    by_exposures = changes.tiles_touched(registry, moved, margin)

    state = changes.read_state(storage, work)
    items = plan(settings, registry, field)
    readers = {it.tile.tile_id: it.neighbours for it in items}
    wanted = sorted({t for t in field} | {n for v in readers.values() for n in v})
    now = changes.catalog_fingerprints(storage, settings.runtime.storage.data_uri, wanted)
    by_catalogs = changes.changed_catalog_tiles(state.get("catalogs", {}), now, readers)
    by_catalogs &= set(field)
    by_config = changes.stale_config_tiles(
        storage, work, field, settings.preparation_hash, state, settings.config_hash
    )

    affected = sorted(by_exposures | by_catalogs | by_config)
    log.info(
        "changes: %d quadrant-index rows -> %d tiles; catalogs -> %d tiles; config/new -> "
        "%d tiles; %d of %d tiles to redo",
        moved.num_rows, len(by_exposures), len(by_catalogs), len(by_config),
        len(affected), len(field),
    )  # fmt: skip
    out: dict[str, Any] = {
        "run_id": rid,
        "field_tiles": len(field),
        "changed_index_rows": moved.num_rows,
        "tiles_by_exposures": sorted(by_exposures),
        "tiles_by_catalogs": sorted(by_catalogs),
        "tiles_by_config": sorted(by_config),
        "affected": affected,
    }
    if affected:
        out["prepare"] = run_prepare(payload, affected)
        out["infer"] = run_inference(settings, affected, rid)
        out["assemble"] = assemble_task(payload, affected, rid)
        out["validate"] = validate_task(payload, field)
    completed = affected if affected and not out["infer"]["counts"].get("failed") else []
    changes.write_state(
        storage, work, changes.next_state(state, now, settings.config_hash, completed)
    )
    if not affected:
        return out
    message = failed_subtiles_message(out["infer"])
    if message is None and not out["validate"]["ok"]:
        message = str(out["validate"]["summary"])
    return end_state(out, message)
