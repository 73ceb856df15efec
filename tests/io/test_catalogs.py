"""Source positions from catalog files: every format, local or through a store."""

from __future__ import annotations

import gzip
import uuid
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table

from constellation.io.catalogs import CatalogError, read_positions
from constellation.io.storage import Storage


@pytest.fixture
def table() -> Table:
    rng = np.random.default_rng(3)
    return Table(
        {
            "RIGHT_ASCENSION": rng.uniform(0.0, 360.0, 50),
            "DECLINATION": rng.uniform(-90.0, 90.0, 50),
            "OBJECT_ID": np.arange(50, dtype=np.int64) + 1000,
            "FLUX": rng.uniform(size=50),
        }
    )


@pytest.mark.parametrize("name", ["c.fits", "c.fits.gz", "c.parquet", "c.csv"])
def test_every_format_locally_and_in_a_store(tmp_path: Path, table: Table, name: str) -> None:
    plain = tmp_path / name.removesuffix(".gz")
    table.write(plain)
    path = tmp_path / name
    if name.endswith(".gz"):
        path.write_bytes(gzip.compress(plain.read_bytes()))
    storage = Storage()
    url = f"memory://cat-{uuid.uuid4().hex}/{name}"
    storage.write_bytes(url, path.read_bytes())
    for where in (path, url):
        got = read_positions(where, storage=storage)
        assert np.array_equal(got.ra, table["RIGHT_ASCENSION"])
        assert np.array_equal(got.dec, table["DECLINATION"])
        assert got.object_id is not None
        assert np.array_equal(got.object_id, table["OBJECT_ID"])


def test_errors_name_the_file(tmp_path: Path, table: Table) -> None:
    with pytest.raises(CatalogError, match=r"nope\.fits: catalog file not found"):
        read_positions(tmp_path / "nope.fits")
    odd = tmp_path / "c.txt"
    odd.write_text("x")
    with pytest.raises(CatalogError, match="unsupported catalog format"):
        read_positions(odd)
    table.write(tmp_path / "c.parquet")
    with pytest.raises(CatalogError, match="no column 'RA_X'"):
        read_positions(tmp_path / "c.parquet", ra_column="RA_X")
