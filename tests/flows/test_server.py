"""The temporary Prefect server that ``run``, ``demo`` and ``reprocess`` start themselves
when no Prefect API is configured."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from flows import server as server_module
from flows.server import TemporaryServer

_SCRIPT = """
from flows.server import prefect_api
with prefect_api() as server:
    assert server is not None
    print("url", server.url)
    server.wait(180)
    from prefect import flow, get_run_logger

    @flow
    def answer() -> int:
        get_run_logger().info("a log record for the API")
        return 42

    print("result", answer())
print("stopped", server._process is None)
"""


def test_a_configured_api_is_used_as_it_is(prefect_api: str) -> None:
    from prefect.settings import get_current_settings

    with server_module.prefect_api() as server:  # the test harness's API is configured
        assert server is None
        assert get_current_settings().api.url.rstrip("/") == prefect_api.rstrip("/")


@pytest.mark.integration
def test_flows_run_against_the_temporary_server_and_it_stops(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect"), DO_NOT_TRACK="1")
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT], env=env, cwd=Path(__file__).parents[2],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    assert "result 42" in out.stdout
    assert "stopped True" in out.stdout
    assert "Starting temporary server" not in text  # Prefect did not start a second one
    assert "Error logging to API" not in text  # the logs were sent before it stopped
    url = next(line.split()[1] for line in out.stdout.splitlines() if line.startswith("url"))
    assert url.startswith("http://127.0.0.1:")
    assert url.endswith("/api")


@pytest.mark.integration
def test_a_server_that_exits_is_reported_with_its_log() -> None:
    server = TemporaryServer()
    try:
        assert server._process is not None
        server._process.kill()
        server._process.wait()
        with pytest.raises(RuntimeError, match="temporary Prefect server exited"):
            server.wait(30)
    finally:
        server.stop()
    assert not Path(server._log.name).exists()
