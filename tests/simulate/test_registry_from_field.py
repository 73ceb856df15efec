"""The tile registry resolved from the simulated mosaic headers equals the simulator's tiles."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from constellation.io.registry import resolve_registry
from constellation.io.storage import Storage
from constellation.simulate.run import FieldSummary
from constellation.sky import TileRegistry


def _assert_same(resolved: TileRegistry, truth: TileRegistry) -> None:
    assert sorted(resolved.tile_id.tolist()) == sorted(truth.tile_id.tolist())
    r = resolved.subset(truth.tile_id)
    d_ra = (r.ra - truth.ra + 180.0) % 360.0 - 180.0
    assert np.max(np.abs(d_ra)) < 1e-9
    assert np.max(np.abs(r.dec - truth.dec)) < 1e-9
    assert np.allclose(r.extended_size_arcmin, 32.0)
    assert np.allclose(r.core_size_arcmin, 30.0)


def test_registry_from_local_field(light_field: tuple[Path, FieldSummary]) -> None:
    root, summary = light_field
    resolved = resolve_registry(Storage(), str(root / "q1" / "MER"))
    _assert_same(resolved, summary.plan.tiles)


def test_registry_from_s3_field_anonymously(
    s3_light_field: tuple[str, FieldSummary], anon_s3_storage: Storage
) -> None:
    url, summary = s3_light_field
    assert np.any(summary.plan.tiles.ra > 359.0) or np.any(summary.plan.tiles.ra < 1.0)
    anon_s3_storage.stats.reset()
    resolved = resolve_registry(anon_s3_storage, f"{url}/q1/MER")
    _assert_same(resolved, summary.plan.tiles)
    # header reads only: a few KB per tile, never the announced 1.47 GB pixel arrays
    assert anon_s3_storage.stats.bytes_read < 20_000 * len(summary.plan.tiles)


def test_s3_field_reads_like_local(
    s3_light_field: tuple[str, FieldSummary], anon_s3_storage: Storage
) -> None:
    """Ranged reads of a DET file through s3fs return the bytes the simulator wrote."""
    from astropy.io import fits

    url, _ = s3_light_field
    det = anon_s3_storage.glob(f"{url}/q1/VIS/*/EUC_VIS_SWL-DET-*.fits")[0]
    head = anon_s3_storage.read_range(det, 0, 2880)
    header = fits.Header.fromstring(head.decode("ascii"))
    assert header["SIMPLE"] is True
    assert isinstance(header["OBS_ID"], int)
    assert len(anon_s3_storage.glob(f"{url}/q1/VIS/*/EUC_VIS_GRD-PSF-*.fits")) >= 1
