"""Shear calibration flow: constant-shear fields through the pipeline's stages, m and c.

The flow is ``constellation calibrate`` as a deployment (``shear-calibration/...`` in
``prefect.yaml``): it simulates one-tile fields of constant shear under ``out``, runs
resolve, index, prepare, infer (the configured backend) and assemble on each, fits m
and c per component, writes the report and adds a row to ``out/calibrations.parquet``
(:func:`constellation.stages.calibrate.record_calibration`). The fits run in the flow's
own process, one sub-tile after the other (on its GPU if it has one); rerunning with
the same ``out`` resumes the fields. Returns the figures (``calib_m1``, ...) and where
the report is; the run's state message names them.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from flows.common import load_settings, new_run_id

__all__ = ["shear_calibration"]


@flow(name="shear-calibration", log_prints=False, persist_result=False)
def shear_calibration(
    config: str | None = None,
    out: str | None = None,
    shears: list[float] | None = None,
    backend: str | None = None,
    density: float = 3.0,
    shape_noise: float = 0.0,
    pixel_noise: bool = False,
    mode: str = "light",
    renderer: str = "builtin",
    quadrants: list[str] | None = None,
    seed: int = 7,
) -> dict[str, Any]:
    """Calibrate the backend of ``config`` (``backend`` overrides its name) on fields of
    constant shear ``shears`` per component (default -0.02, 0, 0.02) under ``out`` (a
    local folder; default ``{work_uri}/calibration``); the other parameters are the
    fields' (``quadrants``: those rendered in ``pixels`` mode), as ``constellation
    calibrate``'s options."""
    from constellation.io.storage import Storage
    from constellation.manifest import layout
    from constellation.simulate import FieldSpec
    from constellation.stages.calibrate import calibration_shears, record_calibration

    logger = get_run_logger()
    settings = load_settings(config).with_backend(backend)
    root = out or layout.join(settings.runtime.storage.work_uri, "calibration")
    if "://" in root and not root.startswith("file://"):
        raise ValueError(f"out must be a local folder for now, got {root!r}")
    values = shears if shears is not None else [-0.02, 0.0, 0.02]
    if len(set(values)) < 2 or any(abs(v) >= 0.2 for v in values):
        raise ValueError("shears: give at least two different values, each |g| < 0.2")
    spec = FieldSpec(
        n_tiles_ra=1, n_tiles_dec=1, density_per_arcmin2=density, mode=mode,
        shape_noise=shape_noise, pixel_noise=pixel_noise, renderer=renderer, seed=seed,
        **({"pixel_quadrants": tuple(quadrants)} if quadrants else {}),
    )  # fmt: skip
    record = record_calibration(
        root, settings, spec, calibration_shears(values), run_id=new_run_id("calibration"),
        storage=Storage(), progress=lambda line: logger.info("%s", line),
    )  # fmt: skip
    figures = record.run.calibration.figures()
    cal = record.run.calibration
    logger.info(
        "m1 = %+.5f ± %.5f, m2 = %+.5f ± %.5f, c1 = %+.6f ± %.6f, c2 = %+.6f ± %.6f "
        "(%d sub-tiles); report %s",
        cal.g1.m, cal.g1.m_err, cal.g2.m, cal.g2.m_err,
        cal.g1.c, cal.g1.c_err, cal.g2.c, cal.g2.c_err, cal.n, record.report,
    )  # fmt: skip
    return {
        "figures": figures,
        "backend": record.row["backend"],
        "config_hash": record.row["config_hash"],
        "report": record.report,
        "table": record.table,
        "table_rows": record.table_rows,
    }
