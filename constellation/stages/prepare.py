"""The prepare stage: per tile, write each sub-tile's manifest and source table.

The stage shape of :mod:`constellation.stages.base`: items :class:`PrepareItem` (one
tile each), ``plan()`` pure (registry geometry only), ``run_one()`` does one tile and
returns a :class:`PrepareResult` (status ``ok``, or ``done`` when the tile's done
markers matched and nothing was read):

1. read the tile's MER catalog and those of its neighbours (tiles whose core
   meets the tile's reach), keeping neighbour sources inside the reach;
2. read the quadrant exposures near the tile from the quadrant index, apply the
   exposure policy and match them to the sub-tiles' extended boxes;
3. partition the sources into sub-tiles (core exactly once, extended with margin);
4. write per sub-tile ``sources.parquet``, ``manifest.json`` and ``_DONE.json``
   (layout in :mod:`constellation.manifest.layout`), rewriting only files
   whose bytes change.

:func:`prepare_tile` is the in-memory core (tables in, bytes out) that
``run_one`` wraps; the benchmark calls it directly.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field

from constellation import __version__
from constellation.config import ExposurePolicy, ScienceConfig, Settings, preparation_hash
from constellation.discovery.match import PlaneFootprints, footprints_from_table
from constellation.manifest import layout
from constellation.manifest.subtile import (
    AuxFile,
    DetFile,
    FitsExtension,
    ManifestGeometry,
    ManifestIdentity,
    ManifestSources,
    PlaneBox,
    QuadrantExposure,
    ShinePassThrough,
    SkyPolygon,
    SubTileManifest,
    dump_manifest,
)
from constellation.sky import healpix
from constellation.sky.neighbours import NeighbourIndex
from constellation.sky.partition import partition_sources
from constellation.sky.registry import TileRegistry
from constellation.sky.tiling import Box, SubTile, SubTileGrid, Tile
from constellation.stages.base import OutcomeStatus

if TYPE_CHECKING:
    from constellation.io.storage import FileInfo, Storage

__all__ = [
    "NEIGHBOUR_SLACK_ARCMIN",
    "PrepareItem",
    "PrepareResult",
    "PrepareStage",
    "PreparedSubTile",
    "TileSpec",
    "plan",
    "prepare_tile",
    "run_one",
    "select_exposures",
    "summary_line",
    "visible_quadrants",
    "write_subtiles",
]

log = logging.getLogger(__name__)

#: Neighbour cores are grown by this much: MER cores are not exact squares.
NEIGHBOUR_SLACK_ARCMIN = 1.0

#: Quadrant-index columns the manifests need.
QUADRANT_COLUMNS = (
    "footprint_ra", "footprint_dec", "exposure", "obs_id", "dither", "expnum", "quadrant",
    "exptime", "magzerop", "gain", "naxis1", "naxis2", "det_url",
    "sci_header_offset", "sci_data_offset", "sci_data_bytes",
    "rms_header_offset", "rms_data_offset", "rms_data_bytes",
    "flg_header_offset", "flg_data_offset", "flg_data_bytes",
    "bkg_url", "bkg_header_offset", "bkg_data_offset", "bkg_data_bytes",
    "psf_url", "psf_header_offset", "psf_data_offset", "psf_data_bytes",
)  # fmt: skip

# 2: the preparation hash (not the whole science config hash); 3: manifest.json
_DONE_VERSION = 3


class TileSpec(BaseModel):
    """A tile's geometry, as a small serialisable value."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tile_id: int
    ra_deg: float
    dec_deg: float
    core_size_arcmin: float
    extended_size_arcmin: float

    @classmethod
    def of(cls, tile: Tile) -> TileSpec:
        return cls(
            tile_id=tile.tile_id, ra_deg=tile.ra_deg, dec_deg=tile.dec_deg,
            core_size_arcmin=tile.core_size_arcmin,
            extended_size_arcmin=tile.extended_size_arcmin,
        )  # fmt: skip

    def to_tile(self) -> Tile:
        return Tile(self.tile_id, self.ra_deg, self.dec_deg, self.core_size_arcmin,
                    self.extended_size_arcmin)  # fmt: skip


