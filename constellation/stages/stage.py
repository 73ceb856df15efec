"""Staging: materialise a self-contained sub-tile folder for runners without object-store access.

:func:`stage_subtile` reads a prepared sub-tile manifest and writes::

    {dest}/manifest.json                 the manifest, every URI relative to {dest}
    {dest}/sources.parquet               a copy of the sub-tile source table
    {dest}/exposures/{exposure}.fits     one consolidated FITS file per exposure

Only the bytes of the needed extensions are read, with one ranged read each for
the header ``[header_offset, data_offset)`` and the data unit
``[data_offset, data_offset + data_bytes)``: the SCI, RMS and FLG extensions of
the DET file and the quadrant's BKG and PSF extensions. A BKG or PSF extension
used by several exposures of the sub-tile is read once.

Each consolidated file holds a new minimal primary HDU (``OBS_ID``, ``DITHOBS``,
``EXPNUM``, ``EXPTIME`` from the manifest and a comment saying it was staged)
followed, per quadrant, by the fetched extensions verbatim: header bytes, data
bytes, zero padding to a multiple of 2880 bytes. DET extensions keep their names
(``3-4.F.SCI``, ``3-4.F.RMS``, ``3-4.F.FLG``); the BKG and PSF extensions are
renamed ``{quadrant}.BKG`` and ``{quadrant}.PSF``. The rename rewrites only the
``EXTNAME`` card inside the fetched header bytes (or, if the header has none,
puts one in the blank card before ``END``), so the header keeps its length and
the offsets written in the staged manifest are exact.

Staging is idempotent: an output whose bytes equal what is already there is not
written again (the needed extensions are still read, to compare).

Staging never writes outside its destination root. Before anything is read or
written, a manifest is refused (:class:`StagingError`) when an exposure key is not
a plain file name (``002681-00-1``: letters, digits, ``.``, ``_``, ``-``), when its
source table is not a plain relative name next to the manifest, when a relative
data URI climbs out of the manifest's folder (``..``), or when a target file would
resolve, symbolic links followed, outside the destination root.
"""

from __future__ import annotations

import os
import posixpath
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from astropy.io import fits

from constellation.io.fits import BLOCK_BYTES, pad_bytes, rename_extension
from constellation.io.storage import local_path
from constellation.manifest import layout
from constellation.manifest.subtile import (
    AuxFile,
    DetFile,
    FitsExtension,
    QuadrantExposure,
    SubTileManifest,
    dump_manifest,
    parse_manifest,
)

if TYPE_CHECKING:
    from constellation.io.storage import Storage

__all__ = [
    "EXPOSURES_DIR",
    "StageResult",
    "StagingError",
    "check_manifest_paths",
    "rename_extension",
    "stage_subtile",
    "staged_exposure_name",
]

EXPOSURES_DIR = "exposures"

_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class StagingError(ValueError):
    """A manifest that staging refuses (a path would escape the destination root)."""


@dataclass(frozen=True)
class StageResult:
    """What staging one sub-tile did.

    Attributes
    ----------
    bytes_moved
        Bytes read from the source storage (the storage's ``bytes_read`` counter
        over the source reads): manifest, source table and extensions.
    extension_bytes_moved
        The part of ``bytes_moved`` read for the extensions.
    needed_bytes
        Sum of header and data lengths of the distinct needed extensions.
    """

    manifest_url: str
    dest_dir: str
    tile_id: int
    row: int
    col: int
    exposures: int
    quadrant_exposures: int
    extensions_fetched: int
    files_written: int
    files_unchanged: int
    bytes_moved: int
    extension_bytes_moved: int
    needed_bytes: int
    seconds: float

    @property
    def ratio(self) -> float:
        """Extension bytes moved / needed extension bytes (1.0 = exactly what is needed)."""
        return self.extension_bytes_moved / self.needed_bytes if self.needed_bytes else 1.0


def staged_exposure_name(exposure: str) -> str:
    """Relative name of an exposure's consolidated file in a staged folder."""
    return f"{EXPOSURES_DIR}/{exposure}.fits"


