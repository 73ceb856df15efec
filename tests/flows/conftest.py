"""Prefect and Ray for the flow tests: one temporary Prefect API for the session, Ray's
files in a temporary folder, no dashboards."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A temporary Prefect server (SQLite) for every flow test; yields its API URL."""
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from prefect.testing.utilities import prefect_test_harness

    from flows.common import prefect_api_url

    with prefect_test_harness(server_startup_timeout=120):
        url = prefect_api_url()
        assert url
        yield url


@pytest.fixture(scope="session", autouse=True)
def _ray_tmpdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Keep Ray's session files out of the home folder and the system temp root."""
    base: Path = tmp_path_factory.mktemp("ray")
    old = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = str(base)
    yield
    if old is None:
        os.environ.pop("RAY_TMPDIR", None)
    else:
        os.environ["RAY_TMPDIR"] = old


@pytest.fixture(scope="module")
def local_ray(prefect_api: str) -> Iterator[None]:
    """One local Ray (2 CPUs, 2 fake GPUs) per test module; the flows join it."""
    import ray

    import flows  # noqa: F401  (sets RAY_ENABLE_UV_RUN_RUNTIME_ENV before Ray is imported)

    ray.init(
        num_cpus=2, num_gpus=2, include_dashboard=False, logging_level="WARNING",
        runtime_env={"env_vars": {"PREFECT_API_URL": prefect_api, "DO_NOT_TRACK": "1"}},
    )  # fmt: skip
    yield
    ray.shutdown()


def write_config(path: Path, data: Path, work: Path, **runtime: object) -> Path:
    """A YAML config for the mock backend with a local Ray advertising 2 fake GPUs."""
    import yaml

    ray = {"local_num_gpus": 2, "num_gpus_per_task": 1, "num_cpus_per_task": 0.5}
    ray.update(runtime.pop("ray", {}))  # type: ignore[arg-type]
    doc = {
        "science": {"backend": {"name": "mock"}},
        "runtime": {
            "storage": {"data_uri": str(data), "work_uri": str(work)},
            "ray": ray,
            "max_in_flight": 8,
            **runtime,
        },
    }
    path.write_text(yaml.safe_dump(doc))
    return path
