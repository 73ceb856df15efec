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
def test_mock_truth_mode_calibrates_to_zero_bias(tmp_path: Path, prefect_api: str) -> None:
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
    # the mock draws the same noise for a sub-tile in every field: recovered minus
    # injected is the same vector in each field (a swapped component or sign is not)
    residuals = []
    for i, (g1, g2) in enumerate(run.shears):
        rows = run.field_of_row == i
        assert rows.any()
        np.testing.assert_allclose(run.injected[rows], [[g1, g2]] * int(rows.sum()))
        order = np.argsort(run.subtile_of_row[rows])
        keys = run.subtile_of_row[rows][order]
        residuals.append((keys, (run.recovered[rows] - run.injected[rows])[order]))
    for keys, resid in residuals[1:]:
        np.testing.assert_array_equal(keys, residuals[0][0])
        np.testing.assert_allclose(resid, residuals[0][1], atol=1e-6)

    _calibrate_command_reports_and_appends_to_the_table(tmp_path)
    _calibration_flow_resumes_and_records(tmp_path)


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


def _calibration_flow_resumes_and_records(tmp_path: Path) -> None:
    """The ``shear-calibration`` flow on the same fields: the same figures, a third row."""
    import pyarrow.parquet as pq

    from flows.calibration import shear_calibration

    out = tmp_path / "calib"
    state = shear_calibration(
        out=str(out), backend="mock", shears=[-0.02, 0.02], density=2.0, return_state=True
    )
    assert state.is_completed(), state.message
    result = state.result()
    assert result["backend"] == "mock"
    assert result["table_rows"] == 3
    assert result["report"] == str(out / "calibration.md")
    table = pq.read_table(out / "calibrations.parquet")
    assert result["figures"]["calib_m1"] == table.column("m1").to_pylist()[-1]
    assert table.column("m1").to_pylist()[-1] == table.column("m1").to_pylist()[0]
    with pytest.raises(ValueError, match="at least two different values"):
        shear_calibration(out=str(out), backend="mock", shears=[0.02])


@pytest.mark.shine
@pytest.mark.integration
def test_a_shine_calibration_runs_and_writes_m_and_c(tmp_path: Path, shine_euclid: object) -> None:
    """Real SHINE through the calibration stages on two tiny GalSim fields (quadrant
    2-1.F on the tile's edge: two sub-tiles of an 8 x 8 tiling see galaxies), three MAP
    steps: it runs, the fitted sub-tiles give finite m and c and the table records them.
    Not a bias measurement (benchmarks/calibration.py is)."""
    import pyarrow.parquet as pq

    from constellation.inference import clear_backends
    from constellation.stages.calibrate import record_calibration

    spec = FieldSpec(
        n_tiles_ra=1, n_tiles_dec=1, mode="pixels", density_per_arcmin2=2.0,
        pixel_quadrants=("2-1.F",), shape_noise=0.0, pixel_noise=False, renderer="galsim",
        seed=42,
    )  # fmt: skip
    science = ScienceConfig.model_validate(
        {
            "tiling": {"n_rows": 8, "n_cols": 8, "margin_arcmin": 0.25},
            "backend": {"name": "shine"},
            "shine": {
                "inference": {"method": "map", "map_config": {"enabled": True, "num_steps": 3}},
                "sources": {"min_snr": 10.0},
            },
        }
    )
    storage = StorageConfig(data_uri=str(tmp_path / "unused"), work_uri=str(tmp_path / "unused"))
    settings = Settings(
        science=science,
        runtime=RuntimeConfig(storage=storage, jax_cache_dir=str(tmp_path / "jax")),
    )
    clear_backends()
    record = record_calibration(
        str(tmp_path / "calib"), settings, spec, [(0.02, -0.02), (-0.02, 0.02)],
        run_id="shine-calibration",
    )  # fmt: skip
    cal = record.run.calibration
    assert cal.n >= 2
    assert set(record.run.field_of_row.tolist()) == {0, 1}
    figures = cal.figures()
    for name in ("calib_m1", "calib_m2", "calib_c1", "calib_c2"):
        assert np.isfinite(figures[name]), name
    table = pq.read_table(record.table)
    assert table.column("backend").to_pylist() == ["shine"]
    assert table.column("subtiles").to_pylist() == [cal.n]