def _primary(first: QuadrantExposure) -> bytes:
    h = fits.Header()
    h["SIMPLE"] = True
    h["BITPIX"] = 8
    h["NAXIS"] = 0
    h["EXTEND"] = True
    h["OBS_ID"] = (first.obs_id, "observation id")
    h["DITHOBS"] = (first.dither, "dither of the observation")
    h["EXPNUM"] = (first.expnum, "exposure number")
    h["EXPTIME"] = (first.exptime, "exposure time, s")
    h["COMMENT"] = "Staged by constellation: extensions copied verbatim from the DET,"
    h["COMMENT"] = "BKG and PSF files (BKG and PSF renamed {quadrant}.BKG/.PSF)."
    text: str = h.tostring()
    return text.encode("ascii")


class _Fetcher:
    """Ranged reads of extensions, counting bytes; shared (BKG, PSF) ones are kept, so
    each is read once per sub-tile (DET extensions belong to one quadrant exposure)."""

    def __init__(self, storage: Storage, base: str) -> None:
        self.storage = storage
        self.base = base
        self.cache: dict[tuple[str, int, int, int], tuple[bytes, bytes]] = {}
        self.fetched = 0
        self.bytes_moved = 0
        self.needed = 0

    def __call__(self, uri: str, ext: FitsExtension, shared: bool) -> tuple[bytes, bytes]:
        url = layout.resolve_relative(self.base, uri)
        key = (url, ext.header_offset, ext.data_offset, ext.data_bytes)
        hit = self.cache.get(key)
        if hit is not None:
            return hit
        before = self.storage.stats.snapshot().bytes_read
        header = self.storage.read_range(url, ext.header_offset, ext.data_offset)
        data = self.storage.read_range(url, ext.data_offset, ext.data_offset + ext.data_bytes)
        self.bytes_moved += self.storage.stats.snapshot().bytes_read - before
        need = ext.data_offset - ext.header_offset + ext.data_bytes
        self.needed += need
        if len(header) + len(data) != need:
            raise ValueError(f"{url}: extension {ext.name} is truncated")
        if len(header) % BLOCK_BYTES:
            raise ValueError(f"{url}: header of {ext.name} is not whole {BLOCK_BYTES}-byte blocks")
        if not header.startswith(b"XTENSION="):
            raise ValueError(f"{url}: no extension header at byte {ext.header_offset}")
        self.fetched += 1
        if shared:
            self.cache[key] = (header, data)
        return header, data


def _consolidate(
    entries: list[QuadrantExposure], fetch: _Fetcher, rel: str
) -> tuple[bytes, list[QuadrantExposure]]:
    """The consolidated FITS bytes of one exposure and its manifest entries rewritten."""
    chunks = [_primary(entries[0])]
    pos = len(chunks[0])

    def put(header: bytes, data: bytes, name: str) -> FitsExtension:
        nonlocal pos
        ext = FitsExtension(
            name=name, header_offset=pos, data_offset=pos + len(header), data_bytes=len(data)
        )
        chunks.extend([header, data, b"\0" * pad_bytes(len(data))])
        pos += len(header) + len(data) + pad_bytes(len(data))
        return ext

    out = []
    for e in entries:
        det = {}
        for layer in ("sci", "rms", "flg"):
            src: FitsExtension = getattr(e.det, layer)
            header, data = fetch(e.det.uri, src, shared=False)
            det[layer] = put(header, data, src.name)
        aux: dict[str, AuxFile | None] = {"bkg": None, "psf": None}
        for kind in ("bkg", "psf"):
            f: AuxFile | None = getattr(e, kind)
            if f is None:
                continue
            header, data = fetch(f.uri, f.extension, shared=True)
            name = f"{e.quadrant}.{kind.upper()}"
            aux[kind] = AuxFile(uri=rel, extension=put(rename_extension(header, name), data, name))
        out.append(
            e.model_copy(
                update={"det": DetFile(uri=rel, **det), "bkg": aux["bkg"], "psf": aux["psf"]}
            )
        )
    return b"".join(chunks), out


def _write_if_changed(storage: Storage, url: str, payload: bytes) -> bool:
    """Write ``payload`` unless ``url`` already holds exactly these bytes."""
    if (
        storage.exists(url)
        and storage.size(url) == len(payload)
        and storage.read_bytes(url) == payload
    ):
        return False
    storage.write_bytes(url, payload)
    return True


def _is_relative(uri: str) -> bool:
    return not (uri.startswith("/") or "://" in uri)


def _climbs(uri: str) -> bool:
    return ".." in uri.replace("\\", "/").split("/")


