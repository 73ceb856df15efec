"""``constellation assemble``, ``validate`` and ``report``: the Iceberg shear catalog."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from constellation.commands._common import existing_catalog, fail, get_state, requested_tiles

TileOption = Annotated[
    list[int] | None,
    typer.Option(
        "--tile",
        "-t",
        metavar="TILE_ID",
        help="Tile id (repeatable). Default: runtime.tiles, else every tile.",
    ),
]


def assemble(
    ctx: typer.Context,
    tile: TileOption = None,
    batch_size: Annotated[
        int, typer.Option("--batch-size", "-b", min=1, help="Sub-tiles per Iceberg commit.")
    ] = 1000,
    run_id: Annotated[
        str | None,
        typer.Option("--run-id", help="Run id for the snapshot summaries (default: generated)."),
    ] = None,
    any_config: Annotated[
        bool,
        typer.Option("--any-config", help="Also assemble results of other science config hashes."),
    ] = False,
    workers: Annotated[
        int | None, typer.Option("--workers", min=1, help="Reader/writer threads.")
    ] = None,
) -> None:
    """Commit the sub-tile results not yet in the catalog (batched, idempotent)."""
    from constellation.io.storage import storage_from_config
    from constellation.stages import assemble as stage
    from constellation.stages.base import Failure, run_guarded

    settings = get_state(ctx).settings
    storage = storage_from_config(settings.runtime.storage)
    tiles = requested_tiles(settings, storage, tile)
    (item,) = stage.plan(tiles, run_id, batch_size=batch_size, only_config=not any_config,
                         workers=workers)  # fmt: skip
    with Progress(
        TextColumn("[bold]assemble"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=Console(stderr=True), transient=True,
    ) as bar:  # fmt: skip
        task = bar.add_task("", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        outcome = run_guarded(stage.AssembleStage(settings, progress), item, storage)
    if isinstance(outcome, Failure):
        fail(outcome.message)
    assert isinstance(outcome, stage.AssembleOutcome)
    typer.echo(outcome.report.summary())
    if outcome.status == "skipped":
        fail("no sub-tile results found: run 'constellation infer' first")
    if outcome.status == "failed":
        fail(outcome.error or "")


def validate(
    ctx: typer.Context,
    tile: TileOption = None,
    strict: Annotated[
        bool, typer.Option("--strict", help="Exit with status 1 on any violation.")
    ] = False,
    allow_failed: Annotated[
        bool,
        typer.Option("--allow-failed", help="Failed sub-tiles are reported, not violations."),
    ] = False,
    allow_unconverged: Annotated[
        bool,
        typer.Option(
            "--allow-unconverged",
            help="Fits that did not converge within their step budget are reported, not "
            "violations.",
        ),
    ] = False,
    allow_mixed: Annotated[
        bool,
        typer.Option(
            "--allow-mixed",
            help="Rows of several backends or science configurations are reported, not violations.",
        ),
    ] = False,
    out: Annotated[
        str | None, typer.Option("--out", "-o", help="Also write the Markdown report here.")
    ] = None,
) -> None:
    """Check the catalog: missing and failed sub-tiles, NaN/inf, |g| >= 1, duplicates,
    rows of several backends or configurations."""
    from constellation.catalog.validate import validate as run_validate
    from constellation.io.storage import storage_from_config

    settings = get_state(ctx).settings
    storage = storage_from_config(settings.runtime.storage)
    tiles = requested_tiles(settings, storage, tile)
    existing_catalog(settings, storage)
    report = run_validate(
        settings,
        tiles=tiles,
        allow_failed=allow_failed,
        allow_unconverged=allow_unconverged,
        allow_mixed=allow_mixed,
        storage=storage,
    )
    text = report.to_markdown()
    typer.echo(text, nl=False)
    if out:
        storage.write_bytes(out, text.encode("utf-8"))
    if strict and not report.passed:
        fail(report.summary())


def report(
    ctx: typer.Context,
    tile: TileOption = None,
    out: Annotated[
        str | None,
        typer.Option("--out", "-o", help="Output folder (default: {work_uri}/report)."),
    ] = None,
    truth: Annotated[
        str | None,
        typer.Option("--truth", help="Truth folder of a simulated field (default: auto)."),
    ] = None,
) -> None:
    """Draw the shear whisker map, coverage, distributions (and truth comparison)."""
    from constellation.catalog.report import NothingToReportError, make_report
    from constellation.io.storage import storage_from_config

    settings = get_state(ctx).settings
    storage = storage_from_config(settings.runtime.storage)
    tiles = requested_tiles(settings, storage, tile)
    existing_catalog(settings, storage)
    try:
        result = make_report(settings, out=out, truth_uri=truth, tiles=tiles, storage=storage)
    except NothingToReportError as exc:
        fail(str(exc))
    typer.echo("made by: " + "; ".join(f"{k} {v}" for k, v in result.provenance.items()))
    typer.echo(f"shear map: {result.shear_map}")
    for path in result.figures[1:]:
        typer.echo(f"figure: {path}")
    typer.echo(f"summary: {result.markdown}")
    for name, fit in result.fits.items():
        typer.echo(
            f"{name} vs injected: m = {fit.m:+.4f} ± {fit.m_err:.4f}, "
            f"c = {fit.c:+.5f} ± {fit.c_err:.5f}, chi2/N = {fit.chi2_n:.2f}"
        )
