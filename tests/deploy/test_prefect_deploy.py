"""Deploy prefect.yaml to a throw-away local Prefect server and read the deployments back.

A real ``prefect server start`` (SQLite in a temporary PREFECT_HOME, a free port on
127.0.0.1, no UI, no background services) is started; the work pools named in
prefect.yaml are created; ``prefect --no-prompt deploy --all`` runs from the repository
root exactly as documented; then every deployment, its flow, work pool, parameters,
pull steps, concurrency limit and cron schedules are read back with the Prefect client
and compared with prefect.yaml. The server's process group and the temporary
directory are removed afterwards. About 30-60 s on 2 cores (server start-up dominates).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.spec import (
    CALIBRATION_FLOW,
    FLOWS,
    MAINTENANCE_FLOW,
    POOL_TYPES,
    PREFECT_YAML,
    REPO_ROOT,
    SCHEDULED_FLOW,
    load_yaml,
    missing_flow_files,
)

MISSING = missing_flow_files()

pytestmark = [
    pytest.mark.slow,
    pytest.mark.integration,  # a Prefect server and `prefect deploy` in subprocesses
    pytest.mark.skipif(bool(MISSING), reason=f"flows not written yet: {', '.join(MISSING)}"),
]

SERVER_START_TIMEOUT_S = 120.0
DEPLOY_TIMEOUT_S = 240.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _clean_env(home: Path) -> dict[str, str]:
    """This process's environment without any PREFECT_* setting, on a private PREFECT_HOME."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("PREFECT_")}
    env.update(
        {
            "PREFECT_HOME": str(home),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_UI_ENABLED": "false",
            "DO_NOT_TRACK": "1",
            "RAY_USAGE_STATS_ENABLED": "0",
        }
    )
    return env


def _tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")[-n:]
    except OSError:
        return ""


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Terminate the server's process group (it was started in a session of its own)."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    except ProcessLookupError:
        pass


@pytest.fixture(scope="module")
def prefect_server() -> Iterator[tuple[str, dict[str, str]]]:
    """(API URL, environment for the CLI) of a fresh local Prefect server."""
    with tempfile.TemporaryDirectory(prefix="constellation-prefect-") as tmp:
        home = Path(tmp)
        port = _free_port()
        url = f"http://127.0.0.1:{port}/api"
        env = _clean_env(home)
        server_env = {
            **env,
            "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home / 'prefect.db'}",
        }
        log = home / "server.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [
                    *(sys.executable, "-m", "prefect", "server", "start"),
                    *("--host", "127.0.0.1", "--port", str(port)),
                    *("--no-services", "--no-ui", "--analytics-off"),
                ],
                cwd=home,
                env=server_env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            deadline = time.monotonic() + SERVER_START_TIMEOUT_S
            while not _healthy(url):
                if proc.poll() is not None:
                    pytest.fail(f"prefect server exited ({proc.returncode}):\n{_tail(log)}")
                if time.monotonic() > deadline:
                    pytest.fail(f"prefect server not healthy after {SERVER_START_TIMEOUT_S} s")
                time.sleep(0.25)
            yield url, {**env, "PREFECT_API_URL": url}
        finally:
            _stop(proc)


