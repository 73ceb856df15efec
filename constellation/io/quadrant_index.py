"""Build (and read) the quadrant index from the DET, BKG and PSF extension headers.

For every exposure of an :class:`~constellation.io.observations.ObservationIndex`
the extension headers of its DET file (``{id}.SCI/.RMS/.FLG``), its BKG file
(``{id}``) and its observation's PSF file (``{id}``; read once per URL) are read
with :func:`~constellation.io.fits.read_extension_headers`, and one
row per quadrant exposure is made with the columns of
:data:`~constellation.manifest.quadrant_index.QUADRANT_INDEX_SCHEMA`. Rows are
sorted by ``healpix`` and written as Parquet (zstd, row groups of 8192 rows).

**Incremental.** The Parquet file's key-value metadata also records the
version ``(size, etag)`` of every DET, BKG and PSF file it was built from
(key :data:`FILES_METADATA_KEY`). On the next build, a file whose URL, size
and version did not change is not read again: its columns are copied from the
old rows. Rows of DET files that disappeared are dropped. ``full=True``
ignores the old index.

**One bad file does not stop the build.** An exposure whose DET, BKG or PSF file
is not a readable FITS file (truncated, garbled header, another format under a
FITS name, a quadrant without its WCS keywords) is logged, listed in
:attr:`IndexSummary.failed` and left out; its files are not recorded as indexed,
so the next build reads them again. Storage errors (``OSError``, after the
storage's own retries) still stop the build. When no exposure at all could be
indexed, nothing is written.
"""

from __future__ import annotations

import io
import json
import logging
import re
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning, Wcsprm

from constellation.io.fits import (
    DEFAULT_RANGE_WORKERS,
    ExtensionHeader,
    ExtensionScan,
    read_extension_headers,
)
from constellation.io.fitscards import card_images, value_cards
from constellation.manifest.quadrant_index import (
    FOOTPRINT_VERTICES,
    INDEX_VERSION,
    METADATA_KEYS,
    QUADRANT_INDEX_SCHEMA,
    exposure_key,
)
from constellation.sky.healpix import radec_to_index

if TYPE_CHECKING:
    from constellation.io.observations import ExposureFiles, FileRef, ObservationIndex
    from constellation.io.storage import Storage

__all__ = [
    "FILES_METADATA_KEY",
    "FOOTPRINT_MARGIN_PX",
    "HEALPIX_ORDER",
    "ROW_GROUP_SIZE",
    "IndexSummary",
    "build_quadrant_index",
    "quadrant_footprint",
    "read_quadrant_index",
    "wcs_cards_text",
]

log = logging.getLogger(__name__)

HEALPIX_ORDER = 29
ROW_GROUP_SIZE = 8192
FOOTPRINT_MARGIN_PX = 2.0
"""Pixels by which the footprint polygon is grown beyond the quadrant's pixel edges."""

FILES_METADATA_KEY = b"constellation.quadrant_index.files"
"""Key-value metadata: JSON ``{url: [size, etag]}`` of the files the index was built from."""

_WCS_KEY = re.compile(r"^(CTYPE\d|CUNIT\d|CRPIX\d|CRVAL\d|CD\d_\d|PV\d_\d+|RADESYS|NAXIS[12])$")
_CARD = 80  # characters of a card image
#: What a row takes from the SCI header (the primary header holds any it lacks).
_SCI_KEYS = frozenset({"NAXIS1", "NAXIS2", "EXPTIME", "MAGZEROP", "GAIN"})
_PREFIXES = ("sci", "rms", "flg")
_BKG_COLS = [f.name for f in QUADRANT_INDEX_SCHEMA if f.name.startswith("bkg_")]
_PSF_COLS = [f.name for f in QUADRANT_INDEX_SCHEMA if f.name.startswith("psf_")]
_DET_COLS = [
    f.name for f in QUADRANT_INDEX_SCHEMA if f.name not in _BKG_COLS and f.name not in _PSF_COLS
]

