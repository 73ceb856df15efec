"""A small simulated field, written once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from constellation.simulate import FieldSpec
from constellation.simulate.run import FieldSummary


@pytest.fixture(scope="session")
def light_field(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, FieldSummary]:
    """One tile at Dec +66 (EDF-N like), light mode, with the short exposures."""
    from constellation.io.storage import Storage
    from constellation.simulate.run import simulate_field

    root = tmp_path_factory.mktemp("field")
    spec = FieldSpec(ra_deg=269.7, dec_deg=66.0, n_tiles_ra=1, n_tiles_dec=1,
                     density_per_arcmin2=10.0, include_short=True, seed=7)  # fmt: skip
    summary = simulate_field(spec, Storage(), str(root))
    return root, summary


@pytest.fixture(scope="session")
def s3_light_field(
    s3_client: object, s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, FieldSummary]:
    """A light field (2 tiles, coarse pixels) uploaded public-read to the local S3 server.

    Returns the field's root URL (``s3://bucket``) and the simulation summary.
    """
    from constellation.io.storage import Storage
    from constellation.simulate.run import simulate_field

    root = tmp_path_factory.mktemp("s3field")
    spec = FieldSpec(ra_deg=0.1, dec_deg=0.3, n_tiles_ra=2, n_tiles_dec=1,
                     density_per_arcmin2=5.0, light_binning=64, seed=11)  # fmt: skip
    summary = simulate_field(spec, Storage(), str(root))
    bucket = "euclid-q1-sim"
    s3_client.create_bucket(Bucket=bucket)  # type: ignore[attr-defined]
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        s3_client.put_object(  # type: ignore[attr-defined]
            Bucket=bucket, Key=path.relative_to(root).as_posix(), Body=path.read_bytes(),
            ACL="public-read",
        )  # fmt: skip
    return f"s3://{bucket}", summary