class PrepareItem(BaseModel):
    """One unit of prepare work: a tile, its neighbours, the settings and locations."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tile: TileSpec
    neighbours: list[int] = Field(description="Ids of the tiles whose catalogs reach this tile.")
    science: ScienceConfig
    data_uri: str
    work_uri: str


class PrepareResult(BaseModel):
    """What :func:`run_one` did for one tile."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tile_id: int
    subtiles: int
    written: int = Field(description="Sub-tiles with at least one file (re)written.")
    unchanged: int = Field(description="Sub-tiles whose files were all already up to date.")
    files_written: int
    sources: int = Field(description="Sources of the tile's own catalog.")
    extended_sources: int = Field(description="Sum over sub-tiles of the modelled sources.")
    exposures: int = Field(description="Distinct quadrant exposures listed by any sub-tile.")
    missing_catalog: bool = False
    skipped: bool = Field(default=False, description="Done marker matched: nothing was read.")

    # the stage outcome (constellation.stages.base.Outcome): a tile is ok or done
    @property
    def label(self) -> str:
        return f"tile {self.tile_id}"

    @property
    def status(self) -> OutcomeStatus:
        return "done" if self.skipped else "ok"

    @property
    def cause(self) -> str | None:
        return None

    @property
    def error(self) -> str | None:
        return None

    @property
    def retryable(self) -> bool:
        return False


class PrepareStage:
    """The prepare stage: items :class:`PrepareItem` (one tile), outcomes
    :class:`PrepareResult`; exceptions are the drivers' (:mod:`constellation.stages.base`)."""

    name = "prepare"

    def label(self, item: PrepareItem) -> str:
        return f"tile {item.tile.tile_id}"

    def run_one(self, item: PrepareItem, storage: Storage) -> PrepareResult:
        return run_one(item, storage)


@dataclass(frozen=True)
class PreparedSubTile:
    """One sub-tile's outputs, in memory."""

    row: int
    col: int
    manifest: SubTileManifest
    manifest_bytes: bytes
    sources_bytes: bytes


# --------------------------------------------------------------------------- plan


def plan(
    settings: Settings, registry: TileRegistry, tile_ids: Iterable[int] | None = None
) -> list[PrepareItem]:
    """One :class:`PrepareItem` per tile (pure: registry geometry only).

    Parameters
    ----------
    settings
        Science config and storage locations.
    registry
        Every tile that may supply sources (the neighbours are looked up here).
    tile_ids
        Tiles to prepare; ``None`` for every tile of the registry. Each must be
        in the registry.
    """
    ids = registry.tile_id.tolist() if tile_ids is None else sorted({int(t) for t in tile_ids})
    unknown = [t for t in ids if t not in registry]
    if unknown:
        raise KeyError(f"tile(s) not in the registry: {unknown}")
    science = settings.science
    margin = science.tiling.margin_arcmin
    index = NeighbourIndex(registry, order=science.healpix.candidate_order)
    items = []
    for tid in ids:
        tile = registry.tile(int(tid))
        neighbours = index.neighbours(tile, margin, slack_arcmin=NEIGHBOUR_SLACK_ARCMIN)
        items.append(
            PrepareItem(
                tile=TileSpec.of(tile),
                neighbours=[int(n) for n in neighbours],
                science=science,
                data_uri=settings.runtime.storage.data_uri,
                work_uri=settings.runtime.storage.work_uri,
            )
        )
    return items


# --------------------------------------------------------------------------- exposures


def select_exposures(quadrants: pa.Table, policy: ExposurePolicy) -> pa.Table:
    """Apply the short-exposure part of the policy to quadrant-index rows."""
    if policy.include_short or quadrants.num_rows == 0:
        return quadrants
    short = pc.or_(
        pc.equal(quadrants.column("expnum"), 2),
        pc.less(quadrants.column("exptime"), policy.short_exptime_s),
    )
    return quadrants.filter(pc.invert(short))


