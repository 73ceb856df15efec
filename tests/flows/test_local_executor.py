"""``runtime.executor: local``: the pipeline flow runs its sub-tile tasks in threads of
its own process; no Ray is started, outcomes and the catalog are those of a Ray run."""

from __future__ import annotations

import shutil
import time
from concurrent.futures import Future
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from constellation.config import Settings
from flows.common import settings_json
from flows.infer import _cancel, _wait_any
from flows.preflight import PreflightError, preflight
from tests.fixtures.fields import PreparedField
from tests.flows.conftest import write_config


def _local(**science: Any) -> Settings:
    return Settings.model_validate(
        {
            "science": {"backend": {"name": "mock"}, **science},
            "runtime": {"executor": "local"},
        }
    )


def test_local_preflight_builds_the_backend_here() -> None:
    found = preflight(_local(), settings_json(_local()))
    assert (found["ok"], found["backend"]) == (True, "mock")


def test_local_preflight_reports_a_backend_that_cannot_be_built() -> None:
    bad = Settings.model_validate(
        {
            "science": {
                "backend": {"name": "shine"},
                "shine": {"inference": {"method": "no-such-method"}},
            },
            "runtime": {"executor": "local", "ray": {"num_gpus_per_task": 99}},
        }
    )
    with pytest.raises(PreflightError) as info:
        preflight(bad, settings_json(bad))
    [problem] = info.value.problems  # no Ray resources checked: there is no Ray
    assert "'shine' backend cannot be built in this process" in problem.cause
    assert "science.backend.name: mock" in problem.fix


def test_waiting_and_cancelling_local_futures() -> None:
    """The driver loop's wait returns the finished futures of the thread pool, and a stop
    cancels the ones not started (a running sub-tile finishes: results are atomic)."""
    finished, running, queued = Future[Any](), Future[Any](), Future[Any]()
    finished.set_result(1)
    running.set_running_or_notify_cancel()
    pending = [SimpleNamespace(wrapped_future=f) for f in (finished, running, queued)]
    checks: list[float] = []
    assert _wait_any(pending, lambda: checks.append(time.monotonic())) == [pending[0]]
    assert checks  # the stop check ran while waiting
    _cancel(pending[1:])
    assert queued.cancelled()
    assert not running.cancelled()


def test_pipeline_on_the_local_executor_starts_no_ray(
    prefect_api: str,
    prepared_field: PreparedField,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import ray

    from constellation.inference import clear_backends
    from flows.pipeline import pipeline

    def no_ray(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the local executor started Ray")

    monkeypatch.setattr(ray, "init", no_ray)
    clear_backends()
    data = tmp_path / "input"
    shutil.copytree(prepared_field.root, data)
    config = write_config(
        tmp_path / "config.yaml", data, tmp_path / "work", executor="local", local_workers=2
    )
    tile = prepared_field.tile_ids[0]
    out = pipeline(config=str(config), tiles=[tile], run_id="local", report=False)
    infer = out["infer"]
    assert infer["counts"] == {"ok": 16}
    assert infer["nodes"] == {"local": 16}  # every sub-tile ran here
    assert out["validate"]["ok"], out["validate"]["summary"]
    assert out["assemble"]["subtiles_committed"] == 16

    again = pipeline(config=str(config), tiles=[tile], run_id="again", report=False)
    assert again["infer"]["counts"] == {"done": 16}
    assert again["infer"]["dispatched"] == 0
