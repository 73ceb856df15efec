"""``constellation prepare`` and ``constellation plan``: write and list sub-tile manifests."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from constellation.commands._common import fail, get_state, work_root

if TYPE_CHECKING:
    from constellation.config import Settings
    from constellation.io.storage import Storage
    from constellation.sky.registry import TileRegistry
    from constellation.stages.base import Outcome

TileOption = Annotated[
    list[int] | None,
    typer.Option(
        "--tile",
        "-t",
        metavar="TILE_ID",
        help="Tile id (repeatable). Default: runtime.tiles, else all.",
    ),
]


def _registry(storage: Storage, settings: Settings) -> TileRegistry:
    from constellation.io.registry import read_work_registry

    work_root(settings, storage)
    try:
        return read_work_registry(storage, settings.runtime.storage.work_uri)
    except FileNotFoundError as exc:
        fail(str(exc))


def _tile_ids(tiles: list[int] | None, settings: Settings, registry: TileRegistry) -> list[int]:
    if tiles:
        return sorted(set(tiles))
    if settings.runtime.tiles:
        return sorted(set(settings.runtime.tiles))
    return [int(t) for t in registry.tile_id]


def _known_tiles(ids: list[int], registry: TileRegistry, settings: Settings) -> list[int]:
    """``ids``, or a clean exit naming the registry when one of them is not in it."""
    from constellation.manifest import layout

    unknown = [t for t in ids if t not in registry]
    if unknown:
        where = layout.registry_url(settings.runtime.storage.work_uri)
        fail(
            f"tile(s) {', '.join(map(str, unknown))} not in the tile registry {where} "
            f"({len(registry)} tiles): check the id or run 'constellation tiles resolve'"
        )
    return ids


def prepare(ctx: typer.Context, tile: TileOption = None) -> None:
    """Write each sub-tile's manifest, source table and done marker (idempotent).

    A tile whose inputs are bad (an unreadable MER catalog, NaN coordinates, duplicate
    OBJECT_IDs, ...) is reported on one line and skipped; the other tiles are prepared
    and the exit code is 1."""
    from constellation.io.storage import storage_from_config
    from constellation.manifest import layout
    from constellation.stages.base import Failure, drive, failures_line
    from constellation.stages.prepare import PrepareResult, PrepareStage, summary_line
    from constellation.stages.prepare import plan as plan_stage

    settings = get_state(ctx).settings
    storage = storage_from_config(settings.runtime.storage)
    registry = _registry(storage, settings)
    ids = _known_tiles(_tile_ids(tile, settings, registry), registry, settings)
    index = layout.quadrant_index_url(settings.runtime.storage.work_uri)
    if not storage.exists(index):
        fail(f"no quadrant index at {index}: run 'constellation index' first")
    items = plan_stage(settings, registry, ids)
    with Progress(
        TextColumn("[bold]prepare"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=Console(stderr=True), transient=True,
    ) as bar:  # fmt: skip
        task = bar.add_task("", total=len(items))

        def report(_item: object, outcome: Outcome) -> None:
            if isinstance(outcome, Failure):  # reported; the other tiles go on
                typer.secho(f"{outcome.label}: {outcome.message}", fg=typer.colors.RED, err=True)
            bar.advance(task)

        run = drive(
            PrepareStage(), items, storage, retries=settings.runtime.task_retries,
            on_outcome=report,
        )  # fmt: skip
    results = [o for o in run.outcomes if isinstance(o, PrepareResult)]
    typer.echo(summary_line(results))
    missing = [r.tile_id for r in results if r.missing_catalog]
    if missing:
        typer.echo(f"tiles without a MER catalog: {', '.join(map(str, missing))}")
    if run.failed:
        failed = [
            (o.label.removeprefix("tile "), o.message if isinstance(o, Failure) else str(o.error))
            for o in run.failed
        ]
        typer.echo(failures_line("tile(s) not prepared", failed))
        raise typer.Exit(1)


def plan(
    ctx: typer.Context,
    tile: TileOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
) -> None:
    """List the prepared sub-tiles (from their manifests): sources, exposures, quadrants."""
    from constellation.io.storage import storage_from_config
    from constellation.manifest import layout
    from constellation.manifest.subtile import parse_manifest

    settings = get_state(ctx).settings
    storage = storage_from_config(settings.runtime.storage)
    registry = _registry(storage, settings)
    grid = settings.science.tiling.grid()
    work = settings.runtime.storage.work_uri
    rows = []
    unreadable = 0
    for tid in _known_tiles(_tile_ids(tile, settings, registry), registry, settings):
        for r in range(grid.n_rows):
            for c in range(grid.n_cols):
                url = layout.manifest_url(work, tid, r, c)
                if not storage.exists(url):
                    continue
                try:
                    m = parse_manifest(storage.read_bytes(url))
                except ValueError as exc:
                    typer.secho(f"{url}: {exc}", fg=typer.colors.RED, err=True)
                    unreadable += 1
                    continue
                rows.append({
                    "tile": tid, "row": r, "col": c, "core": m.sources.n_core,
                    "extended": m.sources.n_extended, "exposures": len(m.exposures),
                    "quadrants": m.n_quadrants,
                })  # fmt: skip
    if as_json:
        for row in rows:
            typer.echo(json.dumps(row, sort_keys=True))
    elif not rows and not unreadable:
        fail(f"no manifests under {work}: run 'constellation prepare' first")
    else:
        table = Table("tile", "row", "col", "core", "extended", "exposures", "quadrants")
        for row in rows:
            table.add_row(*(str(v) for v in row.values()))
        Console().print(table)
    if unreadable:
        raise typer.Exit(1)
