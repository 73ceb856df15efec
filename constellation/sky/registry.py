"""The tile registry: which tiles exist, where they are, how big they are.

Tile centres cannot be derived from Euclid tile ids, so every run works from a
registry: a table with one row per tile (``tile_id, ra, dec,
core_size_arcmin, extended_size_arcmin``). It is built from an authoritative
source (MER mosaic headers for real data, the generator or the simulator for
synthetic data) and loaded from Parquet/CSV by :mod:`constellation.io.registry`.
This module holds it in memory as columns and converts to/from Arrow tables;
it does no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike, NDArray

from constellation.sky.projection import wrap_ra
from constellation.sky.tiling import Tile

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["REGISTRY_COLUMNS", "RegistryError", "TileRegistry"]

#: Registry columns, in order, with their Arrow types.
REGISTRY_COLUMNS: dict[str, str] = {
    "tile_id": "int64",
    "ra": "float64",
    "dec": "float64",
    "core_size_arcmin": "float64",
    "extended_size_arcmin": "float64",
}


class RegistryError(ValueError):
    """A registry table is malformed (missing columns, duplicates, bad values)."""


class TileRegistry:
    """Columns of tiles, indexed by tile id.

    Parameters
    ----------
    tile_id
        Unique integer ids.
    ra, dec
        Tile centres in degrees (RA is wrapped into [0, 360)).
    core_size_arcmin, extended_size_arcmin
        Per-tile sizes (scalars broadcast).
    """

    def __init__(
        self,
        tile_id: ArrayLike,
        ra: ArrayLike,
        dec: ArrayLike,
        core_size_arcmin: ArrayLike = 30.0,
        extended_size_arcmin: ArrayLike = 32.0,
    ) -> None:
        ids = np.asarray(tile_id)
        if ids.ndim != 1:
            raise RegistryError("tile_id must be a 1-d array")
        if ids.size and not np.issubdtype(ids.dtype, np.integer):
            raise RegistryError(f"tile_id must be integers, got dtype {ids.dtype}")
        self.tile_id: NDArray[np.int64] = ids.astype(np.int64)
        n = self.tile_id.size
        self.ra: NDArray[np.float64] = wrap_ra(np.broadcast_to(np.asarray(ra, np.float64), n))
        self.dec: NDArray[np.float64] = np.array(np.broadcast_to(np.asarray(dec, np.float64), n))
        self.core_size_arcmin: NDArray[np.float64] = np.array(
            np.broadcast_to(np.asarray(core_size_arcmin, np.float64), n)
        )
        self.extended_size_arcmin: NDArray[np.float64] = np.array(
            np.broadcast_to(np.asarray(extended_size_arcmin, np.float64), n)
        )
        self._validate()
        self._order = np.argsort(self.tile_id, kind="stable")
        self._sorted_ids = self.tile_id[self._order]
        dup = self._sorted_ids[1:][self._sorted_ids[1:] == self._sorted_ids[:-1]]
        if dup.size:
            raise RegistryError(f"duplicate tile ids in registry: {np.unique(dup)[:10].tolist()}")

    def _validate(self) -> None:
        def bad_rows(mask: NDArray[np.bool_]) -> str:
            return ", ".join(str(t) for t in self.tile_id[mask][:5])

        for name in ("ra", "dec", "core_size_arcmin", "extended_size_arcmin"):
            col = getattr(self, name)
            if not np.isfinite(col).all():
                raise RegistryError(f"non-finite {name} for tiles {bad_rows(~np.isfinite(col))}")
        if ((self.dec < -90) | (self.dec > 90)).any():
            raise RegistryError(
                f"dec outside [-90, 90] for tiles {bad_rows((self.dec < -90) | (self.dec > 90))}"
            )
        bad = (self.core_size_arcmin <= 0) | (self.core_size_arcmin > self.extended_size_arcmin)
        if bad.any():
            raise RegistryError(
                f"need 0 < core_size_arcmin <= extended_size_arcmin for tiles {bad_rows(bad)}"
            )

    # -- construction -----------------------------------------------------------------

    @classmethod
    def from_tiles(cls, tiles: Iterable[Tile]) -> TileRegistry:
        """A registry holding the given tiles."""
        ts = list(tiles)
        return cls(
            np.array([t.tile_id for t in ts], dtype=np.int64),
            [t.ra_deg for t in ts],
            [t.dec_deg for t in ts],
            [t.core_size_arcmin for t in ts],
            [t.extended_size_arcmin for t in ts],
        )

    @classmethod
    def from_arrow(cls, table: pa.Table) -> TileRegistry:
        """A registry from an Arrow table with :data:`REGISTRY_COLUMNS` (extra columns ignored)."""
        missing = [c for c in REGISTRY_COLUMNS if c not in table.column_names]
        if missing:
            raise RegistryError(
                f"registry table lacks column(s) {missing}; expected {list(REGISTRY_COLUMNS)}"
            )
        cols = {}
        for name in REGISTRY_COLUMNS:
            col = table.column(name)
            if col.null_count:
                raise RegistryError(f"registry column {name!r} has {col.null_count} null value(s)")
            cols[name] = col.to_numpy()
        if cols["tile_id"].size and not np.issubdtype(cols["tile_id"].dtype, np.integer):
            kind = table.schema.field("tile_id").type
            raise RegistryError(f"registry column 'tile_id' must be integers, got {kind}")
        return cls(**cols)

    def to_arrow(self) -> pa.Table:
        """The registry as an Arrow table (rows sorted by tile id)."""
        import pyarrow as pa

        o = self._order
        return pa.table(
            {
                "tile_id": pa.array(self.tile_id[o], pa.int64()),
                "ra": pa.array(self.ra[o], pa.float64()),
                "dec": pa.array(self.dec[o], pa.float64()),
                "core_size_arcmin": pa.array(self.core_size_arcmin[o], pa.float64()),
                "extended_size_arcmin": pa.array(self.extended_size_arcmin[o], pa.float64()),
            }
        )

    # -- access -----------------------------------------------------------------------

    def __len__(self) -> int:
        return int(self.tile_id.size)

    def __contains__(self, tile_id: object) -> bool:
        if not isinstance(tile_id, int | np.integer):
            return False
        i = np.searchsorted(self._sorted_ids, tile_id)
        return bool(i < self._sorted_ids.size and self._sorted_ids[i] == tile_id)

    def __iter__(self) -> Iterator[Tile]:
        for i in range(len(self)):
            yield self._tile_at(i)

    def __repr__(self) -> str:
        return f"TileRegistry({len(self)} tiles)"

    def rows_of(self, tile_ids: ArrayLike) -> NDArray[np.int64]:
        """Row positions of tile ids; raises ``KeyError`` naming unknown ids."""
        ids = np.atleast_1d(np.asarray(tile_ids, dtype=np.int64))
        pos = np.searchsorted(self._sorted_ids, ids)
        pos_c = np.clip(pos, 0, max(self._sorted_ids.size - 1, 0))
        found = (pos < self._sorted_ids.size) & (self._sorted_ids[pos_c] == ids)
        if not found.all():
            raise KeyError(f"tile(s) not in registry: {ids[~found][:10].tolist()}")
        return np.asarray(self._order[pos_c], dtype=np.int64)

    def _tile_at(self, i: int) -> Tile:
        return Tile(
            int(self.tile_id[i]),
            float(self.ra[i]),
            float(self.dec[i]),
            float(self.core_size_arcmin[i]),
            float(self.extended_size_arcmin[i]),
        )

    def tile(self, tile_id: int) -> Tile:
        """The :class:`Tile` with this id (``KeyError`` if absent)."""
        return self._tile_at(int(self.rows_of(tile_id)[0]))

    def subset(self, tile_ids: ArrayLike) -> TileRegistry:
        """A registry with only the given tiles."""
        r = self.rows_of(tile_ids)
        return TileRegistry(
            self.tile_id[r],
            self.ra[r],
            self.dec[r],
            self.core_size_arcmin[r],
            self.extended_size_arcmin[r],
        )

    def select(self, mask: NDArray[np.bool_]) -> TileRegistry:
        """A registry with the rows where ``mask`` is true."""
        return TileRegistry(
            self.tile_id[mask],
            self.ra[mask],
            self.dec[mask],
            self.core_size_arcmin[mask],
            self.extended_size_arcmin[mask],
        )
