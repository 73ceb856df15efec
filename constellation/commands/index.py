"""``constellation index``: build or update the quadrant index from the VIS headers."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from constellation.commands._common import fail, get_state


def index(
    ctx: typer.Context,
    vis: Annotated[
        str | None,
        typer.Option("--vis", help="VIS prefix URL (default: {runtime.storage.data_uri}/q1/VIS)."),
    ] = None,
    out: Annotated[
        str | None,
        typer.Option(
            "--out",
            "-o",
            help="Index URL (default: {runtime.storage.work_uri}/quadrant_index.parquet).",
        ),
    ] = None,
    full: Annotated[
        bool, typer.Option("--full", help="Rebuild from scratch (ignore the existing index).")
    ] = False,
    workers: Annotated[int, typer.Option(min=1, help="Files indexed concurrently.")] = 8,
) -> None:
    """Index every quadrant exposure under a VIS prefix (header reads only; incremental).

    An exposure whose files are not readable FITS is reported on one line and left out
    (the others are indexed; the next run reads it again); the exit code is then 1."""
    from constellation.io.storage import storage_from_config
    from constellation.stages import index as stage
    from constellation.stages.base import Failure, run_guarded

    state = get_state(ctx)
    settings = state.settings
    storage = storage_from_config(settings.runtime.storage)
    (item,) = stage.plan(settings, vis_uri=vis, index_url=out, full=full, workers=workers)
    out_url = item.index_url
    with Progress(
        TextColumn("[bold]index"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        transient=True,
    ) as bar:  # fmt: skip
        task = bar.add_task("", total=None)
        index_stage = stage.IndexStage(
            progress=lambda done, total: bar.update(task, completed=done, total=total)
        )
        outcome = run_guarded(index_stage, item, storage)
    if isinstance(outcome, Failure):
        fail(outcome.message)
    assert isinstance(outcome, stage.IndexOutcome)
    s = outcome.summary
    for key, problem in sorted(s.failed.items()):
        typer.secho(f"exposure {key} not indexed: {problem}", fg=typer.colors.RED, err=True)
    if outcome.status == "failed":
        fail(outcome.error or "nothing indexed")
    ratio = s.bytes_read / s.header_bytes if s.header_bytes else 0.0
    typer.echo(
        f"indexed {s.exposures - len(s.failed)} of {s.exposures} exposures into {out_url}: "
        f"DET {s.det_read} read ({s.det_skipped} unchanged), "
        f"BKG {s.bkg_read} read ({s.bkg_skipped} unchanged), "
        f"PSF {s.psf_read} read ({s.psf_skipped} unchanged); "
        f"{s.quadrant_exposures} quadrant exposures; {len(s.unmatched)} unmatched files; "
        f"{s.requests} requests, {s.rounds} sequential rounds, "
        f"{s.bytes_read / 2**20:.1f} MiB read ({ratio:.2f}x the header bytes); "
        f"{s.seconds:.1f} s"
    )
    if s.det_removed:
        typer.echo(f"dropped the rows of {s.det_removed} DET files that disappeared")
    if s.incomplete:
        typer.echo(f"{len(s.incomplete)} exposures without a DET file: {', '.join(s.incomplete)}")
    if state.verbosity > 0:
        for url in s.unmatched:
            typer.echo(f"unmatched: {url}")
    if s.failed:
        typer.echo(f"{len(s.failed)} exposure(s) not indexed (see above): run again once fixed")
        raise typer.Exit(1)
