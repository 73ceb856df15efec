"""The preflight: a request no node can hold and a backend that cannot be built are found
before any sub-tile is dispatched, each with the setting that fixes it."""

from __future__ import annotations

from pathlib import Path

import pytest

from constellation.config import Settings
from flows.common import settings_json
from flows.preflight import (
    PreflightError,
    _read_node_types,
    _slots,
    local_problems,
    preflight,
    resource_shortfall,
)

ROOT = Path(__file__).resolve().parents[2]


def _settings(**ray: object) -> Settings:
    return Settings.model_validate(
        {"science": {"backend": {"name": "mock"}}, "runtime": {"ray": ray}}
    )


def test_resource_shortfall() -> None:
    nodes = [{"CPU": 2.0, "GPU": 2.0}, {"CPU": 16.0}]
    assert resource_shortfall({"GPU": 1, "CPU": 1}, nodes) is None
    assert resource_shortfall({"GPU": 0, "CPU": 8}, nodes) is None  # a zero request is none
    # one node must hold the whole request: GPUs on one, CPUs on the other do not add up
    assert resource_shortfall({"GPU": 1, "CPU": 4}, nodes) == {"GPU": 2.0, "CPU": 16.0}
    assert resource_shortfall({"GPU": 4, "CPU": 1}, nodes) == {"GPU": 2.0, "CPU": 16.0}
    # an autoscaler node type counts like a node
    types = {"gpu": {"CPU": 8.0, "GPU": 4.0}}
    assert resource_shortfall({"GPU": 4, "CPU": 1}, nodes, types) is None
    assert resource_shortfall({"GPU": 1}, [{"CPU": 0.0}]) == {"GPU": 0.0}


def test_task_slots_of_the_nodes() -> None:
    """How many sub-tile tasks the nodes hold at once: the preflight warms that many
    workers. The scarcest resource of each node decides; nodes add up."""
    nodes = [{"CPU": 2.0, "GPU": 2.0}, {"CPU": 16.0}]
    assert _slots({"GPU": 1, "CPU": 0.5}, nodes) == 2
    assert _slots({"GPU": 0, "CPU": 1}, nodes) == 18
    assert _slots({"GPU": 1, "CPU": 4}, nodes) == 0
    assert _slots({"GPU": 0.5, "CPU": 0.5}, [{"CPU": 8.0, "GPU": 1.0}]) == 2


def test_a_local_ray_short_of_a_gpu_is_found_before_anything_starts() -> None:
    """No Ray or Prefect server is started: the machine's resources are what a local Ray
    would advertise."""
    assert local_problems(_settings(local_num_gpus=2, num_gpus_per_task=1)) == []
    [gpu] = local_problems(_settings(local_num_gpus=0, num_gpus_per_task=1))
    assert "asks for 1 GPU(s)" in gpu.cause
    assert "this machine's local Ray" in gpu.cause
    assert "runtime.ray.local_num_gpus" in gpu.fix
    [cpu] = local_problems(_settings(local_num_gpus=0, num_gpus_per_task=0, local_num_cpus=2,
                                     num_cpus_per_task=4))  # fmt: skip
    assert "at most 2" in cpu.cause
    # a cluster, or no Ray at all: left to the preflight on the cluster
    assert local_problems(_settings(address="auto", local_num_gpus=0)) == []
    local = Settings.model_validate(
        {"runtime": {"executor": "local", "ray": {"local_num_gpus": 0}}}
    )
    assert local_problems(local) == []


def test_local_problems_name_a_backend_that_cannot_be_built_too() -> None:
    bad = Settings.model_validate(
        {
            "science": {"backend": {"name": "shine"}, "shine": {"inference": {"method": "x"}}},
            "runtime": {"ray": {"local_num_gpus": 0, "num_gpus_per_task": 1}},
        }
    )
    causes = [p.cause for p in local_problems(bad)]
    assert len(causes) == 2
    assert "'shine' backend cannot be built" in causes[1]


def test_node_types_of_this_projects_cluster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a launcher-made head node, ``~/ray_bootstrap_config.yaml`` is ray_cluster.yaml:
    its GPU worker type can hold a default sub-tile task although no GPU node runs."""
    monkeypatch.setenv("HOME", str(tmp_path))
    assert _read_node_types() is None
    (tmp_path / "ray_bootstrap_config.yaml").write_text((ROOT / "ray_cluster.yaml").read_text())
    types = _read_node_types()
    assert types is not None
    assert any(t.get("GPU", 0) >= 1 for t in types.values())
    head_only = [{"CPU": 0.0}]
    assert resource_shortfall({"GPU": 1.0, "CPU": 1.0}, head_only) is not None
    assert resource_shortfall({"GPU": 1.0, "CPU": 1.0}, head_only, types) is None


@pytest.mark.integration
def test_preflight_on_a_local_ray(local_ray: None) -> None:
    """The module's Ray has 2 CPUs and 2 (fake) GPUs."""
    ok = _settings(num_gpus_per_task=1, num_cpus_per_task=0.5)
    found = preflight(ok, settings_json(ok))
    assert (found["ok"], found["backend"]) == (True, "mock")

    greedy = _settings(num_gpus_per_task=4, num_cpus_per_task=0.5)
    with pytest.raises(PreflightError) as info:
        preflight(greedy, settings_json(greedy))
    [problem] = info.value.problems
    assert "asks for 4 GPU(s)" in problem.cause
    assert "has 2 GPU(s)" in problem.cause
    assert "runtime.ray.num_gpus_per_task: 0" in problem.fix
    assert str(info.value).startswith("preflight: each sub-tile task asks for 4 GPU(s)")

    cpus = _settings(num_gpus_per_task=0, num_cpus_per_task=8)
    with pytest.raises(PreflightError, match=r"8 CPU\(s\).*at most 2"):
        preflight(cpus, settings_json(cpus))


@pytest.mark.integration
def test_preflight_reports_a_backend_that_cannot_be_built(local_ray: None) -> None:
    """An invalid SHINE section (or no SHINE at all): the backend is not built on the
    worker, and both problems are listed when the resources are wrong too."""
    bad = Settings.model_validate(
        {
            "science": {
                "backend": {"name": "shine"},
                "shine": {"inference": {"method": "no-such-method"}},
            },
            "runtime": {"ray": {"num_gpus_per_task": 3, "num_cpus_per_task": 0.5}},
        }
    )
    with pytest.raises(PreflightError) as info:
        preflight(bad, settings_json(bad))
    causes = [p.cause for p in info.value.problems]
    assert len(causes) == 2
    assert "asks for 3 GPU(s)" in causes[0]
    assert "'shine' backend cannot be built on the Ray workers" in causes[1]
    assert "science.backend.name: mock" in info.value.problems[1].fix
    assert len(info.value.lines()) == 2
