"""Assemble flow: commit the sub-tile results into the Iceberg shear catalog, then
validate it and draw the QA figures."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.common import (
    end_state,
    load_settings,
    new_run_id,
    settings_from_json,
    settings_json,
    storage_for,
)

__all__ = ["assemble_catalog", "assemble_task", "report_task", "validate_task"]


@task(name="assemble", cache_policy=NO_CACHE, persist_result=False, retries=2)
def assemble_task(payload: str, tiles: list[int] | None, run_id: str) -> dict[str, Any]:
    """Commit pending results (batched, idempotent; :class:`constellation.stages.assemble.
    AssembleStage` under the drivers' error rule). Raises with the CLI's message when the
    catalog cannot be opened or written; results that could not be read are logged (the
    validation that follows reports their sub-tiles as missing)."""
    from constellation.stages import assemble as stage
    from constellation.stages.base import Failure, run_guarded

    settings = settings_from_json(payload)
    (item,) = stage.plan(tiles, run_id)
    outcome = run_guarded(stage.AssembleStage(settings), item, storage_for(payload))
    if isinstance(outcome, Failure):
        raise RuntimeError(outcome.error)
    assert isinstance(outcome, stage.AssembleOutcome)
    if outcome.error:
        get_run_logger().warning("assemble: %s", outcome.error)
    return asdict(outcome.report)


@task(name="validate", cache_policy=NO_CACHE, persist_result=False)
def validate_task(
    payload: str,
    tiles: list[int] | None,
    expect_run: bool = False,
    allow_failed: bool = False,
    allow_unconverged: bool = False,
) -> dict[str, Any]:
    """Validate the catalog against the prepared sub-tiles; return the summary.

    ``expect_run``: every sub-tile row must come from this configuration's backend and
    science config hash (the validation after a run); ``allow_failed``: failed
    sub-tiles are not a violation; ``allow_unconverged``: nor fits that did not converge.
    """
    from constellation.catalog.validate import validate

    settings = settings_from_json(payload)
    report = validate(
        settings,
        tiles=tiles,
        allow_failed=allow_failed,
        allow_unconverged=allow_unconverged,
        expect_backend=settings.science.backend.name if expect_run else None,
        expect_config_hash=settings.config_hash if expect_run else None,
    )
    return {
        "ok": report.ok,
        "summary": report.summary(),
        "violations": report.n_violations,
        "problems": [
            f"{v.kind} ({v.count}): {v.detail}" + (f", e.g. {v.examples[0]}" if v.examples else "")
            for v in report.violations
        ],
    }


@task(name="report", cache_policy=NO_CACHE, persist_result=False)
def report_task(payload: str, out: str | None = None) -> dict[str, Any]:
    """Write the QA figures and summary; return their paths."""
    from constellation.catalog.report import make_report

    result = make_report(settings_from_json(payload), out=out)
    return {"shear_map": str(result.shear_map), "summary": str(result.summary)}


@flow(name="assemble-catalog", log_prints=False, persist_result=False)
def assemble_catalog(
    config: str | None = None, tiles: list[int] | None = None, run_id: str | None = None
) -> dict[str, Any]:
    """Commit the results of ``tiles`` (default: all) into the catalog and validate it;
    the flow run ends Failed, with the validation's summary as its message, when the
    validation fails."""
    log = get_run_logger()
    payload = settings_json(load_settings(config))
    assembled = assemble_task(payload, tiles, run_id or new_run_id())
    validated = validate_task(payload, tiles)
    log.info("%s", validated["summary"])
    out = {"assemble": assembled, "validate": validated}
    return end_state(out, None if validated["ok"] else str(validated["summary"]))
