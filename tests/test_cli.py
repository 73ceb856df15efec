"""Tests of the command-line interface (constellation.cli)."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from constellation import __version__
from constellation.cli import app
from constellation.config import Settings, load_config

runner = CliRunner()

BAD_YAML = "science:\n  tiling:\n    margin_arcmin: -1\n"


@pytest.fixture
def bad_config(tmp_path: Path) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(BAD_YAML, encoding="utf-8")
    return path


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"constellation {__version__}"


def test_help_lists_the_command_groups() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for word in ("tiles", "config", "--config", "--verbose", "--version"):
        assert word in result.stdout


def test_no_arguments_shows_help() -> None:
    result = runner.invoke(app, [])
    assert "Usage" in result.output
    assert "config" in result.output


@pytest.mark.parametrize(("flags", "level"), [([], logging.WARNING), (["-vv"], logging.DEBUG)])
def test_verbose_flag_sets_the_log_level(flags: list[str], level: int) -> None:
    result = runner.invoke(app, [*flags, "config", "hash"])
    assert result.exit_code == 0, result.output
    assert logging.getLogger("constellation").level == level


def test_tiles_help() -> None:
    result = runner.invoke(app, ["tiles", "--help"])
    assert result.exit_code == 0
    assert "Usage" in result.stdout


def test_config_show_prints_effective_yaml_and_hash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("science:\n  tiling:\n    n_rows: 2\n", encoding="utf-8")
    monkeypatch.setenv("CONSTELLATION_RUNTIME__MAX_IN_FLIGHT", "9")
    result = runner.invoke(app, ["-c", str(path), "config", "show"])
    assert result.exit_code == 0, result.output
    expected = load_config(path)
    assert f"config_hash: {expected.config_hash}" in result.stdout
    shown = yaml.safe_load(result.stdout)
    assert shown["science"]["tiling"]["n_rows"] == 2
    assert shown["runtime"]["max_in_flight"] == 9


def test_config_hash_matches_the_library(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("science:\n  tiling:\n    margin_arcmin: 3\n", encoding="utf-8")
    result = runner.invoke(app, ["--config", str(path), "config", "hash"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == load_config(path).config_hash
    assert result.stdout.strip() != Settings().config_hash


def test_config_validate_ok(tmp_path: Path) -> None:
    path = tmp_path / "good.yaml"
    path.write_text("runtime:\n  tiles: [1, 2]\n", encoding="utf-8")
    result = runner.invoke(app, ["config", "validate", str(path)])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"ok {Settings().config_hash}"


def test_config_validate_bad_file_exits_2_with_clean_message(bad_config: Path) -> None:
    result = runner.invoke(app, ["config", "validate", str(bad_config)])
    assert result.exit_code == 2
    assert f"invalid configuration in {bad_config}" in result.stderr
    assert "science.tiling.margin_arcmin" in result.stderr
    assert "(got -1)" in result.stderr
    assert "Traceback" not in result.output
    assert result.stdout == ""


def test_config_validate_names_the_environment_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CONSTELLATION_RUNTIME__MAX_IN_FLIGHT", "0")
    result = runner.invoke(app, ["config", "validate"])
    assert result.exit_code == 2
    assert "runtime.max_in_flight" in result.stderr
    assert "CONSTELLATION_RUNTIME__MAX_IN_FLIGHT" in result.stderr


def test_config_validate_missing_file_exits_2(tmp_path: Path) -> None:
    result = runner.invoke(app, ["config", "validate", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2
    assert "not found" in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize("command", [["config", "show"], ["config", "hash"]])
def test_bad_global_config_is_a_clean_error(bad_config: Path, command: list[str]) -> None:
    result = runner.invoke(app, ["-c", str(bad_config), *command])
    assert result.exit_code == 2
    assert "science.tiling.margin_arcmin" in result.stderr
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_config_env_var_selects_the_file(bad_config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONSTELLATION_CONFIG", str(bad_config))
    result = runner.invoke(app, ["config", "hash"])
    assert result.exit_code == 2
    assert str(bad_config) in result.stderr


def test_commands_without_config_ignore_a_bad_one(bad_config: Path) -> None:
    result = runner.invoke(app, ["-c", str(bad_config), "tiles", "--help"])
    assert result.exit_code == 0
    result = runner.invoke(app, ["-c", str(bad_config), "--version"])
    assert result.exit_code == 0


@pytest.mark.integration  # a subprocess
def test_python_dash_m_runs_the_cli() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "constellation", "--version"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"constellation {__version__}"
