"""``flows.runner.SubTileRayTaskRunner`` overrides and calls private parts of prefect-ray
(and of Prefect): these tests fail loudly when an upgrade removes or reshapes one of them,
without starting Ray or a Prefect server."""

from __future__ import annotations

import inspect
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

prefect_ray_task_runners = pytest.importorskip("prefect_ray.task_runners")


def _keywords(fn: object) -> set[str]:
    return set(inspect.signature(fn).parameters)  # type: ignore[arg-type]


def test_the_private_prefect_ray_parts_the_runner_uses_exist() -> None:
    from prefect_ray.context import RemoteOptionsContext

    ray_runner = prefect_ray_task_runners.RayTaskRunner
    future = prefect_ray_task_runners.PrefectRayFuture
    # run_in_worker calls the worker body with these keywords
    assert {"task", "task_run_id", "context", "parameters", "wait_for", "dependencies"} <= (
        _keywords(ray_runner._run_prefect_task)
    )
    assert isinstance(inspect.getattr_static(ray_runner, "_run_prefect_task"), staticmethod)
    # submit() swaps Prefect futures for Ray ones with it, and replaces the stock submit
    assert _keywords(ray_runner._exchange_prefect_for_ray_futures) == {
        "self",
        "kwargs_prefect_futures",
    }
    assert _keywords(ray_runner.submit) == {
        "self",
        "task",
        "parameters",
        "wait_for",
        "dependencies",
    }
    assert {"task_run_id", "wrapped_future"} <= _keywords(future.__init__)
    assert "current_remote_options" in RemoteOptionsContext.model_fields
    runner = ray_runner(address="ray://nowhere:10001", init_kwargs={"x": 1})
    assert runner._started is False
    assert runner.address == "ray://nowhere:10001"
    assert runner.init_kwargs["x"] == 1


def test_the_private_prefect_parts_the_runner_uses_exist() -> None:
    from prefect.context import AssetContext, serialize_context
    from prefect.utilities.engine import collect_task_run_inputs_sync

    assert callable(serialize_context)
    assert {"task", "task_run_id", "task_inputs", "copy_to_child_ctx"} <= _keywords(
        AssetContext.from_task_and_inputs
    )
    assert callable(AssetContext.serialize)
    assert "future_cls" in _keywords(collect_task_run_inputs_sync)


def test_the_runner_duplicates_itself_and_is_pinned_to_a_known_prefect_ray() -> None:
    from flows.runner import SubTileRayTaskRunner

    runner = SubTileRayTaskRunner(address="ray://nowhere:10001", init_kwargs={"x": 1})
    twin = runner.duplicate()
    assert type(twin) is SubTileRayTaskRunner
    assert (twin.address, twin.init_kwargs) == (runner.address, runner.init_kwargs)
    # pyproject.toml bounds prefect-ray above: an upgrade is a decision, checked here
    project = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    pins = [Requirement(d) for d in project["project"]["dependencies"]]
    spec = next(r.specifier for r in pins if r.name == "prefect-ray")
    assert any(s.operator in ("<", "<=", "==", "~=") for s in spec), spec
    assert Version(version("prefect-ray")) in spec
