"""Typed sub-tile outcomes through the infer flow on Ray: a sub-tile with nothing to fit is
skipped, a deterministic failure fails once, neither stops the batch or is retried, and
the summary groups them by cause; a retryable failure is retried."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from constellation.catalog.validate import validate
from constellation.config import load_config
from constellation.inference import BackendUnavailableError
from constellation.io.storage import Storage
from constellation.manifest import layout
from constellation.manifest.subtile import dump_manifest, load_manifest
from constellation.results.store import read_marker
from constellation.stages.infer import SubTileFailedError
from tests.fixtures.fields import PreparedField
from tests.flows.conftest import write_config


@dataclass
class Outcome:
    config: Path
    work: Path
    tile: int
    out: dict[str, Any]
    runs: dict[str, Any]  # task run name -> task run (one flow run)
    state: Any  # the infer flow run's final state


def _sources_url(manifest_url: str) -> Path:
    manifest = load_manifest(manifest_url, Storage())
    return Path(layout.resolve_relative(manifest_url, manifest.sources.uri))


def _task_runs(flow_run_ids: list[str]) -> dict[str, Any]:
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=flow_run_ids)), limit=200
        )
    return {r.name: r for r in runs}


@pytest.fixture(scope="module")
def outcome(
    local_ray: None, prepared_field: PreparedField, tmp_path_factory: pytest.TempPathFactory
) -> Outcome:
    """One tile of the prepared field, three of its sub-tiles broken on purpose:
    r0_c1 has no sources, r0_c2 no exposures, r0_c3 a source table without ``in_core``."""
    from constellation.catalog.assemble import assemble
    from constellation.inference import clear_backends
    from flows.infer import infer_subtiles

    clear_backends()
    base = tmp_path_factory.mktemp("outcomes")
    work = prepared_field.copy_work(base / "work")
    config = write_config(base / "config.yaml", prepared_field.root, work, task_retries=2)
    tile = prepared_field.tile_ids[0]
    urls = {c: layout.manifest_url(str(work), tile, 0, c) for c in (1, 2, 3)}
    empty = _sources_url(urls[1])
    pq.write_table(pq.read_table(empty).slice(0, 0), empty)
    manifest = load_manifest(urls[2], Storage())
    Path(urls[2]).write_bytes(dump_manifest(manifest.model_copy(update={"exposures": []})))
    broken = _sources_url(urls[3])
    pq.write_table(pq.read_table(broken).drop_columns(["in_core"]), broken)

    state = infer_subtiles(config=str(config), tiles=[tile], run_id="outcomes", return_state=True)
    out = state.result(raise_on_failure=False)
    assemble(load_config(config), tiles=[tile], run_id="outcomes")
    return Outcome(config, work, tile, out, _task_runs(out["batch_flow_runs"]), state)


@pytest.mark.integration
def test_the_flow_run_fails_with_its_cause_as_message(outcome: Outcome) -> None:
    """What an operator sees for a deployment run in the UI: Failed, and why."""
    assert outcome.state.is_failed()
    assert outcome.state.message == "1 of 16 sub-tiles failed (KeyError: 1)"


@pytest.mark.integration
def test_the_batch_completes_with_typed_outcomes(outcome: Outcome) -> None:
    assert outcome.out["subtiles"] == 16
    assert outcome.out["counts"] == {"ok": 13, "skipped": 2, "failed": 1}
    causes = {(c["status"], c["cause"]): c for c in outcome.out["causes"]}
    assert set(causes) == {
        ("skipped", "no sources"),
        ("skipped", "no exposures"),
        ("failed", "KeyError"),
    }
    assert "r0_c3" in causes[("failed", "KeyError")]["example"]
    assert "in_core" in causes[("failed", "KeyError")]["example"]
    storage = Storage()
    for col, status in ((1, "skipped"), (2, "skipped"), (3, "failed"), (0, "ok"), (4, "ok")):
        row, c = divmod(col, 4)
        marker = read_marker(storage, layout.subtile_dir(str(outcome.work), outcome.tile, row, c))
        assert marker is not None
        assert marker.status == status, col


@pytest.mark.integration
def test_skipped_and_failed_subtiles_ran_exactly_once(outcome: Outcome) -> None:
    """``task_retries: 2``, yet neither a skip nor a deterministic failure is retried."""
    runs = outcome.runs
    assert len(runs) == 16
    for col in (1, 2, 3):
        run = runs[f"infer-{outcome.tile}-r0_c{col}"]
        assert run.run_count == 1, (col, run.state)
    assert runs[f"infer-{outcome.tile}-r0_c1"].state.is_completed()
    assert runs[f"infer-{outcome.tile}-r0_c3"].state.is_failed()
    assert all(r.run_count == 1 for r in runs.values())


@pytest.mark.integration
def test_skipped_subtiles_are_committed_and_validated(outcome: Outcome) -> None:
    settings = load_config(outcome.config)
    report = validate(settings, tiles=[outcome.tile], allow_failed=True)
    assert report.ok, report.summary()
    assert (report.n_ok, report.n_skipped, report.n_failed) == (13, 2, 1)
    strict = validate(settings, tiles=[outcome.tile])
    assert [v.kind for v in strict.violations] == ["failed"]


@pytest.mark.parametrize(
    ("exc", "retry"),
    [
        (OSError("connection reset by peer"), True),
        (TimeoutError("read timed out"), True),
        (SubTileFailedError("tile 1 r0_c0", "StorageError: 503", "StorageError", True), True),
        (SubTileFailedError("tile 1 r0_c0", "KeyError: 'in_core'", "KeyError", False), False),
        (FileNotFoundError("manifest.json"), False),
        (BackendUnavailableError("no SHINE"), False),
        (ValueError("manifest prepared under another configuration"), False),
    ],
)
def test_prefect_retries_only_retryable_failures(exc: BaseException, retry: bool) -> None:
    from prefect.states import Completed, Failed

    from flows.infer import _retry_if_retryable

    assert _retry_if_retryable(None, None, Failed(data=exc)) is retry
    assert _retry_if_retryable(None, None, Completed(data={"status": "ok"})) is False
