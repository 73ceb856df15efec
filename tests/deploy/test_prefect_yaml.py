"""Static checks of prefect.yaml: Prefect's own model, flows, pools, schedules, no secrets.

These need no server; tests/deploy/test_prefect_deploy.py deploys the file for real.
"""

from __future__ import annotations

import importlib.metadata
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from constellation.config import load_config
from tests.deploy.spec import (
    CALIBRATION_FLOW,
    FLOWS,
    MAINTENANCE_FLOW,
    POOL_TYPES,
    PREFECT_YAML,
    RAY_CLUSTER_YAML,
    REPO_ROOT,
    SCHEDULED_FLOW,
    FlowSpec,
    load_yaml,
    read_flow_statically,
)

BY_ENTRYPOINT = {f.entrypoint: f for f in FLOWS}
SECRET_KEY = re.compile(r"secret|password|passwd|token|api_?key|access_?key|private_?key", re.I)
SECRET_VALUE = re.compile(r"AKIA[0-9A-Z]{16}|pnu_[A-Za-z0-9]{20,}|-----BEGIN [A-Z ]*PRIVATE KEY")
MACHINE_PATH = re.compile(r"(?<![\w.~])/(?:work|tmp|home|root|Users|mnt|scratch)/")


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    return load_yaml(PREFECT_YAML)


@pytest.fixture(scope="module")
def deployments(config: dict[str, Any]) -> list[dict[str, Any]]:
    deps = config.get("deployments")
    assert isinstance(deps, list)
    assert deps, "prefect.yaml defines no deployments"
    assert all(isinstance(d, dict) for d in deps)
    return deps


