"""Reading MER final catalogs: newest file, wanted columns only, lower case, exact ids."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import MaskedColumn, Table

from constellation.io.mer_catalogs import find_catalog, read_mer_catalog
from constellation.io.storage import Storage


def _write(path: Path, ids: np.ndarray, null: np.ndarray) -> None:
    t = Table()
    t["OBJECT_ID"] = ids
    t["RIGHT_ASCENSION"] = np.linspace(1, 2, ids.size)
    t["DECLINATION"] = np.linspace(-1, 1, ids.size)
    t["POINT_LIKE_FLAG"] = MaskedColumn(np.ones(ids.size, np.int16), mask=null)
    t["EXTRA"] = np.zeros(ids.size)
    buf = io.BytesIO()
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU(t)]).writeto(buf)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())


def test_newest_catalog_read_with_lower_case_columns(tmp_path: Path) -> None:
    folder = tmp_path / "q1" / "catalogs" / "MER_FINAL_CATALOG" / "42"
    ids = np.array([2**62 + 1, 2**62 + 3, -(2**61)], dtype=np.int64)
    null = np.array([True, False, True])
    _write(
        folder / "EUC_MER_FINAL-CAT_TILE42-AAAA_20240101T000000.0Z_00.00.fits", ids[:1], null[:1]
    )
    _write(folder / "EUC_MER_FINAL-CAT_TILE42-BBBB_20250101T000000.0Z_00.00.fits", ids, null)
    storage = Storage()
    info = find_catalog(storage, str(tmp_path), 42)
    assert info is not None
    assert "20250101" in info.url
    table = read_mer_catalog(storage, info.url)
    assert table.column_names == ["object_id", "right_ascension", "declination", "point_like_flag"]
    assert table.column("object_id").to_pylist() == ids.tolist()
    assert str(table.schema.field("object_id").type) == "int64"
    assert table.column("point_like_flag").to_pylist() == [None, 1, None]
    assert find_catalog(storage, str(tmp_path), 43) is None
