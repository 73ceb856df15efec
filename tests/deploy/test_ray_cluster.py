"""ray_cluster.yaml: valid for Ray's own cluster-launcher validator, and shaped as designed.

``ray up`` fills the file out with the provider's defaults (``prepare_config``) and
checks it against Ray's JSON schema and consistency rules (``validate_config``); both
run offline. Broken copies of the file must fail the same check.
"""

from __future__ import annotations

import copy
import re
import tomllib
from collections.abc import Callable
from typing import Any

import pytest
from jsonschema import ValidationError  # type: ignore[import-untyped]
from ray.autoscaler._private.util import prepare_config, validate_config

from tests.deploy.spec import RAY_CLUSTER_YAML, REPO_ROOT, load_yaml

Config = dict[str, Any]


def ray_validate(config: Config) -> Config:
    """Validate the file as written, then as ``ray up`` does before touching the cloud:
    fill out the provider's defaults and validate the result. Returns the latter."""
    validate_config(copy.deepcopy(config))
    prepared: Config = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def locked_versions() -> dict[str, str]:
    lock = tomllib.loads((REPO_ROOT / "uv.lock").read_text(encoding="utf-8"))
    return {p["name"]: p["version"] for p in lock["package"] if "version" in p}


@pytest.fixture(scope="module")
def raw() -> Config:
    return load_yaml(RAY_CLUSTER_YAML)


@pytest.fixture(scope="module")
def prepared(raw: Config) -> Config:
    return ray_validate(raw)


def _gpu_types(config: Config) -> dict[str, Config]:
    head = config["head_node_type"]
    types: dict[str, Config] = config["available_node_types"]
    return {n: t for n, t in types.items() if n != head and t["resources"].get("GPU", 0) >= 1}


def test_ray_accepts_the_file(prepared: Config) -> None:
    assert prepared["cluster_name"] == "constellation"
    assert prepared["provider"]["type"] == "aws"
    assert prepared["provider"]["region"]
    assert prepared["idle_timeout_minutes"] > 0


def test_head_takes_no_work(prepared: Config) -> None:
    head = prepared["available_node_types"][prepared["head_node_type"]]
    assert head["resources"] == {"CPU": 0}
    assert head["max_workers"] == 0
    start = " ".join(prepared["head_start_ray_commands"])
    assert "--head" in start
    assert "--num-cpus=0" in start
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in start
    assert "--ray-client-server-port=10001" in start


def test_gpu_workers_autoscale_from_zero(prepared: Config) -> None:
    gpu = _gpu_types(prepared)
    assert gpu, "no GPU worker type"
    for name, node_type in gpu.items():
        assert node_type["min_workers"] == 0, f"{name}: GPUs should scale to zero"
        assert 1 <= node_type["max_workers"] <= prepared["max_workers"], name
        assert node_type["resources"].get("CPU", 0) >= 1, f"{name}: tasks also need a CPU"
        assert node_type["node_config"]["InstanceType"]
    start = " ".join(prepared["worker_start_ray_commands"])
    assert "--address=$RAY_HEAD_IP:6379" in start


def test_setup_installs_the_locked_versions(prepared: Config) -> None:
    """The nodes install uv.lock exactly, and the pinned versions named are uv.lock's."""
    locked = locked_versions()
    common = " ".join(prepared["setup_commands"])
    assert re.search(r"uv sync --frozen\b", common), "nodes must install from uv.lock"
    named = dict(re.findall(r"'(ray|prefect|prefect-ray)': '([^']+)'", common))
    assert set(named) == {"ray", "prefect", "prefect-ray"}
    for package, version in named.items():
        assert version == locked[package], f"{package}: {version} vs uv.lock {locked[package]}"
    head = " ".join(prepared["head_setup_commands"])
    boto3 = re.search(r"boto3==([\w.]+)", head)
    assert boto3, "the head's autoscaler needs boto3"
    assert boto3.group(1) == locked["boto3"]
    for command in [*prepared["head_start_ray_commands"], *prepared["worker_start_ray_commands"]]:
        if re.search(r"(?:^|[\s;&|])ray\s", command):
            pytest.fail(f"use the project environment's ray, not one from PATH: {command}")


def _set(path: str, value: Any) -> Callable[[Config], None]:
    keys = path.split("/")

    def mutate(config: Config) -> None:
        target = config
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value

    return mutate


def _delete(path: str) -> Callable[[Config], None]:
    keys = path.split("/")

    def mutate(config: Config) -> None:
        target = config
        for key in keys[:-1]:
            target = target[key]
        del target[keys[-1]]

    return mutate


def _too_many_min_workers(config: Config) -> None:
    for name in _gpu_types(config):
        config["available_node_types"][name]["min_workers"] = config["max_workers"]


MUTATIONS: list[tuple[str, Callable[[Config], None], type[Exception], str]] = [
    (
        "unknown-top-level-key",
        _set("max_worker", 3),
        ValidationError,
        "'max_worker' was unexpected",
    ),
    ("max-workers-not-int", _set("max_workers", "many"), ValidationError, "is not of type"),
    ("no-provider", _delete("provider"), ValidationError, "'provider' is a required"),
    ("head-type-unknown", _set("head_node_type", "ray.head.gone"), ValueError, "head_node_type"),
    (
        "fractional-resource",
        _set("available_node_types/ray.head.cpu/resources/CPU", 0.5),
        ValidationError,
        "is not of type 'integer'",
    ),
    (
        "no-resources",
        _delete("available_node_types/ray.worker.gpu.g5/resources"),
        ValidationError,
        "'resources' is a required property",
    ),
    (
        "unknown-node-key",
        _set("available_node_types/ray.worker.gpu.g5/gpus", 1),
        ValidationError,
        "'gpus' was unexpected",
    ),
    ("commands-not-list", _set("setup_commands", "uv sync"), ValidationError, "is not of type"),
    ("min-workers-over-max", _too_many_min_workers, ValueError, "max_workers"),
]


@pytest.mark.parametrize(
    ("mutate", "error", "match"),
    [pytest.param(m, e, s, id=i) for i, m, e, s in MUTATIONS],
)
def test_broken_copies_fail(
    raw: Config, mutate: Callable[[Config], None], error: type[Exception], match: str
) -> None:
    broken = copy.deepcopy(raw)
    mutate(broken)
    with pytest.raises(error, match=match):
        ray_validate(broken)
