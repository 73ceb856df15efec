"""``constellation simulate``: write a synthetic Euclid-like field in the Q1 layout."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from constellation.commands._common import EXIT_CONFIG_ERROR, fail, get_state


def _parse_tiles(value: str) -> tuple[int, int]:
    try:
        a, b = value.lower().split("x")
        return int(a), int(b)
    except ValueError:
        raise typer.BadParameter(f"expected NxM (tiles east-west x rings), got {value!r}") from None


def simulate(
    ctx: typer.Context,
    out: Annotated[
        str | None,
        typer.Option("--out", "-o", help="Field root URL (default: runtime.storage.data_uri)."),
    ] = None,
    tiles: Annotated[
        str, typer.Option(help="Tiles east-west x rings north-south, e.g. 2x2.")
    ] = "2x2",
    ra: Annotated[float, typer.Option(help="Field centre RA, deg.")] = 52.93,
    dec: Annotated[float, typer.Option(help="Field centre Dec, deg.")] = -28.09,
    mode: Annotated[
        str,
        typer.Option(
            help="Pixel mode: light (binned, small), sparse (true geometry, "
            "sparse local files) or pixels (rendered galaxies)."
        ),
    ] = "light",
    density: Annotated[float, typer.Option(help="Catalog sources per arcmin².")] = 30.0,
    short: Annotated[
        bool, typer.Option("--short/--no-short", help="Also write the short exposures.")
    ] = False,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 42,
    binning: Annotated[
        int, typer.Option(help="light mode: quadrants binned by this factor per axis.")
    ] = 32,
    pixel_quadrants: Annotated[
        list[str] | None,
        typer.Option(
            "--pixel-quadrant",
            metavar="QUADRANT",
            help="pixels mode: quadrant(s) to render (3-4.F).",
        ),
    ] = None,
    spec_file: Annotated[
        Path | None,
        typer.Option("--spec", help="YAML file with a full FieldSpec (overrides the options)."),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite a field that exists at the root.")
    ] = False,
) -> None:
    """Write a synthetic field (VIS exposures, PSF, MER mosaics and catalogs, truth)."""
    import yaml
    from pydantic import ValidationError

    from constellation.io.storage import storage_from_config
    from constellation.simulate import FieldSpec
    from constellation.simulate.run import count_files, simulate_field

    settings = get_state(ctx).settings
    try:
        if spec_file is not None:
            spec = FieldSpec.model_validate(yaml.safe_load(spec_file.read_text()) or {})
        else:
            n_ra, n_dec = _parse_tiles(tiles)
            spec = FieldSpec(
                ra_deg=ra, dec_deg=dec, n_tiles_ra=n_ra, n_tiles_dec=n_dec, mode=mode,
                density_per_arcmin2=density, include_short=short, seed=seed,
                light_binning=binning, pixel_quadrants=tuple(pixel_quadrants or ("3-4.F",)),
            )  # fmt: skip
    except (ValidationError, OSError, yaml.YAMLError) as exc:
        where = f" in {spec_file}" if spec_file is not None else ""
        problem = " ".join(str(exc).split())  # one line
        fail(f"invalid field specification{where}: {problem}", EXIT_CONFIG_ERROR)
    root = out or settings.runtime.storage.data_uri
    storage = storage_from_config(settings.runtime.storage)
    marker = f"{root.rstrip('/')}/truth/field.json"
    if not force and storage.exists(marker):
        fail(
            f"a simulated field exists under {root} ({marker}): use --force to overwrite it, "
            "or --out for another root"
        )
    total = count_files(spec)
    with Progress(
        TextColumn("[bold]simulate"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("{task.description}"), transient=True,
    ) as bar:  # fmt: skip
        task = bar.add_task("", total=total)
        summary = simulate_field(
            spec, storage, root, lambda key: bar.update(task, advance=1, description=key[-60:])
        )
    p = summary.plan
    typer.echo(
        f"wrote {summary.n_files} files under {root}: {len(p.tiles)} tiles, "
        f"{len(p.obs_ids)} observations, {len(p.exposures)} exposures, "
        f"{summary.n_sources} sources; {summary.total_bytes / 2**20:.1f} MiB "
        f"({spec.mode} mode) in {summary.seconds:.1f} s"
    )