@pytest.fixture(scope="module")
def deployed(prefect_server: tuple[str, dict[str, str]]) -> dict[str, dict[str, Any]]:
    """Create the pools, deploy everything, and return the deployments by FLOW/NAME."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.workers.process import ProcessWorker

    url, env = prefect_server
    config = load_yaml(PREFECT_YAML)
    pools = {d["work_pool"]["name"] for d in config["deployments"]}
    assert pools <= set(POOL_TYPES), f"unexpected work pools {pools - set(POOL_TYPES)}"

    with temporary_settings(updates={PREFECT_API_URL: url}):
        with get_client(sync_client=True) as client:
            for name in sorted(pools):
                assert POOL_TYPES[name] == "process"
                client.create_work_pool(
                    WorkPoolCreate(
                        name=name,
                        type="process",
                        base_job_template=ProcessWorker.get_default_base_job_template(),
                    )
                )

        result = subprocess.run(
            [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all"],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=DEPLOY_TIMEOUT_S,
            check=False,
        )
        assert result.returncode == 0, (
            f"prefect deploy --all failed ({result.returncode}):\n"
            f"{result.stdout[-6000:]}\n{result.stderr[-6000:]}"
        )

        found: dict[str, dict[str, Any]] = {}
        with get_client(sync_client=True) as client:
            for dep in client.read_deployments():
                flow = client.read_flow(dep.flow_id)
                limit = dep.global_concurrency_limit
                options = dep.concurrency_options
                found[f"{flow.name}/{dep.name}"] = {
                    "entrypoint": dep.entrypoint,
                    "work_pool": dep.work_pool_name,
                    "work_queue": dep.work_queue_name,
                    "tags": sorted(dep.tags),
                    "description": dep.description,
                    "parameters": dep.parameters,
                    "enforce_parameter_schema": dep.enforce_parameter_schema,
                    "pull_steps": dep.pull_steps,
                    "job_variables": dep.job_variables,
                    "concurrency": None
                    if limit is None
                    else (limit.limit, options.collision_strategy.value if options else None),
                    "schedules": sorted(
                        (
                            getattr(s.schedule, "cron", None),
                            getattr(s.schedule, "timezone", None),
                            s.active,
                            s.slug,
                            s.parameters,
                        )
                        for s in dep.schedules
                    ),
                    "schema_properties": sorted(
                        (dep.parameter_openapi_schema or {}).get("properties", {})
                    ),
                }
    return found


def _expected() -> dict[str, dict[str, Any]]:
    config = load_yaml(PREFECT_YAML)
    names = {f.entrypoint: f.name for f in FLOWS}
    out: dict[str, dict[str, Any]] = {}
    for dep in config["deployments"]:
        out[f"{names[dep['entrypoint']]}/{dep['name']}"] = dep
    return out


def test_every_deployment_is_on_the_server(deployed: dict[str, dict[str, Any]]) -> None:
    expected = _expected()
    assert sorted(deployed) == sorted(expected)
    flows_deployed = {key.split("/")[0] for key in deployed}
    assert flows_deployed == {f.name for f in FLOWS}, "one deployment per flow, at least"


def test_deployments_match_prefect_yaml(deployed: dict[str, dict[str, Any]]) -> None:
    config = load_yaml(PREFECT_YAML)
    specs = {f.name: f for f in FLOWS}
    for key, dep in _expected().items():
        got = deployed[key]
        spec = specs[key.split("/")[0]]
        assert got["entrypoint"] == dep["entrypoint"], key
        assert got["work_pool"] == dep["work_pool"]["name"] == spec.pool, key
        assert got["work_queue"] == dep["work_pool"].get("work_queue_name", "default"), key
        assert got["tags"] == sorted(dep["tags"]), key
        assert got["description"] == dep["description"], key
        assert got["parameters"] == (dep.get("parameters") or {}), key
        assert got["enforce_parameter_schema"] is True, key
        assert got["pull_steps"] == config["pull"], key
        assert got["job_variables"] == dep["work_pool"].get("job_variables", {}), key
        # the flow's parameter schema, from the real code, holds every parameter assumed
        assert set(spec.parameters) <= set(got["schema_properties"]), key
        limit = dep.get("concurrency_limit")
        if limit is None:
            assert got["concurrency"] is None, key
        else:
            assert got["concurrency"] == (limit["limit"], limit["collision_strategy"]), key


def test_reprocessing_maintenance_and_calibration_are_scheduled(
    deployed: dict[str, dict[str, Any]],
) -> None:
    scheduled = {k: v for k, v in deployed.items() if v["schedules"]}
    assert sorted(k.split("/")[0] for k in scheduled) == sorted(
        [MAINTENANCE_FLOW, SCHEDULED_FLOW, CALIBRATION_FLOW]
    )
    for key, got in scheduled.items():
        dep = _expected()[key]
        want = sorted(
            (s["cron"], s.get("timezone"), s.get("active", True), s["slug"],
             s.get("parameters", {}))
            for s in dep["schedules"]
        )  # fmt: skip
        assert got["schedules"] == want
        for cron, timezone, active, _slug, params in got["schedules"]:
            assert cron
            assert timezone == "UTC"
            assert active
            if key.split("/")[0] == SCHEDULED_FLOW:
                assert params.get("tiles"), "each field schedule carries its tiles"