def check_manifest_paths(manifest: SubTileManifest) -> None:
    """Raise :class:`StagingError` unless every path ``manifest`` gives staging is safe:
    plain exposure names, a plain relative source table, no relative URI with ``..``."""
    src = manifest.sources.uri
    if not _is_relative(src) or _climbs(src):
        raise StagingError(f"sources.uri {src!r} is not a plain relative name next to the manifest")
    for e in manifest.exposures:
        if not _SAFE_NAME.fullmatch(e.exposure):
            raise StagingError(f"exposure key {e.exposure!r} is not a plain file name")
        for f in (e.det, e.bkg, e.psf):
            if f is not None and _is_relative(f.uri) and _climbs(f.uri):
                raise StagingError(
                    f"{e.exposure} {e.quadrant}: relative URI {f.uri!r} leaves the "
                    "manifest's folder"
                )


def _inside(root: str, url: str) -> bool:
    """Whether ``url`` stays under ``root`` (local paths: symbolic links followed)."""
    root_path, path = local_path(root), local_path(url)
    if root_path is not None and path is not None:
        real_root = os.path.realpath(root_path)
        real = os.path.realpath(path)
        return real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep)
    base = posixpath.normpath(root.split("://", 1)[-1])
    target = posixpath.normpath(url.split("://", 1)[-1])
    return target.startswith(base.rstrip("/") + "/")


def stage_subtile(
    manifest_url: str, dest_dir: str, storage: Storage, *, per_subtile: bool = False
) -> StageResult:
    """Stage one sub-tile into ``dest_dir`` (see the module notes); idempotent.

    With ``per_subtile``, the folder is ``{dest_dir}/{tile}/r{row}_c{col}`` (from the
    manifest's identity) rather than ``dest_dir`` itself.

    Raises
    ------
    ManifestError
        The manifest cannot be read (bad JSON, unknown ``manifest_version``, schema).
    StagingError
        A path in the manifest would escape ``dest_dir`` (nothing is read or written).
    """
    t0 = time.perf_counter()
    read0 = storage.stats.snapshot().bytes_read
    manifest: SubTileManifest = parse_manifest(storage.read_bytes(manifest_url))
    check_manifest_paths(manifest)
    root = dest_dir
    if per_subtile:
        ident = manifest.identity
        dest_dir = layout.join(
            dest_dir, str(ident.tile_id), layout.subtile_name(ident.row, ident.col)
        )
    names = [staged_exposure_name(x) for x in {e.exposure for e in manifest.exposures}]
    for name in [*names, layout.SOURCES_NAME, layout.MANIFEST_NAME]:
        if not _inside(root, layout.join(dest_dir, name)):
            raise StagingError(f"{layout.join(dest_dir, name)} would be outside {root}")
    sources = storage.read_bytes(layout.resolve_relative(manifest_url, manifest.sources.uri))
    moved = storage.stats.snapshot().bytes_read - read0

    groups: dict[str, list[QuadrantExposure]] = {}
    for e in manifest.exposures:
        groups.setdefault(e.exposure, []).append(e)
    fetch = _Fetcher(storage, manifest_url)
    staged: list[QuadrantExposure] = []
    written = 0
    for exposure in sorted(groups):  # one exposure in memory at a time
        rel = staged_exposure_name(exposure)
        payload, entries = _consolidate(groups[exposure], fetch, rel)
        written += _write_if_changed(storage, layout.join(dest_dir, rel), payload)
        del payload
        staged.extend(entries)
    staged.sort(key=lambda e: (e.exposure, e.quadrant))
    new = manifest.model_copy(
        update={
            "exposures": staged,
            "sources": manifest.sources.model_copy(update={"uri": layout.SOURCES_NAME}),
        }
    )
    # the manifest last: once it is there, the folder is complete
    written += _write_if_changed(storage, layout.join(dest_dir, layout.SOURCES_NAME), sources)
    written += _write_if_changed(
        storage, layout.join(dest_dir, layout.MANIFEST_NAME), dump_manifest(new)
    )
    n_files = len(groups) + 2
    return StageResult(
        manifest_url=manifest_url,
        dest_dir=dest_dir,
        tile_id=manifest.identity.tile_id,
        row=manifest.identity.row,
        col=manifest.identity.col,
        exposures=len(groups),
        quadrant_exposures=len(manifest.exposures),
        extensions_fetched=fetch.fetched,
        files_written=written,
        files_unchanged=n_files - written,
        bytes_moved=moved + fetch.bytes_moved,
        extension_bytes_moved=fetch.bytes_moved,
        needed_bytes=fetch.needed,
        seconds=time.perf_counter() - t0,
    )
