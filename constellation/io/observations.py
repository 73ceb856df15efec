"""The observation index: the VIS files under a prefix, grouped by exposure.

Q1 keeps an observation's files in ``{prefix}/{obs_id}/``::

    EUC_VIS_SWL-{DET|BKG|WGT}-{obs:06d}-{dither:02d}-{n}-0000000__{ts}.fits
    EUC_VIS_GRD-PSF-000-000000-0000000__{ts}.fits

The timestamp is a processing time and differs between the DET, BKG and WGT
files of one exposure, so files are grouped on ``(obs, dither, n)`` and never
on the timestamp. ``n`` is the exposure number within the dither (1 nominal,
2 short in Q1), but only the header's ``EXPTIME`` says which is which.

Parsing (:func:`parse_vis_name`, :func:`group_files`) is pure; :func:`list_observations`
adds the listing. Nothing is dropped silently: names that match no pattern end
up in :attr:`ObservationIndex.unmatched`, older duplicates in
:attr:`ObservationIndex.superseded`, exposures without a DET file in
:attr:`ObservationIndex.incomplete`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from constellation.manifest.quadrant_index import exposure_key

if TYPE_CHECKING:
    from constellation.io.storage import FileInfo, Storage

__all__ = [
    "ExposureFiles",
    "FileRef",
    "ObservationIndex",
    "ParsedName",
    "file_ref",
    "group_files",
    "list_observations",
    "parse_vis_name",
]

log = logging.getLogger(__name__)

FileKind = Literal["DET", "BKG", "WGT", "PSF"]

_TS = r"(?P<ts>\d{8}T\d{6}(?:\.\d+)?Z)"
SWL_PATTERN = re.compile(
    r"^EUC_VIS_SWL-(?P<kind>DET|BKG|WGT)-(?P<obs>\d{6})-(?P<dither>\d{2})-(?P<n>\d)"
    rf"-0000000__{_TS}\.fits$"
)
PSF_PATTERN = re.compile(rf"^EUC_VIS_GRD-PSF-000-000000-0000000__{_TS}\.fits$")
_OBS_DIR = re.compile(r"^\d+$")


@dataclass(frozen=True)
class FileRef:
    """One stored file: where, how large, which version (ETag), processing timestamp."""

    url: str
    size: int
    etag: str | None
    timestamp: str


@dataclass(frozen=True)
class ParsedName:
    """What a VIS file name says. ``dither``/``expnum`` are ``None`` for the PSF file."""

    kind: FileKind
    obs_id: int
    dither: int | None
    expnum: int | None
    timestamp: str


@dataclass
class ExposureFiles:
    """The files of one exposure ``(obs_id, dither, expnum)``; ``None`` where absent."""

    obs_id: int
    dither: int
    expnum: int
    det: FileRef | None = None
    bkg: FileRef | None = None
    wgt: FileRef | None = None
    psf: FileRef | None = None

    @property
    def key(self) -> str:
        """``"{obs:06d}-{dither:02d}-{n}"``."""
        return exposure_key(self.obs_id, self.dither, self.expnum)


@dataclass
class ObservationIndex:
    """The result of grouping a listing.

    Attributes
    ----------
    exposures
        Every exposure with a DET file, sorted by ``(obs, dither, n)``.
    incomplete
        Exposures that have BKG or WGT files but no DET file.
    unmatched
        URLs that match no VIS pattern (also logged).
    superseded
        Older duplicates of one (kind, exposure) or PSF file: the newest
        timestamp is kept, these are not used.
    psf_without_obs
        PSF files whose directory is not an observation id.
    """

    exposures: list[ExposureFiles] = field(default_factory=list)
    incomplete: list[ExposureFiles] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)
    superseded: list[FileRef] = field(default_factory=list)
    psf_without_obs: list[str] = field(default_factory=list)

    def files(self) -> list[FileRef]:
        """Every distinct DET, BKG and PSF file the exposures use (WGT is not indexed)."""
        seen: dict[str, FileRef] = {}
        for e in self.exposures:
            for ref in (e.det, e.bkg, e.psf):
                if ref is not None:
                    seen.setdefault(ref.url, ref)
        return list(seen.values())


def _basename(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


def _dirname(url: str) -> str:
    parts = url.rstrip("/").rsplit("/", 2)
    return parts[-2] if len(parts) >= 2 else ""


def parse_vis_name(url: str) -> ParsedName | None:
    """Parse a VIS file URL (or bare name); ``None`` if it matches no pattern.

    The PSF file's observation id is its directory name (``None`` too if the
    directory is not a number).
    """
    name = _basename(url)
    m = SWL_PATTERN.match(name)
    if m:
        return ParsedName(
            kind=m["kind"],  # type: ignore[arg-type]
            obs_id=int(m["obs"]),
            dither=int(m["dither"]),
            expnum=int(m["n"]),
            timestamp=m["ts"],
        )
    m = PSF_PATTERN.match(name)
    if m:
        obs_dir = _dirname(url)
        if not _OBS_DIR.match(obs_dir):
            return None
        return ParsedName("PSF", int(obs_dir), None, None, m["ts"])
    return None


def file_ref(info: FileInfo) -> FileRef:
    """A :class:`FileRef` from a listing entry.

    The version tag is the store's ETag; a local file has none, so its
    modification time (``mtime:<seconds>``) stands in, so that a rewritten
    file is seen as changed.
    """
    parsed = parse_vis_name(info.url)
    etag = info.etag
    if etag is None and info.raw.get("mtime") is not None:
        etag = f"mtime:{float(info.raw['mtime']):.6f}"
    return FileRef(
        url=info.url,
        size=int(info.size or 0),
        etag=etag,
        timestamp=parsed.timestamp if parsed else "",
    )


def group_files(refs: Iterable[FileRef]) -> ObservationIndex:
    """Group VIS files by exposure ``(obs, dither, n)`` (pure; see the module notes)."""
    index = ObservationIndex()
    chosen: dict[tuple[str, int, int, int], FileRef] = {}
    psfs: dict[int, FileRef] = {}

    def newer(old: FileRef | None, new: FileRef) -> FileRef:
        if old is None:
            return new
        keep, drop = (
            (new, old)
            if (new.timestamp, new.url) > (old.timestamp, old.url)
            else (
                old,
                new,
            )
        )
        index.superseded.append(drop)
        log.warning("duplicate %s superseded by %s (newer timestamp)", drop.url, keep.url)
        return keep

    for ref in refs:
        parsed = parse_vis_name(ref.url)
        if parsed is None:
            if PSF_PATTERN.match(_basename(ref.url)):
                index.psf_without_obs.append(ref.url)
                log.warning("PSF file outside an observation directory: %s", ref.url)
            else:
                index.unmatched.append(ref.url)
                log.warning("not a VIS file name, ignored: %s", ref.url)
            continue
        if parsed.kind == "PSF":
            psfs[parsed.obs_id] = newer(psfs.get(parsed.obs_id), ref)
            continue
        assert parsed.dither is not None
        assert parsed.expnum is not None
        key = (parsed.kind, parsed.obs_id, parsed.dither, parsed.expnum)
        chosen[key] = newer(chosen.get(key), ref)

    groups: dict[tuple[int, int, int], ExposureFiles] = {}
    for (kind, obs, dither, n), ref in chosen.items():
        e = groups.setdefault((obs, dither, n), ExposureFiles(obs, dither, n))
        setattr(e, kind.lower(), ref)
    for gkey in sorted(groups):
        e = groups[gkey]
        e.psf = psfs.get(e.obs_id)
        if e.det is None:
            index.incomplete.append(e)
            log.warning("exposure %s has no DET file", e.key)
        else:
            index.exposures.append(e)
    index.unmatched.sort()
    return index


def list_observations(storage: Storage, vis_prefix: str) -> ObservationIndex:
    """List ``{vis_prefix}/*/*.fits`` (one listing) and group it (:func:`group_files`).

    Files that are not ``.fits`` but sit in the observation directories are
    reported as unmatched too.
    """
    infos = storage.glob_info(storage.join(vis_prefix, "*", "*"))
    refs = [file_ref(i) for i in infos if i.type != "directory"]
    return group_files(refs)
