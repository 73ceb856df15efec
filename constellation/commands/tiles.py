"""``constellation tiles …``: the tiling geometry from the command line."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from constellation.commands._common import EXIT_CONFIG_ERROR, fail, get_state

if TYPE_CHECKING:
    from constellation.sky import SubTileGrid, TileRegistry

app = typer.Typer(
    help="Tiles and sub-tiles: generate a tiling, show boxes, find neighbours, partition catalogs.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
log = logging.getLogger(__name__)

RegistryOption = Annotated[
    str | None,
    typer.Option(
        "--registry",
        "-r",
        help="Tile registry, a path or URL (Parquet/CSV: tile_id, ra, dec, core_size_arcmin, "
        "extended_size_arcmin). Default: {work_uri}/registry.parquet if it exists (see "
        "'tiles resolve'), else the generated Euclid-like all-sky tiling.",
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _grid(ctx: typer.Context) -> SubTileGrid:
    return get_state(ctx).settings.science.tiling.grid()


def _work_registry_url(ctx: typer.Context) -> str:
    """``{work_uri}/registry.parquet`` (a local path or a URL)."""
    from constellation.manifest.layout import registry_url

    return registry_url(get_state(ctx).settings.runtime.storage.work_uri)


def _load_registry(ctx: typer.Context, path: str | None) -> tuple[TileRegistry, str]:
    """The registry to use and where it came from: ``--registry``, else the cached
    ``{work_uri}/registry.parquet``, else the generated all-sky tiling."""
    from constellation.io.registry import read_registry
    from constellation.io.storage import storage_from_config
    from constellation.sky import AllSkyTiling, RegistryError

    storage = storage_from_config(get_state(ctx).settings.runtime.storage)
    source = "--registry"
    url = path
    if url is None:
        cached = _work_registry_url(ctx)
        if storage.exists(cached):
            log.info("using the tile registry %s (found under work_uri)", cached)
            url, source = cached, "work_uri"
    if url is not None:
        try:
            return read_registry(url, storage), url
        except RegistryError as exc:
            fail(f"{exc} (registry from {source})", EXIT_CONFIG_ERROR)
    log.info("no tile registry given or cached: using the generated all-sky tiling")
    tiling = get_state(ctx).settings.science.tiling
    registry = AllSkyTiling(tiling.core_size_arcmin, tiling.extended_size_arcmin).registry()
    return registry, "the generated all-sky tiling"


def _tile(registry: TileRegistry, tile_id: int, source: str) -> Any:
    try:
        return registry.tile(tile_id)
    except KeyError:
        fail(
            f"tile {tile_id} is not in the registry ({len(registry)} tiles, from {source})",
            EXIT_CONFIG_ERROR,
        )


def _print_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2))


@app.command("allsky")
def allsky(
    ctx: typer.Context,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="Write the registry here (.parquet or .csv).", dir_okay=False
        ),
    ] = None,
    wide: Annotated[
        bool, typer.Option("--wide", help="Keep only tiles in a Wide-survey-like footprint.")
    ] = False,
) -> None:
    """Generate the Euclid-like all-sky tiling (rings of constant Dec, poles included)."""
    from constellation.io.registry import write_registry
    from constellation.io.storage import storage_from_config
    from constellation.sky import AllSkyTiling, wide_footprint_mask

    tiling = get_state(ctx).settings.science.tiling
    grid = tiling.grid()
    t0 = time.perf_counter()
    sky = AllSkyTiling(tiling.core_size_arcmin, tiling.extended_size_arcmin)
    registry = sky.registry()
    if wide:
        registry = registry.select(wide_footprint_mask(registry.ra, registry.dec))
    elapsed = time.perf_counter() - t0
    area = len(registry) * (sky.band_height_deg**2)
    typer.echo(
        f"{len(registry)} tiles ({len(registry) * grid.n_subtiles} sub-tiles of "
        f"{grid.n_rows}x{grid.n_cols}), ~{area:,.0f} deg², {sky.ring_dec.size} rings, "
        f"built in {elapsed:.2f} s"
    )
    if out is not None:
        write_registry(registry, out, storage_from_config(get_state(ctx).settings.runtime.storage))
        typer.echo(f"wrote {out}")


@app.command("resolve")
def resolve(
    ctx: typer.Context,
    tile_ids: Annotated[
        list[int] | None,
        typer.Argument(help="Tiles to resolve (default: every tile directory under --mer)."),
    ] = None,
    mer: Annotated[
        str | None,
        typer.Option(
            "--mer",
            help="MER root URL holding {tile}/VIS/EUC_MER_BGSUB-MOSAIC-VIS_TILE{tile}-*.fits "
            "(default: {data_uri}/q1/MER).",
        ),
    ] = None,
    out: Annotated[
        str | None,
        typer.Option(
            "--out",
            "-o",
            help="Registry file (path or URL) to write and reuse (.parquet or .csv; default: "
            "{work_uri}/registry.parquet).",
        ),
    ] = None,
    refresh: Annotated[
        bool, typer.Option("--refresh", help="Read the headers again even if cached.")
    ] = False,
    skip_missing: Annotated[
        bool,
        typer.Option("--skip-missing", help="Warn about tiles without a VIS mosaic and go on."),
    ] = False,
    workers: Annotated[
        int, typer.Option("--workers", min=1, help="Tiles looked up concurrently.")
    ] = 16,
    core_margin_arcmin: Annotated[
        float,
        typer.Option(
            "--core-margin-arcmin",
            min=0.0,
            help="Core margin on each side (arcmin): core = extended - 2 x margin.",
        ),
    ] = 1.0,
) -> None:
    """Build the tile registry from the MER VIS mosaic headers (ranged reads) and cache it."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from constellation.io.registry import load_or_resolve_registry, read_registry
    from constellation.io.storage import join_url, storage_from_config
    from constellation.sky import RegistryError

    settings = get_state(ctx).settings
    mer_root = mer or join_url(settings.runtime.storage.data_uri, "q1", "MER")
    path = out if out is not None else _work_registry_url(ctx)
    storage = storage_from_config(settings.runtime.storage)
    t0 = time.perf_counter()
    columns = (BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress("resolving tiles", *columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("resolve", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        try:
            registry = load_or_resolve_registry(
                path,
                storage,
                mer_root,
                tile_ids or None,
                refresh=refresh,
                progress=progress,
                core_margin_arcmin=core_margin_arcmin,
                max_workers=workers,
                skip_missing=skip_missing,
            )
        except RegistryError as exc:
            fail(str(exc))
        except OSError as exc:  # e.g. the MER root does not exist or cannot be listed
            fail(f"cannot resolve tiles under {mer_root}: {exc}")
    elapsed = time.perf_counter() - t0
    stats = storage.stats.snapshot()  # the registry's cache included, not the count below
    n_file = len(read_registry(path, storage)) if tile_ids else len(registry)
    in_all = f" ({n_file} in all)" if n_file != len(registry) else ""
    typer.echo(
        f"{len(registry)} tile(s) in {path}{in_all}; {stats.requests} request(s), "
        f"{_human_bytes(stats.bytes_read)} read, {elapsed:.2f} s"
    )


def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


@app.command("list")
def list_tiles(
    ctx: typer.Context,
    registry_path: RegistryOption = None,
    as_json: JsonOption = False,
) -> None:
    """List the tiles of a registry: id, centre (deg) and core/extended sizes (arcmin)."""
    registry, source = _load_registry(ctx, registry_path)
    table = registry.to_arrow().to_pylist()  # sorted by tile id
    if as_json:
        _print_json(table)
        return
    typer.echo(f"# {len(table)} tile(s) from {source}")
    typer.echo(
        f"{'tile_id':>12} {'ra':>14} {'dec':>14} {'core_arcmin':>12} {'extended_arcmin':>16}"
    )
    for row in table:
        typer.echo(
            f"{row['tile_id']:>12d} {row['ra']:>14.9f} {row['dec']:>+14.9f} "
            f"{row['core_size_arcmin']:>12.6f} {row['extended_size_arcmin']:>16.6f}"
        )


@app.command("show")
def show(
    ctx: typer.Context,
    tile_id: Annotated[int, typer.Argument(help="Tile id.")],
    registry_path: RegistryOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show a tile and its sub-tiles: core and extended boxes (tile plane, arcmin) and
    sky centres."""
    registry, source = _load_registry(ctx, registry_path)
    tile = _tile(registry, tile_id, source)
    grid = _grid(ctx)
    rows = []
    for st in tile.iter_subtiles(grid):
        ra, dec = st.center_sky
        rows.append(
            {
                "row": st.row,
                "col": st.col,
                "core_arcmin": [st.core.x_min, st.core.x_max, st.core.y_min, st.core.y_max],
                "extended_arcmin": [
                    st.extended.x_min,
                    st.extended.x_max,
                    st.extended.y_min,
                    st.extended.y_max,
                ],
                "center_ra": ra,
                "center_dec": dec,
                "extended_corners_radec": [
                    [float(r), float(d)] for r, d in zip(*st.extended_polygon(), strict=True)
                ],
            }
        )
    if as_json:
        _print_json(
            {
                "tile_id": tile.tile_id,
                "ra": tile.ra_deg,
                "dec": tile.dec_deg,
                "core_size_arcmin": tile.core_size_arcmin,
                "extended_size_arcmin": tile.extended_size_arcmin,
                "grid": [grid.n_rows, grid.n_cols],
                "margin_arcmin": grid.margin_arcmin,
                "subtiles": rows,
            }
        )
        return
    console = Console()
    console.print(
        f"tile [bold]{tile.tile_id}[/] centre RA {tile.ra_deg:.6f}° Dec {tile.dec_deg:+.6f}°, "
        f"core {tile.core_size_arcmin}', extended {tile.extended_size_arcmin}'; "
        f"{grid.n_rows}x{grid.n_cols} sub-tiles; extended box = core ± {grid.margin_arcmin}' "
        "(tile plane: x west, y north; --json for corners)"
    )
    table = Table("row", "col", "core x (arcmin)", "core y (arcmin)", "centre RA", "centre Dec")
    for r in rows:
        c = r["core_arcmin"]
        table.add_row(
            str(r["row"]),
            str(r["col"]),
            f"[{c[0]:+.3f}, {c[1]:+.3f})",
            f"[{c[2]:+.3f}, {c[3]:+.3f})",
            f"{r['center_ra']:.6f}",
            f"{r['center_dec']:+.6f}",
        )
    console.print(table)


@app.command("neighbours")
def neighbours(
    ctx: typer.Context,
    tile_id: Annotated[int, typer.Argument(help="Tile id.")],
    registry_path: RegistryOption = None,
    slack_arcmin: Annotated[
        float,
        typer.Option(
            help="Grow the neighbours' cores by this much (arcmin) before testing.", min=0
        ),
    ] = 0.0,
    as_json: JsonOption = False,
) -> None:
    """List the tiles whose core meets the extended area of any sub-tile of a tile."""
    from constellation.sky import NeighbourIndex

    registry, source = _load_registry(ctx, registry_path)
    tile = _tile(registry, tile_id, source)
    science = get_state(ctx).settings.science
    index = NeighbourIndex(registry, order=science.healpix.candidate_order)
    ids = index.neighbours(tile, science.tiling.margin_arcmin, slack_arcmin)
    if as_json:
        _print_json({"tile_id": tile_id, "neighbours": [int(i) for i in ids]})
        return
    console = Console()
    console.print(f"tile {tile_id}: {len(ids)} neighbour(s)")
    table = Table("tile_id", "RA", "Dec")
    for t in registry.subset(ids):
        table.add_row(str(t.tile_id), f"{t.ra_deg:.6f}", f"{t.dec_deg:+.6f}")
    console.print(table)


@app.command("partition")
def partition(
    ctx: typer.Context,
    catalog: Annotated[Path, typer.Argument(help="The tile's own catalog (FITS, Parquet or CSV).")],
    tile_id: Annotated[
        int, typer.Option("--tile", "-t", metavar="TILE_ID", help="Tile the catalog belongs to.")
    ],
    others: Annotated[
        list[Path] | None,
        typer.Option("--other", help="Other catalogs (neighbours) for the extended lists."),
    ] = None,
    registry_path: RegistryOption = None,
    ra_column: Annotated[str | None, typer.Option(help="RA column (default: auto).")] = None,
    dec_column: Annotated[str | None, typer.Option(help="Dec column (default: auto).")] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Write the assignment as Parquet: one row per (source, sub-tile) with "
            "catalog, index, object_id, row, col, in_core.",
            dir_okay=False,
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Partition a catalog into the sub-tiles of a tile: core and extended source lists."""
    import numpy as np

    from constellation.io.catalogs import CatalogError, read_positions
    from constellation.sky import partition_sources

    registry, source = _load_registry(ctx, registry_path)
    tile = _tile(registry, tile_id, source)
    grid = _grid(ctx)
    try:
        own = read_positions(catalog, ra_column, dec_column)
        other = [read_positions(p, ra_column, dec_column) for p in others or []]
    except CatalogError as exc:
        fail(str(exc), EXIT_CONFIG_ERROR)
    o_ra = np.concatenate([o.ra for o in other]) if other else None
    o_dec = np.concatenate([o.dec for o in other]) if other else None
    t0 = time.perf_counter()
    part = partition_sources(tile, grid, own.ra, own.dec, o_ra, o_dec)
    elapsed = time.perf_counter() - t0
    log.info("partitioned %d + %d sources in %.3f s", part.n_own, part.n_other, elapsed)
    core, ext = part.core_counts, part.extended_counts
    if out is not None:
        _write_assignment(out, part, [own, *other])
    if as_json:
        _print_json(
            {
                "tile_id": tile_id,
                "n_own": part.n_own,
                "n_other": part.n_other,
                "n_outside_core": part.n_outside_core,
                "core_counts": core.tolist(),
                "extended_counts": ext.tolist(),
            }
        )
        return
    console = Console()
    console.print(
        f"tile {tile_id}: {part.n_own} own + {part.n_other} other sources; "
        f"{part.n_outside_core} own source(s) outside the nominal core (clamped); "
        f"{elapsed * 1e3:.1f} ms"
    )
    table = Table("row", "col", "core", "extended")
    for r in range(grid.n_rows):
        for c in range(grid.n_cols):
            table.add_row(str(r), str(c), str(core[r, c]), str(ext[r, c]))
    console.print(table)
    if out is not None:
        console.print(f"wrote {out}")


def _write_assignment(out: Path, part: Any, catalogs: list[Any]) -> None:
    """One row per (source, sub-tile it is modelled in), with an ``in_core`` flag."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from constellation.io.storage import Storage

    sizes = np.array([len(c) for c in catalogs])
    starts = np.concatenate([[0], np.cumsum(sizes)])
    ids = [c.object_id if c.object_id is not None else np.full(len(c), -1) for c in catalogs]
    all_ids = np.concatenate(ids).astype(np.int64) if ids else np.empty(0, np.int64)
    n_cells = part.grid.n_subtiles
    cell = np.repeat(np.arange(n_cells), np.diff(part.extended_offsets))
    idx = part.extended_index.astype(np.int64)
    core_cell = np.empty(part.n_own, dtype=np.int64)
    core_cell[part.core_index] = np.repeat(np.arange(n_cells), np.diff(part.core_offsets))
    in_core = np.zeros(idx.size, dtype=bool)
    own = idx < part.n_own
    in_core[own] = core_cell[idx[own]] == cell[own]
    # own sources clamped into a core they are not inside still appear there
    missing = np.setdiff1d(
        core_cell * part.n_own + np.arange(part.n_own), cell[own] * part.n_own + idx[own]
    )
    if missing.size:
        m_cell, m_idx = np.divmod(missing, part.n_own)
        cell = np.concatenate([cell, m_cell])
        idx = np.concatenate([idx, m_idx])
        in_core = np.concatenate([in_core, np.ones(m_idx.size, dtype=bool)])
    which = np.searchsorted(starts, idx, side="right") - 1
    table = pa.table(
        {
            "catalog": pa.array(which.astype(np.int16)),
            "index": pa.array(idx - starts[which]),
            "object_id": pa.array(all_ids[idx]),
            "row": pa.array((cell // part.grid.n_cols).astype(np.int16)),
            "col": pa.array((cell % part.grid.n_cols).astype(np.int16)),
            "in_core": pa.array(in_core),
        }
    )
    buf = pa.BufferOutputStream()
    pq.write_table(table, buf)
    Storage().write_bytes(str(out), buf.getvalue().to_pybytes())
