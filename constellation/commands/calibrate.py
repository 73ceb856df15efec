"""``constellation calibrate``: measure the shear bias (m, c) of a backend on calibration fields."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from constellation.commands._common import EXIT_CONFIG_ERROR, fail, get_state


def _values(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated shears, got {text!r}") from None
    if len(set(values)) < 2 or any(abs(v) >= 0.2 for v in values):
        raise typer.BadParameter("give at least two different shears, each |g| < 0.2")
    return values


def calibrate(
    ctx: typer.Context,
    out: Annotated[
        Path,
        typer.Option("--out", "-o", help="Folder for the fields, their catalogs and the report."),
    ] = Path("constellation-calibration"),
    shears: Annotated[
        str, typer.Option(help="Injected constant shears per component, comma-separated.")
    ] = "-0.02,0,0.02",
    backend: Annotated[
        str | None,
        typer.Option("--backend", "-b", help="shine or mock (default: science.backend.name)."),
    ] = None,
    density: Annotated[float, typer.Option(help="Catalog sources per arcmin².")] = 3.0,
    shape_noise: Annotated[
        float, typer.Option(help="Intrinsic ellipticity rms per component (0: round galaxies).")
    ] = 0.0,
    pixel_noise: Annotated[
        bool, typer.Option("--pixel-noise/--no-pixel-noise", help="Noise in rendered pixels.")
    ] = False,
    mode: Annotated[
        str, typer.Option(help="Pixel mode of the fields: light (mock) or pixels (SHINE).")
    ] = "light",
    renderer: Annotated[
        str,
        typer.Option(help="pixels mode: builtin, or galsim (accurate; needs GalSim, with SHINE)."),
    ] = "builtin",
    pixel_quadrant: Annotated[
        list[str] | None,
        typer.Option(
            "--pixel-quadrant",
            metavar="QUADRANT",
            help="pixels mode: a quadrant rendered with galaxies (repeatable; default 3-4.F).",
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed of the fields.")] = 7,
) -> None:
    """Simulate one-tile fields of constant shear, run them through prepare, infer and
    assemble with the configured backend, fit m and c per component (bootstrap errors
    over sub-tiles), write the report and add a row to the calibration table
    (OUT/calibrations.parquet). Rerunning resumes."""
    from constellation.io.storage import Storage
    from constellation.simulate import FieldSpec
    from constellation.stages.calibrate import calibration_shears, record_calibration

    if backend is not None and backend not in ("shine", "mock"):
        fail(f"unknown backend {backend!r}: use 'shine' or 'mock'", EXIT_CONFIG_ERROR)
    settings = get_state(ctx).settings.with_backend(backend)
    try:
        spec = FieldSpec(
            n_tiles_ra=1, n_tiles_dec=1, density_per_arcmin2=density, mode=mode,
            shape_noise=shape_noise, pixel_noise=pixel_noise, renderer=renderer, seed=seed,
            **({"pixel_quadrants": tuple(pixel_quadrant)} if pixel_quadrant else {}),
        )  # fmt: skip
    except ValueError as exc:  # pydantic's ValidationError: one line per bad option
        errors: list[dict[str, Any]] = getattr(exc, "errors", list)()
        what = "; ".join(f"--{'-'.join(map(str, e['loc'])).replace('_', '-')}: {e['msg']}"
                         for e in errors) or str(exc)  # fmt: skip
        fail(f"invalid calibration field: {what}", EXIT_CONFIG_ERROR)
    root = out.resolve()
    root.mkdir(parents=True, exist_ok=True)
    storage = Storage()
    run_id = f"calibration-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    t0 = time.perf_counter()

    def echo(line: str) -> None:
        typer.echo(line, err=True)

    from constellation.simulate.galsim_render import GalSimUnavailableError

    try:
        record = record_calibration(
            str(root), settings, spec, calibration_shears(_values(shears)),
            storage=storage, run_id=run_id, progress=echo,
        )  # fmt: skip
    except GalSimUnavailableError as exc:
        fail(str(exc), EXIT_CONFIG_ERROR)
    for name, value in record.run.calibration.figures().items():
        typer.echo(f"{name}={value:.6g}")
    typer.echo(
        f"backend {record.row['backend']}, config {record.row['config_hash']}, "
        f"{time.perf_counter() - t0:.1f} s; report {record.report}; figure {record.figure}; "
        f"calibration table {record.table} ({record.table_rows} runs)"
    )