ProgressFn = Callable[[int, int], None]


@dataclass
class IndexSummary:
    """What :func:`build_quadrant_index` did."""

    url: str
    exposures: int = 0
    quadrant_exposures: int = 0
    det_read: int = 0
    det_skipped: int = 0
    bkg_read: int = 0
    bkg_skipped: int = 0
    psf_read: int = 0
    psf_skipped: int = 0
    det_removed: int = 0
    unmatched: list[str] = field(default_factory=list)
    incomplete: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    """Exposures left out, by exposure key: one line naming the file and the problem."""
    written: bool = True
    """Whether the index file was written (or was already up to date)."""
    requests: int = 0
    rounds: int = 0  # max sequential rounds over the files read
    bytes_read: int = 0
    header_bytes: int = 0  # bytes of the headers of the files read
    seconds: float = 0.0

    @property
    def files_read(self) -> int:
        return self.det_read + self.bkg_read + self.psf_read

    @property
    def files_skipped(self) -> int:
        return self.det_skipped + self.bkg_skipped + self.psf_skipped


# -- geometry --------------------------------------------------------------------------


def wcs_cards_text(header: fits.Header) -> str:
    """The WCS cards (CTYPE, CUNIT, CRPIX, CRVAL, CD, PV, RADESYS, NAXIS1/2) of a
    header as text, one card per line (``fits.Header.fromstring(text, sep="\\n")``).

    The card images joined as ``fits.Header(cards).tostring(sep="\\n", padding=False,
    endcard=False)`` joins them (a card with CONTINUE cards gives one line per 80
    characters), without building that header: the same text. Reading the images
    still costs astropy's verification of each card (~0.6-0.8 ms a freshly parsed
    SCI header); the index takes them from the text as written where it can
    (:func:`~constellation.io.fitscards.card_images`, ~0.18 ms).
    """
    lines: list[str] = []
    for card in header.cards:
        if _WCS_KEY.match(card.keyword):
            image: str = card.image
            lines.extend(image[i : i + _CARD] for i in range(0, len(image), _CARD))
    return "\n".join(lines)


def _wcs_text(ext: ExtensionHeader) -> str:
    """:func:`wcs_cards_text` of an extension's header, from the card images as written
    where they are standard cards (what astropy gives, without its verification of each
    card: measured 0.18 against 0.78 ms a SCI header), else from astropy's."""
    lines = card_images(ext.text, _WCS_KEY.match)
    return "\n".join(lines) if lines is not None else wcs_cards_text(ext.header)


def _sci_values(ext: ExtensionHeader) -> Mapping[str, Any]:
    """The SCI header's :data:`_SCI_KEYS`, read from its cards as astropy reads them
    (:func:`~constellation.io.fitscards.value_cards`: 0.20 ms a simulated SCI header,
    where parsing it with astropy and getting the keys took 1.77 ms, medians on the
    2-core machine), or the astropy header where that reader gives up or the shape is
    missing."""
    values = value_cards(ext.text, _SCI_KEYS)
    if values is None or "NAXIS1" not in values or "NAXIS2" not in values:
        header: Mapping[str, Any] = ext.header
        return header
    return values


