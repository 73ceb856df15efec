"""The ``constellation`` command-line interface.

Each command group lives in :mod:`constellation.commands`; this module wires them
together and handles the options shared by all of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from constellation import __version__
from constellation.commands import config as config_commands
from constellation.commands import maintain, tiles
from constellation.commands._common import EXIT_CONFIG_ERROR, CliState, fail
from constellation.commands.calibrate import calibrate
from constellation.commands.catalog import assemble, report, validate
from constellation.commands.index import index
from constellation.commands.infer import infer
from constellation.commands.prepare import plan, prepare
from constellation.commands.run import demo, reprocess, run
from constellation.commands.simulate import simulate
from constellation.commands.stage import stage
from constellation.config import CONFIG_ENV_VAR, ConfigError
from constellation.logging import setup_logging

__all__ = ["app"]


class _RootGroup(TyperGroup):
    """Root command group that reports any ``ConfigError`` as one clean message."""

    # ``Any``: the base class annotates the click ``Context`` that typer vendors privately;
    # typer.Context is a subclass, so naming it here would narrow the override.
    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except ConfigError as exc:
            fail(str(exc), EXIT_CONFIG_ERROR)


app = typer.Typer(
    name="constellation",
    cls=_RootGroup,
    help="Orchestrate SHINE weak-lensing shear inference over Euclid tiles.",
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_show_locals=False,
)
app.add_typer(tiles.app, name="tiles")
app.add_typer(config_commands.app, name="config")
app.add_typer(maintain.app, name="catalog")
app.command("simulate")(simulate)
app.command("index")(index)
app.command("prepare")(prepare)
app.command("plan")(plan)
app.command("stage")(stage)
app.command("infer")(infer)
app.command("assemble")(assemble)
app.command("validate")(validate)
app.command("report")(report)
app.command("run")(run)
app.command("reprocess")(reprocess)
app.command("demo")(demo)
app.command("calibrate")(calibrate)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"constellation {__version__}")
        raise typer.Exit(0)


@app.callback()
def main(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            envvar=CONFIG_ENV_VAR,
            help="YAML configuration file (environment variables CONSTELLATION_* override it).",
            show_default=False,
        ),
    ] = None,
    verbose: Annotated[
        int,
        typer.Option("--verbose", "-v", count=True, help="More log output: -v info, -vv debug."),
    ] = 0,
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print the version and exit.",
        ),
    ] = False,
) -> None:
    """Orchestrate SHINE weak-lensing shear inference over Euclid tiles."""
    setup_logging(verbose)
    ctx.obj = CliState(config_path=config, verbosity=verbose)
