"""Tile registries: read and write them (Parquet or CSV), and resolve them from the
headers of the MER mosaics."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import TYPE_CHECKING

import numpy as np

from constellation.io.storage import join_url
from constellation.sky.registry import RegistryError, TileRegistry
from constellation.sky.tiling import Tile

if TYPE_CHECKING:
    from astropy.io import fits

    from constellation.io.storage import Storage

__all__ = [
    "DEFAULT_CORE_MARGIN_ARCMIN",
    "DEFAULT_MAX_WORKERS",
    "VIS_MOSAIC_PREFIX",
    "MissingMosaicError",
    "MosaicGeometry",
    "MosaicHeaderError",
    "RegistryResolveError",
    "ResolvedTile",
    "find_vis_mosaic",
    "list_tile_ids",
    "load_or_resolve_registry",
    "merge_registries",
    "mosaic_geometry",
    "mosaic_timestamp",
    "read_registry",
    "read_work_registry",
    "resolve_registry",
    "resolve_tile",
    "vis_mosaic_dir",
    "write_registry",
]

log = logging.getLogger(__name__)

_FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}


def _format_of(url: str) -> str:
    suffix = PurePosixPath(url.rstrip("/")).suffix
    fmt = _FORMATS.get(suffix.lower())
    if fmt is None:
        raise RegistryError(
            f"{url}: unknown registry format {suffix!r}; use one of {sorted(_FORMATS)}"
        )
    return fmt


def read_registry(path: str | os.PathLike[str], storage: Storage | None = None) -> TileRegistry:
    """Load a registry from Parquet or CSV with columns ``tile_id, ra, dec,
    core_size_arcmin, extended_size_arcmin`` (extra columns are ignored).

    Parameters
    ----------
    path
        A local path or any URL ``storage`` reads (``s3://...``).
    storage
        The :class:`~constellation.io.storage.Storage` to read with (default: a new
        anonymous one, enough for local files).

    Raises
    ------
    RegistryError
        If the file is missing, unreadable or malformed; the message names the file.
    """
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    from constellation.io.storage import Storage

    url = os.fspath(path)
    fmt = _format_of(url)
    store = storage or Storage()
    try:
        data = store.read_bytes(url)
    except (FileNotFoundError, IsADirectoryError):
        raise RegistryError(f"{url}: registry file not found") from None
    except OSError as exc:
        raise RegistryError(f"{url}: cannot read registry: {exc}") from exc
    try:
        if fmt == "parquet":
            table = pq.read_table(pa.BufferReader(data))
        else:
            table = pacsv.read_csv(
                pa.BufferReader(data),
                convert_options=pacsv.ConvertOptions(
                    column_types={"tile_id": pa.int64(), "ra": pa.float64(), "dec": pa.float64()}
                ),
            )
    except (OSError, pa.ArrowInvalid) as exc:
        raise RegistryError(f"{url}: cannot read registry: {exc}") from exc
    try:
        return TileRegistry.from_arrow(table)
    except RegistryError as exc:
        raise RegistryError(f"{url}: {exc}") from exc


def read_work_registry(storage: Storage, work_uri: str) -> TileRegistry:
    """The registry cached under a work root (``{work_uri}/registry.parquet``), read
    through ``storage``.

    Raises
    ------
    FileNotFoundError
        When there is none yet (run ``constellation tiles resolve`` or the index flow).
    """
    from constellation.manifest.layout import registry_url

    url = registry_url(work_uri)
    if not storage.exists(url):
        raise FileNotFoundError(
            f"no tile registry at {url}: run 'constellation tiles resolve' (or the index flow)"
        )
    return read_registry(url, storage)


def write_registry(
    registry: TileRegistry, path: str | os.PathLike[str], storage: Storage | None = None
) -> str:
    """Write a registry as Parquet or CSV (by suffix) through ``storage`` (default: a new
    anonymous one); the write is atomic (see
    :meth:`~constellation.io.storage.Storage.write_bytes`). Returns the URL written."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    from constellation.io.storage import Storage

    url = os.fspath(path)
    fmt = _format_of(url)
    table = registry.to_arrow()
    buf = pa.BufferOutputStream()
    if fmt == "parquet":
        pq.write_table(table, buf)
    else:
        pacsv.write_csv(table, buf)
    (storage or Storage()).write_bytes(url, buf.getvalue().to_pybytes())
    return url


# --------------------------------------------------------------------------- resolution
#
# For real data the registry comes from the MER VIS mosaics: each tile's background-
# subtracted VIS mosaic covers the tile's extended area on a TAN grid centred on the
# tile, so its primary header (CRVAL/CRPIX/CD/NAXIS, read with a few ranged reads)
# gives the centre and the extended size. The core size is not in the header: it is
# the extended size less a margin on each side (Euclid Wide: 32' extended, 30' core).

VIS_MOSAIC_PREFIX = "EUC_MER_BGSUB-MOSAIC-VIS_TILE"
"""File-name prefix of a tile's background-subtracted VIS mosaic (followed by the tile id)."""

DEFAULT_CORE_MARGIN_ARCMIN = 1.0
"""Margin between the core and the extended area on each side (Euclid Wide: (32 - 30) / 2)."""

DEFAULT_MAX_WORKERS = 16
"""Tiles resolved concurrently (each is a listing and a few ranged reads)."""

_TIMESTAMP = re.compile(r"_(\d{8}T\d{6}(?:\.\d+)?)Z")


class MissingMosaicError(RegistryError):
    """A tile has no VIS mosaic under the MER root."""


class MosaicHeaderError(RegistryError):
    """A mosaic header does not describe a square TAN mosaic; the message names the file."""


class RegistryResolveError(RegistryError):
    """Some tiles could not be resolved; :attr:`failures` maps each tile id to the reason."""

    def __init__(self, failures: Mapping[int, str]) -> None:
        self.failures = dict(sorted(failures.items()))
        if len(self.failures) == 1:  # one line: the tile, the file and the problem
            ((tid, msg),) = self.failures.items()
            super().__init__(f"could not resolve 1 tile(s): {tid}: {msg}")
            return
        shown = list(self.failures.items())[:20]
        lines = [f"  {tid}: {msg}" for tid, msg in shown]
        if len(self.failures) > len(shown):
            lines.append(f"  ... and {len(self.failures) - len(shown)} more")
        super().__init__(f"could not resolve {len(self.failures)} tile(s):\n" + "\n".join(lines))


@dataclass(frozen=True)
class MosaicGeometry:
    """Where a square TAN mosaic sits on the sky and how big it is.

    Attributes
    ----------
    ra_deg, dec_deg
        World coordinates of the central pixel ``((NAXIS1 + 1) / 2, (NAXIS2 + 1) / 2)``
        (FITS 1-based pixels).
    naxis1, naxis2
        Image size in pixels.
    pixel_scale_arcsec
        Pixel size (from the CD/PC matrix).
    extended_size_arcmin
        ``NAXIS1 * pixel scale``: the tile's extended (outer) size.
    core_size_arcmin
        Extended size less the core margin on each side.
    """

    ra_deg: float
    dec_deg: float
    naxis1: int
    naxis2: int
    pixel_scale_arcsec: float
    extended_size_arcmin: float
    core_size_arcmin: float


@dataclass(frozen=True)
class ResolvedTile:
    """One tile resolved from its mosaic header, with what the lookup cost."""

    tile_id: int
    url: str
    geometry: MosaicGeometry
    requests: int
    bytes_read: int

    def to_tile(self) -> Tile:
        """The tile as a :class:`~constellation.sky.Tile`."""
        g = self.geometry
        return Tile(
            self.tile_id, g.ra_deg % 360.0, g.dec_deg, g.core_size_arcmin, g.extended_size_arcmin
        )


def vis_mosaic_dir(mer_root_url: str, tile_id: int) -> str:
    """URL of the directory holding a tile's VIS mosaics: ``{mer_root}/{tile}/VIS``."""
    return join_url(mer_root_url, str(int(tile_id)), "VIS")


def mosaic_timestamp(name: str) -> str | None:
    """The processing timestamp in a Euclid file name (``..._20241018T142710.276838Z_...``)."""
    m = _TIMESTAMP.search(name)
    return m.group(1) if m else None


def find_vis_mosaic(storage: Storage, mer_root_url: str, tile_id: int) -> str:
    """URL of a tile's VIS background-subtracted mosaic.

    Looks for ``{mer_root}/{tile}/VIS/EUC_MER_BGSUB-MOSAIC-VIS_TILE{tile}-*.fits``. If
    there are several, the one with the newest processing timestamp in its name is
    taken and a warning is logged.

    Raises
    ------
    MissingMosaicError
        If the directory does not exist or holds no such file.
    """
    vis_dir = vis_mosaic_dir(mer_root_url, tile_id)
    try:
        entries = storage.ls(vis_dir)
    except FileNotFoundError:
        raise MissingMosaicError(f"no VIS mosaic: {vis_dir} does not exist") from None
    prefix = f"{VIS_MOSAIC_PREFIX}{int(tile_id)}-"
    found = [u for u in entries if _basename(u).startswith(prefix) and u.endswith(".fits")]
    if not found:
        raise MissingMosaicError(f"no VIS mosaic {prefix}*.fits in {vis_dir}")
    if len(found) == 1:
        return found[0]
    newest = max(found, key=lambda u: (mosaic_timestamp(_basename(u)) or "", u))
    log.warning(
        "tile %d: %d VIS mosaics in %s; using the newest, %s (others: %s)",
        tile_id, len(found), vis_dir, _basename(newest),
        ", ".join(_basename(u) for u in found if u != newest),
    )  # fmt: skip
    return newest


def _basename(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


def list_tile_ids(storage: Storage, mer_root_url: str) -> list[int]:
    """Ids of the tile directories under a MER root (entries whose name is all digits)."""
    names = (_basename(u) for u in storage.ls(mer_root_url))
    return sorted({int(n) for n in names if n.isdigit()})


def mosaic_geometry(
    header: fits.Header,
    source: str,
    *,
    core_margin_arcmin: float = DEFAULT_CORE_MARGIN_ARCMIN,
) -> MosaicGeometry:
    """Centre and sizes of a square TAN mosaic from its header.

    Parameters
    ----------
    header
        The image header (CTYPE, CRVAL, CRPIX, CD or PC/CDELT, NAXIS1/2).
    source
        Name of the file, for error messages.
    core_margin_arcmin
        Core margin on each side: core size = extended size - 2 * margin. The core
        is not recorded in the mosaic header.

    Raises
    ------
    MosaicHeaderError
        If the projection is not TAN, the image or its pixels are not square, or
        the header is incomplete.
    """
    from astropy.wcs import WCS
    from astropy.wcs.utils import proj_plane_pixel_scales

    ctype = (str(header.get("CTYPE1", "")), str(header.get("CTYPE2", "")))
    if not (
        ctype[0].startswith("RA--")
        and ctype[1].startswith("DEC-")
        and ctype[0][5:8] == "TAN"
        and ctype[1][5:8] == "TAN"
    ):
        raise MosaicHeaderError(
            f"{source}: CTYPE1/CTYPE2 = {ctype[0]!r}/{ctype[1]!r}; expected a TAN projection "
            "in RA/Dec ('RA---TAN'/'DEC--TAN')"
        )
    try:
        n1, n2 = int(header["NAXIS1"]), int(header["NAXIS2"])
    except (KeyError, ValueError, TypeError) as exc:
        raise MosaicHeaderError(f"{source}: no image size (NAXIS1/NAXIS2): {exc}") from None
    if n1 < 1 or n2 < 1 or abs(n1 - n2) > 1:
        raise MosaicHeaderError(
            f"{source}: mosaic is {n1} x {n2} pixels; expected a square mosaic (within 1 px)"
        )
    try:
        # fix=False: the header is a plain TAN/CD header, and wcsfix would only warn.
        wcs = WCS(header, naxis=2, fix=False)
        ra, dec = wcs.all_pix2world([[(n1 + 1) / 2.0, (n2 + 1) / 2.0]], 1)[0]
        scales = proj_plane_pixel_scales(wcs.celestial)
        units = [str(u) for u in wcs.wcs.cunit]
    except Exception as exc:
        raise MosaicHeaderError(f"{source}: cannot build the WCS: {exc}") from exc
    if any(u not in ("deg", "") for u in units):
        raise MosaicHeaderError(f"{source}: CUNIT1/2 = {units}; expected degrees")
    sx, sy = float(scales[0]), float(scales[1])
    if not (np.isfinite([ra, dec, sx, sy]).all() and sx > 0 and sy > 0):
        raise MosaicHeaderError(f"{source}: WCS gives no finite centre or pixel scale")
    if abs(sx - sy) > 1e-6 * sx:
        raise MosaicHeaderError(
            f'{source}: pixels are not square ({sx * 3600:.6f}" x {sy * 3600:.6f}")'
        )
    # Round away float noise of the CD matrix (0.1"/3600 * 19200 * 60 = 31.999999999999996).
    extended = round(n1 * sx * 60.0, 9)
    core = round(extended - 2.0 * core_margin_arcmin, 9)
    if core <= 0:
        raise MosaicHeaderError(
            f"{source}: extended size {extended}' leaves no core with a "
            f"{core_margin_arcmin}' margin"
        )
    return MosaicGeometry(
        ra_deg=float(ra) % 360.0,
        dec_deg=float(dec),
        naxis1=n1,
        naxis2=n2,
        pixel_scale_arcsec=sx * 3600.0,
        extended_size_arcmin=extended,
        core_size_arcmin=core,
    )


@dataclass(frozen=True)
class _Fetched:
    tile_id: int
    url: str
    header: fits.Header
    requests: int
    bytes_read: int


def _fetch_mosaic_header(storage: Storage, mer_root_url: str, tile_id: int) -> _Fetched:
    """Find a tile's VIS mosaic and read its image header (I/O only; runs in a worker)."""
    from constellation.io.fits import FitsHeaderError, read_header, read_primary_header

    url = find_vis_mosaic(storage, mer_root_url, tile_id)
    try:
        hdr = read_primary_header(storage, url)
        requests, nbytes = 1 + hdr.requests, hdr.bytes_read
        if int(hdr.header.get("NAXIS", 0)) == 0:
            # Image in the first extension rather than the primary HDU: read that header.
            ext = read_header(storage, url, hdr.next_offset)
            requests, nbytes = requests + ext.requests, nbytes + ext.bytes_read
            hdr = ext
    except FitsHeaderError as exc:
        raise MosaicHeaderError(str(exc)) from exc
    return _Fetched(tile_id, url, hdr.header, requests, nbytes)


def _resolved(fetched: _Fetched, core_margin_arcmin: float) -> ResolvedTile:
    geometry = mosaic_geometry(fetched.header, fetched.url, core_margin_arcmin=core_margin_arcmin)
    return ResolvedTile(
        fetched.tile_id, fetched.url, geometry, fetched.requests, fetched.bytes_read
    )


def resolve_tile(
    storage: Storage,
    mer_root_url: str,
    tile_id: int,
    *,
    core_margin_arcmin: float = DEFAULT_CORE_MARGIN_ARCMIN,
) -> ResolvedTile:
    """Resolve one tile's centre and sizes from the header of its VIS mosaic.

    Parameters
    ----------
    storage
        Where the MER tree lives.
    mer_root_url
        The MER directory (``{data_uri}/q1/MER``), holding ``{tile}/VIS/...``.
    tile_id
        The tile.
    core_margin_arcmin
        Core margin on each side (see :func:`mosaic_geometry`).

    Raises
    ------
    MissingMosaicError
        If the tile has no VIS mosaic.
    MosaicHeaderError
        If its header is unreadable or not a square TAN mosaic.
    """
    return _resolved(_fetch_mosaic_header(storage, mer_root_url, tile_id), core_margin_arcmin)


def resolve_registry(
    storage: Storage,
    mer_root_url: str,
    tile_ids: Iterable[int] | None = None,
    progress: Callable[[int, int], None] | None = None,
    *,
    core_margin_arcmin: float = DEFAULT_CORE_MARGIN_ARCMIN,
    max_workers: int = DEFAULT_MAX_WORKERS,
    skip_missing: bool = False,
) -> TileRegistry:
    """Build a tile registry from the headers of the tiles' MER VIS mosaics.

    Parameters
    ----------
    storage
        Where the MER tree lives (local, ``s3://``, ...).
    mer_root_url
        The MER directory, e.g. ``s3://nasa-irsa-euclid-q1/q1/MER``.
    tile_ids
        Tiles to resolve; ``None`` for every tile directory under ``mer_root_url``.
    progress
        Called as ``progress(done, total)`` after each tile (in the calling thread).
    core_margin_arcmin
        Core margin on each side (see :func:`mosaic_geometry`).
    max_workers
        Tiles looked up concurrently (threads; the work is I/O).
    skip_missing
        Log a warning for tiles without a VIS mosaic and leave them out, instead
        of failing.

    Returns
    -------
    TileRegistry
        One row per resolved tile.

    Raises
    ------
    RegistryResolveError
        Listing every tile that failed and why (missing mosaics only when
        ``skip_missing`` is false; bad headers and storage errors always).
    """
    if max_workers < 1:
        raise ValueError(f"max_workers must be >= 1, got {max_workers}")
    ids = (
        list_tile_ids(storage, mer_root_url)
        if tile_ids is None
        else sorted({int(t) for t in tile_ids})
    )
    log.info("resolving %d tile(s) from VIS mosaic headers under %s", len(ids), mer_root_url)
    resolved: list[ResolvedTile] = []
    missing: dict[int, str] = {}
    failures: dict[int, str] = {}
    if progress is not None:
        progress(0, len(ids))
    if ids:
        with ThreadPoolExecutor(max_workers=min(max_workers, len(ids))) as pool:
            futures = {pool.submit(_fetch_mosaic_header, storage, mer_root_url, t): t for t in ids}
            try:
                for done, future in enumerate(as_completed(futures), start=1):
                    tid = futures[future]
                    try:
                        resolved.append(_resolved(future.result(), core_margin_arcmin))
                    except MissingMosaicError as exc:
                        missing[tid] = str(exc)
                    except (RegistryError, OSError) as exc:
                        failures[tid] = str(exc)
                    if progress is not None:
                        progress(done, len(ids))
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
    if missing and skip_missing:
        log.warning(
            "skipped %d tile(s) without a VIS mosaic: %s",
            len(missing), ", ".join(str(t) for t in sorted(missing)),
        )  # fmt: skip
    elif missing:
        failures.update(missing)
    if failures:
        raise RegistryResolveError(failures)
    resolved.sort(key=lambda r: r.tile_id)
    log.info(
        "resolved %d tile(s): %d requests, %d bytes read",
        len(resolved), sum(r.requests for r in resolved), sum(r.bytes_read for r in resolved),
    )  # fmt: skip
    return TileRegistry.from_tiles(r.to_tile() for r in resolved)


def merge_registries(base: TileRegistry, update: TileRegistry) -> TileRegistry:
    """The rows of ``base`` with those of ``update`` added (replacing rows of the same tile)."""
    keep = ~np.isin(base.tile_id, update.tile_id)
    cols = ("tile_id", "ra", "dec", "core_size_arcmin", "extended_size_arcmin")
    merged = [np.concatenate([getattr(base, c)[keep], getattr(update, c)]) for c in cols]
    return TileRegistry(*merged)


def load_or_resolve_registry(
    cache_path: str | os.PathLike[str],
    storage: Storage,
    mer_root_url: str,
    tile_ids: Iterable[int] | None = None,
    *,
    refresh: bool = False,
    progress: Callable[[int, int], None] | None = None,
    core_margin_arcmin: float = DEFAULT_CORE_MARGIN_ARCMIN,
    max_workers: int = DEFAULT_MAX_WORKERS,
    skip_missing: bool = False,
) -> TileRegistry:
    """A registry from the cache file if it has the tiles asked for, else resolved and cached.

    Parameters
    ----------
    cache_path
        Registry file (``.parquet`` or ``.csv``): a local path or a URL, read and
        written through ``storage``.
    storage, mer_root_url, progress, core_margin_arcmin, max_workers, skip_missing
        As for :func:`resolve_registry`.
    tile_ids
        Tiles wanted. ``None``: every tile — the cache as it is if it exists, or
        every tile directory under the MER root. Given: tiles missing from the
        cache are resolved and added to it; the others are read from it.
    refresh
        Resolve the tiles again even if cached (``None``: rebuild the whole cache).

    Returns
    -------
    TileRegistry
        The cached registry when ``tile_ids`` is ``None``, otherwise the rows of
        the requested tiles (without those skipped as missing).
    """
    path = os.fspath(cache_path)
    wanted = None if tile_ids is None else sorted({int(t) for t in tile_ids})
    reuse = not (refresh and wanted is None) and storage.exists(path)
    cached = read_registry(path, storage) if reuse else None
    if cached is not None and wanted is None:
        log.info("using cached tile registry %s (%d tiles)", path, len(cached))
        return cached
    todo = wanted
    if cached is not None and wanted is not None and not refresh:
        todo = [t for t in wanted if t not in cached]
        if not todo:
            log.info("all %d tile(s) found in the cached registry %s", len(wanted), path)
            return cached.subset(wanted)
        log.info("%d of %d tile(s) not in %s: resolving them", len(todo), len(wanted), path)
    fresh = resolve_registry(
        storage,
        mer_root_url,
        todo,
        progress,
        core_margin_arcmin=core_margin_arcmin,
        max_workers=max_workers,
        skip_missing=skip_missing,
    )
    registry = fresh if cached is None else merge_registries(cached, fresh)
    write_registry(registry, path, storage)
    log.info("wrote tile registry %s (%d tiles)", path, len(registry))
    if wanted is None:
        return registry
    return registry.subset([t for t in wanted if t in registry])
