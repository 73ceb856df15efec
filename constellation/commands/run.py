"""``constellation run`` (the pipeline flow) and ``constellation demo`` (everything, locally).

Both run the pipeline flow in this process (Prefect's temporary API server when
``PREFECT_API_URL`` is not set, a local Ray or a cluster). The terminal shows
progress lines, one line per failure cause and the summary; Prefect's and Ray's own
logs go to the Prefect API (the UI) and Ray's log files (``-v`` shows Prefect's too).

Exit codes: 0 done; 1 a sub-tile failed (unless ``--allow-failures``) or the
catalog validation failed or the run failed; 2 the configuration is invalid or the
preflight found that the sub-tiles cannot run here; 128 + N when stopped by signal N
(130 for SIGINT, 143 for SIGTERM).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from constellation.commands._common import EXIT_CONFIG_ERROR, EXIT_FAILURE, fail, get_state

__all__ = ["demo", "reprocess", "run", "run_pipeline_flow"]

AllowUnconvergedOption = Annotated[
    bool,
    typer.Option(
        "--allow-unconverged",
        help="Accept fits that did not converge within their step budget (they stay marked "
        "converged = false in the catalog).",
    ),
]
BackendOption = Annotated[
    str | None,
    typer.Option(
        "--backend",
        "-b",
        help="Inference backend for this run: shine or mock (default: science.backend.name).",
    ),
]
CpuOption = Annotated[
    bool,
    typer.Option(
        "--cpu",
        help="Ask Ray for no GPU per sub-tile (runtime.ray.num_gpus_per_task: 0): SHINE "
        "runs on the CPU, the mock backend needs none.",
    ),
]
LocalOption = Annotated[
    bool,
    typer.Option(
        "--local",
        help="Run the sub-tiles in threads of this process, without Ray "
        "(runtime.executor: local): one tile on a workstation starts faster.",
    ),
]
TilesOption = Annotated[
    list[int] | None,
    typer.Option(
        "--tile",
        "-t",
        metavar="TILE_ID",
        help="Tile id (repeatable). Default: runtime.tiles, else all.",
    ),
]
AllowFailuresOption = Annotated[
    bool,
    typer.Option(
        "--allow-failures",
        help="Exit with 0 although sub-tiles failed (they stay recorded as failed).",
    ),
]


def _prefect_env(verbosity: int = 0) -> None:
    """Environment for an in-process Prefect run (set before prefect is imported)."""
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # the temporary API server needs 8-15 s cold on 2 cores; be generous
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    # this command prints its own progress and summary; Prefect's console lines (and
    # their tracebacks) only with -v. The Prefect API still receives every log.
    level = {0: "CRITICAL", 1: "INFO"}.get(verbosity, "DEBUG")
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", level)


def _overrides(backend: str | None, cpu: bool, local: bool = False) -> dict[str, str]:
    """``--backend``, ``--cpu`` and ``--local`` as configuration overrides: environment variables,
    so that they reach the flow, which loads its settings itself, and everything
    derived from them (the configuration hash stamped on the results included)."""
    if backend is not None and backend not in ("shine", "mock"):
        fail(f"unknown backend {backend!r}: use 'shine' or 'mock'", EXIT_CONFIG_ERROR)
    overrides = {}
    if backend is not None:
        overrides["CONSTELLATION_SCIENCE__BACKEND__NAME"] = backend
    if cpu:
        overrides["CONSTELLATION_RUNTIME__RAY__NUM_GPUS_PER_TASK"] = "0"
    if local:
        overrides["CONSTELLATION_RUNTIME__EXECUTOR"] = "local"
    return overrides


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the duration of the block, then restore them."""
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _echo_err(message: str) -> None:
    typer.echo(message, err=True)


def _preflight_failed(error: Any) -> NoReturn:
    """One red line per problem of a :class:`flows.preflight.PreflightError`; exit 2."""
    for line in error.lines():
        typer.secho(line, fg=typer.colors.RED, err=True)
    raise typer.Exit(EXIT_CONFIG_ERROR)


