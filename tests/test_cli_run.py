"""``constellation run`` as a user meets it, in a subprocess: a run that cannot work stops
at once with the cause and the fix; SIGTERM stops a run within seconds, the flow run is
cancelled, and the next run resumes without duplicating a row."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fixtures.fields import PreparedField

pytestmark = pytest.mark.integration


def _env(prefect_api: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONSTELLATION_")}
    env.update(PREFECT_API_URL=prefect_api, DO_NOT_TRACK="1", PYTHONUNBUFFERED="1")
    return env


def _config(path: Path, field: PreparedField, work: Path, **extra: Any) -> Path:
    doc: dict[str, Any] = {
        "runtime": {"storage": {"data_uri": str(field.root), "work_uri": str(work)}},
    }
    for section, values in extra.items():
        doc.setdefault(section, {}).update(values)
    path.write_text(yaml.safe_dump(doc))
    return path


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_default_configuration_without_a_gpu_stops_at_once(
    prefect_api: str, prepared_field: PreparedField, tmp_path: Path
) -> None:
    """The default configuration (SHINE, one GPU per sub-tile) on a machine whose Ray has
    no GPU: exit code 2, a few lines, the first naming the cause and the setting."""
    work = prepared_field.copy_work(tmp_path / "work")
    config = _config(tmp_path / "config.yaml", prepared_field, work)
    before = _files(work)
    proc = subprocess.run(
        [sys.executable, "-m", "constellation", "-c", str(config), "run"],
        env=_env(prefect_api), cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert 1 <= len(lines) <= 25, lines
    first = lines[0]
    assert first.startswith("preflight: each sub-tile task asks for 1 GPU(s)"), lines
    assert "runtime.ray.num_gpus_per_task: 0" in first
    assert "Traceback" not in proc.stderr
    try:
        import shine.euclid  # noqa: F401
    except ImportError:  # the second problem: no SHINE on the workers
        assert any("SHINE" in ln and "science.backend.name: mock" in ln for ln in lines), lines
    assert _files(work) == before  # nothing indexed, prepared or written


def _flow_run_state(run_id: str) -> str:
    from prefect import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["constellation-pipeline"])),
            limit=200,
        )
    [run] = [r for r in runs if r.parameters.get("run_id") == run_id]
    assert run.state is not None
    return str(run.state.type.value)


def test_sigterm_stops_a_run_and_the_rerun_completes(
    prefect_api: str, prepared_field: PreparedField, tmp_path: Path
) -> None:
    from constellation.catalog.iceberg import open_catalog
    from constellation.catalog.validate import validate
    from constellation.config import load_config

    work = prepared_field.copy_work(tmp_path / "work")
    tile = prepared_field.tile_ids[0]
    config = _config(
        tmp_path / "config.yaml",
        prepared_field,
        work,
        science={"backend": {"name": "mock", "mock": {"sleep_s": 1.0}}},
        runtime={
            "ray": {"local_num_gpus": 2, "num_gpus_per_task": 1, "num_cpus_per_task": 0.5},
            "max_in_flight": 2,
            "tiles": [tile],
        },
    )
    cmd = [sys.executable, "-m", "constellation", "-c", str(config), "run", "--no-report"]
    proc = subprocess.Popen(
        [*cmd, "--run-id", "stopped"], env=_env(prefect_api), cwd=tmp_path,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stderr is not None
    seen: list[str] = []
    for line in proc.stderr:  # progress lines: wait until sub-tiles are being inferred
        seen.append(line)
        if line.startswith("infer: "):
            break
    else:
        pytest.fail(f"no progress line before exit: {seen}")
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    rest = proc.communicate(timeout=60)
    seconds = time.monotonic() - t0
    assert proc.returncode == 128 + signal.SIGTERM, (seen, rest)
    assert seconds < 10, seconds
    assert "run cancelled by SIGTERM" in rest[1]
    assert _flow_run_state("stopped") == "CANCELLED"

    again = subprocess.run(
        [*cmd, "--run-id", "resumed"], env=_env(prefect_api), cwd=tmp_path,
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert again.returncode == 0, again.stdout + again.stderr
    assert "done" in again.stdout  # the sub-tiles finished before the signal were kept
    settings = load_config(config)
    report = validate(settings, tiles=[tile])
    assert report.ok, report.summary()
    assert (report.present, report.n_ok, report.duplicate_subtiles) == (16, 16, 0)
    assert report.duplicate_sources == 0
    assert open_catalog(settings).count("subtiles") == 16


def test_run_options_are_configuration_overrides() -> None:
    from constellation.commands.run import _overrides

    assert _overrides("mock", cpu=True, local=True) == {
        "CONSTELLATION_SCIENCE__BACKEND__NAME": "mock",
        "CONSTELLATION_RUNTIME__RAY__NUM_GPUS_PER_TASK": "0",
        "CONSTELLATION_RUNTIME__EXECUTOR": "local",
    }
    assert _overrides(None, cpu=False) == {}


def test_an_ad_hoc_tile_with_backend_and_local_options(
    prefect_api: str, prepared_field: PreparedField, tmp_path: Path
) -> None:
    """The default configuration (SHINE on a GPU, on Ray) overridden on the command line:
    one prepared tile with the mock backend in this process (no Ray); then reprocess finds
    nothing to redo."""
    from constellation.io.storage import Storage
    from constellation.manifest import layout
    from constellation.results.store import read_marker

    work = prepared_field.copy_work(tmp_path / "work")
    config = _config(tmp_path / "config.yaml", prepared_field, work)
    tile = prepared_field.tile_ids[0]
    cmd = [sys.executable, "-m", "constellation", "-c", str(config), "run", "--tile", str(tile),
           "--backend", "mock", "--local", "--no-report"]  # fmt: skip
    first = subprocess.run(
        cmd, env=_env(prefect_api), cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert first.returncode == 0, first.stdout + first.stderr
    assert "builds in this process" in first.stderr
    markers = [
        read_marker(Storage(), layout.subtile_dir(str(work), tile, r, c))
        for r in range(4)
        for c in range(4)
    ]
    assert {m.backend for m in markers if m is not None} == {"mock"}
    assert sum(m is not None for m in markers) == 16
    # nothing changed since: reprocess redoes nothing (that a rerun dispatches nothing to
    # Ray is checked by tests/flows/test_pipeline.py)
    redo = subprocess.run(
        [*cmd[:5], "reprocess", "--tile", str(tile), "--backend", "mock", "--cpu"],
        env=_env(prefect_api), cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert redo.returncode == 0, redo.stdout + redo.stderr
    assert "0 of 1 tiles changed" in redo.stdout
    assert "nothing to redo" in redo.stdout
    # the unknown backend is refused before anything starts
    bad = subprocess.run(
        [*cmd[:-4], "--backend", "gpu"], env=_env(prefect_api), cwd=tmp_path,
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert bad.returncode == 2
    assert "unknown backend 'gpu'" in bad.stderr
