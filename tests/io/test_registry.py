"""Tile registries: validation and Parquet/CSV round trips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from constellation.io.registry import read_registry, write_registry
from constellation.sky import AllSkyTiling, RegistryError, Tile, TileRegistry


@pytest.fixture
def registry() -> TileRegistry:
    full = AllSkyTiling().registry()
    return full.subset(full.tile_id[::997])


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_round_trip(tmp_path: Path, registry: TileRegistry, suffix: str) -> None:
    path = write_registry(registry, tmp_path / f"sub/registry{suffix}")
    back = read_registry(path)
    assert len(back) == len(registry)
    for name in ("tile_id", "ra", "dec", "core_size_arcmin", "extended_size_arcmin"):
        a = getattr(registry, name)[np.argsort(registry.tile_id)]
        b = getattr(back, name)[np.argsort(back.tile_id)]
        assert np.array_equal(a, b), name  # bit-exact, CSV included
    assert back.tile_id.dtype == np.int64
    assert not list(tmp_path.glob("sub/.*tmp"))


def test_lookup(registry: TileRegistry) -> None:
    tid = int(registry.tile_id[3])
    assert tid in registry
    assert 5 not in registry
    assert "x" not in registry
    t = registry.tile(tid)
    assert isinstance(t, Tile)
    assert t.tile_id == tid
    with pytest.raises(KeyError, match="not in registry"):
        registry.tile(5)
    assert [x.tile_id for x in registry][:2] == registry.tile_id[:2].tolist()


def test_from_tiles_wraps_ra() -> None:
    reg = TileRegistry.from_tiles([Tile(1, 359.9, 10.0), Tile(2, 0.1, 10.0)])
    assert reg.tile(1).ra_deg == pytest.approx(359.9)
    assert TileRegistry([1], [-0.5], [0.0]).ra[0] == 359.5


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"tile_id": [1, 1], "ra": [0, 1], "dec": [0, 0]}, "duplicate"),
        ({"tile_id": [1], "ra": [0], "dec": [91]}, "dec outside"),
        ({"tile_id": [1], "ra": [np.nan], "dec": [0]}, "non-finite ra"),
        ({"tile_id": [1], "ra": [0], "dec": [0], "core_size_arcmin": 40.0}, "core_size"),
        ({"tile_id": [1.5], "ra": [0], "dec": [0]}, "integers"),
    ],
)
def test_validation(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(RegistryError, match=match):
        TileRegistry(**kwargs)  # type: ignore[arg-type]


def test_read_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="not found"):
        read_registry(tmp_path / "nope.parquet")
    with pytest.raises(RegistryError, match="unknown registry format"):
        read_registry(tmp_path / "reg.txt")
    bad = tmp_path / "bad.csv"
    bad.write_text("tile_id,ra\n1,2.0\n")
    with pytest.raises(RegistryError, match=r"bad\.csv: registry table lacks column"):
        read_registry(bad)
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"not parquet")
    with pytest.raises(RegistryError, match="cannot read registry"):
        read_registry(garbage)


def test_nulls_rejected() -> None:
    table = pa.table(
        {
            "tile_id": pa.array([1, 2], pa.int64()),
            "ra": pa.array([1.0, None]),
            "dec": pa.array([0.0, 0.0]),
            "core_size_arcmin": pa.array([30.0, 30.0]),
            "extended_size_arcmin": pa.array([32.0, 32.0]),
        }
    )
    with pytest.raises(RegistryError, match="null"):
        TileRegistry.from_arrow(table)
