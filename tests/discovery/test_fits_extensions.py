"""Reading all extension headers with predicted offsets, and the sequential fallback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from constellation.io.fits import FitsHeaderError, read_extension_headers
from constellation.io.storage import Storage


def _write(path: Path, hdus: list[fits.ImageHDU]) -> Path:
    primary = fits.PrimaryHDU()
    primary.header["OBS_ID"] = 1
    fits.HDUList([primary, *hdus]).writeto(path)
    return path


def _uniform(n: int, shape: tuple[int, int] = (40, 30)) -> list[fits.ImageHDU]:
    return [fits.ImageHDU(np.full(shape, i, dtype=np.float32), name=f"Q{i}") for i in range(n)]


def _check_against_astropy(path: Path, workers: int = 8, max_gap: int = 0) -> tuple[int, int]:
    size = path.stat().st_size
    scan = read_extension_headers(
        Storage(), str(path), size=size, workers=workers, max_gap_bytes=max_gap
    )
    with fits.open(path) as hdul:
        assert len(scan.extensions) == len(hdul) - 1
        for ext, hdu in zip(scan.extensions, hdul[1:], strict=True):
            info = hdu.fileinfo()
            assert ext.extname == hdu.name
            assert ext.header_offset == info["hdrLoc"]
            assert ext.data_offset == info["datLoc"]
            assert ext.data_span == info["datSpan"]
            assert ext.data_bytes == hdu.data.nbytes
            assert ext.header == hdu.header
            raw = path.read_bytes()[ext.data_offset : ext.data_offset + ext.data_bytes]
            np.testing.assert_array_equal(
                np.frombuffer(raw, dtype=hdu.data.dtype.newbyteorder(">")).reshape(hdu.data.shape),
                hdu.data,
            )
    return scan.rounds, scan.requests


def test_uniform_file_two_rounds(tmp_path: Path) -> None:
    path = _write(tmp_path / "u.fits", _uniform(50))
    rounds, requests = _check_against_astropy(path)
    assert rounds == 2
    assert requests <= 50  # one per predicted header, fewer when the first read holds some
    rounds, merged = _check_against_astropy(path, max_gap=32 * 1024)
    assert rounds == 2
    assert merged < 5  # small data units: neighbouring headers fetched together


def test_different_shape_falls_back(tmp_path: Path) -> None:
    hdus = _uniform(30)
    hdus[12] = fits.ImageHDU(np.ones((70, 31), dtype=np.int32), name="ODD")
    path = _write(tmp_path / "shape.fits", hdus)
    rounds, _ = _check_against_astropy(path)
    assert rounds > 2
    assert _check_against_astropy(path, max_gap=32 * 1024)[0] > 2


def test_extra_cards_fall_back(tmp_path: Path) -> None:
    hdus = _uniform(20)
    for i in range(60):  # two more header blocks
        hdus[5].header[f"EXTRA{i}"] = (i, "an extra card")
    hdus[17].header["HISTORY"] = "one card more"  # same block count: still predicted
    path = _write(tmp_path / "cards.fits", hdus)
    rounds, _ = _check_against_astropy(path)
    assert rounds > 2
    assert _check_against_astropy(path, max_gap=32 * 1024)[0] > 2


def test_small_first_read_and_big_primary(tmp_path: Path) -> None:
    primary = fits.PrimaryHDU()
    for i in range(200):
        primary.header[f"KEY{i}"] = i
    path = tmp_path / "big.fits"
    fits.HDUList([primary, *_uniform(5)]).writeto(path)
    scan = read_extension_headers(Storage(), str(path), first_read_bytes=2880)
    assert [e.extname for e in scan.extensions] == [f"Q{i}" for i in range(5)]
    assert scan.primary["KEY199"] == 199


def test_no_extensions(tmp_path: Path) -> None:
    path = tmp_path / "p.fits"
    fits.PrimaryHDU().writeto(path)
    scan = read_extension_headers(Storage(), str(path), size=path.stat().st_size)
    assert scan.extensions == ()
    assert scan.rounds == 1


@pytest.mark.parametrize("cut", [100, 2880 * 3 + 5000, -2880 * 2])
def test_truncated_file_is_a_clear_error(tmp_path: Path, cut: int) -> None:
    path = _write(tmp_path / "t.fits", _uniform(10))
    data = path.read_bytes()
    keep = cut if cut > 0 else len(data) + cut
    path.write_bytes(data[:keep])
    with pytest.raises(FitsHeaderError, match=r"truncated|too small|ends"):
        read_extension_headers(Storage(), str(path))


def test_not_fits(tmp_path: Path) -> None:
    path = tmp_path / "x.fits"
    path.write_bytes(b"hello" * 2000)
    with pytest.raises(FitsHeaderError):
        read_extension_headers(Storage(), str(path))


def test_size_from_info_costs_a_round(tmp_path: Path) -> None:
    path = _write(tmp_path / "u.fits", _uniform(40))
    with_size = read_extension_headers(Storage(), str(path), size=path.stat().st_size)
    without = read_extension_headers(Storage(), str(path))
    assert without.rounds == with_size.rounds + 1
    assert without.requests == with_size.requests + 1
    assert without.extensions == with_size.extensions