def _merged_parameters(dep: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The parameters a run of ``dep`` gets: the deployment's, then each schedule's over them."""
    base = dict(dep.get("parameters") or {})
    yield base
    for schedule in dep.get("schedules") or []:
        yield {**base, **(schedule.get("parameters") or {})}


def test_prefect_parses_the_file(config: dict[str, Any]) -> None:
    """Prefect's own prefect.yaml model accepts the file; project name and version pin."""
    from prefect.cli.deploy._models import PrefectYamlModel

    model = PrefectYamlModel.model_validate(config)
    assert model.name == "constellation"
    assert model.prefect_version == importlib.metadata.version("prefect"), (
        "prefect-version in prefect.yaml differs from the installed (uv.lock) Prefect"
    )
    assert len(model.deployments) == len(config["deployments"])
    for dep in model.deployments:
        assert dep.name, "every deployment needs a name"
        assert dep.entrypoint, f"deployment {dep.name!r} has no entrypoint"
        assert dep.work_pool is not None
        assert dep.work_pool.name


def test_every_flow_has_a_deployment(deployments: list[dict[str, Any]]) -> None:
    entrypoints = {d["entrypoint"] for d in deployments}
    missing = [f.entrypoint for f in FLOWS if f.entrypoint not in entrypoints]
    assert not missing, f"no deployment for {missing}"
    unknown = sorted(entrypoints - set(BY_ENTRYPOINT))
    assert not unknown, f"deployments of unknown entrypoints {unknown}"
    # `prefect deployment run FLOW/NAME` must be unambiguous.
    keys = Counter((BY_ENTRYPOINT[d["entrypoint"]].name, d["name"]) for d in deployments)
    assert all(n == 1 for n in keys.values()), f"duplicate deployment names: {keys}"


def test_deployment_fields(deployments: list[dict[str, Any]]) -> None:
    """Description, tags, the right work pool and only parameters the flow accepts."""
    for dep in deployments:
        spec = BY_ENTRYPOINT[dep["entrypoint"]]
        where = f"{spec.name}/{dep['name']}"
        assert str(dep.get("description") or "").strip(), f"{where}: no description"
        tags = dep.get("tags") or []
        assert "constellation" in tags, f"{where}: tags {tags} lack 'constellation'"
        assert dep["work_pool"]["name"] in POOL_TYPES, f"{where}: unknown work pool"
        assert dep["work_pool"]["name"] == spec.pool, f"{where}: expected pool {spec.pool}"
        assert dep.get("enforce_parameter_schema") is True, f"{where}: parameters unchecked"
        for params in _merged_parameters(dep):
            extra = sorted(set(params) - set(spec.parameters))
            assert not extra, f"{where}: parameters {extra} not accepted by {spec.name}"
            tiles = params.get("tiles")
            assert tiles is None or (
                isinstance(tiles, list) and all(isinstance(t, int) for t in tiles)
            ), f"{where}: tiles must be null or a list of tile ids"
        assert "pull" not in dep, f"{where}: uses the project-level pull steps"


def _cron(schedule: dict[str, Any]) -> Any:
    from prefect.client.schemas.schedules import CronSchedule

    assert set(schedule) <= {"cron", "timezone", "slug", "active", "parameters", "day_or"}
    cron = CronSchedule(cron=schedule["cron"], timezone=schedule.get("timezone"))
    assert cron.timezone == "UTC"
    return cron


def test_only_reprocessing_maintenance_and_calibration_are_scheduled(
    deployments: list[dict[str, Any]],
) -> None:
    scheduled = {BY_ENTRYPOINT[d["entrypoint"]].name: d for d in deployments if d.get("schedules")}
    assert sorted(scheduled) == sorted([SCHEDULED_FLOW, MAINTENANCE_FLOW, CALIBRATION_FLOW]), (
        "three scheduled deployments: field reprocessing, catalog maintenance, calibration"
    )
    dep = scheduled[SCHEDULED_FLOW]
    slugs = [s.get("slug") for s in dep["schedules"]]
    assert all(slugs), "every schedule has a slug (a field name)"
    assert len(set(slugs)) == len(slugs), f"duplicate schedule slugs {slugs}"
    for schedule in dep["schedules"]:
        _cron(schedule)
        assert schedule.get("parameters", {}).get("tiles"), (
            f"schedule {schedule['slug']}: a field schedule names its tiles"
        )
    for params in list(_merged_parameters(dep))[1:]:
        assert params.get("config"), "a scheduled run names its config file"
    # the stage deployments and the on-demand ones say so explicitly: no schedule
    for other in deployments:
        if other not in scheduled.values():
            assert other.get("schedules") == [], f"{other['name']}: use `schedules: []`"


def test_maintenance_runs_weekly_one_at_a_time(deployments: list[dict[str, Any]]) -> None:
    [dep] = [d for d in deployments if BY_ENTRYPOINT[d["entrypoint"]].name == MAINTENANCE_FLOW]
    [schedule] = dep["schedules"]
    cron = _cron(schedule)
    minute, hour, day_of_month, month, day_of_week = cron.cron.split()
    assert (day_of_month, month) == ("*", "*"), "once a week"
    assert day_of_week.isdigit(), "once a week"
    assert minute.isdigit()
    assert hour.isdigit()
    assert dep["parameters"].get("config"), "the maintained catalog comes from a config file"
    assert dep["parameters"].get("dry_run") is False
    assert dep["concurrency_limit"]["limit"] == 1


def test_calibration_runs_monthly_on_its_configuration(
    deployments: list[dict[str, Any]],
) -> None:
    [dep] = [d for d in deployments if BY_ENTRYPOINT[d["entrypoint"]].name == CALIBRATION_FLOW]
    [schedule] = dep["schedules"]
    _minute, _hour, day_of_month, month, day_of_week = _cron(schedule).cron.split()
    assert (day_of_month, month, day_of_week) == ("1", "*", "*"), "once a month"
    params = dep["parameters"]
    settings = load_config(REPO_ROOT / params["config"])
    assert settings.science.backend.name == "shine"
    assert (params["mode"], params["renderer"]) == ("pixels", "galsim")
    assert params["quadrants"], "a pixels field renders some quadrants"
    assert dep["concurrency_limit"]["limit"] == 1


def test_config_files_exist_and_load(deployments: list[dict[str, Any]]) -> None:
    """Every config path given as a parameter is a repository file that loads."""
    paths = {
        params["config"]
        for dep in deployments
        for params in _merged_parameters(dep)
        if params.get("config") is not None
    }
    for path in sorted(paths):
        assert not Path(path).is_absolute(), f"{path}: use a path relative to the checkout"
        assert (REPO_ROOT / path).is_file(), f"{path}: no such file in the repository"
        load_config(REPO_ROOT / path)


def test_pull_steps_use_the_workers_checkout(config: dict[str, Any]) -> None:
    """One pull step: cd into the checkout named by an environment variable of the worker."""
    pull = config.get("pull")
    assert isinstance(pull, list)
    assert len(pull) == 1
    step = pull[0]["prefect.deployments.steps.set_working_directory"]
    assert re.fullmatch(r"\{\{\s*\$[A-Z][A-Z0-9_]*\s*\}\}", step["directory"]), step


@pytest.mark.parametrize("spec", FLOWS, ids=[f.name for f in FLOWS])
def test_entrypoint_matches_the_flow_code(spec: FlowSpec) -> None:
    """The flow file (once written) has the function, flow name and parameters assumed."""
    if not spec.path.is_file():
        pytest.skip(f"{spec.entrypoint.split(':')[0]} not written yet")
    found = read_flow_statically(spec)
    assert found.name == spec.name, f"{spec.entrypoint}: flow name {found.name!r}"
    missing = sorted(set(spec.parameters) - set(found.parameters))
    assert not missing, f"{spec.entrypoint}: parameters {missing} missing"


def _walk(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield f"{path}.{key}", item
            yield from _walk(item, f"{path}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _walk(item, f"{path}[{i}]")


@pytest.mark.parametrize("path", [PREFECT_YAML, RAY_CLUSTER_YAML], ids=lambda p: p.name)
def test_no_secrets_or_machine_paths(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert not MACHINE_PATH.search(text), f"{path.name}: machine path {MACHINE_PATH.search(text)}"
    assert not SECRET_VALUE.search(text), f"{path.name}: looks like a credential"
    for where, value in _walk(load_yaml(path)):
        key = where.rsplit(".", 1)[-1]
        if SECRET_KEY.search(key):
            # a secret may only be referenced (a Secret block), never written
            assert value is None or re.fullmatch(r"\{\{\s*prefect\.blocks\..+\}\}", str(value)), (
                f"{path.name}: {where} holds a value"
            )
