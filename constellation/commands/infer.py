"""``constellation infer``: run the inference backend on prepared sub-tiles, in this process."""

from __future__ import annotations

import secrets
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from constellation.commands._common import EXIT_CONFIG_ERROR, fail, get_state, tile_manifests

if TYPE_CHECKING:
    from constellation.stages.base import Outcome

__all__ = ["infer", "new_run_id"]


def new_run_id(prefix: str = "cli") -> str:
    """A run id like ``cli-20261125T221500Z-3f9a``."""
    return f"{prefix}-{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(2)}"


def infer(
    ctx: typer.Context,
    manifest_url: Annotated[
        list[str] | None,
        typer.Argument(
            help="Sub-tile manifests to infer (URLs or paths).",
            metavar="MANIFEST",
            show_default=False,
        ),
    ] = None,
    tile: Annotated[
        list[int] | None,
        typer.Option(
            "--tile",
            "-t",
            metavar="TILE_ID",
            help="Infer every prepared sub-tile of this tile. Default (no manifests, no "
            "--tile): runtime.tiles, else every prepared sub-tile.",
        ),
    ] = None,
    backend_name: Annotated[
        str | None,
        typer.Option(
            "--backend", "-b", help="Backend: shine or mock (default: science.backend.name)."
        ),
    ] = None,
    run_id: Annotated[
        str | None, typer.Option("--run-id", help="Run id recorded in the results.")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Re-run sub-tiles that already have an ok result.")
    ] = False,
    allow_failures: Annotated[
        bool,
        typer.Option(
            "--allow-failures",
            help="Exit with 0 although sub-tiles failed (they stay recorded as failed).",
        ),
    ] = False,
) -> None:
    """Fit sub-tiles one after another in this process and write their results.

    Each sub-tile gets ``result.parquet`` and ``_RESULT.json`` next to its manifest.
    A sub-tile with nothing to fit is recorded as skipped; a failure is recorded as
    failed (retried ``runtime.task_retries`` times when it is an I/O error) and the
    next sub-tile goes on; a backend that cannot run stops the command. Exits with 1
    when any sub-tile failed (see --allow-failures).
    """
    from constellation.inference import BackendUnavailableError, get_backend
    from constellation.io.storage import storage_from_config
    from constellation.stages import infer as stage
    from constellation.stages.base import Failure, drive

    settings = get_state(ctx).settings
    if backend_name is not None and backend_name not in ("shine", "mock"):
        fail(f"unknown backend {backend_name!r}: use 'shine' or 'mock'", EXIT_CONFIG_ERROR)
    storage = storage_from_config(settings.runtime.storage)
    work = settings.runtime.storage.work_uri
    urls = list(manifest_url or [])
    if tile:
        urls.extend(tile_manifests(settings, storage, tile))
    if not urls and not tile:
        # default: runtime.tiles, else every prepared sub-tile under the work root
        urls = stage.plan(storage, work, settings.runtime.tiles or None)
        if not urls:
            fail(f"no prepared sub-tiles under {work}: run 'constellation prepare' first")
    try:
        backend = get_backend(settings, backend_name)
    except BackendUnavailableError as exc:
        fail(str(exc))
    rid = run_id or new_run_id()
    infer_stage = stage.InferStage.from_settings(settings, backend, rid, force=force)

    t0 = time.perf_counter()
    with Progress(
        TextColumn(f"[bold]infer ({backend.name})"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), console=Console(stderr=True), transient=True,
    ) as bar:  # fmt: skip
        task = bar.add_task("", total=len(urls))

        def report(url: str, outcome: Outcome) -> None:
            if isinstance(outcome, Failure):
                # the manifest cannot be read or is stale: no result to write
                typer.secho(f"{url}: {outcome.message}", fg=typer.colors.RED, err=True)
            bar.advance(task)

        run = drive(
            infer_stage, urls, storage, retries=settings.runtime.task_retries,
            on_outcome=report,
        )  # fmt: skip
    if run.stopped_by is not None:
        fail(f"the {backend.name} backend cannot run: {run.stopped_by.error}")
    summary = run.summary
    counts = summary.counts
    typer.echo(
        f"inferred {len(urls)} sub-tiles with {backend.name} (run {rid}): "
        f"{counts['ok']} ok, {counts['skipped']} skipped, {counts['failed']} failed, "
        f"{counts['done']} already done; {time.perf_counter() - t0:.2f} s"
    )
    for line in summary.lines():
        typer.echo(f"  {line}")
    if summary.n_failed and not allow_failures:
        raise typer.Exit(1)
