"""Write a planned field to storage in the Euclid Q1 layout.

Layout under the field root (the same keys as ``s3://nasa-irsa-euclid-q1``)::

    q1/VIS/{obs}/EUC_VIS_SWL-{DET,BKG,WGT}-{obs:06d}-{dither:02d}-{n}-0000000__{ts}.fits
    q1/VIS/{obs}/EUC_VIS_GRD-PSF-000-000000-0000000__{ts}.fits      (global PSF, a copy per obs)
    q1/MER/{tile}/VIS/EUC_MER_BGSUB-MOSAIC-VIS_TILE{tile}-{hash}_{ts}_00.00.fits  (header only)
    q1/catalogs/MER_FINAL_CATALOG/{tile}/EUC_MER_FINAL-CAT_TILE{tile}-{hash}_{ts}_00.00.fits
    truth/field.json, truth/sources.parquet, truth/registry.parquet    (simulator truth)
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
from astropy.io import fits
from astropy.table import MaskedColumn, Table

from constellation.io.fits import Card, card_image, cards_to_header_bytes, pad_bytes
from constellation.io.storage import local_path
from constellation.simulate import focal_plane
from constellation.simulate.field import Exposure, FieldPlan
from constellation.simulate.fitsbytes import HduSpec, assemble_bytes, header_only, write_sparse
from constellation.simulate.psf import psf_grid, psf_parameters
from constellation.simulate.render import RenderSources, render_quadrant
from constellation.simulate.sources import CATALOG_COLUMNS, SourceSet
from constellation.sky import Tile, sky_to_plane

if TYPE_CHECKING:
    from constellation.io.storage import Storage

__all__ = [
    "catalog_key",
    "exposure_key",
    "mosaic_key",
    "psf_key",
    "write_field_files",
]

#: Quadrant geometry of the real VIS detector (pixels).
QUAD_NX, QUAD_NY = 2048, 2066
#: Mosaic geometry of a Wide tile's VIS mosaic: 0.1"/px over the extended area.
MOSAIC_PIXEL_ARCSEC = 0.1

_ProgressFn = Callable[[str], None]


def _ts(t: datetime) -> str:
    return t.strftime("%Y%m%dT%H%M%S.%f") + "Z"


def _hash6(*parts: object) -> str:
    return hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()[:6].upper()


def exposure_key(e: Exposure, kind: str) -> str:
    """Key of an exposure's DET/BKG/WGT file (``kind`` in DET, BKG, WGT)."""
    offset = {"DET": 0, "BKG": 1_234_567, "WGT": 2_345_678}[kind]  # processing times differ
    ts = _ts(e.timestamp + timedelta(microseconds=offset))
    return (
        f"q1/VIS/{e.obs_id}/EUC_VIS_SWL-{kind}-{e.obs_id:06d}-{e.dither:02d}-{e.n}"
        f"-0000000__{ts}.fits"
    )


def psf_key(obs_id: int, t: datetime) -> str:
    return f"q1/VIS/{obs_id}/EUC_VIS_GRD-PSF-000-000000-0000000__{_ts(t)}.fits"


def mosaic_key(tile_id: int, t: datetime) -> str:
    return (
        f"q1/MER/{tile_id}/VIS/EUC_MER_BGSUB-MOSAIC-VIS_TILE{tile_id}-{_hash6('mos', tile_id)}"
        f"_{_ts(t)}_00.00.fits"
    )


def catalog_key(tile_id: int, t: datetime) -> str:
    return (
        f"q1/catalogs/MER_FINAL_CATALOG/{tile_id}/EUC_MER_FINAL-CAT_TILE{tile_id}"
        f"-{_hash6('cat', tile_id)}_{_ts(t)}_00.00.fits"
    )


# -- pixel content -------------------------------------------------------------------


