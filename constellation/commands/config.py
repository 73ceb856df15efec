"""``constellation config …``: show, hash and validate the configuration."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from constellation.commands._common import EXIT_CONFIG_ERROR, fail, get_state
from constellation.config import ConfigError, dump_config, load_config

app = typer.Typer(
    help="Show, hash and validate the configuration.", no_args_is_help=True, rich_markup_mode=None
)


@app.command("show")
def show(ctx: typer.Context) -> None:
    """Print the effective configuration as YAML, headed by its science config hash."""
    settings = get_state(ctx).settings
    typer.echo(f"# config_hash: {settings.config_hash}")
    typer.echo(dump_config(settings), nl=False)


@app.command("hash")
def hash_(ctx: typer.Context) -> None:
    """Print the hash of the science configuration (written next to every result)."""
    typer.echo(get_state(ctx).settings.config_hash)


@app.command("validate")
def validate(
    ctx: typer.Context,
    path: Annotated[
        Path | None,
        typer.Argument(
            help="YAML file to check; defaults to --config, then $CONSTELLATION_CONFIG.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Check a configuration file; print 'ok <hash>' or what is wrong (exit code 2)."""
    try:
        settings = load_config(path) if path is not None else get_state(ctx).settings
    except ConfigError as exc:
        fail(str(exc), EXIT_CONFIG_ERROR)
    typer.echo(f"ok {settings.config_hash}")
