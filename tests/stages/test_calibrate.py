"""A calibration run through the pipeline's stages with the mock backend in truth mode."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from constellation.config import RuntimeConfig, ScienceConfig, Settings, StorageConfig
from constellation.simulate import FieldSpec
from constellation.stages.calibrate import calibration_shears, run_calibration


def test_calibration_shears_cover_both_components_with_one_zero_field() -> None:
    assert calibration_shears((0.02, -0.02, 0.0)) == [
        (-0.02, 0.0), (0.0, 0.0), (0.02, 0.0), (0.0, -0.02), (0.0, 0.02)
    ]  # fmt: skip


@pytest.mark.integration
def test_mock_truth_mode_calibrates_to_zero_bias(tmp_path: Path) -> None:
    """Simulate -> resolve -> index -> prepare -> infer (mock, truth) -> assemble per
    field, then m and c: consistent with 0, and each field's sub-tiles recover its shear
    (a swapped component or sign would put them elsewhere)."""
    spec = FieldSpec(
        n_tiles_ra=1,
        n_tiles_dec=1,
        density_per_arcmin2=2.0,
        shape_noise=0.0,
        pixel_noise=False,
        seed=7,
    )  # fmt: skip  (what the command makes)
    storage = StorageConfig(data_uri=str(tmp_path / "unused"), work_uri=str(tmp_path / "unused"))
    settings = Settings(
        science=ScienceConfig.model_validate(
            {"backend": {"name": "mock", "mock": {"mode": "truth"}}}
        ),
        runtime=RuntimeConfig(storage=storage),
    )
    lines: list[str] = []
    run = run_calibration(
        str(tmp_path / "calib"), spec, settings, shears=calibration_shears((-0.02, 0.02)),
        n_boot=200, progress=lines.append,
    )  # fmt: skip
    cal = run.calibration
    assert len(lines) == 4
    assert cal.n >= 4 * 10  # most of each tile's 16 sub-tiles have sources
    for comp in (cal.g1, cal.g2):
        assert abs(comp.m) < 4 * comp.m_err + 1e-3
        assert abs(comp.c) < 4 * comp.c_err + 1e-4
    for i, (g1, g2) in enumerate(run.shears):
        rows = run.field_of_row == i
        assert rows.any()
        np.testing.assert_allclose(run.injected[rows], [[g1, g2]] * int(rows.sum()))
        mean = run.recovered[rows].mean(axis=0)
        assert np.allclose(mean, [g1, g2], atol=0.01), (i, mean)

    _calibrate_command_reports_and_appends_to_the_table(tmp_path)


def _calibrate_command_reports_and_appends_to_the_table(tmp_path: Path) -> None:
    """The command on the fields just made (it resumes them): figures, report, table."""
    import pyarrow.parquet as pq
    from typer.testing import CliRunner

    from constellation.cli import app

    out = tmp_path / "calib"
    args = ["calibrate", "--out", str(out), "--backend", "mock", "--shears", "-0.02,0.02",
            "--density", "2"]  # fmt: skip
    runner = CliRunner()
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    figures = dict(
        line.split("=", 1) for line in first.stdout.splitlines() if line.startswith("calib_")
    )
    assert float(figures["calib_subtiles"]) >= 4 * 10  # four fields (no zero field)
    assert abs(float(figures["calib_m1"])) < 4 * float(figures["calib_m1_err"]) + 1e-3
    md = (out / "calibration.md").read_text(encoding="utf-8")
    assert "| backend | mock |" in md
    assert (out / "calibration.png").read_bytes()[:4] == b"\x89PNG"
    again = runner.invoke(app, args)  # resumes; one more row in the table
    assert again.exit_code == 0, again.output
    table = pq.read_table(out / "calibrations.parquet")
    assert table.num_rows == 2
    assert set(table.column("backend").to_pylist()) == {"mock"}
    assert table.column("m1").to_pylist()[0] == table.column("m1").to_pylist()[1]
    bad = runner.invoke(app, ["calibrate", "--out", str(out), "--shears", "0.02"])
    assert bad.exit_code == 2
    assert "at least two different shears" in bad.output
