"""Helpers shared by the command modules: the CLI state object and clean failures."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import typer

from constellation.config import Settings, load_config

if TYPE_CHECKING:
    from constellation.io.storage import Storage

__all__ = ["EXIT_CONFIG_ERROR", "EXIT_FAILURE", "CliState", "fail", "get_state", "tile_manifests"]

EXIT_FAILURE = 1
"""Exit code of a command that failed."""

EXIT_CONFIG_ERROR = 2
"""Exit code when the configuration (or the command line) is invalid."""


@dataclass
class CliState:
    """What the root ``constellation`` options leave for sub-commands.

    The configuration is loaded on first access to :attr:`settings`, so commands that
    do not need it never fail because of it.
    """

    config_path: Path | None = None
    verbosity: int = 0

    @cached_property
    def settings(self) -> Settings:
        """The effective configuration (raises ``ConfigError`` if it is invalid)."""
        return load_config(self.config_path)


def get_state(ctx: typer.Context) -> CliState:
    """Return the :class:`CliState` of this invocation (a default one if none was set)."""
    return ctx.ensure_object(CliState)


def tile_manifests(settings: Settings, storage: Storage, tiles: Iterable[int]) -> list[str]:
    """The prepared manifests of ``tiles`` (one listing per tile); exits with a message
    naming the first tile that has none."""
    from constellation.manifest import layout

    work = settings.runtime.storage.work_uri
    urls: list[str] = []
    for tid in sorted(set(tiles)):
        found = sorted(storage.glob(layout.manifest_pattern(work, tid)))
        if not found:
            fail(f"no manifests for tile {tid} under {work}: run 'constellation prepare'")
        urls.extend(found)
    return urls


def fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    """Print ``message`` in red to stderr and exit with ``code``, without a traceback."""
    typer.secho(message, fg=typer.colors.RED, err=True)
    raise typer.Exit(code)
