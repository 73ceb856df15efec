"""MER final catalogs: find a tile's catalog and read the columns prepare needs.

Catalogs live at
``{data_uri}/q1/catalogs/MER_FINAL_CATALOG/{tile}/EUC_MER_FINAL-CAT_TILE{tile}-*.fits``;
when several versions exist the newest (largest name: the names embed a
timestamp) wins. Columns are returned with lower-case names, as SHINE reads
them; ``object_id`` stays int64 and nulls (``POINT_LIKE_FLAG``) stay nulls.
"""

from __future__ import annotations

import io
import warnings
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
        with (
            warnings.catch_warnings(),
            fits.open(io.BytesIO(data), memmap=False, lazy_load_hdus=True) as hdul,
        ):
            # a short file is an error here, not a warning and a partial table
            warnings.filterwarnings("error", message="File may have been truncated")
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
                if raw.dtype.kind not in "biuf" or raw.ndim != 1:
                    raise MerCatalogError(
                        f"{url}: column {name} has type {raw.dtype}"
                        f"{'' if raw.ndim == 1 else f' of shape {raw.shape}'}, expected numbers"
                    )
                values = raw.astype(raw.dtype.newbyteorder("="), copy=True)
                mask = None
                if col.null is not None and np.issubdtype(values.dtype, np.integer):
                    mask = values == int(col.null)
                arrays[name.lower()] = pa.array(values, mask=mask)
    except MerCatalogError:
        raise
    except (OSError, ValueError, TypeError, KeyError, IndexError, Warning) as exc:
        # astropy reports a truncated or garbled file in many ways
        problem = " ".join(str(exc).split()) or type(exc).__name__
        raise MerCatalogError(f"{url}: cannot read catalog: {problem}") from exc
    table = pa.table(arrays)
    _check_table(url, table)
    if table.column("object_id").type != pa.int64():
        i = table.schema.get_field_index("object_id")
        table = table.set_column(i, "object_id", table.column("object_id").cast(pa.int64()))
    return table


def _check_table(url: str, table: pa.Table) -> None:
    """Raise :class:`MerCatalogError` for what prepare cannot partition correctly:
    non-integer or duplicate OBJECT_IDs, non-float or non-finite coordinates."""
    if not pa.types.is_integer(table.column("object_id").type):
        raise MerCatalogError(f"{url}: OBJECT_ID is not an integer column")
    for name in ("right_ascension", "declination"):
        if not pa.types.is_floating(table.column(name).type):
            raise MerCatalogError(
                f"{url}: {name.upper()} is {table.column(name).type}, expected floats"
            )
    ra = table.column("right_ascension").to_numpy(zero_copy_only=False)
    dec = table.column("declination").to_numpy(zero_copy_only=False)
    bad = ~(np.isfinite(ra) & np.isfinite(dec) & (np.abs(dec) <= 90.0))
    if bad.any():
        ids = table.column("object_id").to_numpy(zero_copy_only=False)[bad][:3].tolist()
        raise MerCatalogError(
            f"{url}: {int(bad.sum())} row(s) with non-finite or out-of-range "
            f"RIGHT_ASCENSION/DECLINATION (OBJECT_ID {', '.join(map(str, ids))}"
            f"{', ...' if bad.sum() > 3 else ''})"
        )
    ids = table.column("object_id").to_numpy(zero_copy_only=False)
    uniq, counts = np.unique(ids, return_counts=True)
    dup = uniq[counts > 1]
    if dup.size:
        raise MerCatalogError(
            f"{url}: {dup.size} duplicate OBJECT_ID(s) "
            f"({', '.join(map(str, dup[:3].tolist()))}{', ...' if dup.size > 3 else ''})"
        )
