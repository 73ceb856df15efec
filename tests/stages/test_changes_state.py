"""The saved run state: which tiles finished a run under which configuration (what lets a
rerun start without Ray and the preflight)."""

from __future__ import annotations

import json
from pathlib import Path

from constellation.io.storage import Storage
from constellation.manifest import layout
from constellation.stages.changes import next_state, ran_before, stale_config_tiles


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