def _summary(out: dict[str, Any]) -> None:
    infer, asm = out["infer"], out["assemble"]
    counts = ", ".join(f"{v} {k}" for k, v in sorted(infer["counts"].items())) or "none"
    typer.echo(
        f"run {out['run_id']}: {len(out['tiles'])} tiles, {infer['subtiles']} sub-tiles "
        f"({counts}) with the {infer.get('backend', '?')} backend in {infer['seconds']:.1f} s; "
        f"catalog: {asm['subtiles_committed']} sub-tiles and {asm['sources_committed']} "
        f"sources committed in {asm['commits']} commits ({asm['skipped_unchanged']} unchanged)"
    )
    for cause in infer.get("causes", []):
        typer.echo(
            f"  {cause['status']} {cause['count']}: {cause['cause']} (e.g. {cause['example']})"
        )
    typer.echo(out["validate"]["summary"])
    for problem in out["validate"].get("problems", []):
        typer.echo(f"  {problem}")
    if out.get("report"):
        typer.echo(f"shear map: {out['report']['shear_map']}")
        typer.echo(f"report:    {out['report']['summary']}")


def run_pipeline_flow(
    config: str | None,
    *,
    tiles: list[int] | None = None,
    run_id: str | None = None,
    report: bool = True,
    allow_failures: bool = False,
    allow_unconverged: bool = False,
    verbosity: int = 0,
) -> dict[str, Any]:
    """Run the pipeline flow here and return its summary, or exit with the code of the
    module docstring and one line per cause."""
    from constellation.config import load_config
    from flows.preflight import PreflightError, local_problems

    # read once here (the flow reads its config parameter itself, as a deployment does)
    settings = load_config(config)
    problems = local_problems(settings)  # a local Ray short of a GPU: stop now
    if problems:
        _preflight_failed(PreflightError(problems))
    _prefect_env(verbosity)
    from flows.server import prefect_api

    with prefect_api() as server:  # a temporary server boots while Ray starts
        from constellation.inference import BackendUnavailableError
        from flows.common import executor_session, prefect_api_url, set_progress_reporter
        from flows.pipeline import import_stage_modules, preflight_first, run_here
        from flows.preflight import PreflightError

        import_stage_modules()  # while the server boots (and Ray starts)
        set_progress_reporter(_echo_err)
        try:
            with contextlib.ExitStack() as stack:
                if preflight_first(settings, tiles):
                    url = server.url if server else prefect_api_url()
                    stack.enter_context(executor_session(settings, url))
                if server is not None:
                    server.wait()
                end = run_here(
                    config,
                    tiles=tiles,
                    run_id=run_id,
                    report=report,
                    allow_failures=allow_failures,
                    allow_unconverged=allow_unconverged,
                )
        finally:
            set_progress_reporter(None)
    if end.stop_signal is not None:
        fail(
            f"run cancelled by {signal.Signals(end.stop_signal).name}: sub-tiles in flight were "
            "stopped; finished ones are kept. Run the same command again to resume.",
            128 + end.stop_signal,
        )
    result = end.error
    if isinstance(result, PreflightError):
        _preflight_failed(result)
    if isinstance(result, BackendUnavailableError):
        fail(str(result))
    if result is not None:
        fail(f"run failed: {type(result).__name__}: {result}")
    assert end.summary is not None
    out: dict[str, Any] = end.summary
    _summary(out)
    failed = int(out["infer"]["counts"].get("failed", 0))
    if failed and not allow_failures:
        fail(
            f"{failed} sub-tile(s) failed (recorded in the catalog; rerun to retry them, "
            "or --allow-failures to accept them)"
        )
    if not out["validate"]["ok"]:
        raise typer.Exit(EXIT_FAILURE)
    return out


def run(
    ctx: typer.Context,
    tile: TilesOption = None,
    run_id: Annotated[str | None, typer.Option("--run-id", help="Run id for the results.")] = None,
    report: Annotated[
        bool, typer.Option("--report/--no-report", help="Draw the QA figures at the end.")
    ] = True,
    allow_failures: AllowFailuresOption = False,
    allow_unconverged: AllowUnconvergedOption = False,
    backend: BackendOption = None,
    cpu: CpuOption = False,
    local: LocalOption = False,
) -> None:
    """Run the whole pipeline (preflight, index, prepare, infer on Ray, assemble,
    validate) as a Prefect flow. Without PREFECT_API_URL, Prefect starts a temporary
    server. Exits non-zero when a sub-tile failed (see --allow-failures)."""
    overrides = _overrides(backend, cpu, local)
    state = get_state(ctx)
    with _environment(overrides):
        if overrides:
            state.__dict__.pop("settings", None)  # load again, with the overrides
        state.settings  # noqa: B018  (validate the configuration before starting anything)
        config = str(state.config_path) if state.config_path else None
        run_pipeline_flow(
            config,
            tiles=tile,
            run_id=run_id,
            report=report,
            allow_failures=allow_failures,
            allow_unconverged=allow_unconverged,
            verbosity=state.verbosity,
        )


