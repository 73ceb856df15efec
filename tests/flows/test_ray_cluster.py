"""The infer flow against a real multi-node Ray cluster (by address), with fake GPUs."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.fields import PreparedField
from tests.flows.conftest import write_config

pytestmark = pytest.mark.integration  # a Ray cluster started with `ray start`


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ray(*args: str, env: dict[str, str]) -> None:
    ray_bin = Path(sys.executable).with_name("ray")
    subprocess.run([str(ray_bin), *args], check=True, env=env, capture_output=True, timeout=180)


@pytest.fixture(scope="module")
def cluster(prefect_api: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A head node with no GPU plus a worker node with 2 fake GPUs; yields the address.

    Ray >= 2.5x clusters started with ``ray start`` use token authentication: every
    node and the driver (this process) share one token from the environment.
    """
    port = _free_port()
    temp = tmp_path_factory.mktemp("raycluster")
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    env = dict(
        os.environ, PREFECT_API_URL=prefect_api, DO_NOT_TRACK="1", RAY_TMPDIR=str(temp),
        RAY_ENABLE_UV_RUN_RUNTIME_ENV="0", **auth,
    )  # fmt: skip
    address = f"127.0.0.1:{port}"
    patch = pytest.MonkeyPatch()
    for name, value in auth.items():
        patch.setenv(name, value)  # inherited by the driver subprocess
    try:
        _ray("start", "--head", f"--port={port}", "--num-cpus=1", "--num-gpus=0",
             "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}",
             env=env)  # fmt: skip
        _ray("start", f"--address={address}", "--num-cpus=2", "--num-gpus=2",
             "--resources={\"gpu_node\": 1}", "--disable-usage-stats", env=env)  # fmt: skip
        yield address
    finally:
        patch.undo()
        subprocess.run(
            [str(Path(sys.executable).with_name("ray")), "stop", "--force"],
            env=env, capture_output=True, timeout=120, check=False,
        )  # fmt: skip


_DRIVER = """
import json, sys
import ray
from flows.infer import infer_subtiles
out = infer_subtiles(config=sys.argv[1], tiles=json.loads(sys.argv[2]), run_id="cluster")
ray.init(address=sys.argv[3], logging_level="WARNING")
alive = [n for n in ray.nodes() if n["Alive"]]
out["gpu_nodes"] = sorted(n["NodeID"] for n in alive if n["Resources"].get("GPU"))
out["all_nodes"] = sorted(n["NodeID"] for n in alive)
ray.shutdown()
print("RESULT " + json.dumps(out))
"""


def test_every_subtile_runs_once_on_the_gpu_node(
    cluster: str, prefect_api: str, prepared_field: PreparedField, tmp_path: Path
) -> None:
    work = prepared_field.copy_work(tmp_path / "work")
    config = write_config(
        tmp_path / "config.yaml", prepared_field.root, work,
        ray={"address": cluster, "local_num_gpus": None},
    )  # fmt: skip
    tiles = list(prepared_field.tile_ids[:2])
    # a fresh driver process: Ray keeps per-process state (auth mode) between sessions
    env = dict(os.environ, PREFECT_API_URL=prefect_api, DO_NOT_TRACK="1")
    proc = subprocess.run(
        [sys.executable, "-c", _DRIVER, str(config), json.dumps(tiles), cluster],
        env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert lines, proc.stdout[-3000:]
    out = json.loads(lines[-1].removeprefix("RESULT "))
    assert out["counts"] == {"ok": 32}
    assert sum(out["nodes"].values()) == 32  # one completed task per sub-tile
    assert len(out["gpu_nodes"]) == 1
    assert len(out["all_nodes"]) == 2
    assert set(out["nodes"]) == set(out["gpu_nodes"])  # all on the GPU node
