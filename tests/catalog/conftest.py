"""Fixtures of the catalog tests: a work root with synthetic results, settings and the
embedded SQLite catalog (real pyiceberg, nothing mocked)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from constellation.catalog.iceberg import ShearCatalog, open_catalog
from constellation.catalog.synthetic import ShearFunction, synthetic_tiles, write_results
from constellation.config import Settings
from constellation.io.storage import Storage
from constellation.results.store import ResultMarker
from constellation.sky.tiling import SubTileGrid, Tile

GRID = SubTileGrid(4, 4, 1.0)


@dataclass
class Field:
    """A work root with synthetic results and the settings that point at it."""

    root: Path
    settings: Settings
    config_path: Path
    storage: Storage
    tiles: list[Tile]

    @property
    def work(self) -> str:
        return self.settings.runtime.storage.work_uri

    def catalog(self) -> ShearCatalog:
        """A fresh handle on the field's catalog (its own SQLite connection)."""
        return open_catalog(self.settings)

    def write(
        self,
        tiles: list[Tile] | None = None,
        *,
        n_sources: int = 20,
        seed: int = 0,
        shear: ShearFunction | None = None,
        noise: float = 0.0,
        failed: tuple[tuple[int, int, int], ...] = (),
        config_hash: str | None = None,
    ) -> dict[tuple[int, int, int], ResultMarker]:
        """Write results for ``tiles`` (default: all) with the field's config hash."""
        kwargs = {} if shear is None else {"shear": shear}
        return write_results(
            self.storage,
            self.work,
            self.tiles if tiles is None else tiles,
            GRID,
            n_sources=n_sources,
            seed=seed,
            noise=noise,
            failed=failed,
            config_hash=config_hash or self.settings.config_hash,
            run_id="test-infer",
            **kwargs,  # type: ignore[arg-type]
        )


def make_field(root: Path, n_tiles: int = 2) -> Field:
    root.mkdir(parents=True, exist_ok=True)
    doc = {
        "runtime": {
            "storage": {"work_uri": str(root / "work"), "data_uri": str(root / "data")},
        }
    }
    config_path = root / "config.yaml"
    config_path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    settings = Settings.model_validate(doc)
    return Field(
        root=root,
        settings=settings,
        config_path=config_path,
        storage=Storage(),
        tiles=synthetic_tiles(n_tiles, 1),
    )


@pytest.fixture
def field(tmp_path: Path) -> Field:
    """Two adjacent tiles (32 sub-tiles), no results written yet."""
    return make_field(tmp_path / "f")


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """The CLI's root callback configures logging; undo it for the other tests."""
    root = logging.getLogger()
    own = logging.getLogger("constellation")
    saved = (list(root.handlers), root.level, own.level)
    yield
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    own.setLevel(saved[2])
