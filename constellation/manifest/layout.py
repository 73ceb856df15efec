"""Where the prepare stage writes, as pure functions of identifiers (no I/O).

Layout under the work root::

    {work_uri}/quadrant_index.parquet
    {work_uri}/registry.parquet
    {work_uri}/tiles/{tile}/subtiles/r{row}_c{col}/manifest.json
    {work_uri}/tiles/{tile}/subtiles/r{row}_c{col}/sources.parquet
    {work_uri}/tiles/{tile}/subtiles/r{row}_c{col}/_DONE.json
    {work_uri}/tiles/{tile}/subtiles/r{row}_c{col}/result.parquet   (inference)
    {work_uri}/tiles/{tile}/subtiles/r{row}_c{col}/_RESULT.json     (inference done marker)

The manifest refers to its source table by the relative name
:data:`SOURCES_NAME`, so a sub-tile directory can be moved or copied as a whole.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "DONE_NAME",
    "MANIFEST_NAME",
    "MANIFEST_NAME_V2",
    "RESULT_DONE_NAME",
    "RESULT_NAME",
    "SOURCES_NAME",
    "SubTileId",
    "done_url",
    "join",
    "manifest_pattern",
    "manifest_url",
    "quadrant_index_url",
    "registry_url",
    "resolve_relative",
    "result_done_url",
    "result_url",
    "sources_url",
    "subtile_dir",
    "subtile_name",
    "tile_dir",
    "tile_id_from_url",
]

MANIFEST_NAME = "manifest.json"
#: Where manifests of version 2 (YAML) were written; prepare deletes such a file when it
#: writes :data:`MANIFEST_NAME` next to it.
MANIFEST_NAME_V2 = "manifest.yaml"
SOURCES_NAME = "sources.parquet"
DONE_NAME = "_DONE.json"
RESULT_NAME = "result.parquet"
RESULT_DONE_NAME = "_RESULT.json"

_TILE_PATH = re.compile(r"(?:^|/)tiles/(\d+)(?=/|$)")
_SUBTILE_PATH = re.compile(r"(?:^|/)tiles/(\d+)/subtiles/r(\d+)_c(\d+)(?:/[^/]*)?/?$")


@dataclass(frozen=True, order=True)
class SubTileId:
    """A sub-tile: its tile and its row and column in the tile's grid (ordered as
    tile, row, column: the order of :func:`~constellation.results.schema.subtile_key`)."""

    tile_id: int
    row: int
    col: int

    @classmethod
    def from_url(cls, url: str) -> SubTileId:
        """The sub-tile of a URL under a work root: its folder
        ``.../tiles/{tile}/subtiles/r{row}_c{col}`` or a file in it (the inverse of
        :func:`subtile_dir` and the ``*_url`` functions). ``ValueError`` otherwise."""
        m = _SUBTILE_PATH.search(url.replace("\\", "/"))
        if m is None:
            raise ValueError(f"{url}: not a sub-tile folder or file (tiles/T/subtiles/rR_cC)")
        return cls(int(m.group(1)), int(m.group(2)), int(m.group(3)))

    def directory(self, work_uri: str) -> str:
        """This sub-tile's folder under ``work_uri``."""
        return subtile_dir(work_uri, self.tile_id, self.row, self.col)

    def __str__(self) -> str:
        return f"tile {self.tile_id} {subtile_name(self.row, self.col)}"


def join(base: str, *parts: str) -> str:
    """``base`` and ``parts`` joined with single slashes (URLs and local paths alike)."""
    out = base.rstrip("/") or base
    for part in parts:
        out = f"{out}/{part.strip('/')}" if out != "/" else f"/{part.strip('/')}"
    return out


def quadrant_index_url(work_uri: str) -> str:
    """The quadrant index built by ``constellation index``."""
    return join(work_uri, "quadrant_index.parquet")


def registry_url(work_uri: str) -> str:
    """The cached tile registry."""
    return join(work_uri, "registry.parquet")


def tile_dir(work_uri: str, tile_id: int) -> str:
    """Directory of one tile's outputs."""
    return join(work_uri, "tiles", str(int(tile_id)))


def tile_id_from_url(url: str) -> int:
    """The tile of a URL under a work root: its folder ``.../tiles/{tile}`` or anything
    in it (the inverse of :func:`tile_dir`; the last such folder of the URL, so a work
    root may itself lie under a ``tiles/N`` folder). ``ValueError`` otherwise."""
    found = _TILE_PATH.findall(url.replace("\\", "/"))
    if not found:
        raise ValueError(f"{url}: not in a tile folder (tiles/T)")
    return int(found[-1])


def subtile_name(row: int, col: int) -> str:
    """The directory name of sub-tile ``(row, col)``: ``r{row}_c{col}``."""
    return f"r{int(row)}_c{int(col)}"


def subtile_dir(work_uri: str, tile_id: int, row: int, col: int) -> str:
    """Directory of one sub-tile's prepared inputs."""
    return join(tile_dir(work_uri, tile_id), "subtiles", subtile_name(row, col))


def manifest_url(work_uri: str, tile_id: int, row: int, col: int) -> str:
    """The sub-tile manifest (JSON)."""
    return join(subtile_dir(work_uri, tile_id, row, col), MANIFEST_NAME)


def manifest_pattern(work_uri: str, tile_id: int | str = "*") -> str:
    """Glob pattern of the prepared manifests of one tile (``"*"``: of every tile)."""
    return join(work_uri, "tiles", str(tile_id), "subtiles", "*", MANIFEST_NAME)


def sources_url(work_uri: str, tile_id: int, row: int, col: int) -> str:
    """The sub-tile source table (Parquet)."""
    return join(subtile_dir(work_uri, tile_id, row, col), SOURCES_NAME)


def done_url(work_uri: str, tile_id: int, row: int, col: int) -> str:
    """The sub-tile's done marker (JSON)."""
    return join(subtile_dir(work_uri, tile_id, row, col), DONE_NAME)


def result_url(work_uri: str, tile_id: int, row: int, col: int) -> str:
    """The sub-tile's inference result (Parquet: core-source rows + the sub-tile row)."""
    return join(subtile_dir(work_uri, tile_id, row, col), RESULT_NAME)


def result_done_url(work_uri: str, tile_id: int, row: int, col: int) -> str:
    """The sub-tile's inference done marker (JSON), written after the result."""
    return join(subtile_dir(work_uri, tile_id, row, col), RESULT_DONE_NAME)


def resolve_relative(manifest_location: str, uri: str) -> str:
    """Resolve a URI written in a manifest against the manifest's own location.

    Absolute paths and URLs with a scheme are returned unchanged; a relative name
    is taken relative to the manifest's directory.
    """
    if uri.startswith("/") or "://" in uri:
        return uri
    parent = manifest_location.rstrip("/").rsplit("/", 1)[0]
    return join(parent, uri)
