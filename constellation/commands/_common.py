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

__all__ = [
    "EXIT_CONFIG_ERROR",
    "EXIT_FAILURE",
    "CliState",
    "existing_catalog",
    "fail",
    "get_state",
    "requested_tiles",
    "tile_manifests",
    "work_root",
]

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
    """The prepared manifests of ``tiles`` (the infer stage's plan); exits with a
    message naming the first tile that has none."""
    from constellation.stages.infer import plan, tiles_without_manifests

    work = settings.runtime.storage.work_uri
    urls = plan(storage, work, tiles)
    missing = tiles_without_manifests(urls, tiles)
    if missing:
        fail(f"no manifests for tile {missing[0]} under {work}: run 'constellation prepare'")
    return urls


def work_root(settings: Settings, storage: Storage) -> str:
    """The work root (``runtime.storage.work_uri``), or a clean exit when it does not
    exist: nothing is created there."""
    work = settings.runtime.storage.work_uri
    if not storage.exists(work):
        fail(
            f"work root {work} does not exist: check runtime.storage.work_uri (or -c CONFIG), "
            "or make it with 'constellation tiles resolve' / 'constellation demo'"
        )
    return work


def requested_tiles(
    settings: Settings, storage: Storage, tile: list[int] | None
) -> list[int] | None:
    """The tiles a command was asked for (``--tile``, else ``runtime.tiles``, else None:
    all), after checking that the work root exists and that each tile is in its tile
    registry (without a registry: that the tile has a folder of prepared or inferred
    data); a clean exit naming what is missing otherwise."""
    from constellation.io.registry import read_work_registry
    from constellation.manifest import layout

    work = work_root(settings, storage)
    tiles = sorted(set(tile or settings.runtime.tiles)) or None
    if tiles:
        try:
            registry = read_work_registry(storage, work)
        except FileNotFoundError:
            unknown = [t for t in tiles if not storage.exists(layout.tile_dir(work, t))]
            if unknown:
                fail(
                    f"tile(s) {', '.join(map(str, unknown))}: no data under {work} and no "
                    "tile registry there: check the id, or run 'constellation tiles resolve' "
                    "and 'constellation prepare'"
                )
            return tiles
        unknown = [t for t in tiles if t not in registry]
        if unknown:
            fail(
                f"tile(s) {', '.join(map(str, unknown))} not in the tile registry "
                f"{layout.registry_url(work)} ({len(registry)} tiles): check the id or run "
                "'constellation tiles resolve'"
            )
    return tiles


def existing_catalog(settings: Settings, storage: Storage) -> None:
    """A clean exit when the work root or its embedded catalog does not exist (so that
    reading commands never create an empty catalog)."""
    from constellation.catalog.iceberg import embedded_catalog_missing

    work_root(settings, storage)
    missing = embedded_catalog_missing(settings)
    if missing:
        fail(f"no catalog at {missing}: run 'constellation assemble' first")


def fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    """Print ``message`` in red to stderr and exit with ``code``, without a traceback."""
    typer.secho(message, fg=typer.colors.RED, err=True)
    raise typer.Exit(code)
