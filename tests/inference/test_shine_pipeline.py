"""``constellation run`` with the real SHINE backend, end to end, on a tiny ``pixels`` field:
JAX on the CPU, two fake Ray GPUs, a few MAP steps. Its results are committed to the
catalog with ``backend = shine`` and validated.

The field (:class:`tests.fixtures.fields.PixelsField`) is one tile; only quadrant 2-1.F
of its four exposures holds rendered galaxies (the other quadrants of a ``pixels`` field
have no valid pixels), and it lies on the tile's edge, so that an 8 x 8 tiling (0.25'
margin) puts it in two sub-tiles: those are fitted, the others are skipped (nothing to
fit). Three MAP steps cannot converge: the run accepts that (``--allow-unconverged``)
and the catalog says so. Needs SHINE (marked ``shine``; CI runs it with SHINE installed).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from constellation.cli import app
from constellation.config import load_config
from tests.fixtures.fields import PixelsField

pytestmark = [pytest.mark.shine, pytest.mark.integration]

runner = CliRunner()


@dataclass
class ShineRun:
    config: Path
    exit_code: int
    output: str
    seconds: float


@pytest.fixture(scope="module")
def shine_run(shine_euclid: object, prefect_api: str, pixels_field: PixelsField) -> ShineRun:
    from constellation.inference import clear_backends

    clear_backends()
    t0 = time.perf_counter()
    result = runner.invoke(
        app,
        ["-c", str(pixels_field.config), "run", "--no-report", "--run-id", "shine",
         "--allow-unconverged"],
    )  # fmt: skip
    return ShineRun(pixels_field.config, result.exit_code, result.output, time.perf_counter() - t0)


def test_the_shine_run_passes_its_validation(shine_run: ShineRun) -> None:
    assert shine_run.exit_code == 0, shine_run.output
    assert "with the shine backend" in shine_run.output
    assert "catalog validation PASSED: 64/64 sub-tiles present" in shine_run.output
    print(f"shine pipeline run: {shine_run.seconds:.1f} s")  # a figure for the CI log (-rP)


def test_the_catalog_holds_shine_fits(shine_run: ShineRun) -> None:
    from constellation.catalog.iceberg import open_catalog

    catalog = open_catalog(load_config(shine_run.config))
    rows = catalog.read("subtiles").to_pylist()
    assert len(rows) == 64
    assert {r["backend"] for r in rows} == {"shine"}
    assert {r["run_id"] for r in rows} == {"shine"}
    ok = [r for r in rows if r["status"] == "ok"]
    skipped = [r for r in rows if r["status"] == "skipped"]
    assert len(ok) >= 1
    assert len(ok) + len(skipped) == 64
    assert all("no valid pixels" in r["error"] for r in skipped)
    for r in ok:
        assert r["method"] == "map"
        assert r["convergence_kind"] == "map_shear_drift"
        assert r["converged"] is False  # 3 steps: marked, not silently accepted
        assert r["n_steps"] == 3
        assert math.isfinite(r["g1"])
        assert math.isfinite(r["g2"])
        assert math.hypot(r["g1"], r["g2"]) < 1
        assert r["n_sources_modelled"] > 0
        assert r["n_exposures"] >= 1
    sources = catalog.read("sources").to_pylist()
    assert len(sources) == sum(r["n_sources_core"] for r in ok)
    fitted = [s for s in sources if s["flux"] is not None]
    assert fitted, "no core source was fitted"
    assert all(math.isfinite(s["e1"]) and math.isfinite(s["hlr"]) for s in fitted)
    print(  # figures for the CI log (-rP)
        f"shine pipeline: {len(ok)} sub-tiles fitted, {len(skipped)} skipped, "
        f"{len(sources)} source rows ({len(fitted)} fitted)"
    )
