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

What counts as a change is the stages' business
(:func:`constellation.stages.changes.field_changes`); this flow only strings the
stage drivers together.
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
from flows.prepare import failed_tiles_message, run_prepare

__all__ = ["reprocess_field", "save_state"]


def save_state(settings: Any, payload: str, completed: list[int], failed: list[int]) -> None:
    """:func:`constellation.stages.changes.record_run` through the configured storage:
    the tiles a run finished, and those it did not (redone by the next reprocessing)."""
    changes.record_run(settings, storage_for(payload), completed, failed)


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
    found = changes.field_changes(settings, storage, registry, field, before, after)
    affected = found.affected
    log.info(
        "changes: %d quadrant-index rows -> %d tiles; catalogs -> %d tiles; config/new -> "
        "%d tiles; unfinished last run -> %d tiles; %d of %d tiles to redo",
        found.changed_index_rows, len(found.by_exposures), len(found.by_catalogs),
        len(found.by_config), len(found.by_failure), len(affected), len(field),
    )  # fmt: skip
    out: dict[str, Any] = {"run_id": rid, **found.to_dict()}
    completed: list[int] = []
    if affected:
        out["prepare"] = prepared = run_prepare(payload, affected)
        bad = {f["tile_id"] for f in prepared["failed"]}
        todo = [t for t in affected if t not in bad]
        if todo:
            out["infer"] = run_inference(settings, todo, rid)
            out["assemble"] = assemble_task(payload, todo, rid)
        else:
            out["infer"] = {"counts": {}, "causes": [], "subtiles": 0}
        out["validate"] = validate_task(payload, field)
        if not out["infer"]["counts"].get("failed"):
            completed = todo
    failed = [t for t in affected if t not in completed]
    changes.record_run(settings, storage, completed, failed, found)
    if not affected:
        return out
    message = (
        failed_tiles_message(out["prepare"])
        or failed_subtiles_message(out["infer"])
        or (None if out["validate"]["ok"] else str(out["validate"]["summary"]))
    )
    return end_state(out, message)
