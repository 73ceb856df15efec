"""Smoke test of ``benchmarks/partition.py --quick``: it runs and prints every figure once."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "partition.py"

NUMERIC = [
    "partition_first_call_s",
    "partition_first_call_cached_s",
    "partition_ns_per_source",
    "partition_sources_per_s",
    "partition_input_mb",
    "partition_baseline_rss_mb",
    "partition_peak_rss_mb",
    "partition_ns_per_source_dec66",
    "partition_ns_per_source_ra0",
    "partition_with_neighbours_ns_per_source",
    "allsky_tiles",
    "allsky_subtiles",
    "allsky_first_build_s",
    "allsky_build_s",
    "allsky_baseline_rss_mb",
    "allsky_peak_rss_mb",
    "wide_tiles",
    "wide_subtiles",
    "wide_build_s",
    "wide_baseline_rss_mb",
    "wide_peak_rss_mb",
]
TEXT = ["cpu_model", "numpy_version", "numba_version"]


def _run(script: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.mark.integration  # the benchmark script in a subprocess
def test_partition_benchmark_quick() -> None:
    proc = _run(SCRIPT, "--quick")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert all("=" in line for line in lines), proc.stdout
    names = [line.split("=", 1)[0] for line in lines]
    values = dict(line.split("=", 1) for line in lines)
    assert sorted(names) == sorted(NUMERIC + TEXT)  # each exactly once, nothing else
    for name in NUMERIC:
        value = float(values[name])
        assert math.isfinite(value), (name, value)
        assert value > 0, (name, value)
    for name in TEXT:
        assert values[name].strip(), name


@pytest.mark.integration  # the benchmark script in a subprocess
def test_prepare_benchmark_quick() -> None:
    proc = _run(SCRIPT.parent / "prepare.py", "--quick")
    assert proc.returncode == 0, proc.stderr
    values = dict(line.split("=", 1) for line in proc.stdout.splitlines())
    assert sorted(values) == [
        "prepare_manifest_dump_ms",
        "prepare_manifest_load_ms",
        "prepare_peak_rss_mb",
        "prepare_tile_first_s",
        "prepare_tile_s",
        "stage_bytes_ratio",
        "stage_s",
    ]
    assert float(values["stage_bytes_ratio"]) <= 1.05
    assert all(math.isfinite(float(v)) and float(v) > 0 for v in values.values())


@pytest.mark.integration  # the benchmark script in a subprocess
def test_survey_benchmark_small() -> None:
    """``benchmarks/survey.py`` on 40 tiles: runs, prints consistent figures."""
    proc = _run(SCRIPT.parent / "survey.py", "--max-tiles", "40", "--chunk-order", "5")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert all("=" in line for line in lines), proc.stdout
    values = dict(line.split("=", 1) for line in lines)
    assert len(values) == len(lines)  # each name once
    for name in ("survey_plan_s", "survey_peak_rss_mb", "survey_match_s", "survey_index_cpu_s"):
        assert math.isfinite(float(values[name])), name
        assert float(values[name]) >= 0, name
    assert values["survey_grid"] == "4x4"
    assert int(values["survey_tiles"]) == 40
    assert int(values["survey_subtiles"]) == 640
    assert int(values["survey_quadrant_exposures"]) == 864 * int(values["survey_pointings"])
    pairs = int(values["survey_candidate_pairs"])
    assert pairs > 0
    assert math.isclose(pairs / 640, float(values["survey_pairs_per_subtile_mean"]), abs_tol=0.01)
    # the policy drops the short exposures: 2 of the 6 exposures of an observation
    kept = int(values["survey_index_rows_nominal"]) / int(values["survey_index_rows_generated"])
    assert 0.6 < kept < 0.75


PROJECTIONS = SCRIPT.parent / "projections.py"
SURVEY_DOC = SCRIPT.parents[1] / "docs" / "survey.md"


def _tables(text: str) -> list[list[str]]:
    """The markdown tables of ``text``: runs of consecutive lines starting with ``|``."""
    tables: list[list[str]] = []
    current: list[str] = []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            tables.append(current)
            current = []
    return tables


@pytest.mark.integration  # the benchmark script in a subprocess
def test_projections_tables_are_the_ones_in_the_docs() -> None:
    """docs/survey.md shows exactly what ``benchmarks/projections.py`` prints by default."""
    proc = _run(PROJECTIONS)
    assert proc.returncode == 0, proc.stderr
    printed = _tables(proc.stdout)
    assert len(printed) == 2  # projections, inputs
    docs = _tables(SURVEY_DOC.read_text(encoding="utf-8"))
    for table in printed:
        assert table in docs, f"docs/survey.md is stale, rerun projections.py: {table[0]}"


@pytest.mark.integration  # the benchmark script in a subprocess
def test_projections_gpu_rate_rows() -> None:
    """The H200-rate rows: slots x exposures x ms per slot-exposure x steps, by hand."""
    proc = _run(
        PROJECTIONS,
        "--lines",
        "--sources=1e6",
        "--subtiles=1000",
        "--extended-area-ratio=2",
        "--pairs-per-subtile=10",
        "--gpu-ms-per-slot-exposure=0.5",
        "--map-steps=360",
        "--days=10",
    )
    assert proc.returncode == 0, proc.stderr
    values = dict(line.split("=", 1) for line in proc.stdout.splitlines())
    prefix = "gpu_map_h200_rate_"
    assert float(values[prefix + "source_slots_per_sub_tile"]) == 2000  # 1e6 / 1000 x 2
    assert float(values[prefix + "s_per_map_step_extrapolated_s"]) == 10  # 2000 x 10 x 0.5 ms
    assert float(values[prefix + "h200_hours_per_sub_tile_extrapolated_gpu_h"]) == 1  # x 360 s
    assert float(values[prefix + "h200_hours_for_the_survey_extrapolated_gpu_h"]) == 1000
    assert math.isclose(
        float(values[prefix + "h200s_for_10_days_extrapolated"]), 1000 / 240, rel_tol=1e-5
    )


@pytest.mark.integration  # the benchmark script in a subprocess
def test_projections_sparse_model_rows() -> None:
    """The sparse model's rows: stamps x (ms per stamp + ms per stamp-Mpx x window) x
    evaluations, by hand."""
    proc = _run(
        PROJECTIONS,
        "--lines",
        "--sources=1e6",
        "--subtiles=1000",
        "--extended-area-ratio=2",
        "--exposures-per-source=3",
        "--rendered-per-visible=1.5",
        "--gpu-ms-per-stamp=0.1",
        "--gpu-ms-per-stamp-mpx=0.5",
        "--window-mpx=0.2",
        "--map-evaluations=400",
        "--days=10",
    )
    assert proc.returncode == 0, proc.stderr
    values = dict(line.split("=", 1) for line in proc.stdout.splitlines())
    prefix = "gpu_map_sparse_model_"
    assert float(values[prefix + "stamps_rendered_per_step_and_sub_tile"]) == 9000  # 2000 x 4.5
    assert math.isclose(  # 9000 x (0.1 + 0.5 x 0.2) ms
        float(values[prefix + "s_per_loss_evaluation_extrapolated_s"]), 1.8, rel_tol=1e-5
    )
    assert math.isclose(  # x 400 evaluations = 720 s
        float(values[prefix + "h200_hours_per_sub_tile_extrapolated_gpu_h"]), 0.2, rel_tol=1e-5
    )
    assert math.isclose(
        float(values[prefix + "h200_hours_for_the_survey_extrapolated_gpu_h"]), 200, rel_tol=1e-5
    )


def test_soak_accounting_finds_lost_and_duplicated_rows(tmp_path: Path) -> None:
    """The soak's zeros mean something: its accounting catches planted losses and
    duplicates (the soak itself takes minutes: run ``benchmarks/soak.py``)."""
    import importlib.util

    from pyiceberg.expressions import EqualTo

    from constellation.catalog.assemble import assemble
    from constellation.catalog.iceberg import KEY_COLUMN, SOURCES, SUBTILES, subtile_key
    from tests.catalog.conftest import make_field

    spec = importlib.util.spec_from_file_location("soak", SCRIPT.parent / "soak.py")
    assert spec is not None
    assert spec.loader is not None
    soak = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(soak)

    field = make_field(tmp_path, n_tiles=1)
    markers = field.write(n_sources=3)
    for tile, row, col in markers:  # the soak expects the prepared sub-tiles
        (
            Path(field.work) / "tiles" / str(tile) / "subtiles" / f"r{row}_c{col}" / "manifest.json"
        ).touch()
    assemble(field.settings)
    clean = soak.account(field.settings)
    assert clean["soak_subtiles"] == 16
    assert clean["rows_expected"] == clean["rows_catalog"] == 48
    assert [clean[k] for k in ("rows_lost", "rows_duplicated", "subtiles_missing")] == [0, 0, 0]

    cat = field.catalog()
    sources = cat.table(SOURCES)
    first, second = sorted(markers)[:2]
    one = sources.scan(row_filter=EqualTo(KEY_COLUMN, subtile_key(*first)), limit=1)
    sources.append(one.to_arrow())  # a row twice
    sources.delete(EqualTo(KEY_COLUMN, subtile_key(*second)))  # a sub-tile's rows lost
    cat.table(SUBTILES).delete(EqualTo(KEY_COLUMN, subtile_key(*second)))
    broken = soak.account(field.settings)
    assert broken["rows_duplicated"] == 1
    assert broken["rows_lost"] == 3
    assert broken["subtiles_missing"] == 1


def test_shine_cost_survey_shapes_compares_the_two_layouts() -> None:
    """The compiled-shape estimate of benchmarks/shine_cost.py (no SHINE needed): packed
    canvases need fewer shapes per sub-tile than a canvas per window, and pad more."""
    import importlib.util

    import numpy as np

    path = SCRIPT.parent / "shine_cost.py"
    spec = importlib.util.spec_from_file_location("shine_cost", path)
    assert spec is not None
    assert spec.loader is not None
    shine_cost = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shine_cost)
    args = (np.array([30, 40, 50]), 600.0, [0.8, 0.15, 0.05], [64, 128, 256], 8)
    own = shine_cost.survey_shapes(*args, 0)
    packed = shine_cost.survey_shapes(*args, 1024)
    assert own["samples"] == packed["samples"] == 8
    assert packed["shapes_per_subtile"] < own["shapes_per_subtile"] / 2
    assert 1.0 <= own["rendered_per_visible"] < packed["rendered_per_visible"]
    assert own["shapes_after_quarter"] <= own["shapes_after_half"] <= own["compiled_shapes"]
    # quadrants (2048 x 2066 px) over a 9.5' box: each covers ~7 % of the positions
    # that overlap it, so 30-50 exposures see a source ~2-4 times
    assert 1.5 < own["exposures_per_source"] == packed["exposures_per_source"] < 4.5
