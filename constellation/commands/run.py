"""``constellation run`` (the pipeline flow) and ``constellation demo`` (everything, locally)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from constellation.commands._common import fail, get_state

__all__ = ["demo", "run"]


def _prefect_env() -> None:
    """Environment for an in-process Prefect run (set before prefect is imported)."""
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # the temporary API server needs 8-15 s cold on 2 cores; be generous
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


def _summary(out: dict[str, Any]) -> None:
    infer, asm = out["infer"], out["assemble"]
    counts = ", ".join(f"{v} {k}" for k, v in sorted(infer["counts"].items())) or "none"
    typer.echo(
        f"run {out['run_id']}: {len(out['tiles'])} tiles, {infer['subtiles']} sub-tiles "
        f"({counts}) in {infer['seconds']:.1f} s; catalog: {asm['subtiles_committed']} "
        f"sub-tiles and {asm['sources_committed']} sources committed in {asm['commits']} "
        f"commits ({asm['skipped_unchanged']} unchanged)"
    )
    typer.echo(out["validate"]["summary"])
    if out.get("report"):
        typer.echo(f"shear map: {out['report']['shear_map']}")
        typer.echo(f"report:    {out['report']['summary']}")


def run(
    ctx: typer.Context,
    tile: Annotated[
        list[int] | None,
        typer.Option(
            "--tile", "-t", help="Tile id (repeatable). Default: runtime.tiles, else all."
        ),
    ] = None,
    run_id: Annotated[str | None, typer.Option("--run-id", help="Run id for the results.")] = None,
    report: Annotated[
        bool, typer.Option("--report/--no-report", help="Draw the QA figures at the end.")
    ] = True,
) -> None:
    """Run the whole pipeline (index, prepare, infer on Ray, assemble, validate) as a
    Prefect flow. Without PREFECT_API_URL, Prefect starts a temporary server."""
    state = get_state(ctx)
    state.settings  # noqa: B018  (validate the configuration before starting anything)
    _prefect_env()
    from flows.pipeline import pipeline

    config = str(state.config_path) if state.config_path else None
    out = pipeline(config=config, tiles=tile, run_id=run_id, report=report)
    _summary(out)
    if not out["validate"]["ok"]:
        raise typer.Exit(1)


_DEMO_CONFIG = """\
# constellation demo: a synthetic field, the mock backend, a local Ray with 2 fake GPUs.
science:
  backend:
    name: mock          # clearly fake shear: the injected field plus shape noise
    mock:
      mode: truth
runtime:
  storage:
    data_uri: {data}
    work_uri: {work}
  ray:
    address: null       # a local Ray instance for the run
    local_num_gpus: 2   # advertise 2 (fake) GPUs so tasks are scheduled as on a GPU node
    num_gpus_per_task: 1
    num_cpus_per_task: 0.5
  max_in_flight: 16
"""


def demo(
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Folder for the field, work tree and catalog.")
    ] = Path("constellation-demo"),
    tiles: Annotated[str, typer.Option(help="Field size: tiles east-west x rings.")] = "2x2",
    density: Annotated[float, typer.Option(help="Catalog sources per arcmin².")] = 10.0,
) -> None:
    """Simulate a small Euclid-like field into a local folder, run the whole pipeline
    through Prefect (temporary server) and a local Ray, validate the catalog and draw
    the shear map. Re-running it resumes: nothing is recomputed."""
    from constellation.commands.simulate import _parse_tiles
    from constellation.config import load_config
    from constellation.io.storage import Storage
    from constellation.simulate import FieldSpec
    from constellation.simulate.run import simulate_field

    t0 = time.perf_counter()
    n_ra, n_dec = _parse_tiles(tiles)
    out = out.resolve()
    data, work = out / "input", out / "work"
    cfg_path = out / "config.yaml"
    out.mkdir(parents=True, exist_ok=True)
    cfg_path.write_text(_DEMO_CONFIG.format(data=data.as_posix(), work=work.as_posix()))
    settings = load_config(cfg_path)
    if not (data / "truth" / "field.json").exists():
        spec = FieldSpec(n_tiles_ra=n_ra, n_tiles_dec=n_dec, density_per_arcmin2=density)
        typer.echo(f"simulating a {tiles}-tile field into {data} ...")
        summary = simulate_field(spec, Storage(), str(data))
        typer.echo(
            f"  {len(summary.plan.tiles)} tiles, {len(summary.plan.exposures)} exposures, "
            f"{summary.n_sources} sources, {summary.total_bytes / 1e6:.0f} MB in "
            f"{summary.seconds:.1f} s"
        )
    else:
        typer.echo(f"reusing the field in {data}")
    _prefect_env()
    from flows.pipeline import pipeline

    typer.echo("running the pipeline (Prefect temporary server + local Ray) ...")
    try:
        result = pipeline(config=str(cfg_path), report=True)
    except Exception as exc:  # show one line, not a Prefect traceback
        fail(f"demo failed: {type(exc).__name__}: {exc}")
    _summary(result)
    typer.echo(
        f"demo finished in {time.perf_counter() - t0:.1f} s; config {cfg_path}; "
        f"catalog under {settings.runtime.storage.work_uri}"
    )
