"""The sub-tile manifest: schema file in sync, deterministic and exact YAML, fast dumps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from constellation.manifest import layout
from constellation.manifest.subtile import (
    AuxFile,
    DetFile,
    FitsExtension,
    ManifestGeometry,
    ManifestIdentity,
    ManifestSources,
    PlaneBox,
    QuadrantExposure,
    ShinePassThrough,
    SkyPolygon,
    SubTileManifest,
    dump_manifest,
    load_manifest,
    parse_manifest,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def _ext(name: str, i: int) -> FitsExtension:
    return FitsExtension(name=name, header_offset=i, data_offset=i + 2880, data_bytes=4096)


def _manifest(n_exposures: int = 60) -> SubTileManifest:
    box = PlaneBox(x_min_arcmin=-7.5, x_max_arcmin=0.0, y_min_arcmin=1e-17, y_max_arcmin=7.5)
    poly = SkyPolygon(ra_deg=[359.99, 0.1, 0.1, 359.99], dec_deg=[-0.1, -0.1, 0.1, 1 / 3])
    exposures = [
        QuadrantExposure(
            exposure=f"002681-{i % 4:02d}-1", obs_id=2681, dither=i % 4, expnum=1,
            exptime=560.52, magzerop=24.57 + i * 1e-7, gain=3.48, quadrant="3-4.F",
            naxis1=2048, naxis2=2066,
            det=DetFile(uri="s3://b/DET.fits", sci=_ext("3-4.F.SCI", i), rms=_ext("3-4.F.RMS", i),
                        flg=_ext("3-4.F.FLG", i)),
            bkg=AuxFile(uri="s3://b/BKG.fits", extension=_ext("3-4.F", i)),
            psf=None if i % 2 else AuxFile(uri="s3://b/PSF.fits", extension=_ext("3-4.F", i)),
        )
        for i in range(n_exposures)
    ]  # fmt: skip
    return SubTileManifest(
        identity=ManifestIdentity(
            tile_id=102018211, row=1, col=2, preparation_hash="0123456789abcdef", code_version="1"
        ),
        geometry=ManifestGeometry(
            tile_ra_deg=0.0,
            tile_dec_deg=0.1,
            tile_core_size_arcmin=30.0,
            margin_arcmin=1.0,
            core=box,
            extended=box,
            core_polygon=poly,
            extended_polygon=poly,
        ),
        exposures=exposures,
        sources=ManifestSources(uri=layout.SOURCES_NAME, n_extended=10, n_core=7),
        shine=ShinePassThrough(
            inference={"method": "map", "rng_seed": 2**62 + 1, "yes": "no", "x": None},
            gal={"flux": {"type": "LogNormal", "center": "catalog", "sigma": 0.5}},
            sources={"min_snr": 10.0, "weird key": [1, 2.5e-300, float("inf"), True, "null"]},
        ),
    )


def test_committed_schema_equals_the_model_schema() -> None:
    committed = json.loads((REPO_ROOT / "docs" / "manifest.schema.json").read_text())
    assert committed == SubTileManifest.model_json_schema()


def test_yaml_round_trip_is_exact_and_deterministic() -> None:
    m = _manifest()
    data = dump_manifest(m)
    assert parse_manifest(data) == m
    assert dump_manifest(parse_manifest(data)) == data
    # plain YAML: PyYAML reads the same values (ints stay ints, floats exact)
    raw = yaml.safe_load(data)
    assert raw == m.model_dump(mode="python")
    assert raw["shine"]["inference"]["rng_seed"] == 2**62 + 1
    assert raw["geometry"]["core"]["y_min_arcmin"] == 1e-17
    assert list(raw) == sorted(raw)


def test_load_manifest_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "manifest.yaml"
    path.write_bytes(dump_manifest(_manifest(2)))
    assert load_manifest(str(path)) == _manifest(2)


def test_wrong_version_is_refused() -> None:
    text = dump_manifest(_manifest(1)).replace(b"manifest_version: 2", b"manifest_version: 3")
    with pytest.raises(ValueError, match="manifest_version"):
        parse_manifest(text)


def test_layout_paths_are_pure_functions() -> None:
    assert layout.manifest_url("s3://w/", 7, 1, 2) == "s3://w/tiles/7/subtiles/r1_c2/manifest.yaml"
    assert layout.done_url("work", 7, 0, 0) == "work/tiles/7/subtiles/r0_c0/_DONE.json"
    assert layout.resolve_relative("s3://w/a/manifest.yaml", "sources.parquet") == (
        "s3://w/a/sources.parquet"
    )
    assert layout.resolve_relative("w/a/manifest.yaml", "/abs/x") == "/abs/x"
