"""The saved run state: which tiles finished a run under which configuration (what lets a
rerun start without Ray and the preflight)."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

from constellation.io.registry import read_work_registry
from constellation.io.storage import Storage
from constellation.manifest import layout
from constellation.stages.changes import (
    FieldChanges,
    field_changes,
    next_state,
    ran_before,
    record_run,
    stale_config_tiles,
)
from tests.fixtures.fields import PreparedField


def test_completed_tiles_accumulate_under_one_configuration() -> None:
    first = next_state({}, {"1": {"size": 10}}, "hashA", [1, 2])
    second = next_state(first, {"3": {"size": 5}}, "hashA", [3])
    assert second["tiles_run"] == [1, 2, 3]
    assert second["catalogs"] == {"1": {"size": 10}, "3": {"size": 5}}
    assert ran_before(second, "hashA", [1, 3])
    assert not ran_before(second, "hashA", [1, 4])  # tile 4 never ran
    assert not ran_before(second, "hashA", [])


def test_a_new_configuration_forgets_the_tiles_run_before() -> None:
    state = next_state({}, {}, "hashA", [1, 2])
    changed = next_state(state, {}, "hashB", [2])
    assert changed["tiles_run"] == [2]
    assert not ran_before(changed, "hashA", [2])  # the state is about hashB now
    assert ran_before(changed, "hashB", [2])
    assert not ran_before(changed, "hashB", [1])


def test_a_run_with_failures_adds_no_tile() -> None:
    state = next_state({}, {}, "hashA", [1])
    after_failure = next_state(state, {"2": {"size": 1}}, "hashA", [])
    assert after_failure["tiles_run"] == [1]
    assert not ran_before(after_failure, "hashA", [1, 2])
    assert not ran_before({}, "hashA", [1])  # no state: never ran


def test_stale_tiles_by_preparation_and_by_configuration(tmp_path: Path) -> None:
    """A tile is redone for its configuration when it was prepared under another
    preparation hash (or never), and every tile is when the last run ran under another
    science configuration (a backend setting changed: same manifests, new results)."""
    work = str(tmp_path)
    for tile, prep in ((1, "prepA"), (2, "prepB")):
        url = Path(layout.done_url(work, tile, 0, 0))
        url.parent.mkdir(parents=True)
        url.write_text(json.dumps({"preparation_hash": prep}))
    storage = Storage()
    assert stale_config_tiles(storage, work, [1, 2, 3], "prepA") == {2, 3}  # 3: never
    state = next_state({}, {}, "hashA", [1])
    assert stale_config_tiles(storage, work, [1, 2], "prepA", state, "hashA") == {2}
    assert stale_config_tiles(storage, work, [1, 2], "prepA", state, "hashB") == {1, 2}
    assert stale_config_tiles(storage, work, [1], "prepA", {}, "hashB") == set()  # no run yet


def test_failed_tiles_leave_tiles_run_until_a_run_finishes_them() -> None:
    state = next_state({}, {}, "hashA", [1, 2, 3])
    failed = next_state(state, {}, "hashA", [1], failed_tiles=[2])
    assert failed["tiles_run"] == [1, 3]
    assert failed["tiles_failed"] == [2]
    assert not ran_before(failed, "hashA", [2])
    again = next_state(failed, {}, "hashA", [3], failed_tiles=[4])
    assert again["tiles_failed"] == [2, 4]  # 2 is still not finished
    fixed = next_state(again, {}, "hashA", [2, 4])
    assert fixed["tiles_failed"] == []
    assert fixed["tiles_run"] == [1, 2, 3, 4]
    # another configuration redoes every tile: the failures are forgotten with the rest
    assert next_state(again, {}, "hashB", [1])["tiles_failed"] == []


def test_a_tile_that_failed_is_redone_although_its_change_was_read(
    prepared_field: PreparedField, tmp_path: Path
) -> None:
    """The run that failed on a tile saved the catalog fingerprints it read: the next
    reprocessing still redoes that tile (and nothing else), until a run finishes it."""
    # a private data root: the catalogs copied (one is rewritten below), the rest linked
    data = tmp_path / "data"
    (data / "q1").mkdir(parents=True)
    for part in (prepared_field.root / "q1").iterdir():
        if part.name == "catalogs":
            shutil.copytree(part, data / "q1" / part.name)
        else:
            (data / "q1" / part.name).symlink_to(part, target_is_directory=True)
    work = prepared_field.copy_work(tmp_path / "work")
    settings = replace(prepared_field, root=data).settings(work)
    storage = Storage()
    registry = read_work_registry(storage, str(work))
    tiles = list(prepared_field.tile_ids)
    bad = tiles[-1]

    def changes() -> FieldChanges:
        return field_changes(settings, storage, registry, tiles, None, None)

    record_run(settings, storage, tiles)
    assert changes().affected == []
    # the bad tile's catalog changes; the run that sees it fails on that tile
    catalog = next((data / "q1" / "catalogs").rglob(f"*TILE{bad}-*.fits"))
    catalog.write_bytes(catalog.read_bytes() + b" " * 2880)
    found = changes()
    assert bad in found.by_catalogs
    record_run(settings, storage, [t for t in found.affected if t != bad], [bad], found)
    after = changes()
    assert not after.by_catalogs  # the change was read and its fingerprint saved
    assert after.by_failure == {bad}
    assert after.affected == [bad]
    assert after.to_dict()["tiles_by_failure"] == [bad]
    record_run(settings, storage, after.affected, [], after)
    assert changes().affected == []
