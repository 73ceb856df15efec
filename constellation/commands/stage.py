"""``constellation stage``: materialise self-contained sub-tile folders."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from constellation.commands._common import fail, get_state, tile_manifests


def stage(
    ctx: typer.Context,
    dest: Annotated[
        str,
        typer.Option(
            "--dest", "-d", help="Destination root: sub-tiles go to DEST/{tile}/r{row}_c{col}."
        ),
    ],
    manifest_url: Annotated[
        list[str] | None,
        typer.Argument(
            help="Sub-tile manifests to stage (URLs or paths).",
            metavar="MANIFEST",
            show_default=False,
        ),
    ] = None,
    tile: Annotated[
        list[int] | None,
        typer.Option(
            "--tile", "-t", metavar="TILE_ID", help="Stage every sub-tile of this prepared tile."
        ),
    ] = None,
) -> None:
    """Copy each sub-tile's needed extensions, source table and manifest into a folder
    (ranged reads only; idempotent). A manifest that cannot be staged is reported on one
    line and skipped; the exit code is then 1."""
    from constellation.io.storage import storage_from_config
    from constellation.stages.stage import stage_subtile

    settings = get_state(ctx).settings
    storage = storage_from_config(settings.runtime.storage)
    urls = list(manifest_url or [])
    if tile:
        urls.extend(tile_manifests(settings, storage, tile))
    if not urls:
        fail("give manifest URLs or --tile")
    t0 = time.perf_counter()
    results = []
    refused = 0
    for url in urls:
        try:
            results.append(stage_subtile(url, dest, storage, per_subtile=True))
        except (OSError, ValueError) as exc:  # reported; the other sub-tiles go on
            typer.secho(f"{url}: {exc}", fg=typer.colors.RED, err=True)
            refused += 1
    moved = sum(r.bytes_moved for r in results)
    ext_moved = sum(r.extension_bytes_moved for r in results)
    needed = sum(r.needed_bytes for r in results)
    ratio = ext_moved / needed if needed else 1.0
    typer.echo(
        f"staged {len(results)} sub-tiles, {sum(r.exposures for r in results)} exposures "
        f"({sum(r.files_written for r in results)} files written, "
        f"{sum(r.files_unchanged for r in results)} unchanged); "
        f"{moved} bytes moved ({ext_moved} for extensions), {needed} needed bytes, "
        f"ratio {ratio:.3f}; {time.perf_counter() - t0:.2f} s"
        + (f"; {refused} not staged" if refused else "")
    )
    if refused:
        raise typer.Exit(1)