class _SourceGrid:
    """Sources in the tile plane, bucketed in square cells for fast box queries."""

    def __init__(
        self, x: NDArray[np.float64], y: NDArray[np.float64], reach: Box, cell: float
    ) -> None:
        self.x0, self.y0, self.cell = reach.x_min, reach.y_min, cell
        self.nx = max(1, int(np.ceil(reach.width_arcmin / cell)))
        self.ny = max(1, int(np.ceil(reach.height_arcmin / cell)))
        ix = np.clip(((x - self.x0) / cell).astype(np.int64), 0, self.nx - 1)
        iy = np.clip(((y - self.y0) / cell).astype(np.int64), 0, self.ny - 1)
        code = iy * self.nx + ix
        if self.nx * self.ny <= np.iinfo(np.uint16).max:
            code = code.astype(np.uint16)  # numpy radix-sorts 16-bit keys: ~10x faster
        order = np.argsort(code, kind="stable")
        self.x = x[order]
        self.y = y[order]
        self.offsets = np.searchsorted(code[order], np.arange(self.nx * self.ny + 1))

    def _cells(self, lo: float, hi: float, origin: float, n: int) -> tuple[int, int]:
        a = int(np.clip(np.floor((lo - origin) / self.cell), 0, n - 1))
        b = int(np.clip(np.floor((hi - origin) / self.cell), 0, n - 1))
        return a, b

    def slices(self, box: Box) -> list[tuple[int, int]]:
        """Row ranges (start, stop) of the cells that meet ``box``; the centre cell first."""
        ax, bx = self._cells(box.x_min, box.x_max, self.x0, self.nx)
        ay, by = self._cells(box.y_min, box.y_max, self.y0, self.ny)
        cx, cy = box.center
        mx, _ = self._cells(cx, cx, self.x0, self.nx)
        my, _ = self._cells(cy, cy, self.y0, self.ny)
        c = my * self.nx + mx
        out = [(int(self.offsets[c]), int(self.offsets[c + 1]))]
        for iy in range(ay, by + 1):
            first, last = iy * self.nx + ax, iy * self.nx + bx + 1
            out.append((int(self.offsets[first]), int(self.offsets[last])))
        return out


class _Edges:
    """The edges of footprint polygons ``(k, V, 2)``, precomputed for point tests."""

    def __init__(self, vertices: NDArray[np.float64]) -> None:
        self.ax = np.ascontiguousarray(vertices[..., 0])
        self.ay = np.ascontiguousarray(vertices[..., 1])
        self.dx = np.roll(self.ax, -1, axis=1) - self.ax
        self.dy = np.roll(self.ay, -1, axis=1) - self.ay
        self.len2 = np.maximum(self.dx * self.dx + self.dy * self.dy, 1e-300)
        with np.errstate(divide="ignore", invalid="ignore"):
            self.slope = self.dx / self.dy  # inf/nan on horizontal edges: never straddled

    def inside_shrunk(
        self, r: int, x: NDArray[np.float64], y: NDArray[np.float64], margin: float
    ) -> NDArray[np.bool_]:
        """Points inside polygon ``r`` and at least ``margin`` from its boundary."""
        ax, ay, dx, dy = self.ax[r], self.ay[r], self.dx[r], self.dy[r]
        px = x[:, None] - ax  # (n, V)
        py = y[:, None] - ay
        t = np.clip((px * dx + py * dy) / self.len2[r], 0.0, 1.0)
        ex = px - t * dx
        ey = py - t * dy
        far = (ex * ex + ey * ey).min(axis=1) >= margin * margin
        # even-odd rule: edges straddling the point's y, crossed to the point's right
        straddles = (ay > y[:, None]) != ((ay + dy) > y[:, None])
        with np.errstate(invalid="ignore"):
            crossing = straddles & (px < py * self.slope[r])
        inside = (crossing.sum(axis=1) % 2) == 1
        return np.asarray(far & inside)


