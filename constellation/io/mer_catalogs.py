"""MER final catalogs: find a tile's catalog and read the columns prepare needs.

Catalogs live at
``{data_uri}/q1/catalogs/MER_FINAL_CATALOG/{tile}/EUC_MER_FINAL-CAT_TILE{tile}-*.fits``;
when several versions exist the newest (largest name: the names embed a
timestamp) wins. Columns are returned with lower-case names, as SHINE reads
them; ``object_id`` stays int64 and nulls (``POINT_LIKE_FLAG``) stay nulls.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from constellation.io.storage import FileInfo, join_url

if TYPE_CHECKING:
    from constellation.io.storage import Storage

__all__ = ["MER_COLUMNS", "MerCatalogError", "catalog_pattern", "find_catalog", "read_mer_catalog"]

#: MER columns prepare keeps (those present in a file), FITS names.
MER_COLUMNS = (
    "OBJECT_ID",
    "RIGHT_ASCENSION",
    "DECLINATION",
    "FLUX_DETECTION_TOTAL",
    "FLUXERR_DETECTION_TOTAL",
    "VIS_DET",
    "SPURIOUS_FLAG",
    "POINT_LIKE_FLAG",
    "DET_QUALITY_FLAG",
    "DEBLENDED_FLAG",
    "SEMIMAJOR_AXIS",
    "FWHM",
    "SEGMENTATION_MAP_ID",
)

_REQUIRED = ("OBJECT_ID", "RIGHT_ASCENSION", "DECLINATION")


class MerCatalogError(ValueError):
    """A MER catalog is missing or unreadable."""


def catalog_pattern(data_uri: str, tile_id: int) -> str:
    """Glob pattern of a tile's MER final catalog files."""
    tid = int(tile_id)
    return join_url(
        data_uri, "q1", "catalogs", "MER_FINAL_CATALOG", str(tid),
        f"EUC_MER_FINAL-CAT_TILE{tid}-*.fits",
    )  # fmt: skip


def find_catalog(storage: Storage, data_uri: str, tile_id: int) -> FileInfo | None:
    """The newest MER final catalog of a tile (with size and ETag), or ``None``."""
    infos = [i for i in storage.glob_info(catalog_pattern(data_uri, tile_id)) if i.type == "file"]
    if not infos:
        return None
    return max(infos, key=lambda i: i.url.rsplit("/", 1)[-1])


def read_mer_catalog(
    storage: Storage, url: str, columns: tuple[str, ...] = MER_COLUMNS
) -> pa.Table:
    """Read the wanted columns of a MER catalog into Arrow (lower-case names).

    Parameters
    ----------
    storage
        Where the file lives.
    url
        The catalog FITS file.
    columns
        FITS column names wanted; those absent from the file are skipped, but
        OBJECT_ID, RIGHT_ASCENSION and DECLINATION are required.
    """
    from astropy.io import fits

    data = storage.read_bytes(url)
    try:
        with fits.open(io.BytesIO(data), memmap=False, lazy_load_hdus=True) as hdul:
            hdu = next((h for h in hdul if isinstance(h, fits.BinTableHDU)), None)
            if hdu is None:
                raise MerCatalogError(f"{url}: no binary table extension")
            present = {n.upper(): n for n in hdu.columns.names}
            missing = [c for c in _REQUIRED if c not in present]
            if missing:
                raise MerCatalogError(f"{url}: missing column(s) {missing}")
            arrays: dict[str, pa.Array] = {}
            for name in columns:
                fits_name = present.get(name.upper())
                if fits_name is None:
                    continue
                col = hdu.columns[fits_name]
                raw = np.asarray(hdu.data.field(fits_name))
                values = raw.astype(raw.dtype.newbyteorder("="), copy=True)
                mask = None
                if col.null is not None and np.issubdtype(values.dtype, np.integer):
                    mask = values == int(col.null)
                arrays[name.lower()] = pa.array(values, mask=mask)
    except OSError as exc:
        raise MerCatalogError(f"{url}: cannot read catalog: {exc}") from exc
    table = pa.table(arrays)
    if table.column("object_id").type != pa.int64():
        if not pa.types.is_integer(table.column("object_id").type):
            raise MerCatalogError(f"{url}: OBJECT_ID is not an integer column")
        i = table.schema.get_field_index("object_id")
        table = table.set_column(i, "object_id", table.column("object_id").cast(pa.int64()))
    return table
