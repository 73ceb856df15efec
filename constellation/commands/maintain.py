"""``constellation catalog status|compact|expire``: maintenance of the Iceberg tables.

The pipeline stages that write and check the catalog (``assemble``, ``validate``,
``report``) are top-level commands; the upkeep of the tables themselves (small-file
compaction, snapshot expiry, orphan files) is grouped under ``catalog``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Annotated

import typer

from constellation.commands._common import EXIT_CONFIG_ERROR, existing_catalog, fail, get_state

if TYPE_CHECKING:
    from constellation.catalog.iceberg import ShearCatalog

app = typer.Typer(
    help="Maintain the Iceberg shear catalog: status, small-file compaction, snapshot expiry.",
    no_args_is_help=True,
    rich_markup_mode=None,
)

TableOption = Annotated[
    list[str] | None,
    typer.Option(
        "--table",
        metavar="TABLE",
        help="Table to maintain: sources or subtiles (repeatable). Default: both.",
    ),
]
DryRunOption = Annotated[
    bool, typer.Option("--dry-run", help="Report what would be done; change nothing.")
]


def _open(ctx: typer.Context, table: list[str] | None) -> tuple[ShearCatalog, tuple[str, ...]]:
    from constellation.catalog.iceberg import open_catalog
    from constellation.catalog.maintenance import parse_tables
    from constellation.io.storage import storage_from_config

    try:
        tables = parse_tables(table)
    except ValueError as exc:
        fail(str(exc), EXIT_CONFIG_ERROR)
    settings = get_state(ctx).settings
    existing_catalog(settings, storage_from_config(settings.runtime.storage))
    return open_catalog(settings), tables


@app.command("status")
def status(ctx: typer.Context, table: TableOption = None) -> None:
    """Data files, bytes, rows, partitions and snapshots of each table."""
    from constellation.catalog.maintenance import table_stats

    catalog, tables = _open(ctx, table)
    for name in tables:
        typer.echo(table_stats(catalog, name).line())


@app.command("compact")
def compact(
    ctx: typer.Context,
    table: TableOption = None,
    min_files: Annotated[
        int,
        typer.Option("--min-files", min=2, help="Compact partitions with this many files or more."),
    ] = 2,
    target_file_mb: Annotated[
        float | None,
        typer.Option(
            "--target-file-mb",
            min=0.001,
            help="Size of the compacted files in MiB (default: the table's "
            "write.target-file-size-bytes, else 512).",
        ),
    ] = None,
    partition: Annotated[
        list[int] | None,
        typer.Option("--partition", "-p", help="Only this partition pixel (repeatable)."),
    ] = None,
    partitions_per_commit: Annotated[
        int | None,
        typer.Option(
            "--partitions-per-commit", min=1, help="Partitions per commit (default: one commit)."
        ),
    ] = None,
    dry_run: DryRunOption = False,
) -> None:
    """Rewrite small data files into few large ones per partition (rows unchanged)."""
    from constellation.catalog.maintenance import compact_table, table_stats

    catalog, tables = _open(ctx, table)
    target = None if target_file_mb is None else max(1, int(target_file_mb * 2**20))
    for name in tables:
        before = table_stats(catalog, name)
        report = compact_table(
            catalog, name, min_files=min_files, target_file_bytes=target,
            partitions=partition, partitions_per_commit=partitions_per_commit,
            dry_run=dry_run,
        )  # fmt: skip
        typer.echo(f"before  {before.line()}")
        typer.echo(report.summary())
        if not dry_run:
            typer.echo(f"after   {table_stats(catalog, name).line()}")


@app.command("expire")
def expire(
    ctx: typer.Context,
    table: TableOption = None,
    older_than_days: Annotated[
        float, typer.Option("--older-than-days", min=0, help="Expire snapshots older than this.")
    ] = 7.0,
    retain_last: Annotated[
        int,
        typer.Option(
            "--retain-last", min=1, help="Keep this many most recent snapshots whatever their age."
        ),
    ] = 10,
    orphans: Annotated[
        bool,
        typer.Option(
            "--orphans/--no-orphans",
            help="Also delete unreferenced files under the table location.",
        ),
    ] = True,
    orphan_min_age_hours: Annotated[
        float,
        typer.Option(
            "--orphan-min-age-hours",
            min=0,
            help="Keep unreferenced files younger than this (a commit may be in progress).",
        ),
    ] = 72.0,
    dry_run: DryRunOption = False,
) -> None:
    """Expire old snapshots and delete the files only they used (and orphan files)."""
    from constellation.catalog.maintenance import (
        expire_snapshots,
        remove_orphan_files,
        table_stats,
    )
    from constellation.io.storage import storage_from_config

    catalog, tables = _open(ctx, table)
    storage = storage_from_config(get_state(ctx).settings.runtime.storage)
    for name in tables:
        typer.echo(f"before  {table_stats(catalog, name).line()}")
        report = expire_snapshots(
            catalog, name, older_than=timedelta(days=older_than_days), retain_last=retain_last,
            dry_run=dry_run,
        )  # fmt: skip
        typer.echo(report.summary())
        if orphans:
            found = remove_orphan_files(
                catalog, name, storage, min_age=timedelta(hours=orphan_min_age_hours),
                dry_run=dry_run,
            )  # fmt: skip
            typer.echo(found.summary())
        if not dry_run:
            typer.echo(f"after   {table_stats(catalog, name).line()}")


@app.command("export")
def export(
    ctx: typer.Context,
    out: Annotated[str, typer.Argument(help="Parquet file to write (any storage URL).")],
    table: Annotated[
        str, typer.Option("--table", help="Table to export: sources or subtiles.")
    ] = "sources",
    tile: Annotated[
        list[int] | None,
        typer.Option(
            "--tile", "-t", metavar="TILE_ID", help="Only these tiles (repeatable). Default: all."
        ),
    ] = None,
    column: Annotated[
        list[str] | None,
        typer.Option(
            "--column", metavar="COLUMN", help="Only these columns (repeatable). Default: all."
        ),
    ] = None,
) -> None:
    """Write the current rows of a table to one Parquet file, read through pyiceberg (the
    table's live data files only), for DuckDB, Polars or pandas (docs/catalog.md)."""
    import io

    import pyarrow.parquet as pq

    from constellation.catalog.iceberg import open_catalog
    from constellation.catalog.maintenance import parse_tables
    from constellation.commands._common import requested_tiles
    from constellation.io.storage import storage_from_config

    try:
        (name,) = parse_tables([table])
    except ValueError as exc:
        fail(str(exc), EXIT_CONFIG_ERROR)
    settings = get_state(ctx).settings
    storage = storage_from_config(settings.runtime.storage)
    tiles = requested_tiles(settings, storage, tile)
    existing_catalog(settings, storage)
    catalog = open_catalog(settings)
    if not catalog.exists(name):
        fail(f"the catalog has no {name} table yet: run 'constellation assemble' first")
    known = catalog.arrow_schema(name).names
    unknown = [c for c in column or () if c not in known]
    if unknown:
        fail(
            f"unknown column(s) {', '.join(unknown)} of {name}: one of {', '.join(known)}",
            EXIT_CONFIG_ERROR,
        )
    rows = catalog.read(name, column, tiles=tiles)
    buf = io.BytesIO()
    pq.write_table(rows, buf)
    storage.write_bytes(out, buf.getvalue())
    typer.echo(f"wrote {rows.num_rows} rows ({rows.num_columns} columns) of {name} to {out}")