def visible_quadrants(
    subtile: SubTile,
    plane: PlaneFootprints,
    rows: NDArray[np.int64],
    grid: _SourceGrid,
    edges: _Edges,
    margin_arcmin: float,
    chunk: int = 64,
) -> NDArray[np.int64]:
    """The ``rows`` whose footprint, shrunk by ``margin_arcmin``, holds an extended-area source.

    A source counts when it lies inside the sub-tile's extended box and inside the
    footprint at least ``margin_arcmin`` from its edge (distances in the tile plane).
    """
    keep = []
    ext = subtile.extended
    for r in rows.tolist():
        lo, hi = plane.lo[r] + margin_arcmin, plane.hi[r] - margin_arcmin
        x0, x1 = max(lo[0], ext.x_min), min(hi[0], ext.x_max)
        y0, y1 = max(lo[1], ext.y_min), min(hi[1], ext.y_max)
        if not (x0 < x1 and y0 < y1):
            continue
        box = Box(x0, x1, y0, y1)
        found = False
        for start, stop in grid.slices(box):
            for s in range(start, stop, chunk):
                e = min(stop, s + chunk)
                x, y = grid.x[s:e], grid.y[s:e]
                sel = box.contains(x, y)
                if sel.any() and edges.inside_shrunk(r, x[sel], y[sel], margin_arcmin).any():
                    found = True
                    break
            if found:
                break
        if found:
            keep.append(r)
    return np.asarray(keep, dtype=np.int64)


def _ext(name: str, row: dict[str, Any], prefix: str) -> FitsExtension:
    return FitsExtension(
        name=name,
        header_offset=int(row[f"{prefix}_header_offset"]),
        data_offset=int(row[f"{prefix}_data_offset"]),
        data_bytes=int(row[f"{prefix}_data_bytes"]),
    )


def _exposure(row: dict[str, Any]) -> QuadrantExposure:
    q = str(row["quadrant"])
    bkg = psf = None
    if row.get("bkg_url") is not None and row.get("bkg_data_offset") is not None:
        bkg = AuxFile(uri=str(row["bkg_url"]), extension=_ext(q, row, "bkg"))
    if row.get("psf_url") is not None and row.get("psf_data_offset") is not None:
        psf = AuxFile(uri=str(row["psf_url"]), extension=_ext(q, row, "psf"))
    return QuadrantExposure(
        exposure=str(row["exposure"]), obs_id=int(row["obs_id"]), dither=int(row["dither"]),
        expnum=int(row["expnum"]), exptime=float(row["exptime"]),
        magzerop=float(row["magzerop"]), gain=float(row["gain"]), quadrant=q,
        naxis1=int(row["naxis1"]), naxis2=int(row["naxis2"]),
        det=DetFile(
            uri=str(row["det_url"]), sci=_ext(f"{q}.SCI", row, "sci"),
            rms=_ext(f"{q}.RMS", row, "rms"), flg=_ext(f"{q}.FLG", row, "flg"),
        ),
        bkg=bkg, psf=psf,
    )  # fmt: skip


# --------------------------------------------------------------------------- sources


def _parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    # no dictionary encoding: ids and coordinates are all distinct (it costs 3x the time)
    pq.write_table(table, buf, compression="zstd", use_dictionary=False, store_schema=False)
    return buf.getvalue()


def _sources_bytes(
    combined: pa.Table, rows: NDArray[np.int64], in_core: NDArray[np.bool_]
) -> bytes:
    table = combined.take(pa.array(rows)).append_column("in_core", pa.array(in_core))
    return _parquet_bytes(table)


def _plane_box(box: Box) -> PlaneBox:
    return PlaneBox(x_min_arcmin=box.x_min, x_max_arcmin=box.x_max,
                    y_min_arcmin=box.y_min, y_max_arcmin=box.y_max)  # fmt: skip


def _polygon(tile: Tile, box: Box) -> SkyPolygon:
    ra, dec = tile.box_to_sky(box)
    return SkyPolygon(ra_deg=[float(v) for v in ra], dec_deg=[float(v) for v in dec])


