"""Maintenance of the Iceberg shear catalog: compaction, snapshot expiry, orphan files.

Every assembly commit adds at least one small data file per touched partition and one
snapshot per table; a survey assembled batch after batch (and re-assembled after
reprocessing) accumulates thousands of both. ``docs/catalog.md`` ("Maintenance") has
the commands, the schedule and measured figures.

The steps live with the rest of the pyiceberg code:
:mod:`constellation.catalog.iceberg.compaction` (statistics, compaction) and
:mod:`constellation.catalog.iceberg.expiry` (snapshot expiry, orphan files); this
module runs them per table and re-exports them.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta

from constellation.catalog.iceberg import SOURCES, SUBTILES, ShearCatalog
from constellation.catalog.iceberg.compaction import (
    DEFAULT_MIN_FILES,
    DEFAULT_TARGET_FILE_BYTES,
    READ_GROUP,
    CompactReport,
    TableStats,
    compact_table,
    table_stats,
)
from constellation.catalog.iceberg.expiry import (
    DEFAULT_ORPHAN_MIN_AGE,
    DEFAULT_RETAIN_LAST,
    DEFAULT_SNAPSHOT_MAX_AGE,
    ExpireReport,
    OrphanReport,
    expire_snapshots,
    remove_orphan_files,
)
from constellation.io.storage import Storage

__all__ = [
    "DEFAULT_MIN_FILES",
    "DEFAULT_ORPHAN_MIN_AGE",
    "DEFAULT_RETAIN_LAST",
    "DEFAULT_SNAPSHOT_MAX_AGE",
    "DEFAULT_TARGET_FILE_BYTES",
    "READ_GROUP",
    "TABLES",
    "CompactReport",
    "ExpireReport",
    "MaintenanceReport",
    "OrphanReport",
    "TableStats",
    "compact_table",
    "expire_snapshots",
    "maintain",
    "parse_tables",
    "remove_orphan_files",
    "table_stats",
]

TABLES = (SOURCES, SUBTILES)
"""The tables maintained, in the order they are maintained."""


# --------------------------------------------------------------------------- everything


@dataclass
class MaintenanceReport:
    """One maintenance run over the tables: per table, what each step did."""

    before: dict[str, TableStats] = field(default_factory=dict)
    after: dict[str, TableStats] = field(default_factory=dict)
    compact: dict[str, CompactReport] = field(default_factory=dict)
    expire: dict[str, ExpireReport] = field(default_factory=dict)
    orphans: dict[str, OrphanReport] = field(default_factory=dict)
    seconds: float = 0.0

    def lines(self) -> list[str]:
        """Lines for humans: each table before, every step, each table after."""
        out = [f"before  {s.line()}" for s in self.before.values()]
        for reports in (self.compact, self.expire, self.orphans):
            out.extend(r.summary() for r in reports.values())
        out.extend(f"after   {s.line()}" for s in self.after.values())
        out.append(f"maintenance took {self.seconds:.2f} s")
        return out


def parse_tables(tables: Iterable[str] | None) -> tuple[str, ...]:
    """The tables named (default: both), checked; in maintenance order."""
    if tables is None:
        return TABLES
    names = {str(t) for t in tables}
    unknown = sorted(names - set(TABLES))
    if unknown:
        raise ValueError(f"unknown table(s) {unknown}: expected {SOURCES!r} and/or {SUBTILES!r}")
    return tuple(t for t in TABLES if t in names) or TABLES


def maintain(
    catalog: ShearCatalog,
    *,
    tables: Iterable[str] | None = None,
    compact: bool = True,
    expire: bool = True,
    orphans: bool = True,
    storage: Storage | None = None,
    min_files: int = DEFAULT_MIN_FILES,
    target_file_bytes: int | None = None,
    older_than: timedelta = DEFAULT_SNAPSHOT_MAX_AGE,
    retain_last: int = DEFAULT_RETAIN_LAST,
    orphan_min_age: timedelta = DEFAULT_ORPHAN_MIN_AGE,
    dry_run: bool = False,
) -> MaintenanceReport:
    """Compact, then expire snapshots, then remove orphan files, per table (what the
    ``catalog-maintenance`` flow runs). Orphan removal needs ``storage`` to list files
    (default: local access only)."""
    t0 = time.perf_counter()
    report = MaintenanceReport()
    for name in parse_tables(tables):
        report.before[name] = table_stats(catalog, name)
        if compact:
            report.compact[name] = compact_table(
                catalog, name, min_files=min_files, target_file_bytes=target_file_bytes,
                dry_run=dry_run,
            )  # fmt: skip
        if expire:
            report.expire[name] = expire_snapshots(
                catalog, name, older_than=older_than, retain_last=retain_last, dry_run=dry_run
            )
        if orphans:
            report.orphans[name] = remove_orphan_files(
                catalog, name, storage or Storage(), min_age=orphan_min_age, dry_run=dry_run
            )
        catalog.refresh()
        report.after[name] = table_stats(catalog, name)
    report.seconds = time.perf_counter() - t0
    return report
