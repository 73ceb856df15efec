"""Region lookups in a quadrant index (Parquet) without loading it.

The index (:mod:`constellation.manifest.quadrant_index`) is sorted by
``healpix``, the NESTED order-29 index of each quadrant's centre. A lookup

1. turns the region into a disc that contains the centre of every quadrant
   touching the region: the disc around the region's centre that covers it,
   grown by :data:`~constellation.manifest.quadrant_index.MAX_QUADRANT_RADIUS_DEG`;
2. turns the disc into HEALPix index ranges (conservative, at a coarse order);
3. reads the Parquet footer only, and then only the row groups whose
   ``healpix`` statistics ``[min, max]`` overlap a range, only the columns asked for;
4. keeps the rows whose ``healpix`` falls in a range and, by default, whose
   centre (``center_ra``, ``center_dec``) lies in the disc.

The result is a candidate set for :mod:`constellation.discovery.match`, which
decides exactly which quadrants meet which sub-tile. Nothing is cached between
calls; :class:`QuadrantIndexFile` keeps the footer of one open file for
repeated lookups.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from numpy.typing import NDArray

from constellation.manifest.quadrant_index import MAX_QUADRANT_RADIUS_DEG
from constellation.sky import healpix
from constellation.sky.projection import ARCMIN_PER_RAD
from constellation.sky.tiling import Box, SubTile, Tile

if TYPE_CHECKING:
    from constellation.io.storage import Storage

__all__ = [
    "LookupStats",
    "QuadrantIndexFile",
    "QuadrantIndexTable",
    "Region",
    "box_disc",
    "box_region",
    "disc_region",
    "lookup_disc",
    "lookup_subtile",
    "lookup_tile",
    "search_order",
]

#: Columns a lookup needs besides the caller's (dropped again unless asked for).
_FILTER_COLUMNS = ("healpix", "center_ra", "center_dec")


@dataclass
class LookupStats:
    """What one lookup read (pass one to a lookup to have it filled in)."""

    row_groups_total: int = 0
    row_groups_read: int = 0
    rows_read: int = 0
    rows_returned: int = 0
    n_ranges: int = 0
    radius_deg: float = 0.0


def search_order(radius_deg: float) -> int:
    """HEALPix order of the ranges for a disc: pixels about a quarter of the radius.

    Clipped to ``[4, 14]``: coarser pixels waste reads, finer ones only add
    ranges once a pixel is much smaller than a row group's area.
    """
    if not radius_deg > 0:
        raise ValueError(f"radius_deg must be > 0, got {radius_deg}")
    # pixel side ~ 58.6 deg / 2**order
    order = math.ceil(math.log2(58.6 / (0.25 * radius_deg)))
    return int(min(max(order, 4), 14))


def _angle_deg(x_arcmin: float, y_arcmin: float) -> float:
    """Angular distance (deg) from the tangent point of a plane point."""
    return math.degrees(math.atan(math.hypot(x_arcmin, y_arcmin) / ARCMIN_PER_RAD))


def box_disc(tile: Tile, box: Box) -> tuple[float, float, float]:
    """``(ra, dec, radius)`` in degrees of a disc that covers a box of a tile's plane.

    The disc is centred on the box centre; its radius is the largest angular
    distance to the box corners (the box is a great-circle quadrilateral, so
    the farthest point of it is a corner), plus a hair for rounding.
    """
    cx, cy = box.center
    ra0, dec0 = tile.to_sky(cx, cy)
    cra, cdec = tile.box_to_sky(box)
    d = _separation_deg(float(ra0), float(dec0), cra, cdec)
    return float(ra0), float(dec0), float(np.max(d)) * (1.0 + 1e-9) + 1e-9


def _separation_deg(
    ra0: float, dec0: float, ra: NDArray[np.float64], dec: NDArray[np.float64]
) -> NDArray[np.float64]:
    """Great-circle distance (deg) from one point to many (Vincenty formula)."""
    r0, d0 = math.radians(ra0), math.radians(dec0)
    r = np.radians(np.asarray(ra, dtype=np.float64))
    d = np.radians(np.asarray(dec, dtype=np.float64))
    dr = r - r0
    sd, cd = np.sin(d), np.cos(d)
    num = np.hypot(cd * np.sin(dr), math.cos(d0) * sd - math.sin(d0) * cd * np.cos(dr))
    den = math.sin(d0) * sd + math.cos(d0) * cd * np.cos(dr)
    return np.asarray(np.degrees(np.arctan2(num, den)), dtype=np.float64)


@dataclass(frozen=True)
class Region:
    """A lookup region: NESTED order-29 ``ranges`` covering a disc (conservative), and the disc.

    ``disc`` is ``(ra, dec, radius)`` in degrees, or ``None`` when rows are kept
    on their HEALPix pixel alone (``exact=False``).
    """

    ranges: NDArray[np.int64]
    disc: tuple[float, float, float] | None

    def keep(
        self,
        index: NDArray[np.int64],
        center_ra: NDArray[np.float64] | None,
        center_dec: NDArray[np.float64] | None,
    ) -> NDArray[np.bool_]:
        """Which rows (``healpix`` and centres) fall in the region."""
        keep = healpix.in_ranges(index, self.ranges)
        if self.disc is not None and keep.size:
            if center_ra is None or center_dec is None:
                raise ValueError("an exact region needs the rows' centres")
            ra0, dec0, radius = self.disc
            keep &= _separation_deg(ra0, dec0, center_ra, center_dec) <= radius
        return keep


def disc_region(
    ra_deg: float, dec_deg: float, radius_deg: float, *, order: int | None = None,
    exact: bool = True,
) -> Region:  # fmt: skip
    """The :class:`Region` of rows whose centre lies in a disc."""
    o = search_order(radius_deg) if order is None else order
    ranges = healpix.disc_ranges(ra_deg, dec_deg, radius_deg, o, healpix.SOURCE_ORDER)
    return Region(ranges, (ra_deg, dec_deg, radius_deg) if exact else None)


def box_region(tile: Tile, box: Box, *, order: int | None = None, exact: bool = True) -> Region:
    """The :class:`Region` holding every quadrant that may touch ``box`` (see module docstring)."""
    ra, dec, r = box_disc(tile, box)
    return disc_region(ra, dec, r + MAX_QUADRANT_RADIUS_DEG, order=order, exact=exact)


def _open(storage: Storage | None, url: str | os.PathLike[str]) -> tuple[pq.ParquetFile, Any]:
    """A ParquetFile over ``storage`` (ranged reads; default: a new anonymous
    :class:`~constellation.io.storage.Storage`, enough for local files), and the handle
    to close."""
    from constellation.io.storage import Storage

    handle = (storage or Storage()).open(os.fspath(url))
    try:
        return pq.ParquetFile(handle), handle
    except Exception:
        handle.close()
        raise


class QuadrantIndexFile:
    """One open quadrant-index Parquet file and the ``healpix`` range of each row group.

    Parameters
    ----------
    storage
        The storage the file is read through (ranged reads: the footer, then the row
        groups a lookup needs); ``None``: a new anonymous one (local files).
    url
        The index file.
    """

    def __init__(self, storage: Storage | None, url: str | os.PathLike[str]) -> None:
        self.url = os.fspath(url)
        self._file, self._handle = _open(storage, url)
        meta = self._file.metadata
        schema = self._file.schema_arrow
        if "healpix" not in schema.names:
            self.close()
            raise ValueError(f"{self.url}: not a quadrant index (no 'healpix' column)")
        self.column_names: list[str] = list(schema.names)
        n = meta.num_row_groups
        # the leaf column of ``healpix`` (``ParquetFile.schema`` is avoided: in
        # pyarrow 26 every access to it leaks a copy of the footer)
        leaf = 0
        if n:
            rg0 = meta.row_group(0)
            paths = [rg0.column(j).path_in_schema for j in range(rg0.num_columns)]
            leaf = paths.index("healpix")
        lo = np.full(n, np.iinfo(np.int64).min, dtype=np.int64)  # no statistics: always read
        hi = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
        rows = np.zeros(n, dtype=np.int64)
        for i in range(n):
            rg = meta.row_group(i)
            rows[i] = rg.num_rows
            st = rg.column(leaf).statistics
            if st is not None and st.has_min_max:
                lo[i], hi[i] = int(st.min), int(st.max)
        self.row_group_min = lo
        self.row_group_max = hi
        self.row_group_rows = rows

    def __enter__(self) -> QuadrantIndexFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._handle.close()

    @property
    def num_rows(self) -> int:
        return int(self.row_group_rows.sum())

    @property
    def num_row_groups(self) -> int:
        return int(self.row_group_rows.size)

    def row_groups_for(self, ranges: NDArray[np.int64]) -> NDArray[np.int64]:
        """Row groups whose ``healpix`` statistics overlap sorted ``[start, stop)`` ranges."""
        if ranges.size == 0 or self.row_group_min.size == 0:
            return np.empty(0, dtype=np.int64)
        # first range ending after each row group's minimum; it overlaps iff it starts <= max
        k = np.searchsorted(ranges[:, 1], self.row_group_min, side="right")
        kk = np.minimum(k, len(ranges) - 1)
        hit = (k < len(ranges)) & (ranges[kk, 0] <= self.row_group_max)
        return np.flatnonzero(hit).astype(np.int64)

    def read_ranges(
        self,
        ranges: NDArray[np.int64],
        columns: Sequence[str] | None = None,
        stats: LookupStats | None = None,
        disc: tuple[float, float, float] | None = None,
    ) -> pa.Table:
        """Rows whose ``healpix`` is in ``ranges`` (and centre in ``disc``, if given)."""
        wanted = list(self.column_names if columns is None else columns)
        unknown = [c for c in wanted if c not in self.column_names]
        if unknown:
            raise KeyError(f"{self.url}: no column(s) {unknown}")
        extra = ["healpix"] + (["center_ra", "center_dec"] if disc is not None else [])
        read_cols = wanted + [c for c in extra if c not in wanted]
        groups = self.row_groups_for(ranges)
        if groups.size:
            table = self._file.read_row_groups(groups.tolist(), columns=read_cols)
        else:
            table = self._file.schema_arrow.empty_table().select(read_cols)
        has_centres = disc is not None and table.num_rows
        keep = Region(ranges, disc).keep(
            table.column("healpix").to_numpy(),
            table.column("center_ra").to_numpy() if has_centres else None,
            table.column("center_dec").to_numpy() if has_centres else None,
        )
        out = table.filter(pa.array(keep)) if table.num_rows else table
        out = out.select(wanted)
        if stats is not None:
            stats.row_groups_total = self.num_row_groups
            stats.row_groups_read = int(groups.size)
            stats.rows_read = int(table.num_rows)
            stats.rows_returned = int(out.num_rows)
            stats.n_ranges = len(ranges)
        return out

    def disc(
        self,
        ra_deg: float,
        dec_deg: float,
        radius_deg: float,
        columns: Sequence[str] | None = None,
        *,
        order: int | None = None,
        exact: bool = True,
        stats: LookupStats | None = None,
    ) -> pa.Table:
        """Rows whose centre lies in a disc (``exact=False``: a superset, HEALPix pixels)."""
        region = disc_region(ra_deg, dec_deg, radius_deg, order=order, exact=exact)
        if stats is not None:
            stats.radius_deg = radius_deg
        return self.read_ranges(region.ranges, columns, stats, region.disc)

    def box(
        self,
        tile: Tile,
        box: Box,
        columns: Sequence[str] | None = None,
        *,
        order: int | None = None,
        exact: bool = True,
        stats: LookupStats | None = None,
    ) -> pa.Table:
        """Rows of every quadrant that may touch ``box`` (a superset; see module docstring)."""
        region = box_region(tile, box, order=order, exact=exact)
        if stats is not None:
            stats.radius_deg = box_disc(tile, box)[2] + MAX_QUADRANT_RADIUS_DEG
        return self.read_ranges(region.ranges, columns, stats, region.disc)


class QuadrantIndexTable:
    """Region lookups in index rows held in memory (sorted by ``healpix``).

    The same selection as :class:`QuadrantIndexFile` (HEALPix ranges, then the
    centre in the disc) by two binary searches per range instead of row-group
    reads: for planners that hold a slice of the index (e.g. one coarse
    HEALPix pixel of a survey-scale index) and look up many tiles in it.

    Parameters
    ----------
    table
        Index rows with at least ``healpix``, ``center_ra`` and ``center_dec``,
        sorted by ``healpix`` (checked).
    """

    def __init__(self, table: pa.Table) -> None:
        missing = [c for c in _FILTER_COLUMNS if c not in table.column_names]
        if missing:
            raise ValueError(f"index table lacks column(s) {missing}")
        self.table = table
        self.healpix: NDArray[np.int64] = table.column("healpix").to_numpy()
        if self.healpix.size > 1 and not (np.diff(self.healpix) >= 0).all():
            raise ValueError("index table is not sorted by healpix")
        self.center_ra: NDArray[np.float64] = table.column("center_ra").to_numpy()
        self.center_dec: NDArray[np.float64] = table.column("center_dec").to_numpy()

    @property
    def num_rows(self) -> int:
        return int(self.healpix.size)

    def region_rows(self, region: Region) -> NDArray[np.int64]:
        """Positions (ascending) of the rows in ``region``."""
        rows = healpix.select_sorted(self.healpix, region.ranges)
        if region.disc is None or rows.size == 0:
            return rows
        ra0, dec0, radius = region.disc
        sep = _separation_deg(ra0, dec0, self.center_ra[rows], self.center_dec[rows])
        return rows[sep <= radius]

    def box_rows(
        self, tile: Tile, box: Box, *, order: int | None = None, exact: bool = True
    ) -> NDArray[np.int64]:
        """Positions of the rows of every quadrant that may touch ``box`` (as ``.box``)."""
        return self.region_rows(box_region(tile, box, order=order, exact=exact))

    def box(
        self,
        tile: Tile,
        box: Box,
        columns: Sequence[str] | None = None,
        *,
        order: int | None = None,
        exact: bool = True,
    ) -> pa.Table:
        """The rows of :meth:`box_rows` (``columns``; all by default), like ``.box`` on a file."""
        out = self.table.take(pa.array(self.box_rows(tile, box, order=order, exact=exact)))
        return out if columns is None else out.select(list(columns))


def lookup_disc(
    storage: Storage | None,
    url: str | os.PathLike[str],
    ra_deg: float,
    dec_deg: float,
    radius_deg: float,
    columns: Sequence[str] | None = None,
    *,
    order: int | None = None,
    exact: bool = True,
    stats: LookupStats | None = None,
) -> pa.Table:
    """Rows of the index at ``url`` whose quadrant centre lies within a disc."""
    with QuadrantIndexFile(storage, url) as f:
        return f.disc(ra_deg, dec_deg, radius_deg, columns, order=order, exact=exact, stats=stats)


def lookup_tile(
    storage: Storage | None,
    url: str | os.PathLike[str],
    tile: Tile,
    margin_arcmin: float,
    columns: Sequence[str] | None = None,
    *,
    order: int | None = None,
    exact: bool = True,
    stats: LookupStats | None = None,
) -> pa.Table:
    """Every quadrant exposure that may touch a tile's reach (core grown by the margin).

    Parameters
    ----------
    storage
        Storage for remote URLs; ``None`` for a local path.
    url
        The quadrant-index Parquet file.
    tile
        The tile.
    margin_arcmin
        Sub-tile margin: the reach box is the core grown by it.
    columns
        Columns to return (all by default), in this order.
    order
        HEALPix order of the range search (default: :func:`search_order`).
    exact
        Keep only rows whose centre lies in the disc (else: in its pixels).
    stats
        Filled with what was read.

    Returns
    -------
    pyarrow.Table
        Rows sorted by ``healpix``: a superset of the quadrants meeting the
        reach box (every quadrant meeting it has its centre in the disc).
    """
    if not (math.isfinite(margin_arcmin) and margin_arcmin >= 0):
        raise ValueError(f"margin_arcmin must be finite and >= 0, got {margin_arcmin}")
    with QuadrantIndexFile(storage, url) as f:
        return f.box(
            tile, tile.reach_box(margin_arcmin), columns, order=order, exact=exact, stats=stats
        )


def lookup_subtile(
    storage: Storage | None,
    url: str | os.PathLike[str],
    subtile: SubTile,
    columns: Sequence[str] | None = None,
    *,
    order: int | None = None,
    exact: bool = True,
    stats: LookupStats | None = None,
) -> pa.Table:
    """Every quadrant exposure that may touch a sub-tile's extended box (as :func:`lookup_tile`)."""
    with QuadrantIndexFile(storage, url) as f:
        return f.box(subtile.tile, subtile.extended, columns, order=order, exact=exact, stats=stats)
