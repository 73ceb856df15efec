"""Two assemblers at once (two threads, each with its own catalog connection, on one
SQLite catalog, overlapping tiles): every sub-tile and every source ends up exactly once."""

from __future__ import annotations

import threading
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pyarrow.compute as pc

from constellation.catalog.assemble import assemble
from constellation.catalog.iceberg import KEY_COLUMN, SOURCES, SUBTILES
from constellation.config import load_config
from tests.catalog.conftest import make_field


def _race(config: Path, selections: list[list[int]]) -> list[dict[str, Any]]:
    barrier = threading.Barrier(len(selections))
    reports: list[dict[str, Any]] = []
    errors: list[BaseException] = []

    def assembler(tiles: list[int]) -> None:
        try:
            settings = load_config(config)  # its own catalog and SQLite connection
            barrier.wait(timeout=60)
            report = assemble(settings, tiles=tiles, batch_size=4, workers=2)
            reports.append(asdict(report))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=assembler, args=(sel,)) for sel in selections]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    return reports


def test_two_concurrent_assemblers_lose_and_duplicate_nothing(tmp_path: Path) -> None:
    field = make_field(tmp_path / "c", n_tiles=3)
    field.write(n_sources=4)
    ids = [t.tile_id for t in field.tiles]
    field.catalog().table(SOURCES)  # tables exist before the race (creation is tested apart)
    field.catalog().table(SUBTILES)
    # Both assemble the first two tiles in the same order (racing for the same sub-tiles,
    # batch after batch); one of them also the third.
    reports = _race(field.config_path, [ids, ids[:2]])
    assert sorted(r["found"] for r in reports) == [32, 48]
    for r in reports:  # each commits (or finds committed) all of its sub-tiles
        assert r["subtiles_committed"] + r["skipped_unchanged"] == r["found"]

    cat = field.catalog()
    sub = cat.read(SUBTILES)
    src = cat.read(SOURCES)
    assert sub.num_rows == 48
    assert pc.count_distinct(sub.column(KEY_COLUMN)).as_py() == 48
    assert src.num_rows == 48 * 4
    assert pc.count_distinct(src.column("object_id")).as_py() == 48 * 4
    # A later run finds everything committed.
    again = assemble(field.settings)
    assert again.skipped_unchanged == 48
    assert again.subtiles_committed == 0
