"""The quadrant index: one row per quadrant exposure (exposure x CCD quadrant).

A pure contract: column names, types and meaning, and the Parquet metadata that
readers rely on. :mod:`constellation.io.quadrant_index` builds it from the DET,
BKG and PSF headers (ranged reads); :mod:`constellation.io.quadrant_index`
also reads slices of it; matching uses it to find the quadrant exposures of a
sub-tile.

Rows are sorted by ``healpix`` (the NESTED index at order 29 of the quadrant's
centre), so a region of sky is a few contiguous row ranges: a reader turns the
region (grown by :data:`MAX_QUADRANT_RADIUS_DEG`, so that every quadrant
touching it has its centre inside) into index ranges and reads only the row
groups whose ``healpix`` statistics overlap them.

Byte offsets are absolute positions in the file: ``*_header_offset`` is where
the extension's header starts, ``*_data_offset`` where its data unit starts
(``= header_offset + header_bytes``), ``*_data_bytes`` the data unit's length
without the FITS padding. A reader fetches ``[data_offset, data_offset +
data_bytes)`` to get exactly one extension's pixels.
"""

from __future__ import annotations

import pyarrow as pa

__all__ = [
    "FOOTPRINT_VERTICES",
    "INDEX_VERSION",
    "MAX_QUADRANT_RADIUS_DEG",
    "METADATA_KEYS",
    "QUADRANT_INDEX_SCHEMA",
    "exposure_key",
]

#: Bumped when the schema changes incompatibly.
INDEX_VERSION = 1

#: Vertices of the stored footprint polygon: 8 per edge of the quadrant,
#: through the pixel edges (-0.5 and N-0.5, 0-based) with the full TPV WCS,
#: grown outwards by a safety margin so that the polygon covers the quadrant.
FOOTPRINT_VERTICES = 32

#: Upper bound on the angular distance from a quadrant's centre to any point of
#: it (a VIS quadrant is 204.8" x 206.6": half-diagonal 145.5"; with margin).
MAX_QUADRANT_RADIUS_DEG = 160.0 / 3600.0

#: Keys of the Parquet file's key-value metadata.
METADATA_KEYS = {
    "version": b"constellation.quadrant_index.version",
    "healpix_order": b"constellation.quadrant_index.healpix_order",
}


def exposure_key(obs_id: int, dither: int, expnum: int) -> str:
    """The exposure key ``"{obs:06d}-{dither:02d}-{n}"`` (as in the SWL file names)."""
    return f"{obs_id:06d}-{dither:02d}-{expnum}"


def _ext_fields(prefix: str) -> list[pa.Field]:
    return [
        pa.field(f"{prefix}_header_offset", pa.int64(), nullable=False),
        pa.field(f"{prefix}_header_bytes", pa.int64(), nullable=False),
        pa.field(f"{prefix}_data_offset", pa.int64(), nullable=False),
        pa.field(f"{prefix}_data_bytes", pa.int64(), nullable=False),
    ]


#: The Arrow schema of the index (field order is part of the contract).
QUADRANT_INDEX_SCHEMA = pa.schema(
    [
        # where: the sort key, then the geometry
        pa.field("healpix", pa.int64(), nullable=False),  # NESTED order 29 of the centre
        pa.field("center_ra", pa.float64(), nullable=False),
        pa.field("center_dec", pa.float64(), nullable=False),
        pa.field("footprint_ra", pa.list_(pa.float64()), nullable=False),
        pa.field("footprint_dec", pa.list_(pa.float64()), nullable=False),
        # which quadrant exposure
        pa.field("exposure", pa.string(), nullable=False),  # exposure_key()
        pa.field("obs_id", pa.int32(), nullable=False),
        pa.field("dither", pa.int16(), nullable=False),
        pa.field("expnum", pa.int16(), nullable=False),  # 1 nominal, 2 short (check exptime)
        pa.field("quadrant", pa.string(), nullable=False),  # "3-4.F"
        pa.field("exptime", pa.float64(), nullable=False),  # s
        pa.field("magzerop", pa.float64(), nullable=False),  # AB for 1 ADU/s, as float
        pa.field("gain", pa.float64(), nullable=False),  # e-/ADU
        pa.field("naxis1", pa.int32(), nullable=False),
        pa.field("naxis2", pa.int32(), nullable=False),
        pa.field("wcs_header", pa.string(), nullable=False),  # WCS cards of the SCI header
        # the DET file and its three extensions for this quadrant
        pa.field("det_url", pa.string(), nullable=False),
        pa.field("det_size", pa.int64(), nullable=False),
        pa.field("det_etag", pa.string(), nullable=True),
        *_ext_fields("sci"),
        *_ext_fields("rms"),
        *_ext_fields("flg"),
        # background map and PSF grid extensions (null when the file is absent)
        pa.field("bkg_url", pa.string(), nullable=True),
        pa.field("bkg_header_offset", pa.int64(), nullable=True),
        pa.field("bkg_header_bytes", pa.int64(), nullable=True),
        pa.field("bkg_data_offset", pa.int64(), nullable=True),
        pa.field("bkg_data_bytes", pa.int64(), nullable=True),
        pa.field("psf_url", pa.string(), nullable=True),
        pa.field("psf_header_offset", pa.int64(), nullable=True),
        pa.field("psf_header_bytes", pa.int64(), nullable=True),
        pa.field("psf_data_offset", pa.int64(), nullable=True),
        pa.field("psf_data_bytes", pa.int64(), nullable=True),
    ]
)
