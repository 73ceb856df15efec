"""``constellation index`` on the light field."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from constellation.cli import app
from constellation.io.quadrant_index import read_quadrant_index
from constellation.io.storage import Storage
from constellation.simulate.run import FieldSummary


@pytest.mark.slow  # ~10 s on 2 cores; the index command's bad-input tests stay fast
def test_index_command(light_field: tuple[Path, FieldSummary], tmp_path: Path) -> None:
    root, summary = light_field
    vis = tmp_path / "VIS"
    shutil.copytree(root / "q1" / "VIS", vis)
    (vis / "2681" / "notes.txt").write_text("not a VIS file")
    out = tmp_path / "idx.parquet"
    runner = CliRunner()
    args = ["index", "--vis", str(vis), "--out", str(out), "--workers", "4"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    n = len(summary.plan.exposures)
    assert f"DET {n} read (0 unchanged)" in res.output
    assert f"{144 * n} quadrant exposures" in res.output
    assert "1 unmatched files" in res.output
    assert read_quadrant_index(Storage(), str(out)).num_rows == 144 * n
    res = runner.invoke(app, ["-v", *args])
    assert res.exit_code == 0, res.output
    assert f"DET 0 read ({n} unchanged)" in res.output
    assert "unmatched: " in res.output
    assert "notes.txt" in res.output


def test_index_command_without_det(tmp_path: Path) -> None:
    (tmp_path / "VIS" / "1").mkdir(parents=True)
    res = CliRunner().invoke(
        app, ["index", "--vis", str(tmp_path / "VIS"), "--out", str(tmp_path / "i.parquet")]
    )
    assert res.exit_code != 0
    assert "no DET file" in res.output