def _quadrant_keywords(e: Exposure, qid: str, rng: np.random.Generator) -> dict[str, Any]:
    gain = float(rng.normal(3.48, 0.04))
    zp = round(float(rng.normal(24.57, 0.02)), 5)
    # Some MAGZEROP values are strings in real headers: keep a few that way.
    zp_value: float | str = f"{zp:.5f}" if rng.uniform() < 0.15 else zp
    return {
        "BUNIT": "ADU",
        "GAIN": (round(gain, 4), "e-/ADU"),
        "RDNOISE": (round(float(rng.normal(2.9, 0.1)), 3), "read noise, e-"),
        "EXPTIME": (e.exptime_s, "exposure time, s"),
        "MAGZEROP": (zp_value, "AB zero point for 1 ADU/s"),
        "SATURATE": (round(200_000.0 / gain, 1), "saturation level, ADU"),
        "SATLEVEL": (200_000.0, "saturation level, e-"),
        "RA": (e.ra_deg, "pointing RA, deg"),
        "DEC": (e.dec_deg, "pointing Dec, deg"),
        "PA": (e.pa_deg, "position angle, deg"),
    }


def _sky_level_adu(e: Exposure) -> float:
    return 0.8 * e.exptime_s  # ~0.8 ADU/s per native pixel