def _with_tile_id(table: pa.Table, tile_id: int | None) -> pa.Table:
    if "tile_id" in table.column_names:
        return table.set_column(
            table.schema.get_field_index("tile_id"), "tile_id",
            table.column("tile_id").cast(pa.int64()),
        )  # fmt: skip
    if tile_id is None:
        raise ValueError("other_table needs a 'tile_id' column (the owning tile of each row)")
    return table.append_column("tile_id", pa.array(np.full(table.num_rows, tile_id, np.int64)))


def prepare_tile(
    tile: Tile,
    grid: SubTileGrid,
    own_table: pa.Table,
    other_table: pa.Table | None,
    quadrant_rows: pa.Table,
    *,
    science: ScienceConfig | None = None,
    sources_uri: str = layout.SOURCES_NAME,
) -> list[PreparedSubTile]:
    """Build every sub-tile's manifest and source table for one tile, in memory.

    Parameters
    ----------
    tile, grid
        The tile and how it is cut (``grid`` should match ``science.tiling``).
    own_table
        The tile's MER catalog (lower-case columns; ``object_id``,
        ``right_ascension``, ``declination`` required).
    other_table
        Sources of the neighbouring catalogs, same columns plus ``tile_id`` (the
        owning tile); rows outside the tile's reach are dropped here.
    quadrant_rows
        Quadrant-index rows near the tile (:data:`QUADRANT_COLUMNS`).
    science
        Science configuration (exposure policy, HEALPix order, SHINE sections).
    sources_uri
        The source-table URI written into each manifest (default: relative name).

    Returns
    -------
    list of PreparedSubTile
        Row-major, as :meth:`Tile.subtiles`. Same inputs, same bytes.
    """
    sci = science if science is not None else ScienceConfig()
    policy = sci.exposures
    chash = preparation_hash(sci)
    own = _with_tile_id(own_table, tile.tile_id)
    reach = tile.reach_box(grid.margin_arcmin)
    if other_table is not None and other_table.num_rows:
        other = _with_tile_id(other_table, None)
        for field in own.schema:  # a column the neighbours lack: nulls
            if field.name not in other.column_names:
                other = other.append_column(field, pa.nulls(other.num_rows, field.type))
        other = other.select(own.column_names).cast(own.schema)
        ox, oy = tile.to_plane(other.column("right_ascension").to_numpy(),
                               other.column("declination").to_numpy())  # fmt: skip
        near = reach.grow(1e-6).contains(ox, oy)
        other = other.filter(pa.array(near))
    else:
        other = own.schema.empty_table()
    own_ra = own.column("right_ascension").to_numpy()
    own_dec = own.column("declination").to_numpy()
    oth_ra = other.column("right_ascension").to_numpy()
    oth_dec = other.column("declination").to_numpy()
    combined = pa.concat_tables([own, other]).combine_chunks()
    all_ra = np.concatenate([own_ra, oth_ra])
    all_dec = np.concatenate([own_dec, oth_dec])
    workers = max(1, min(4, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as early:
        # independent and GIL-free: overlap with the partition
        hp_future = early.submit(healpix.radec_to_index, all_ra, all_dec, sci.healpix.source_order)
        id_future = early.submit(np.argsort, combined.column("object_id").to_numpy(), kind="stable")
        part = partition_sources(tile, grid, own_ra, own_dec, oth_ra, oth_dec)
        combined = combined.append_column("healpix", pa.array(hp_future.result()))
        by_id = id_future.result()
    # rank of every row by object_id: sub-tile rows come out sorted without a sort
    rank = np.empty_like(by_id)
    rank[by_id] = np.arange(by_id.size)
    member = np.zeros(by_id.size, dtype=bool)
    is_core = np.zeros(by_id.size, dtype=bool)

    # exposures: policy, then the exact overlap test per sub-tile
    quads = select_exposures(quadrant_rows, policy)
    if quads.num_rows:
        fra, fdec = footprints_from_table(quads)
        plane = PlaneFootprints(tile, fra, fdec)
        qrows = quads.drop_columns(["footprint_ra", "footprint_dec"]).to_pylist()
        sort_key = [(r["exposure"], r["quadrant"], r["det_url"]) for r in qrows]
    else:
        plane = PlaneFootprints(tile, np.empty((0, 3)), np.empty((0, 3)))
        qrows, sort_key = [], []
    vis: tuple[_SourceGrid, _Edges] | None = None
    if policy.drop_invisible and quads.num_rows:
        x, y = tile.to_plane(all_ra, all_dec)
        ok = reach.contains(x, y)
        vis = (_SourceGrid(x[ok], y[ok], reach, cell=0.5), _Edges(plane.vertices))
    margin = policy.visibility_margin_arcsec / 60.0
    exposure_cache: dict[int, QuadrantExposure] = {}

    passthrough = ShinePassThrough(
        inference=dict(sci.shine.inference), gal=dict(sci.shine.gal),
        sources=dict(sci.shine.sources),
    )  # fmt: skip

    subtiles = tile.subtiles(grid)
    # the exact overlap test of every footprint against every extended box, in one pass
    overlaps = plane.intersecting_boxes([st.extended for st in subtiles])

    def one(
        st: SubTile, matched: NDArray[np.int64], pool: ThreadPoolExecutor
    ) -> tuple[SubTileManifest, bytes, Future[bytes]]:
        core = part.core(st.row, st.col).astype(np.int64)
        ext = part.extended(st.row, st.col).astype(np.int64)
        member[rank[ext]] = True
        member[rank[core]] = True  # clamped core sources may lie outside the extended box
        is_core[rank[core]] = True
        ranks = np.flatnonzero(member)
        rows = by_id[ranks]
        in_core = is_core[ranks]
        member[ranks] = False
        is_core[ranks] = False
        # Arrow's take and Parquet encoding release the GIL: overlap them with the rest
        sources_future = pool.submit(_sources_bytes, combined, rows, in_core)

        if vis is not None and matched.size:
            matched = visible_quadrants(st, plane, matched, *vis, margin)
        chosen = sorted(matched.tolist(), key=lambda r: sort_key[r])
        exposures = []
        for r in chosen:
            if r not in exposure_cache:
                exposure_cache[r] = _exposure(qrows[r])
            exposures.append(exposure_cache[r])
        manifest = SubTileManifest(
            identity=ManifestIdentity(tile_id=tile.tile_id, row=st.row, col=st.col,
                                      preparation_hash=chash, code_version=__version__),
            geometry=ManifestGeometry(
                tile_ra_deg=tile.ra_deg, tile_dec_deg=tile.dec_deg,
                tile_core_size_arcmin=tile.core_size_arcmin, margin_arcmin=grid.margin_arcmin,
                core=_plane_box(st.core), extended=_plane_box(st.extended),
                core_polygon=_polygon(tile, st.core), extended_polygon=_polygon(tile, st.extended),
            ),
            exposures=exposures,
            sources=ManifestSources(uri=sources_uri, n_extended=int(rows.size),
                                    n_core=int(core.size)),
            shine=passthrough,
        )  # fmt: skip
        return manifest, dump_manifest(manifest), sources_future

    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending = [(st, *one(st, m, pool)) for st, m in zip(subtiles, overlaps, strict=True)]
        return [
            PreparedSubTile(st.row, st.col, manifest, manifest_bytes, future.result())
            for st, manifest, manifest_bytes, future in pending
        ]


# --------------------------------------------------------------------------- writing


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _done_bytes(chash: str, fingerprint: str, files: dict[str, str]) -> bytes:
    doc = {
        "version": _DONE_VERSION,
        "preparation_hash": chash,
        "inputs_fingerprint": fingerprint,
        "outputs": files,
    }
    return (json.dumps(doc, sort_keys=True, indent=1) + "\n").encode("utf-8")


def _write_if_changed(storage: Storage, url: str, data: bytes) -> bool:
    if storage.exists(url):
        try:
            if storage.read_bytes(url) == data:
                return False
        except OSError:
            pass
    storage.write_bytes(url, data)
    return True


def write_subtiles(
    storage: Storage,
    work_uri: str,
    tile_id: int,
    prepared: Sequence[PreparedSubTile],
    *,
    preparation_hash_value: str,
    fingerprint: str,
) -> tuple[int, int, int]:
    """Write each sub-tile's files where they differ; the done marker last.

    Returns
    -------
    (written, unchanged, files_written)
        Sub-tiles with a file (re)written, sub-tiles left as they were, files written.
    """
    written = unchanged = files = 0
    for p in prepared:
        outputs = {
            layout.SOURCES_NAME: p.sources_bytes,
            layout.MANIFEST_NAME: p.manifest_bytes,
        }
        done = _done_bytes(
            preparation_hash_value, fingerprint, {k: _sha256(v) for k, v in outputs.items()}
        )
        urls = {
            layout.SOURCES_NAME: layout.sources_url(work_uri, tile_id, p.row, p.col),
            layout.MANIFEST_NAME: layout.manifest_url(work_uri, tile_id, p.row, p.col),
        }
        wrote = {k: _write_if_changed(storage, urls[k], v) for k, v in outputs.items()}
        n = sum(wrote.values())
        if wrote[layout.MANIFEST_NAME]:  # one manifest per sub-tile: drop a version-2 one
            stale = layout.subtile_dir(work_uri, tile_id, p.row, p.col)
            storage.rm(layout.join(stale, layout.MANIFEST_NAME_V2), missing_ok=True)
        n += _write_if_changed(storage, layout.done_url(work_uri, tile_id, p.row, p.col), done)
        files += n
        written += n > 0
        unchanged += n == 0
    return written, unchanged, files


# --------------------------------------------------------------------------- run_one


def _file_fingerprint(storage: Storage, info: FileInfo) -> dict[str, Any]:
    raw = info.raw or {}
    version = info.etag or raw.get("mtime") or raw.get("LastModified") or raw.get("last_modified")
    return {"url": info.url, "size": info.size, "version": str(version)}


def _fingerprint(doc: dict[str, Any]) -> str:
    return _sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode("utf-8"))


def _all_done(storage: Storage, item: PrepareItem, grid: SubTileGrid, fingerprint: str) -> bool:
    """True when every sub-tile's done marker matches and its outputs are present."""
    tid = item.tile.tile_id
    for row in range(grid.n_rows):
        for col in range(grid.n_cols):
            url = layout.done_url(item.work_uri, tid, row, col)
            try:
                doc = json.loads(storage.read_bytes(url))
            except (OSError, ValueError):
                return False
            if doc.get("version") != _DONE_VERSION or doc.get("inputs_fingerprint") != fingerprint:
                return False
            folder = layout.subtile_dir(item.work_uri, tid, row, col)
            for name in (layout.SOURCES_NAME, layout.MANIFEST_NAME):
                if not storage.exists(layout.join(folder, name)):
                    return False
    return True


def run_one(item: PrepareItem, storage: Storage) -> PrepareResult:
    """Prepare one tile (idempotent: unchanged inputs rewrite nothing).

    Reads the tile's and its neighbours' MER catalogs and the quadrant index at
    ``{work_uri}/quadrant_index.parquet``; writes per sub-tile the source table,
    the manifest and a done marker. A tile without a catalog or without
    exposures still gets manifests (with zero counts).
    """
    from constellation.io.mer_catalogs import MerCatalogError, find_catalog, read_mer_catalog
    from constellation.io.quadrant_lookup import QuadrantIndexFile

    tile = item.tile.to_tile()
    sci = item.science
    grid = sci.tiling.grid()
    chash = preparation_hash(sci)

    own_info = find_catalog(storage, item.data_uri, tile.tile_id)
    neighbour_infos = {n: find_catalog(storage, item.data_uri, n) for n in item.neighbours}
    index_url = layout.quadrant_index_url(item.work_uri)
    index_info = storage.info(index_url) if storage.exists(index_url) else None
    doc = {
        "preparation_hash": chash,
        "code_version": __version__,
        "tile": item.tile.model_dump(mode="json"),
        "own": None if own_info is None else _file_fingerprint(storage, own_info),
        "neighbours": {
            str(n): None if i is None else _file_fingerprint(storage, i)
            for n, i in sorted(neighbour_infos.items())
        },
        "quadrant_index": None if index_info is None else _file_fingerprint(storage, index_info),
    }
    fingerprint = _fingerprint(doc)
    if _all_done(storage, item, grid, fingerprint):
        return PrepareResult(
            tile_id=tile.tile_id, subtiles=grid.n_subtiles, written=0,
            unchanged=grid.n_subtiles, files_written=0, sources=-1, extended_sources=-1,
            exposures=-1, missing_catalog=own_info is None, skipped=True,
        )  # fmt: skip

    if own_info is None:
        log.warning("tile %d: no MER catalog; no core sources", tile.tile_id)
        own = None
    else:
        own = read_mer_catalog(storage, own_info.url)
    others = []
    for n, info in sorted(neighbour_infos.items()):
        if info is None:
            log.warning("tile %d: neighbour %d has no MER catalog", tile.tile_id, n)
            continue
        try:
            t = read_mer_catalog(storage, info.url)
        except MerCatalogError as exc:
            raise MerCatalogError(f"catalog of neighbour tile {n}: {exc}") from exc
        others.append(t.append_column("tile_id", pa.array(np.full(t.num_rows, n, np.int64))))
    if own is None:
        template = others[0].drop_columns(["tile_id"]) if others else _empty_catalog()
        own = template.schema.empty_table()
    other = _concat_compatible(others, own) if others else None

    if index_info is None:
        log.warning("tile %d: no quadrant index at %s; no exposures", tile.tile_id, index_url)
        quads = _empty_quadrants()
    else:
        with QuadrantIndexFile(storage, index_url) as f:
            quads = f.box(tile, tile.reach_box(grid.margin_arcmin), list(QUADRANT_COLUMNS))

    prepared = prepare_tile(tile, grid, own, other, quads, science=sci)
    written, unchanged, files = write_subtiles(
        storage, item.work_uri, tile.tile_id, prepared,
        preparation_hash_value=chash, fingerprint=fingerprint,
    )  # fmt: skip
    exposures = {(e.exposure, e.quadrant) for p in prepared for e in p.manifest.exposures}
    return PrepareResult(
        tile_id=tile.tile_id, subtiles=len(prepared), written=written, unchanged=unchanged,
        files_written=files, sources=own.num_rows,
        extended_sources=sum(p.manifest.sources.n_extended for p in prepared),
        exposures=len(exposures), missing_catalog=own_info is None,
    )  # fmt: skip


def summary_line(results: Sequence[PrepareResult]) -> str:
    """The one-line account of a prepare run (the CLI's and the flow's)."""
    prepared = [r for r in results if not r.skipped]
    return (
        f"prepared {len(results)} tiles ({sum(r.subtiles for r in results)} sub-tiles): "
        f"{sum(r.written for r in results)} manifests written, "
        f"{sum(r.unchanged for r in results)} unchanged "
        f"({len(results) - len(prepared)} tiles already done); "
        f"{sum(r.sources for r in prepared)} sources, "
        f"{sum(r.exposures for r in prepared)} quadrant exposures"
    )


def _empty_catalog() -> pa.Table:
    return pa.table({
        "object_id": pa.array([], pa.int64()),
        "right_ascension": pa.array([], pa.float64()),
        "declination": pa.array([], pa.float64()),
    })  # fmt: skip


def _concat_compatible(tables: list[pa.Table], own: pa.Table) -> pa.Table:
    """Neighbour tables restricted to the own catalog's columns (plus tile_id)."""
    names = [*own.column_names, "tile_id"]
    common = [n for n in names if all(n in t.column_names for t in tables)]
    return pa.concat_tables([t.select(common) for t in tables], promote_options="permissive")


def _empty_quadrants() -> pa.Table:
    from constellation.manifest.quadrant_index import QUADRANT_INDEX_SCHEMA

    return QUADRANT_INDEX_SCHEMA.empty_table().select(list(QUADRANT_COLUMNS))
