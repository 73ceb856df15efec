"""Read source positions from catalog files (FITS, Parquet, CSV)."""

from __future__ import annotations

import gzip
import io
import os
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:
    from constellation.io.storage import Storage

__all__ = ["CatalogError", "SourcePositions", "read_positions"]

#: Column names tried for positions and ids, case-insensitively, in order.
RA_NAMES = ("right_ascension", "ra")
DEC_NAMES = ("declination", "dec")
ID_NAMES = ("object_id", "id")


class CatalogError(ValueError):
    """A catalog file cannot be read or lacks the needed columns."""


@dataclass(frozen=True)
class SourcePositions:
    """Positions (float64 deg) and, when present, int64 object ids of a catalog."""

    ra: NDArray[np.float64]
    dec: NDArray[np.float64]
    object_id: NDArray[np.int64] | None

    def __len__(self) -> int:
        return int(self.ra.size)


def _pick(names: list[str], wanted: tuple[str, ...], explicit: str | None, path: str) -> str | None:
    lower = {n.lower(): n for n in names}
    if explicit is not None:
        if explicit.lower() not in lower:
            raise CatalogError(f"{path}: no column {explicit!r} (columns: {', '.join(names[:20])})")
        return lower[explicit.lower()]
    for w in wanted:
        if w in lower:
            return lower[w]
    return None


def read_positions(
    path: str | os.PathLike[str],
    ra_column: str | None = None,
    dec_column: str | None = None,
    storage: Storage | None = None,
) -> SourcePositions:
    """Read RA/Dec (and OBJECT_ID if present) of a catalog, reading only those columns.

    Column names are matched case-insensitively (MER FITS catalogs are upper
    case, IRSA/HATS lower case); by default ``RIGHT_ASCENSION``/``RA`` and
    ``DECLINATION``/``DEC``. ``path`` is a local path or any URL ``storage`` (default:
    a new anonymous :class:`~constellation.io.storage.Storage`) reads; a Parquet file
    is read by ranges (its footer, then the wanted columns), the others whole.
    """
    from constellation.io.storage import Storage

    url = os.fspath(path)
    store = storage or Storage()
    name = PurePosixPath(url.rstrip("/"))
    suffix = "".join(name.suffixes[-2:]).lower() if name.suffix.lower() == ".gz" else name.suffix
    suffix = suffix.lower()
    try:
        if not store.exists(url) or store.info(url).type == "directory":
            raise CatalogError(f"{url}: catalog file not found")
        if suffix in (".fits", ".fit", ".fits.gz"):
            from astropy.io import fits

            content = store.read_bytes(url)
            if suffix == ".fits.gz":
                content = gzip.decompress(content)
            with fits.open(io.BytesIO(content), memmap=False) as hdul:
                hdu = next((h for h in hdul if isinstance(h, fits.BinTableHDU)), None)
                if hdu is None:
                    raise CatalogError(f"{url}: no binary table extension")
                names = list(hdu.columns.names)
                cols = _columns(names, ra_column, dec_column, url)
                data = {c: np.array(hdu.data[c]) for c in cols if c is not None}
        elif suffix == ".csv":
            import pyarrow as pa
            import pyarrow.csv as pacsv

            table = pacsv.read_csv(pa.BufferReader(store.read_bytes(url)))
            cols = _columns(table.column_names, ra_column, dec_column, url)
            data = {c: table.column(c).to_numpy() for c in cols if c is not None}
        elif suffix in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            with store.open(url) as stream:
                parquet = pq.ParquetFile(stream)
                cols = _columns(parquet.schema_arrow.names, ra_column, dec_column, url)
                wanted = [c for c in cols if c is not None]
                table = parquet.read(columns=wanted)
            data = {c: table.column(c).to_numpy() for c in wanted}
        else:
            raise CatalogError(f"{url}: unsupported catalog format (use FITS, Parquet or CSV)")
    except OSError as exc:
        raise CatalogError(f"{url}: cannot read catalog: {exc}") from exc
    ra_c, dec_c, id_c = cols
    if ra_c is None or dec_c is None:  # pragma: no cover - _columns raises first
        raise CatalogError(f"{url}: no RA/Dec columns")
    oid = None
    if id_c is not None:
        raw = data[id_c]
        if not np.issubdtype(raw.dtype, np.integer):
            raise CatalogError(f"{url}: id column {id_c!r} is {raw.dtype}, expected integers")
        oid = raw.astype(np.int64)
    return SourcePositions(
        np.ascontiguousarray(data[ra_c], dtype=np.float64),
        np.ascontiguousarray(data[dec_c], dtype=np.float64),
        oid,
    )


def _columns(
    names: list[str], ra_column: str | None, dec_column: str | None, path: str
) -> tuple[str | None, str | None, str | None]:
    ra_c = _pick(names, RA_NAMES, ra_column, path)
    dec_c = _pick(names, DEC_NAMES, dec_column, path)
    if ra_c is None or dec_c is None:
        raise CatalogError(
            f"{path}: cannot find RA/Dec columns (tried {RA_NAMES} / {DEC_NAMES}, any case; "
            "name them with --ra-column/--dec-column)"
        )
    return ra_c, dec_c, _pick(names, ID_NAMES, None, path)
