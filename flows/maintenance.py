"""Catalog maintenance flow: compact small data files, expire old snapshots and remove
orphan files, table by table (see constellation.catalog.maintenance and docs/catalog.md).

Safe to run while assemblers commit: compaction rebuilds its commit on a concurrent
writer's snapshot and leaves partitions that writer changed for the next run.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import timedelta
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.common import load_settings, settings_from_json, settings_json, storage_for

__all__ = ["catalog_maintenance", "maintain_table"]


@task(name="maintain-table", cache_policy=NO_CACHE, persist_result=False)
def maintain_table(
    payload: str,
    table: str,
    min_files: int,
    older_than_days: float,
    retain_last: int,
    orphan_min_age_hours: float,
    dry_run: bool,
) -> dict[str, Any]:
    """Compact, expire and remove orphans of one table; the per-step reports."""
    from constellation.catalog.iceberg import open_catalog
    from constellation.catalog.maintenance import maintain

    report = maintain(
        open_catalog(settings_from_json(payload)),
        tables=[table],
        storage=storage_for(payload),
        min_files=min_files,
        older_than=timedelta(days=older_than_days),
        retain_last=retain_last,
        orphan_min_age=timedelta(hours=orphan_min_age_hours),
        dry_run=dry_run,
    )
    for line in report.lines():
        get_run_logger().info("%s", line)
    return {
        "before": asdict(report.before[table]),
        "after": asdict(report.after[table]),
        "compact": asdict(report.compact[table]),
        "expire": asdict(report.expire[table]),
        "orphans": asdict(report.orphans[table]),
        "seconds": report.seconds,
    }


@flow(name="catalog-maintenance", log_prints=False, persist_result=False)
def catalog_maintenance(
    config: str | None = None,
    min_files: int = 2,
    older_than_days: float = 7.0,
    retain_last: int = 10,
    orphan_min_age_hours: float = 72.0,
    dry_run: bool = False,
) -> dict[str, Any]:
    """Maintain both shear tables (``sources`` then ``subtiles``), one task each."""
    from constellation.catalog.maintenance import TABLES

    payload = settings_json(load_settings(config))
    return {
        table: maintain_table(
            payload, table, min_files, older_than_days, retain_last, orphan_min_age_hours, dry_run
        )
        for table in TABLES
    }
