"""What the deployment files must provide: the flows, their parameters and work pools.

The flows live in the ``flows`` package; their entrypoints, flow names and parameters
are the contract between ``prefect.yaml`` and the flow code. The helpers read the flow
files statically (no import), so the checks are fast and work before Prefect is set up.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "CALIBRATION_FLOW",
    "CPU_POOL",
    "FLOWS",
    "MAINTENANCE_FLOW",
    "POOL_TYPES",
    "PREFECT_YAML",
    "RAY_CLUSTER_YAML",
    "RAY_POOL",
    "REPO_ROOT",
    "SCHEDULED_FLOW",
    "FlowSpec",
    "StaticFlow",
    "load_yaml",
    "missing_flow_files",
    "read_flow_statically",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
PREFECT_YAML = REPO_ROOT / "prefect.yaml"
RAY_CLUSTER_YAML = REPO_ROOT / "ray_cluster.yaml"

CPU_POOL = "constellation-cpu"
"""Process pool of the CPU stages (index, prepare, assemble)."""
RAY_POOL = "constellation-ray"
"""Process pool of the flows that drive Ray (the GPU work goes to Ray from the flow)."""
POOL_TYPES = {CPU_POOL: "process", RAY_POOL: "process"}


@dataclass(frozen=True)
class FlowSpec:
    """One flow: where it is, its name, the parameters it accepts and its work pool."""

    entrypoint: str
    name: str
    parameters: tuple[str, ...]
    pool: str

    @property
    def path(self) -> Path:
        return REPO_ROOT / self.entrypoint.split(":")[0]

    @property
    def function(self) -> str:
        return self.entrypoint.split(":")[1]


FLOWS = (
    FlowSpec(
        "flows/index.py:index_observations", "index-observations", ("config", "full"), CPU_POOL
    ),
    FlowSpec("flows/prepare.py:prepare_tiles", "prepare-tiles", ("config", "tiles"), CPU_POOL),
    FlowSpec(
        "flows/infer.py:infer_subtiles",
        "infer-subtiles",
        ("config", "tiles", "run_id", "force"),
        RAY_POOL,
    ),
    FlowSpec(
        "flows/assemble.py:assemble_catalog",
        "assemble-catalog",
        ("config", "tiles", "run_id"),
        CPU_POOL,
    ),
    FlowSpec(
        "flows/pipeline.py:pipeline",
        "constellation-pipeline",
        ("config", "tiles", "run_id"),
        RAY_POOL,
    ),
    FlowSpec(
        "flows/reprocess.py:reprocess_field", "reprocess-field", ("config", "tiles"), RAY_POOL
    ),
    FlowSpec(
        "flows/maintenance.py:catalog_maintenance",
        "catalog-maintenance",
        (
            "config",
            "min_files",
            "older_than_days",
            "retain_last",
            "orphan_min_age_hours",
            "dry_run",
        ),
        CPU_POOL,
    ),
    FlowSpec(
        "flows/calibration.py:shear_calibration",
        "shear-calibration",
        (
            "config",
            "out",
            "shears",
            "backend",
            "density",
            "shape_noise",
            "pixel_noise",
            "mode",
            "renderer",
            "quadrants",
            "seed",
        ),
        CPU_POOL,
    ),
)
SCHEDULED_FLOW = "reprocess-field"
"""The flow of the scheduled (cron) field-reprocessing deployment."""
MAINTENANCE_FLOW = "catalog-maintenance"
"""The flow of the scheduled (weekly) catalog-maintenance deployment."""
CALIBRATION_FLOW = "shear-calibration"
"""The flow of the scheduled (monthly) shear-calibration deployment."""


def load_yaml(path: Path) -> dict[str, Any]:
    """A YAML file whose top level is a mapping."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict), f"{path.name}: the top level is not a mapping"
    return data


def missing_flow_files() -> list[str]:
    """Flow files of :data:`FLOWS` that do not exist (yet)."""
    return sorted({f.entrypoint.split(":")[0] for f in FLOWS if not f.path.is_file()})


@dataclass(frozen=True)
class StaticFlow:
    """A ``@flow``-decorated function as read from its source."""

    name: str | None
    parameters: tuple[str, ...]


def _flow_decorator_name(decorator: ast.expr) -> tuple[bool, str | None]:
    """(is a ``flow`` decorator, its ``name=`` when given as a literal)."""
    target = decorator.func if isinstance(decorator, ast.Call) else decorator
    is_flow = (isinstance(target, ast.Name) and target.id == "flow") or (
        isinstance(target, ast.Attribute) and target.attr == "flow"
    )
    name = None
    if is_flow and isinstance(decorator, ast.Call):
        for keyword in decorator.keywords:
            if keyword.arg == "name" and isinstance(keyword.value, ast.Constant):
                name = str(keyword.value.value)
    return is_flow, name


def read_flow_statically(spec: FlowSpec) -> StaticFlow:
    """The flow name and parameter names of ``spec``'s function, from its source file."""
    tree = ast.parse(spec.path.read_text(encoding="utf-8"), filename=str(spec.path))
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == spec.function:
            for decorator in node.decorator_list:
                is_flow, name = _flow_decorator_name(decorator)
                if is_flow:
                    args = node.args
                    names = [a.arg for a in [*args.posonlyargs, *args.args, *args.kwonlyargs]]
                    return StaticFlow(name=name, parameters=tuple(names))
            raise AssertionError(f"{spec.entrypoint}: the function is not decorated with @flow")
    raise AssertionError(f"{spec.entrypoint}: no top-level function {spec.function!r}")