def _light_arrays(
    shape: tuple[int, int], e: Exposure, gain: float, rdnoise: float, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Background + noise, flags, background and weight maps (no sources)."""
    ny, nx = shape
    yy, xx = np.mgrid[0:ny, 0:nx]
    bkg = (_sky_level_adu(e) * (1 + 0.02 * (xx / nx - 0.5) + 0.01 * (yy / ny - 0.5))).astype(
        np.float32
    )
    rms = np.sqrt((rdnoise / gain) ** 2 + bkg / gain).astype(np.float32)
    sci = (bkg + rng.normal(0, 1, shape) * rms).astype(np.float32)
    flg = np.zeros(shape, dtype=np.int32)
    col = int(rng.integers(0, nx))
    flg[:, col] = 1 | 128  # INVALID | BAD_COLUMN
    hot = rng.integers(0, ny * nx, 3)
    flg.ravel()[hot] = 1 | 2  # INVALID | HOT
    wgt = np.where(flg & 1, 0.0, rng.normal(1.0, 0.01, shape)).astype(np.float32)
    return {"SCI": sci, "RMS": rms, "FLG": flg, "BKG": bkg, "WGT": wgt}


_SKIP = {"SIMPLE", "XTENSION", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "PCOUNT", "GCOUNT",
         "EXTNAME", "EXTEND"}  # fmt: skip


def _base_images(cards: list[Card]) -> str:
    """The images of a quadrant's WCS/keyword cards, formatted once for its layers."""
    return "".join(card_image(k, v, c) for k, v, c in cards if k not in _SKIP)


def _image_hdu(base: str, nx: int, ny: int, extname: str, bitpix: int,
               data: np.ndarray | None) -> HduSpec:  # fmt: skip
    """An IMAGE extension from pre-formatted WCS/keyword card images (fast path)."""
    cards: list[Card] = [
        ("XTENSION", "IMAGE", "image extension"),
        ("BITPIX", bitpix, ""),
        ("NAXIS", 2, ""),
        ("NAXIS1", nx, ""),
        ("NAXIS2", ny, ""),
        ("PCOUNT", 0, ""),
        ("GCOUNT", 1, ""),
        ("EXTNAME", extname, ""),
    ]
    n = nx * ny * abs(bitpix) // 8
    return HduSpec(cards_to_header_bytes(cards, base), data, n + pad_bytes(n))


def _primary_header(e: Exposure | None, extra: dict[str, Any]) -> fits.Header:
    h = fits.Header()
    h["SIMPLE"] = True
    h["BITPIX"] = 8
    h["NAXIS"] = 0
    h["EXTEND"] = True
    h["TELESCOP"] = "EUCLID"
    h["INSTRUME"] = "VIS"
    h["ORIGIN"] = "constellation simulator (synthetic data)"
    if e is not None:
        h["OBS_ID"] = (e.obs_id, "observation id")
        h["DITHOBS"] = (e.dither, "dither index in the observation")
        h["EXPNUM"] = (e.n, "exposure id in dither")
        h["PTGID"] = (e.obs_id * 10 + e.dither, "pointing id")
        h["EXPTIME"] = (e.exptime_s, "exposure time, s")
        h["TOTEXP"] = (e.exptime_s, "total exposure time, s")
        h["OBSMODE"] = "NOMINAL" if e.n == 1 else "SHORT"
        h["RA"] = (e.ra_deg, "pointing RA (focal-plane centre), deg")
        h["DEC"] = (e.dec_deg, "pointing Dec (focal-plane centre), deg")
        h["PA"] = (e.pa_deg, "position angle, deg")
        h["DATE"] = e.timestamp.strftime("%Y-%m-%dT%H:%M:%S.%f")
        h["MAGZEROP"] = (24.57, "mean zero point")
    for k, v in extra.items():
        h[k] = v
    return h


def _rendered(
    plan: FieldPlan,
    e: Exposure,
    qid: str,
    wcs_header: fits.Header,
    kw: dict[str, Any],
    sources: SourceSet,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """Pixels of one quadrant with the field's galaxies drawn in (``pixels`` mode)."""
    t = sources.truth
    x, y = sky_to_plane(t["ra"], t["dec"], float(wcs_header["CRVAL1"]), float(wcs_header["CRVAL2"]))
    near = np.flatnonzero(np.hypot(x, y) < 4.0)  # arcmin; a quadrant is ~3.4' across
    sel = RenderSources(
        ra=t["ra"][near],
        dec=t["dec"][near],
        flux_ujy=t["flux_ujy"][near],
        hlr_arcsec=t["hlr_arcsec"][near],
        e1=t["e1_intrinsic"][near],
        e2=t["e2_intrinsic"][near],
        g1=t["g1"][near],
        g2=t["g2"][near],
        is_star=t["is_star"][near],
    )
    index = focal_plane.QUADRANT_IDS.index(qid)
    renderer = plan.spec.renderer
    return render_quadrant(
        wcs_header,
        psf_grid(np.random.default_rng([plan.spec.seed, 5, index]), renderer),
        sel,
        zeropoint=float(kw["MAGZEROP"][0]),
        exptime_s=e.exptime_s,
        gain=float(kw["GAIN"][0]),
        rdnoise_e=float(kw["RDNOISE"][0]),
        sky_adu=_sky_level_adu(e),
        rng=rng,
        pixel_noise=plan.spec.pixel_noise,
        renderer=renderer,
        psf_params=psf_parameters(np.random.default_rng([plan.spec.seed, 5, index])),
    )


@dataclass
class _Quadrant:
    """What every file of an exposure (DET, BKG, WGT) writes of one quadrant: its header
    card images after the size cards, its shape, and its pixel layers (none when sparse)."""

    images: str
    nx: int
    ny: int
    arrays: dict[str, np.ndarray] | None


def _exposure_quadrants(
    plan: FieldPlan, e: Exposure, sparse: bool, sources: SourceSet
) -> dict[str, _Quadrant]:
    """The quadrants of one exposure, made once for its three files (each quadrant from
    its own random stream, so the bytes do not depend on the order they are made in)."""
    spec = plan.spec
    binning = spec.light_binning if spec.mode == "light" else 1
    out: dict[str, _Quadrant] = {}
    for index, qid in enumerate(focal_plane.QUADRANT_IDS):
        rng = np.random.default_rng([spec.seed, 4, e.obs_id, e.dither, e.n, index])
        cards = focal_plane.quadrant_wcs_cards(qid, e.ra_deg, e.dec_deg, e.pa_deg, binning=binning)
        values = {c[0]: c[1] for c in cards}
        nx, ny = int(values["NAXIS1"]), int(values["NAXIS2"])  # type: ignore[call-overload]
        kw = _quadrant_keywords(e, qid, rng)
        cards.extend((k, v[0], v[1]) if isinstance(v, tuple) else (k, v, "") for k, v in kw.items())
        arrays = None
        if spec.mode == "pixels" and qid in spec.pixel_quadrants:
            arrays = _rendered(plan, e, qid, fits.Header(cards), kw, sources, rng)
        elif not sparse:
            arrays = _light_arrays((ny, nx), e, float(kw["GAIN"][0]), float(kw["RDNOISE"][0]), rng)
        out[qid] = _Quadrant(_base_images(cards), nx, ny, arrays)
    return out


def _exposure_hdus(
    plan: FieldPlan, e: Exposure, kind: str, quadrants: dict[str, _Quadrant]
) -> Iterator[HduSpec]:
    """HDUs of one exposure file; DET extensions in a shuffled (non-sorted) order."""
    spec = plan.spec
    yield HduSpec(_primary_header(e, {"FILETYPE": kind}))
    order_rng = np.random.default_rng([spec.seed, 3, e.obs_id, e.dither, e.n])
    qids = list(focal_plane.QUADRANT_IDS)
    names: list[tuple[str, str]] = []
    if kind == "DET":
        names = [(q, s) for q in qids for s in ("SCI", "RMS", "FLG")]
        names = [names[i] for i in order_rng.permutation(len(names))]
    else:
        names = [(q, kind) for q in qids]
    for qid, layer in names:
        q = quadrants[qid]
        extname = f"{qid}.{layer}" if kind == "DET" else qid
        bitpix = 32 if layer == "FLG" else -32
        data = q.arrays[layer] if q.arrays is not None else None
        yield _image_hdu(q.images, q.nx, q.ny, extname, bitpix, data)


def _psf_hdus(plan: FieldPlan) -> Iterator[HduSpec]:
    yield HduSpec(_primary_header(None, {"FILETYPE": "PSF", "PSFSTAMP": 21, "PSFGRID": 9}))
    for i, qid in enumerate(focal_plane.QUADRANT_IDS):
        grid = psf_grid(np.random.default_rng([plan.spec.seed, 5, i]), plan.spec.renderer)
        h = fits.Header()
        h["XTENSION"] = "IMAGE"
        h["BITPIX"] = -32
        h["NAXIS"] = 2
        h["NAXIS1"] = grid.shape[1]
        h["NAXIS2"] = grid.shape[0]
        h["PCOUNT"] = 0
        h["GCOUNT"] = 1
        h["EXTNAME"] = qid
        h["STMPSIZE"] = (21, "stamp size, px")
        h["GRIDNX"] = (9, "stamps along x")
        h["GRIDNY"] = (9, "stamps along y")
        yield HduSpec(h, grid)


def mosaic_header(tile: Tile) -> fits.Header:
    """Primary header of a tile's VIS BGSUB mosaic: TAN at the tile centre, 0.1"/px."""
    n = round(tile.extended_size_arcmin * 60.0 / MOSAIC_PIXEL_ARCSEC)
    h = fits.Header()
    h["SIMPLE"] = True
    h["BITPIX"] = -32
    h["NAXIS"] = 2
    h["NAXIS1"] = n
    h["NAXIS2"] = n
    h["EXTEND"] = True
    h["TELESCOP"] = "EUCLID"
    h["INSTRUME"] = "VIS"
    h["TILEID"] = (tile.tile_id, "MER tile index")
    h["CTYPE1"] = "RA---TAN"
    h["CTYPE2"] = "DEC--TAN"
    h["CUNIT1"] = "deg"
    h["CUNIT2"] = "deg"
    h["CRVAL1"] = tile.ra_deg
    h["CRVAL2"] = tile.dec_deg
    h["CRPIX1"] = (n + 1) / 2.0
    h["CRPIX2"] = (n + 1) / 2.0
    h["CD1_1"] = -MOSAIC_PIXEL_ARCSEC / 3600.0
    h["CD1_2"] = 0.0
    h["CD2_1"] = 0.0
    h["CD2_2"] = MOSAIC_PIXEL_ARCSEC / 3600.0
    h["RADESYS"] = "ICRS"
    h["EQUINOX"] = 2000.0
    h["BUNIT"] = "ADU/s"
    h["MAGZERO"] = (24.445, "AB zero point")
    h["CENTERT1"] = "MANUAL"
    h["PSCALET1"] = "MANUAL"
    h["RESAMPT1"] = "LANCZOS3"
    h["COMBINET"] = "WEIGHTED"
    return h


def catalog_bytes(tile_id: int, sources: SourceSet) -> bytes:
    """A tile's MER final catalog (core sources only) as FITS bytes."""
    rows = sources.rows_of_tile(tile_id)
    cols = []
    for name, dtype in CATALOG_COLUMNS.items():
        values = sources.columns[name][rows]
        if name == "POINT_LIKE_FLAG":
            cols.append(
                MaskedColumn(values, name=name, dtype=dtype, mask=sources.point_like_null[rows])
            )
        else:
            cols.append(MaskedColumn(values, name=name, dtype=dtype, mask=None))
    table = Table(cols, masked=False)
    for c in table.itercols():
        if c.name != "POINT_LIKE_FLAG":
            table[c.name] = np.asarray(c)
    hdu = fits.BinTableHDU(table, name="MER_FINAL_CATALOG")
    # 10 characters: a HIERARCH card, as any FITS writer must make it
    hdu.header["HIERARCH TILE_INDEX"] = (tile_id, "MER tile index")
    primary = fits.PrimaryHDU()
    primary.header["HIERARCH TILE_INDEX"] = (tile_id, "MER tile index")
    buf = io.BytesIO()
    fits.HDUList([primary, hdu]).writeto(buf)
    return buf.getvalue()


# -- orchestration ---------------------------------------------------------------------


def write_field_files(
    plan: FieldPlan,
    sources: SourceSet,
    storage: Storage,
    root: str,
    progress: _ProgressFn | None = None,
) -> dict[str, int]:
    """Write every file of the field under ``root``; returns bytes written per kind."""
    spec = plan.spec
    sparse = spec.mode in ("sparse", "pixels")
    local_root = local_path(root)
    if sparse and local_root is None:
        raise ValueError(f"{spec.mode} mode writes sparse files and needs a local root, got {root}")
    written: dict[str, int] = {}

    def put(key: str, data: bytes, kind: str) -> None:
        storage.write_bytes(storage.join(root, key), data)
        written[kind] = written.get(kind, 0) + len(data)
        if progress:
            progress(key)

    def put_sparse(key: str, hdus: Iterator[HduSpec], kind: str) -> None:
        assert local_root is not None
        size = write_sparse(local_root / key, hdus)
        written[kind] = written.get(kind, 0) + size
        if progress:
            progress(key)

    psf = assemble_bytes(_psf_hdus(plan))
    for obs in plan.obs_ids:
        put(psf_key(obs, plan.psf_timestamp), psf, "PSF")
    for e in plan.exposures:
        quadrants = _exposure_quadrants(plan, e, sparse, sources)
        for kind in ("DET", "BKG", "WGT"):
            key = exposure_key(e, kind)
            if sparse:
                put_sparse(key, _exposure_hdus(plan, e, kind, quadrants), kind)
            else:
                put(key, assemble_bytes(_exposure_hdus(plan, e, kind, quadrants)), kind)
    mer_ts = datetime(2024, 10, 18, 14, 27, 10, 276838)
    for tile in plan.tiles:
        put(mosaic_key(tile.tile_id, mer_ts), header_only(mosaic_header(tile)), "MOSAIC")
        put(catalog_key(tile.tile_id, mer_ts), catalog_bytes(tile.tile_id, sources), "CATALOG")
    return written


def field_truth_json(plan: FieldPlan, written: dict[str, int]) -> bytes:
    """``truth/field.json``: the spec, the shear-field form, tiles and exposures."""
    doc = {
        "spec": plan.spec.model_dump(mode="json"),
        "centre": {"ra": plan.centre[0], "dec": plan.centre[1]},
        "shear_field": {
            "form": "g1 = A cos(2 pi u / L), g2 = A sin(2 pi v / L); "
            "u = x cos(theta) + y sin(theta), v = -x sin(theta) + y cos(theta); "
            "(x west, y north) in deg in the plane tangent at the field centre "
            "(the centroid of the tile centres)",
            "A": plan.spec.shear.amplitude,
            "L_deg": plan.spec.shear.wavelength_deg,
            "theta_deg": plan.spec.shear.angle_deg,
        },
        "tiles": [int(t) for t in plan.tiles.tile_id],
        "exposures": [
            {
                "obs_id": e.obs_id,
                "dither": e.dither,
                "n": e.n,
                "ra": e.ra_deg,
                "dec": e.dec_deg,
                "pa": e.pa_deg,
                "exptime": e.exptime_s,
            }
            for e in plan.exposures
        ],
        "bytes_written": written,
    }
    return json.dumps(doc, indent=2, sort_keys=True).encode()
