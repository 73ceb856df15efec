"""The CLI and the Prefect task of a stage handle a bad tile the same way: one failed
outcome with the same message, the other tiles prepared."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from constellation.cli import app
from constellation.config import load_config
from constellation.io.registry import read_work_registry
from constellation.io.storage import Storage
from constellation.stages.prepare import plan
from flows.common import settings_json
from flows.prepare import failed_tiles_message, prepare_tile_task
from tests.reliability.checks import error_line
from tests.reliability.test_bad_inputs import Field, _nan_coordinates, field

__all__ = ["field"]  # the module-scoped fixture, shared with test_bad_inputs

runner = CliRunner()


def test_the_flow_task_and_the_cli_report_a_bad_tile_alike(field: Field, tmp_path: Path) -> None:
    data = field.copy_catalogs(tmp_path / "data")
    west, _middle, east = field.tiles
    catalog = field.catalog(data, west)
    _nan_coordinates(catalog)
    config = field.config(tmp_path, data=data)
    settings = load_config(config)
    payload = settings_json(settings)
    registry = read_work_registry(Storage(), settings.runtime.storage.work_uri)

    # the flow's task: every tile gives an outcome; none raises
    outcomes = {
        item.tile.tile_id: prepare_tile_task.fn(payload, item.model_dump_json())
        for item in plan(settings, registry, [west, east])
    }
    bad, good = outcomes[west], outcomes[east]
    assert (bad["status"], bad["cause"]) == ("failed", "MerCatalogError")
    assert bad["label"] == f"tile {west}"
    assert "non-finite" in bad["message"]
    assert (good["status"], good["subtiles"], good["written"]) == ("ok", 4, 4)
    message = failed_tiles_message({"failed": [{"tile_id": west, "error": bad["message"]}]})
    assert message == f"1 tile(s) not prepared: {west} ({bad['message']})"

    # the CLI: the same message on the tile's line; the good tile is now done
    res = runner.invoke(app, ["-c", str(config), "prepare", "-t", str(west), "-t", str(east)])
    assert res.exit_code == 1, res.output
    error_line(res, f"tile {west}: ", bad["message"])
    assert f"1 tile(s) not prepared: {west}" in res.stdout
    assert "(1 tiles already done)" in res.stdout
