"""``constellation infer`` on prepared sub-tiles (mock backend)."""

from __future__ import annotations

from pathlib import Path

import yaml
from typer.testing import CliRunner

from constellation.cli import app
from constellation.inference import clear_backends
from constellation.io.storage import Storage
from constellation.manifest import layout
from constellation.results.store import read_marker
from tests.fixtures.fields import PreparedField

runner = CliRunner()


def _config(field: PreparedField, work: Path, tmp_path: Path, **mock: object) -> Path:
    doc = {
        "science": {"backend": {"name": "mock", "mock": mock}},
        "runtime": {"storage": {"data_uri": str(field.root), "work_uri": str(work)}},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_infer_a_tile_then_resume(prepared_field: PreparedField, tmp_path: Path) -> None:
    clear_backends()
    work = prepared_field.copy_work(tmp_path / "work")
    cfg = _config(prepared_field, work, tmp_path)
    tile = prepared_field.tile_ids[0]
    # prepared with the default mock settings: the same config hash as this file
    result = runner.invoke(app, ["-c", str(cfg), "infer", "--tile", str(tile), "--run-id", "r1"])
    assert result.exit_code == 0, result.output
    assert "16 ok, 0 skipped, 0 failed, 0 already done" in result.output
    marker = read_marker(Storage(), layout.subtile_dir(str(work), tile, 2, 3))
    assert marker is not None
    assert marker.run_id == "r1"
    again = runner.invoke(app, ["-c", str(cfg), "infer", "--tile", str(tile)])
    assert again.exit_code == 0, again.output
    assert "0 ok, 0 skipped, 0 failed, 16 already done" in again.output
    forced = runner.invoke(
        app, ["-c", str(cfg), "infer", layout.manifest_url(str(work), tile, 0, 0), "--force"]
    )
    assert "1 ok" in forced.output


def test_infer_reports_failures_and_bad_input(
    prepared_field: PreparedField, tmp_path: Path
) -> None:
    clear_backends()
    work = prepared_field.copy_work(tmp_path / "work")
    cfg = _config(prepared_field, work, tmp_path)
    url = layout.manifest_url(str(work), prepared_field.tile_ids[1], 1, 1)
    missing = str(tmp_path / "nope" / "manifest.json")
    result = runner.invoke(app, ["-c", str(cfg), "infer", url, missing])
    assert result.exit_code == 1
    assert "1 ok, 0 skipped, 1 failed, 0 already done" in result.output
    assert "failed 1: FileNotFoundError" in result.output  # the cause, one line
    accepted = runner.invoke(app, ["-c", str(cfg), "infer", url, missing, "--allow-failures"])
    assert accepted.exit_code == 0, accepted.output
    assert runner.invoke(app, ["-c", str(cfg), "infer", "--backend", "gpu", url]).exit_code == 2
    empty_work = _config(prepared_field, tmp_path / "empty", tmp_path)
    nothing = runner.invoke(app, ["-c", str(empty_work), "infer"])
    assert nothing.exit_code == 1
    assert "no prepared sub-tiles" in nothing.output
    empty = runner.invoke(app, ["-c", str(cfg), "infer", "--tile", "999"])
    assert "no manifests for tile 999" in empty.output


def test_shine_backend_missing_is_explained(prepared_field: PreparedField, tmp_path: Path) -> None:
    import importlib.util

    if importlib.util.find_spec("shine") is not None:
        import pytest

        pytest.skip("SHINE is installed here")
    clear_backends()
    cfg = _config(prepared_field, prepared_field.work, tmp_path)
    url = layout.manifest_url(str(prepared_field.work), prepared_field.tile_ids[0], 0, 0)
    result = runner.invoke(app, ["-c", str(cfg), "infer", "--backend", "shine", url])
    assert result.exit_code == 1
    assert "SHINE" in result.output
