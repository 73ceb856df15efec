"""The end-to-end pipeline flow on a local Ray with fake GPUs, its resume, and field
reprocessing (what changed is redone, nothing else)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from constellation.catalog.iceberg import open_catalog
from constellation.config import load_config
from constellation.manifest import layout
from constellation.results.store import read_marker
from tests.fixtures.fields import PreparedField
from tests.flows.conftest import write_config


@dataclass
class Run:
    config: Path
    data: Path
    work: Path
    first: dict[str, Any]
    second: dict[str, Any]


def _rows(config: Path) -> tuple[int, int]:
    cat = open_catalog(load_config(config))
    return cat.count("subtiles"), cat.count("sources")


@pytest.fixture(scope="module")
def run(
    prefect_api: str, prepared_field: PreparedField, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Run]:
    """The pipeline twice on 2 tiles. The first run starts (and stops) its own local Ray
    from the configuration, as ``constellation run`` does; the later flow runs of this
    module join one Ray started here (a Ray start and stop costs ~5-10 s on 2 cores)."""
    import ray

    from constellation.inference import clear_backends
    from flows.pipeline import pipeline

    clear_backends()
    base = tmp_path_factory.mktemp("pipeline")
    data = base / "input"
    shutil.copytree(prepared_field.root, data)
    work = base / "work"
    config = write_config(base / "config.yaml", data, work)
    tiles = list(prepared_field.tile_ids[:2])  # 32 sub-tiles keep the suite quick
    first = pipeline(config=str(config), tiles=tiles, run_id="first")
    assert not ray.is_initialized()  # the run stopped the Ray it started
    ray.init(
        num_cpus=2, num_gpus=2, include_dashboard=False, logging_level="WARNING",
        runtime_env={"env_vars": {"PREFECT_API_URL": prefect_api, "DO_NOT_TRACK": "1"}},
    )  # fmt: skip
    try:
        second = pipeline(config=str(config), tiles=tiles, run_id="second", report=False)
        yield Run(config, data, work, first, second)
    finally:
        ray.shutdown()


def test_pipeline_runs_every_subtile_once_on_a_gpu(run: Run) -> None:
    infer = run.first["infer"]
    assert infer["subtiles"] == 32
    assert infer["counts"] == {"ok": 32}
    assert sum(infer["nodes"].values()) == 32  # one completed task per sub-tile
    assert run.first["validate"]["ok"], run.first["validate"]["summary"]
    assert Path(run.first["report"]["shear_map"]).stat().st_size > 10_000
    for tile in run.first["tiles"]:
        for r in range(4):
            for c in range(4):
                marker = read_marker_at(run.work, tile, r, c)
                assert marker.status == "ok"
                assert marker.run_id == "first"


def read_marker_at(work: Path, tile: int, row: int, col: int) -> Any:
    from constellation.io.storage import Storage

    marker = read_marker(Storage(), layout.subtile_dir(str(work), tile, row, col))
    assert marker is not None
    return marker


def test_rerun_does_no_inference_and_adds_no_rows(run: Run) -> None:
    assert run.second["infer"]["counts"] == {"done": 32}
    # found done on the driver: nothing was sent to Ray
    assert (run.first["infer"]["dispatched"], run.second["infer"]["dispatched"]) == (32, 0)
    # a rerun of tiles that ran under the same configuration defers the preflight until
    # a sub-tile is left to dispatch: none here, so none ran
    assert "preflight_s" in run.first["times"]
    assert "preflight_s" not in run.second["times"]
    assert run.second["assemble"]["commits"] == 0
    assert run.second["assemble"]["subtiles_committed"] == 0
    n_sub, n_src = _rows(run.config)
    assert n_sub == 32
    assert n_src == run.first["assemble"]["sources_committed"]
    assert run.second["validate"]["ok"]


def test_task_runs_are_recorded_in_prefect(run: Run, prefect_api: str) -> None:
    from prefect import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_="infer-1")),
            limit=200,
        )
    # the 32 sub-tiles of the first pipeline run (the second found them done on the
    # driver and dispatched nothing)
    assert len(runs) >= 32


def test_reprocess_redoes_only_what_changed(run: Run) -> None:
    from flows.reprocess import reprocess_field

    n_sub0, n_src0 = _rows(run.config)
    tiles = run.first["tiles"]
    nothing = reprocess_field(config=str(run.config), tiles=tiles, run_id="r0")
    assert nothing["affected"] == []
    assert nothing["changed_index_rows"] == 0

    # one exposure disappears (e.g. withdrawn): only the sub-tiles it touched change
    # (the field is shared with other tests: the file is put back afterwards)
    det = sorted((run.data / "q1" / "VIS").rglob("EUC_VIS_SWL-DET-*.fits"))[0]
    aside = run.work.parent / det.name
    shutil.move(det, aside)
    try:
        changed = reprocess_field(config=str(run.config), tiles=tiles, run_id="r1")
    finally:
        shutil.move(aside, det)
    assert changed["changed_index_rows"] > 0
    assert changed["tiles_by_exposures"]
    assert not changed["tiles_by_catalogs"]
    assert not changed["tiles_by_config"]
    ok = changed["infer"]["counts"].get("ok", 0)
    assert 0 < ok < changed["infer"]["subtiles"]
    assert changed["assemble"]["subtiles_committed"] == ok
    assert changed["validate"]["ok"]
    assert _rows(run.config) == (n_sub0, n_src0)  # replaced, not duplicated

    # the exposure is back (restored above) and a catalog is rewritten with the same
    # bytes: its tile and the tiles reading it are re-prepared; the manifests return
    # to their first version, so the sub-tiles touched by the exposure are redone
    cat = sorted((run.data / "q1" / "catalogs").rglob("*.fits"))[0]
    stat = cat.stat()
    cat.write_bytes(cat.read_bytes())
    try:
        touched = reprocess_field(config=str(run.config), tiles=tiles, run_id="r2")
    finally:
        os.utime(cat, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert touched["tiles_by_catalogs"]
    assert touched["tiles_by_exposures"] == changed["tiles_by_exposures"]
    assert touched["infer"]["counts"].get("ok", 0) == ok
    assert touched["validate"]["ok"]
    assert _rows(run.config) == (n_sub0, n_src0)