def reprocess(
    ctx: typer.Context,
    tile: TilesOption = None,
    run_id: Annotated[str | None, typer.Option("--run-id", help="Run id for the results.")] = None,
    backend: BackendOption = None,
    cpu: CpuOption = False,
    local: LocalOption = False,
) -> None:
    """Redo only what changed since the last run of the field: tiles whose quadrant
    exposures, MER catalogs (their own or a neighbour's) or science configuration
    changed are prepared, inferred and assembled again (the reprocess flow, here)."""
    state = get_state(ctx)
    with _environment(_overrides(backend, cpu, local)):
        state.__dict__.pop("settings", None)
        state.settings  # noqa: B018  (validate the configuration before starting anything)
        _prefect_env(state.verbosity)
        from constellation.inference import BackendUnavailableError
        from flows.common import set_progress_reporter
        from flows.preflight import PreflightError
        from flows.reprocess import reprocess_field
        from flows.server import prefect_api

        set_progress_reporter(_echo_err)
        try:
            with prefect_api() as server:
                if server is not None:
                    server.wait()
                end = reprocess_field(
                    config=str(state.config_path) if state.config_path else None,
                    tiles=tile,
                    run_id=run_id,
                    return_state=True,
                )
                out = end.result(raise_on_failure=False)  # the summary, also when Failed
                if isinstance(out, BaseException):
                    raise out
        except PreflightError as exc:
            _preflight_failed(exc)
        except BackendUnavailableError as exc:
            fail(str(exc))
        finally:
            set_progress_reporter(None)
    affected = out["affected"]
    typer.echo(
        f"reprocess {out['run_id']}: {len(affected)} of {out['field_tiles']} tiles changed "
        f"(quadrant exposures: {len(out['tiles_by_exposures'])}, catalogs: "
        f"{len(out['tiles_by_catalogs'])}, configuration or new: {len(out['tiles_by_config'])}; "
        f"{out['changed_index_rows']} quadrant-index rows changed)"
    )
    if not affected:
        typer.echo("nothing to redo")
        return
    counts = ", ".join(f"{v} {k}" for k, v in sorted(out["infer"]["counts"].items()))
    typer.echo(f"redone tiles: {', '.join(map(str, affected))}; sub-tiles: {counts}")
    typer.echo(out["validate"]["summary"])
    if out["infer"]["counts"].get("failed", 0):
        fail(f"{out['infer']['counts']['failed']} sub-tile(s) failed")
    if not out["validate"]["ok"]:
        raise typer.Exit(EXIT_FAILURE)


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
    ctx: typer.Context,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Folder for the field, work tree and catalog.")
    ] = Path("constellation-demo"),
    tiles: Annotated[str, typer.Option(help="Field size: tiles east-west x rings.")] = "2x2",
    density: Annotated[float, typer.Option(help="Catalog sources per arcmin².")] = 10.0,
    allow_failures: AllowFailuresOption = False,
) -> None:
    """Simulate a small Euclid-like field into a local folder, run the whole pipeline
    through Prefect (temporary server) and a local Ray, validate the catalog and draw
    the shear map. Re-running it resumes: nothing is recomputed."""
    t0 = time.perf_counter()
    verbosity = get_state(ctx).verbosity
    _prefect_env(verbosity)
    from flows.server import prefect_api

    with prefect_api():  # Prefect's temporary server boots while the field is simulated
        _demo(out, tiles, density, allow_failures, verbosity, t0)


def _demo(
    out: Path, tiles: str, density: float, allow_failures: bool, verbosity: int, t0: float
) -> None:
    from constellation.commands.simulate import _parse_tiles
    from constellation.config import load_config
    from constellation.io.storage import Storage
    from constellation.simulate import FieldSpec
    from constellation.simulate.run import simulate_field

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
    typer.echo("running the pipeline (Prefect temporary server + local Ray) ...")
    run_pipeline_flow(
        str(cfg_path),
        report=True,
        allow_failures=allow_failures,
        verbosity=verbosity,
    )
    typer.echo(
        f"demo finished in {time.perf_counter() - t0:.1f} s; config {cfg_path}; "
        f"catalog under {settings.runtime.storage.work_uri}"
    )
