"""What changed since the last run, and which tiles it affects (field reprocessing).

Three kinds of change make a tile stale, and a fourth rule redoes what failed:

* **exposures** — quadrant-index rows added, removed or changed (a new DET file,
  a reprocessed one, a new BKG or PSF): every tile whose reach (core grown by the
  sub-tile margin) meets the changed quadrant's footprint;
* **catalogs** — a MER catalog whose size or version changed since the state
  saved by the previous reprocessing run: its tile and every tile that reads it
  as a neighbour;
* **configuration** — a tile whose prepared sub-tiles carry another science
  config hash, or that was never prepared;
* **failure** — a tile the last run could not finish (not prepared, or a sub-tile
  failed), recorded in the saved state: the changes that made it stale were read,
  and their fingerprints saved, by that run, so without this rule nothing would
  bring it back until its inputs change again.

Pure functions over tables and small dicts, two helpers that read and write the
saved state, and :func:`field_changes` / :func:`record_run` that string them
together for a field (the reprocessing flow and the pipeline call only these).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from constellation.io.registry import read_work_registry
from constellation.io.storage import Storage
from constellation.manifest import layout
from constellation.sky import sky_to_plane
from constellation.sky.registry import TileRegistry

if TYPE_CHECKING:
    from constellation.config import Settings

__all__ = [
    "INDEX_KEY_COLUMNS",
    "FieldChanges",
    "catalog_fingerprints",
    "changed_catalog_tiles",
    "changed_index_rows",
    "field_changes",
    "next_state",
    "ran_before",
    "read_index_keys",
    "read_state",
    "record_run",
    "stale_config_tiles",
    "tiles_touched",
    "write_state",
]

#: Columns whose change makes a quadrant-index row "changed".
INDEX_KEY_COLUMNS = (
    "exposure", "quadrant", "det_url", "det_size", "det_etag", "bkg_url", "psf_url",
    "magzerop", "exptime",
)  # fmt: skip
_FOOTPRINT = ("footprint_ra", "footprint_dec")


def read_index_keys(storage: Storage, url: str) -> pa.Table | None:
    """The key and footprint columns of a quadrant index, or None if there is none."""
    if not storage.exists(url):
        return None
    data = storage.read_bytes(url)
    return pq.read_table(io.BytesIO(data), columns=[*INDEX_KEY_COLUMNS, *_FOOTPRINT])


def _keys(table: pa.Table) -> list[tuple[Any, ...]]:
    cols = [table.column(c).to_pylist() for c in INDEX_KEY_COLUMNS]
    return list(zip(*cols, strict=True))


def changed_index_rows(before: pa.Table | None, after: pa.Table | None) -> pa.Table:
    """Rows present in only one of the two index versions (added, removed or changed)."""
    if before is None and after is None:
        return pa.table({c: pa.array([], pa.list_(pa.float64())) for c in _FOOTPRINT})
    if before is None or after is None:
        only = after if after is not None else before
        assert only is not None
        return only.select(list(_FOOTPRINT))
    kb, ka = _keys(before), _keys(after)
    sb, sa = set(kb), set(ka)
    added = [i for i, k in enumerate(ka) if k not in sb]
    removed = [i for i, k in enumerate(kb) if k not in sa]
    parts = [
        after.take(pa.array(added, pa.int64())).select(list(_FOOTPRINT)),
        before.take(pa.array(removed, pa.int64())).select(list(_FOOTPRINT)),
    ]
    return pa.concat_tables(parts)


def tiles_touched(registry: TileRegistry, footprints: pa.Table, margin_arcmin: float) -> set[int]:
    """Tiles whose reach box meets the bounding box (in the tile's plane) of a footprint."""
    if footprints.num_rows == 0:
        return set()
    ra_lists = footprints.column("footprint_ra").to_pylist()
    dec_lists = footprints.column("footprint_dec").to_pylist()
    counts = np.array([len(v) for v in ra_lists])
    ra = np.concatenate([np.asarray(v, np.float64) for v in ra_lists])
    dec = np.concatenate([np.asarray(v, np.float64) for v in dec_lists])
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    # centre of each footprint, to skip tiles far away before projecting
    cx = np.array([np.mean(v) for v in dec_lists])
    touched: set[int] = set()
    for tile in registry:
        reach = tile.reach_box(margin_arcmin)
        tra, tdec = tile.ra_deg, tile.dec_deg
        near = np.abs(cx - tdec) < 2.0
        if not near.any():
            continue
        x, y = sky_to_plane(ra, dec, tra, tdec)
        with np.errstate(invalid="ignore"):
            xmin = np.minimum.reduceat(x, starts)
            xmax = np.maximum.reduceat(x, starts)
            ymin = np.minimum.reduceat(y, starts)
            ymax = np.maximum.reduceat(y, starts)
        hit = (
            near
            & (xmax >= reach.x_min)
            & (xmin < reach.x_max)
            & (ymax >= reach.y_min)
            & (ymin < reach.y_max)
        )
        if hit.any():
            touched.add(tile.tile_id)
    return touched


def catalog_fingerprints(
    storage: Storage, data_uri: str, tile_ids: Iterable[int]
) -> dict[str, Any]:
    """``{tile_id: {url, size, version}}`` of each tile's MER catalog (None if absent)."""
    from constellation.io.mer_catalogs import find_catalog

    out: dict[str, Any] = {}
    for tid in tile_ids:
        info = find_catalog(storage, data_uri, int(tid))
        if info is None:
            out[str(int(tid))] = None
            continue
        raw = info.raw or {}
        version = info.etag or raw.get("mtime") or raw.get("LastModified")
        out[str(int(tid))] = {"url": info.url, "size": info.size, "version": str(version)}
    return out


def changed_catalog_tiles(
    before: Mapping[str, Any], now: Mapping[str, Any], readers: Mapping[int, Iterable[int]]
) -> set[int]:
    """Tiles affected by catalogs that differ between two fingerprint maps.

    ``readers`` maps a tile to the tiles whose catalogs it reads (itself excluded):
    the neighbours listed by the prepare plan.
    """
    changed = {int(t) for t, fp in now.items() if before.get(t, "absent") != fp}
    affected = set(changed)
    for tile, reads in readers.items():
        if changed.intersection(int(n) for n in reads):
            affected.add(int(tile))
    return affected


def stale_config_tiles(
    storage: Storage,
    work_uri: str,
    tile_ids: Iterable[int],
    preparation_hash: str,
    state: Mapping[str, Any] | None = None,
    config_hash: str | None = None,
) -> set[int]:
    """Tiles never prepared or prepared under another preparation hash; and every tile
    when the last run (``state``) ran under a science configuration other than
    ``config_hash`` (a backend setting changed: manifests stay, results are redone)."""
    tile_ids = [int(t) for t in tile_ids]
    last = (state or {}).get("config_hash")
    if config_hash is not None and last is not None and last != config_hash:
        return set(tile_ids)
    stale: set[int] = set()
    for tid in tile_ids:
        url = layout.done_url(work_uri, int(tid), 0, 0)
        try:
            doc = json.loads(storage.read_bytes(url))
        except (OSError, ValueError):
            stale.add(int(tid))
            continue
        if doc.get("preparation_hash") != preparation_hash:
            stale.add(int(tid))
    return stale


def _state_url(work_uri: str) -> str:
    return layout.join(work_uri, "state", "reprocess.json")


def read_state(storage: Storage, work_uri: str) -> dict[str, Any]:
    """The state saved by the previous reprocessing run (empty if none)."""
    try:
        doc = json.loads(storage.read_bytes(_state_url(work_uri)))
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def write_state(storage: Storage, work_uri: str, state: Mapping[str, Any]) -> None:
    """Save the reprocessing state (atomic write)."""
    payload = json.dumps(state, sort_keys=True, indent=1).encode("utf-8")
    storage.write_bytes(_state_url(work_uri), payload)


def next_state(
    previous: Mapping[str, Any],
    catalogs_now: Mapping[str, Any],
    config_hash: str,
    completed_tiles: Iterable[int] = (),
    failed_tiles: Iterable[int] = (),
) -> dict[str, Any]:
    """The state to save after a run: the catalog fingerprints updated with
    ``catalogs_now``; ``tiles_run``, the tiles whose run finished with no failed
    sub-tile under ``config_hash``, and ``tiles_failed``, those whose last run did not
    finish (both emptied when the configuration changed: then every tile is redone)."""
    catalogs = dict(previous.get("catalogs", {}))
    catalogs.update(catalogs_now)
    same = previous.get("config_hash") == config_hash
    completed = {int(t) for t in completed_tiles}
    failed = {int(t) for t in failed_tiles} - completed
    ran = {int(t) for t in previous.get("tiles_run", [])} if same else set()
    ran = (ran | completed) - failed
    still = {int(t) for t in previous.get("tiles_failed", [])} if same else set()
    still = (still - completed) | failed
    return {
        "catalogs": catalogs, "config_hash": config_hash,
        "tiles_run": sorted(ran), "tiles_failed": sorted(still),
    }  # fmt: skip


def ran_before(state: Mapping[str, Any], config_hash: str, tiles: Iterable[int]) -> bool:
    """Whether every one of ``tiles`` finished a run under ``config_hash`` (per the
    saved ``state``); False for no tiles."""
    wanted = {int(t) for t in tiles}
    if not wanted or state.get("config_hash") != config_hash:
        return False
    return wanted <= {int(t) for t in state.get("tiles_run", [])}


# --------------------------------------------------------------------------- the field


@dataclass(frozen=True)
class FieldChanges:
    """Which tiles of a field changed since the last run, by kind of change."""

    field: list[int]
    changed_index_rows: int
    by_exposures: frozenset[int]
    by_catalogs: frozenset[int]
    by_config: frozenset[int]
    #: tiles the last run did not finish (the state's ``tiles_failed``)
    by_failure: frozenset[int]
    #: the catalog fingerprints now (the field's tiles and the neighbours they read)
    fingerprints: dict[str, Any]
    #: the state the previous run saved
    state: dict[str, Any]

    @property
    def affected(self) -> list[int]:
        """The tiles to redo."""
        return sorted(self.by_exposures | self.by_catalogs | self.by_config | self.by_failure)

    def to_dict(self) -> dict[str, Any]:
        """The counts and tile lists a reprocessing run reports."""
        return {
            "field_tiles": len(self.field),
            "changed_index_rows": self.changed_index_rows,
            "tiles_by_exposures": sorted(self.by_exposures),
            "tiles_by_catalogs": sorted(self.by_catalogs),
            "tiles_by_config": sorted(self.by_config),
            "tiles_by_failure": sorted(self.by_failure),
            "affected": self.affected,
        }


def _readers(
    settings: Settings, registry: TileRegistry, tiles: Iterable[int]
) -> dict[int, list[int]]:
    """Tile -> the neighbour tiles whose catalogs it reads (the prepare stage's plan)."""
    from constellation.stages.prepare import plan

    return {it.tile.tile_id: it.neighbours for it in plan(settings, registry, tiles)}


def field_changes(
    settings: Settings,
    storage: Storage,
    registry: TileRegistry,
    field: Iterable[int],
    index_before: pa.Table | None,
    index_after: pa.Table | None,
) -> FieldChanges:
    """The tiles of ``field`` to redo: those reached by quadrant-index rows that differ
    between ``index_before`` and ``index_after`` (:func:`read_index_keys` before and
    after the index update), those reading a MER catalog that changed since the saved
    state, those last prepared or run under another configuration, and those the last
    run did not finish."""
    work = settings.runtime.storage.work_uri
    tiles = sorted(set(field))
    moved = changed_index_rows(index_before, index_after)
    by_exposures = tiles_touched(registry, moved, settings.science.tiling.margin_arcmin)
    state = read_state(storage, work)
    readers = _readers(settings, registry, tiles)
    wanted = sorted(set(tiles) | {n for v in readers.values() for n in v})
    now = catalog_fingerprints(storage, settings.runtime.storage.data_uri, wanted)
    by_catalogs = changed_catalog_tiles(state.get("catalogs", {}), now, readers) & set(tiles)
    by_config = stale_config_tiles(
        storage, work, tiles, settings.preparation_hash, state, settings.config_hash
    )
    by_failure = {int(t) for t in state.get("tiles_failed", [])} & set(tiles)
    return FieldChanges(
        tiles, moved.num_rows, frozenset(by_exposures), frozenset(by_catalogs),
        frozenset(by_config), frozenset(by_failure), now, state,
    )  # fmt: skip


def record_run(
    settings: Settings,
    storage: Storage,
    completed: Iterable[int],
    failed: Iterable[int] = (),
    changes: FieldChanges | None = None,
) -> None:
    """Save the baseline the next reprocessing run compares against: the catalog
    fingerprints of the tiles run (``completed`` and ``failed``) and their neighbours;
    that the ``completed`` tiles ran under this configuration; and that the ``failed``
    ones did not finish, so the next run redoes them. ``changes``: the state and
    fingerprints already read by :func:`field_changes` (else they are read here)."""
    work = settings.runtime.storage.work_uri
    done, bad = sorted(set(completed)), sorted(set(failed))
    if changes is None:
        registry = read_work_registry(storage, work)
        readers = _readers(settings, registry, sorted(set(done) | set(bad)))
        wanted = sorted(set(done) | set(bad) | {n for v in readers.values() for n in v})
        now = catalog_fingerprints(storage, settings.runtime.storage.data_uri, wanted)
        state = read_state(storage, work)
    else:
        now, state = changes.fingerprints, changes.state
    write_state(storage, work, next_state(state, now, settings.config_hash, done, bad))
