"""Snapshot expiry and orphan-file removal of the shear tables
(:mod:`constellation.catalog.maintenance` runs them after compaction).

Snapshot expiry (:func:`expire_snapshots`)
    Snapshots older than a cut-off are removed from the table metadata, except the
    ``retain_last`` most recent ancestors of the current snapshot and branch or tag
    heads. pyiceberg 0.12 only edits the metadata; the files that only the expired
    snapshots reached (manifest lists, manifests, data files replaced by later
    commits or by compaction) are then deleted here.

Orphan files (:func:`remove_orphan_files`)
    Files under the table location that no snapshot of the current metadata reaches
    and that are not a metadata file of the table's log: data and manifests of
    commits that never happened (an assembler interrupted between writing its files
    and committing them), and metadata JSON files beyond the table's metadata log.
    Only files older than ``min_age`` are deleted, so that the files of a commit in
    progress are safe.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pyiceberg.exceptions import CommitFailedException
from pyiceberg.manifest import ManifestFile
from pyiceberg.table import Table
from pyiceberg.table.snapshots import Snapshot

from constellation.catalog.iceberg.compaction import delete_paths, in_mb
from constellation.catalog.iceberg.tables import ShearCatalog
from constellation.io.storage import Storage

log = logging.getLogger(__name__)

DEFAULT_SNAPSHOT_MAX_AGE = timedelta(days=7)
"""Snapshots older than this are expired (time travel further back is given up)."""

DEFAULT_RETAIN_LAST = 10
"""The most recent snapshots of the main branch kept whatever their age."""

DEFAULT_ORPHAN_MIN_AGE = timedelta(days=3)
"""Unreferenced files younger than this are kept: they may belong to a commit in
progress (Iceberg's own default for orphan removal)."""


# --------------------------------------------------------------------------- expiry


@dataclass
class ExpireReport:
    """What one snapshot expiry of a table did (or would do, with ``dry_run``)."""

    table: str
    dry_run: bool = False
    snapshots_before: int = 0
    snapshots_after: int = 0
    snapshots_expired: int = 0
    files_deleted: int = 0
    bytes_deleted: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        """One line for humans."""
        verb = "would expire" if self.dry_run else "expired"
        files = "would delete" if self.dry_run else "deleted"
        return (
            f"{self.table}: {verb} {self.snapshots_expired} snapshots "
            f"({self.snapshots_before} -> {self.snapshots_after}); {files} "
            f"{self.files_deleted} files ({in_mb(self.bytes_deleted)}) in {self.seconds:.2f} s"
        )


class _Reach:
    """Files reachable from snapshots, with the manifests' contents cached."""

    def __init__(self, table: Table) -> None:
        self.io = table.io
        self._entries: dict[str, list[tuple[str, int]]] = {}

    def _manifest(self, manifest: ManifestFile) -> list[tuple[str, int]]:
        cached = self._entries.get(manifest.manifest_path)
        if cached is None:
            cached = [
                (e.data_file.file_path, int(e.data_file.file_size_in_bytes))
                for e in manifest.fetch_manifest_entry(self.io, discard_deleted=True)
            ]
            self._entries[manifest.manifest_path] = cached
        return cached

    def files(self, snapshots: Iterable[Snapshot]) -> dict[str, int]:
        """Path -> size (0 when unknown) of every manifest list, manifest and live data
        file of ``snapshots``."""
        out: dict[str, int] = {}
        for snap in snapshots:
            out[snap.manifest_list] = 0
            for manifest in snap.manifests(self.io):
                out[manifest.manifest_path] = int(manifest.manifest_length)
                for path, size in self._manifest(manifest):
                    out[path] = size
        return out


def _to_expire(table: Table, cutoff: datetime, retain_last: int) -> list[Snapshot]:
    """Snapshots older than ``cutoff`` that are neither a branch or tag head nor one of
    the ``retain_last`` most recent ancestors of the current snapshot (itself included)."""
    meta = table.metadata
    keep = {ref.snapshot_id for ref in meta.refs.values()}
    current = table.current_snapshot()
    for _ in range(retain_last):
        if current is None:
            break
        keep.add(current.snapshot_id)
        parent = current.parent_snapshot_id
        current = None if parent is None else meta.snapshot_by_id(parent)
    limit_ms = int(cutoff.timestamp() * 1000)
    return [s for s in meta.snapshots if s.snapshot_id not in keep and s.timestamp_ms < limit_ms]


def expire_snapshots(
    catalog: ShearCatalog,
    name: str,
    *,
    older_than: timedelta = DEFAULT_SNAPSHOT_MAX_AGE,
    retain_last: int = DEFAULT_RETAIN_LAST,
    delete_files: bool = True,
    dry_run: bool = False,
    now: datetime | None = None,
) -> ExpireReport:
    """Expire the snapshots of table ``name`` older than ``older_than`` (see the module
    doc), keeping the ``retain_last`` most recent ancestors of the current snapshot, and
    delete the files only they reached (unless ``delete_files`` is false)."""
    if retain_last < 1:
        raise ValueError(f"retain_last must be >= 1, got {retain_last}")
    if older_than < timedelta(0):
        raise ValueError(f"older_than must not be negative, got {older_than}")
    t0 = time.perf_counter()
    catalog.refresh()
    table = catalog.table(name)
    report = ExpireReport(table=name, dry_run=dry_run)
    report.snapshots_before = len(table.metadata.snapshots)
    expired = _to_expire(table, (now or datetime.now(UTC)) - older_than, retain_last)
    report.snapshots_expired = len(expired)
    report.snapshots_after = report.snapshots_before - len(expired)
    if not expired:
        report.seconds = time.perf_counter() - t0
        return report
    gone: dict[str, int] = {}
    if delete_files:
        expired_ids = {s.snapshot_id for s in expired}
        reach = _Reach(table)
        kept = reach.files(s for s in table.metadata.snapshots if s.snapshot_id not in expired_ids)
        gone = {p: n for p, n in reach.files(expired).items() if p not in kept}
    report.files_deleted = len(gone)
    report.bytes_deleted = sum(gone.values())
    if dry_run:
        report.seconds = time.perf_counter() - t0
        return report
    try:
        table.maintenance.expire_snapshots().by_ids([s.snapshot_id for s in expired]).commit()
    except (CommitFailedException, ValueError) as exc:
        # A concurrent expiry removed some of them first: nothing to clean up here.
        catalog.refresh()
        raise RuntimeError(f"{catalog.identifier(name)}: snapshot expiry failed: {exc}") from exc
    catalog.refresh()
    report.snapshots_after = len(catalog.table(name).metadata.snapshots)
    delete_paths(table, gone)
    report.seconds = time.perf_counter() - t0
    log.info("%s", report.summary())
    return report


# --------------------------------------------------------------------------- orphans


@dataclass
class OrphanReport:
    """Unreferenced files found (and deleted unless ``dry_run``) under a table."""

    table: str
    dry_run: bool = False
    files_listed: int = 0
    orphans: int = 0
    too_young: int = 0
    bytes_deleted: int = 0
    seconds: float = 0.0
    examples: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line for humans."""
        verb = "would delete" if self.dry_run else "deleted"
        return (
            f"{self.table}: {verb} {self.orphans} orphan files ({in_mb(self.bytes_deleted)}) of "
            f"{self.files_listed} listed; {self.too_young} younger than the minimum age kept; "
            f"{self.seconds:.2f} s"
        )


def _modified(raw: Any) -> datetime | None:
    """Modification time from an fsspec ``info`` mapping (local ``mtime``, S3
    ``LastModified``)."""
    value = raw.get("mtime", raw.get("LastModified", raw.get("last_modified")))
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, int | float):
        return datetime.fromtimestamp(float(value), tz=UTC)
    return None


def _normal(url: str) -> str:
    """A URL and a path of the same file compare equal (``file:///a`` == ``/a``)."""
    return url.removeprefix("file://")


def remove_orphan_files(
    catalog: ShearCatalog,
    name: str,
    storage: Storage,
    *,
    min_age: timedelta = DEFAULT_ORPHAN_MIN_AGE,
    dry_run: bool = False,
    now: datetime | None = None,
) -> OrphanReport:
    """Delete the files under table ``name``'s location that nothing references and that
    are older than ``min_age`` (see the module doc); ``storage`` lists them."""
    t0 = time.perf_counter()
    catalog.refresh()
    table = catalog.table(name)
    meta = table.metadata
    referenced = {_normal(p) for p in _Reach(table).files(meta.snapshots)}
    referenced.add(_normal(table.metadata_location))
    referenced.update(_normal(entry.metadata_file) for entry in meta.metadata_log)
    report = OrphanReport(table=name, dry_run=dry_run)
    limit = (now or datetime.now(UTC)) - min_age
    location = meta.location.rstrip("/")
    listed = storage.glob_info(f"{location}/**")
    for info in listed:
        if info.type != "file":
            continue
        report.files_listed += 1
        if _normal(info.url) in referenced:
            continue
        modified = _modified(info.raw)
        if modified is None or modified > limit:
            report.too_young += 1
            continue
        report.orphans += 1
        report.bytes_deleted += int(info.size or 0)
        if len(report.examples) < 5:
            report.examples.append(info.url)
        if not dry_run:
            storage.rm(info.url, missing_ok=True)
    report.seconds = time.perf_counter() - t0
    log.info("%s", report.summary())
    return report
