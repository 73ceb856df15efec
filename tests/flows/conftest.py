"""Helpers of the flow tests (Prefect and Ray: tests/fixtures/orchestration.py)."""

from __future__ import annotations

from pathlib import Path


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