class _SkyTransform:
    """Pixel -> sky of one quadrant's WCS cards (``pix2world(x, y)``, 0-based pixels).

    ``astropy.wcs.WCS(header)`` costs ~2-3.5 ms a quadrant, most of it Python work
    around wcslib (the header converted to text and back twice, every card verified,
    SIP and lookup-table keywords looked for). The cards the index keeps hold none of
    those (:data:`_WCS_KEY`), so for the form Euclid writes (``-TPV`` on both axes, or
    ``-TAN`` without ``PV`` cards) the transform is wcslib's own, built as ``WCS`` builds it
    (``Wcsprm`` with ``relax=True``, ``fix()``, ``set()``) in ~0.15-0.2 ms, and
    ``all_pix2world`` of such a ``WCS`` is ``Wcsprm.p2s``: the same numbers, bit for
    bit (tests/discovery/test_index_wcs.py). Anything else (a pre-2012 SCAMP header,
    ``-TAN`` with ``PV`` cards, which ``WCS`` rewrites to ``-TPV``; a ``-SIP`` suffix;
    another projection) goes through ``WCS``. A full index build of the 2x2 light
    field (2,304 quadrants) went from 10.6 to 4.2 s (docs/discovery.md).
    """

    def __init__(self, text: str) -> None:
        raw = "".join(line.ljust(_CARD) for line in text.split("\n")).encode("ascii")
        self._wcs: WCS | None = None
        self._prm: Wcsprm | None = None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            prm = Wcsprm(header=raw, relax=True)
            ctypes = [c.strip().upper()[4:] for c in prm.ctype]
            if prm.naxis == 2 and (
                ctypes == ["-TPV", "-TPV"] or (ctypes == ["-TAN", "-TAN"] and not prm.get_pv())
            ):
                prm.fix()
                prm.set()
                self._prm = prm
            else:
                self._wcs = WCS(fits.Header.fromstring(text, sep="\n"))

    def pix2world(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self._prm is None:
            assert self._wcs is not None
            ra, dec = self._wcs.all_pix2world(x, y, 0)
            return np.asarray(ra), np.asarray(dec)
        world = self._prm.p2s(np.column_stack([x, y]), 0)["world"]
        return world[:, 0], world[:, 1]


def _edge_pixels(nx: int, ny: int, margin: float) -> tuple[np.ndarray, np.ndarray]:
    per_edge = FOOTPRINT_VERTICES // 4
    x0, x1 = -0.5 - margin, nx - 0.5 + margin
    y0, y1 = -0.5 - margin, ny - 0.5 + margin
    t = np.arange(per_edge) / per_edge
    xs = np.concatenate([x0 + (x1 - x0) * t, np.full(per_edge, x1), x1 - (x1 - x0) * t,
                         np.full(per_edge, x0)])  # fmt: skip
    ys = np.concatenate([np.full(per_edge, y0), y0 + (y1 - y0) * t, np.full(per_edge, y1),
                         y1 - (y1 - y0) * t])  # fmt: skip
    return xs, ys


def quadrant_footprint(
    wcs: WCS | _SkyTransform, nx: int, ny: int, margin_px: float = FOOTPRINT_MARGIN_PX
) -> tuple[np.ndarray, np.ndarray, float, float]:
    """(footprint RA, footprint Dec, centre RA, centre Dec) of a quadrant, degrees.

    The footprint walks the pixel edges (``-0.5 - margin`` and ``N - 0.5 + margin``,
    0-based), 8 points per edge, through the full WCS (TPV included).
    """
    xs, ys = _edge_pixels(nx, ny, margin_px)
    # the edge and the centre in one call
    xs = np.append(xs, (nx - 1) / 2.0)
    ys = np.append(ys, (ny - 1) / 2.0)
    if isinstance(wcs, _SkyTransform):
        ra, dec = wcs.pix2world(xs, ys)
    else:
        ra, dec = wcs.all_pix2world(xs, ys, 0)
    ra, dec = np.asarray(ra), np.asarray(dec)
    return np.mod(ra[:-1], 360.0), dec[:-1], float(ra[-1]) % 360.0, float(dec[-1])


# -- rows ------------------------------------------------------------------------------


def _ext_cols(prefix: str, ext: ExtensionHeader) -> dict[str, Any]:
    return {
        f"{prefix}_header_offset": ext.header_offset,
        f"{prefix}_header_bytes": ext.header_bytes,
        f"{prefix}_data_offset": ext.data_offset,
        f"{prefix}_data_bytes": ext.data_bytes,
    }


def _float(header: Mapping[str, Any], primary: fits.Header, key: str, url: str, ext: str) -> float:
    value = header.get(key, primary.get(key))
    if value is None:
        raise ValueError(f"{url}: extension {ext} has no {key}")
    try:
        return float(str(value).strip()) if isinstance(value, str) else float(value)
    except ValueError:
        raise ValueError(f"{url}: extension {ext}: {key} = {value!r} is not a number") from None


def _det_rows(e: ExposureFiles, scan: ExtensionScan) -> dict[str, dict[str, Any]]:
    """The DET part of the rows of one exposure, by quadrant id."""
    assert e.det is not None
    layers: dict[str, dict[str, ExtensionHeader]] = {}
    for ext in scan.extensions:
        qid, _, layer = ext.extname.rpartition(".")
        if layer in ("SCI", "RMS", "FLG") and qid:
            layers.setdefault(qid, {})[layer] = ext
        else:
            log.warning("%s: unexpected extension %r ignored", e.det.url, ext.extname)
    rows: dict[str, dict[str, Any]] = {}
    for qid, parts in sorted(layers.items()):
        if len(parts) != 3:
            log.warning("%s: quadrant %s lacks %s; skipped", e.det.url, qid,
                        sorted({"SCI", "RMS", "FLG"} - parts.keys()))  # fmt: skip
            continue
        sci = _sci_values(parts["SCI"])
        nx, ny = int(sci["NAXIS1"]), int(sci["NAXIS2"])
        text = _wcs_text(parts["SCI"])
        fra, fdec, cra, cdec = quadrant_footprint(_SkyTransform(text), nx, ny)
        row: dict[str, Any] = {
            "healpix": 0,
            "center_ra": cra,
            "center_dec": cdec,
            "footprint_ra": fra.tolist(),
            "footprint_dec": fdec.tolist(),
            "exposure": exposure_key(e.obs_id, e.dither, e.expnum),
            "obs_id": e.obs_id,
            "dither": e.dither,
            "expnum": e.expnum,
            "quadrant": qid,
            "exptime": _float(sci, scan.primary, "EXPTIME", e.det.url, qid),
            "magzerop": _float(sci, scan.primary, "MAGZEROP", e.det.url, qid),
            "gain": _float(sci, scan.primary, "GAIN", e.det.url, qid),
            "naxis1": nx,
            "naxis2": ny,
            "wcs_header": text,
            "det_url": e.det.url,
            "det_size": e.det.size,
            "det_etag": e.det.etag,
        }
        for prefix in _PREFIXES:
            row.update(_ext_cols(prefix, parts[prefix.upper()]))
        rows[qid] = row
    return rows


def _part_rows(url: str, prefix: str, scan: ExtensionScan) -> dict[str, dict[str, Any]]:
    """The BKG or PSF part of the rows, by quadrant id (extension names are bare ids)."""
    out: dict[str, dict[str, Any]] = {}
    for name, ext in scan.by_name().items():
        cols = _ext_cols(prefix, ext)
        cols[f"{prefix}_url"] = url
        out[name] = cols
    return out


def _null_part(cols: Sequence[str]) -> dict[str, Any]:
    return dict.fromkeys(cols)


# -- the old index ---------------------------------------------------------------------


@dataclass
class _Previous:
    versions: dict[str, tuple[int, str | None]]
    det: dict[str, dict[str, dict[str, Any]]]  # det_url -> quadrant -> DET columns
    bkg: dict[str, dict[str, dict[str, Any]]]  # bkg_url -> quadrant -> BKG columns
    psf: dict[str, dict[str, dict[str, Any]]]  # psf_url -> quadrant -> PSF columns
    rows: int = 0  # quadrant exposures in the index

    def unchanged(self, ref: FileRef) -> bool:
        return self.versions.get(ref.url) == (ref.size, ref.etag)


def _load_previous(storage: Storage, url: str) -> _Previous | None:
    if not storage.exists(url):
        return None
    try:
        table = pq.read_table(io.BytesIO(storage.read_bytes(url)))
    except (OSError, pa.ArrowException) as exc:
        log.warning("existing index %s unreadable (%s): rebuilding it", url, exc)
        return None
    meta = table.schema.metadata or {}
    if meta.get(METADATA_KEYS["version"]) != str(INDEX_VERSION).encode() or (
        table.schema.remove_metadata() != QUADRANT_INDEX_SCHEMA
    ):
        log.warning("existing index %s has another version or schema: rebuilding it", url)
        return None
    versions = {
        k: (int(v[0]), v[1]) for k, v in json.loads(meta.get(FILES_METADATA_KEY, b"{}")).items()
    }
    prev = _Previous(versions, {}, {}, {}, table.num_rows)
    for row in table.to_pylist():
        q = row["quadrant"]
        prev.det.setdefault(row["det_url"], {})[q] = {c: row[c] for c in _DET_COLS}
        if row["bkg_url"] is not None:
            prev.bkg.setdefault(row["bkg_url"], {})[q] = {c: row[c] for c in _BKG_COLS}
        if row["psf_url"] is not None:
            prev.psf.setdefault(row["psf_url"], {})[q] = {c: row[c] for c in _PSF_COLS}
    return prev


# -- the build -------------------------------------------------------------------------

# What a bad file raises while its headers are parsed (FitsHeaderError is a ValueError;
# astropy's header and WCS code raise the others). Storage errors are OSError: not here.
_BAD_FILE = (ValueError, KeyError, TypeError, IndexError)


def _problem(exc: BaseException, e: ExposureFiles) -> str:
    """One line naming the file and the problem (the DET file unless the message names one)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, KeyError):
        text = f"missing header keyword: {text}"
    urls = [ref.url for ref in (e.det, e.bkg, e.psf) if ref is not None]
    if any(url in text for url in urls):
        return text
    return f"{urls[0]}: {text}"


class _Builder:
    def __init__(self, storage: Storage, prev: _Previous | None, range_workers: int) -> None:
        self.storage = storage
        self.prev = prev
        self.pool = ThreadPoolExecutor(max_workers=max(1, range_workers))
        self.lock = threading.Lock()
        self.summary_counts: dict[str, int] = {}
        self.rounds = 0
        self.header_bytes = 0
        self.psf_futures: dict[str, Future[dict[str, dict[str, Any]]]] = {}
        self.bkg_cache: dict[str, dict[str, dict[str, Any]]] = {}

    def count(self, name: str) -> None:
        with self.lock:
            self.summary_counts[name] = self.summary_counts.get(name, 0) + 1

    def scan(self, ref: FileRef) -> ExtensionScan:
        scan = read_extension_headers(self.storage, ref.url, size=ref.size, executor=self.pool)
        with self.lock:
            self.rounds = max(self.rounds, scan.rounds)
            self.header_bytes += scan.header_bytes_total
        return scan

    def _cached(
        self, ref: FileRef, kind: str, old: dict[str, dict[str, dict[str, Any]]] | None
    ) -> dict[str, dict[str, Any]]:
        prev = self.prev
        if prev is not None and old is not None and prev.unchanged(ref) and ref.url in old:
            self.count(f"{kind}_skipped")
            return old[ref.url]
        self.count(f"{kind}_read")
        return _part_rows(ref.url, kind, self.scan(ref))

    def psf_part(self, ref: FileRef) -> dict[str, dict[str, Any]]:
        """The PSF part of a PSF file, read at most once per URL (shared by exposures)."""
        with self.lock:
            fut = self.psf_futures.get(ref.url)
            owner = fut is None
            if fut is None:
                fut = Future()
                self.psf_futures[ref.url] = fut
        if owner:
            try:
                fut.set_result(self._cached(ref, "psf", self.prev.psf if self.prev else None))
            except BaseException as exc:
                fut.set_exception(exc)
        return fut.result()

    def exposure_rows(self, e: ExposureFiles) -> list[dict[str, Any]]:
        assert e.det is not None
        prev = self.prev
        if prev is not None and prev.unchanged(e.det) and e.det.url in prev.det:
            self.count("det_skipped")
            det = prev.det[e.det.url]
        else:
            self.count("det_read")
            det = _det_rows(e, self.scan(e.det))
        bkg = self._cached(e.bkg, "bkg", prev.bkg if prev else None) if e.bkg else {}
        psf = self.psf_part(e.psf) if e.psf else {}
        rows = []
        for qid, det_cols in det.items():
            row = dict(det_cols)
            row.update(bkg.get(qid) or _null_part(_BKG_COLS))
            row.update(psf.get(qid) or _null_part(_PSF_COLS))
            if e.bkg is not None and qid not in bkg:
                log.warning("%s: no extension %s", e.bkg.url, qid)
            if e.psf is not None and qid not in psf:
                log.warning("%s: no extension %s", e.psf.url, qid)
            rows.append(row)
        return rows


def _to_table(rows: list[dict[str, Any]], versions: dict[str, list[Any]]) -> pa.Table:
    if rows:
        hp = radec_to_index(
            np.array([r["center_ra"] for r in rows]), np.array([r["center_dec"] for r in rows])
        )
        for r, h in zip(rows, hp.tolist(), strict=True):
            r["healpix"] = h
        rows.sort(key=lambda r: (r["healpix"], r["exposure"], r["quadrant"]))
    table = pa.Table.from_pylist(rows, schema=QUADRANT_INDEX_SCHEMA)
    return table.replace_schema_metadata(
        {
            METADATA_KEYS["version"]: str(INDEX_VERSION).encode(),
            METADATA_KEYS["healpix_order"]: str(HEALPIX_ORDER).encode(),
            FILES_METADATA_KEY: json.dumps(versions, sort_keys=True).encode(),
        }
    )


def build_quadrant_index(
    storage: Storage,
    observations: ObservationIndex | str,
    out_url: str,
    *,
    full: bool = False,
    workers: int = 8,
    range_workers: int = DEFAULT_RANGE_WORKERS,
    progress: ProgressFn | None = None,
) -> IndexSummary:
    """Build or update the quadrant index at ``out_url`` (Parquet, written atomically).

    Parameters
    ----------
    storage
        Reads the VIS files, reads and writes the index.
    observations
        The observation index, or a VIS prefix URL to list
        (:func:`~constellation.io.observations.list_observations`).
    out_url
        Where the index is (if it exists and ``full`` is false, the build is
        incremental) and is written.
    workers
        Files indexed concurrently.
    range_workers
        Concurrent ranged reads (a pool shared by all files).
    progress
        ``progress(done, total)`` over the exposures.
    """
    from constellation.io.observations import list_observations

    t0 = time.perf_counter()
    before = storage.stats.snapshot()
    if isinstance(observations, str):
        obs = list_observations(storage, observations)
    else:
        obs = observations
    prev = None if full else _load_previous(storage, out_url)
    total = len(obs.exposures)
    if prev is not None and prev.versions == _file_versions(obs):
        # every file indexed before, none changed, none added or removed: the index
        # is up to date as it is (not rebuilt, not rewritten)
        if progress:
            progress(total, total)
        return _unchanged_summary(storage, obs, out_url, prev, before, t0)
    builder = _Builder(storage, prev, range_workers)
    done = 0
    if progress:
        progress(0, total)
    rows: list[dict[str, Any]] = []
    failed: dict[str, str] = {}
    try:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            futures = [pool.submit(builder.exposure_rows, e) for e in obs.exposures]
            for e, fut in zip(obs.exposures, futures, strict=True):
                try:
                    rows.extend(fut.result())
                except _BAD_FILE as exc:  # this exposure is left out, the others go on
                    failed[e.key] = _problem(exc, e)
                    log.info("exposure %s left out of the index: %s", e.key, failed[e.key])
                done += 1
                if progress:
                    progress(done, total)
    finally:
        builder.pool.shutdown(wait=True)
    versions: dict[str, list[Any]] = {}
    for e in obs.exposures:
        if e.key in failed:
            continue  # not recorded as indexed: the next build reads its files again
        for ref in (e.det, e.bkg, e.psf):
            if ref is not None:
                versions[ref.url] = [ref.size, ref.etag]
    table = _to_table(rows, versions)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd", row_group_size=ROW_GROUP_SIZE)
    payload = buf.getvalue()
    # Rewrite only when the content changes: the prepare stage fingerprints the index
    # file (size, mtime/ETag), so an unchanged index keeps every prepared tile "done".
    unchanged = False
    if prev is not None:
        try:
            unchanged = storage.read_bytes(out_url) == payload
        except OSError:
            unchanged = False
    written = not (failed and not rows)  # no exposure indexed at all: nothing written
    if written and not unchanged:
        storage.write_bytes(out_url, payload)

    after = storage.stats.snapshot()
    c = builder.summary_counts
    current = {e.det.url for e in obs.exposures if e.det is not None}
    return IndexSummary(
        url=out_url,
        exposures=total,
        quadrant_exposures=table.num_rows,
        det_read=c.get("det_read", 0),
        det_skipped=c.get("det_skipped", 0),
        bkg_read=c.get("bkg_read", 0),
        bkg_skipped=c.get("bkg_skipped", 0),
        psf_read=c.get("psf_read", 0),
        psf_skipped=c.get("psf_skipped", 0),
        det_removed=len(set(prev.det) - current) if prev else 0,
        unmatched=list(obs.unmatched),
        incomplete=[e.key for e in obs.incomplete],
        failed=failed,
        written=written,
        requests=after.requests - before.requests,
        rounds=builder.rounds,
        bytes_read=after.bytes_read - before.bytes_read,
        header_bytes=builder.header_bytes,
        seconds=time.perf_counter() - t0,
    )


def _file_versions(obs: ObservationIndex) -> dict[str, tuple[int, str | None]]:
    """(size, ETag) of every DET, BKG and PSF file of ``obs``, by URL."""
    return {
        ref.url: (ref.size, ref.etag)
        for e in obs.exposures
        for ref in (e.det, e.bkg, e.psf)
        if ref is not None
    }


def _unchanged_summary(
    storage: Storage,
    obs: ObservationIndex,
    out_url: str,
    prev: _Previous,
    before: Any,
    t0: float,
) -> IndexSummary:
    """The summary of a build that found every file as the index records it."""
    after = storage.stats.snapshot()
    kinds = Counter(
        kind
        for kind, _ in {
            (kind, ref.url)  # a PSF file can serve several exposures: counted once
            for e in obs.exposures
            for kind, ref in (("det", e.det), ("bkg", e.bkg), ("psf", e.psf))
            if ref is not None
        }
    )
    return IndexSummary(
        url=out_url,
        exposures=len(obs.exposures),
        quadrant_exposures=prev.rows,
        det_skipped=kinds["det"],
        bkg_skipped=kinds["bkg"],
        psf_skipped=kinds["psf"],
        unmatched=list(obs.unmatched),
        incomplete=[e.key for e in obs.incomplete],
        requests=after.requests - before.requests,
        bytes_read=after.bytes_read - before.bytes_read,
        seconds=time.perf_counter() - t0,
    )


def read_quadrant_index(
    storage: Storage, url: str, columns: Sequence[str] | None = None
) -> pa.Table:
    """Read the quadrant index (all of it, or some ``columns``) with its metadata."""
    data = storage.read_bytes(url)
    return pq.read_table(io.BytesIO(data), columns=list(columns) if columns else None)
