"""Smoke test of ``benchmarks/assemble.py --quick``: it runs and prints every figure once."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "assemble.py"

NUMERIC = [
    "assemble_subtiles",
    "assemble_rows",
    "assemble_seconds",
    "assemble_rows_per_s",
    "assemble_cpu_s",
    "assemble_cpu_s_per_mrow",
    "assemble_batches",
    "assemble_commits",
    "assemble_data_files",
    "assemble_added_as_is",
    "assemble_data_mb",
    "assemble_baseline_rss_mb",
    "assemble_peak_rss_mb",
    "decode_result_ms",
    "assemble_noop_seconds",
    "assemble_reprocess_seconds",
    "cpu_count",
]
TEXT = ["pyiceberg_version", "pyarrow_version"]


@pytest.mark.integration  # the benchmark script in a subprocess
def test_assemble_benchmark_quick() -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    names = [line.split("=", 1)[0] for line in lines]
    assert sorted(names) == sorted(NUMERIC + TEXT)  # each exactly once, nothing else
    values = dict(line.split("=", 1) for line in lines)
    for name in NUMERIC:
        assert math.isfinite(float(values[name])), name
        assert float(values[name]) > 0, name
    assert int(values["assemble_rows"]) == 48 * 200
    assert values["assemble_commits"] == values["assemble_batches"] == "3"
    assert values["assemble_added_as_is"] == "48"  # every result committed as it is
