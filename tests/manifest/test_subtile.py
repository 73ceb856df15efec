"""The sub-tile manifest: schema file in sync, deterministic and exact JSON, version-2 YAML
still read, version 1 refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

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
#: A manifest of version 2 as constellation's YAML writer wrote it (``_manifest(2)``).
V2_YAML = Path(__file__).parent / "data" / "manifest_v2.yaml"


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


def test_json_round_trip_is_exact_and_deterministic() -> None:
    m = _manifest()
    data = dump_manifest(m)
    assert parse_manifest(data) == m
    assert dump_manifest(parse_manifest(data)) == data
    raw = json.loads(data)  # plain JSON (but for Infinity): ints stay ints, floats exact
    assert raw["manifest_version"] == 3
    assert raw["shine"]["inference"]["rng_seed"] == 2**62 + 1
    assert raw["geometry"]["core"]["y_min_arcmin"] == 1e-17
    assert raw["shine"]["sources"]["weird key"][2] == float("inf")
    assert list(raw["shine"]["inference"]) == sorted(raw["shine"]["inference"])
    assert data.endswith(b"}\n")
    assert b'\n "identity": {' in data  # indented for humans


def test_shine_sections_do_not_depend_on_key_order() -> None:
    m = _manifest(1)
    shuffled = {k: v for k, v in reversed(m.shine.inference.items())}
    assert list(shuffled) != list(m.shine.inference)
    other = m.model_copy(update={"shine": ShinePassThrough(inference=shuffled, gal=m.shine.gal,
                                                           sources=m.shine.sources)})  # fmt: skip
    assert dump_manifest(other) == dump_manifest(m)


_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
_keys = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=8)
_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False) | _text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_keys, inner, max_size=4),
    max_leaves=20,
)  # fmt: skip


@given(st.dictionaries(_keys, _values, max_size=5))
@settings(max_examples=100, deadline=None)
def test_any_shine_section_round_trips(section: dict[str, object]) -> None:
    m = _manifest(0).model_copy(update={"shine": ShinePassThrough(gal=section)})
    assert parse_manifest(dump_manifest(m)).shine.gal == section


def test_load_manifest_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / layout.MANIFEST_NAME
    path.write_bytes(dump_manifest(_manifest(2)))
    assert load_manifest(str(path)) == _manifest(2)


def test_a_version_2_yaml_manifest_is_still_read() -> None:
    assert V2_YAML.read_text().startswith("exposures:\n")  # the YAML writer's output
    assert "manifest_version: 2\n" in V2_YAML.read_text()
    assert load_manifest(str(V2_YAML)) == _manifest(2)  # read as version 3
    # and written back as JSON of version 3
    assert json.loads(dump_manifest(load_manifest(str(V2_YAML))))["manifest_version"] == 3


def test_a_version_2_manifest_in_json_is_read_too() -> None:
    doc = json.loads(dump_manifest(_manifest(1)))
    doc["manifest_version"] = 2
    assert parse_manifest(json.dumps(doc)) == _manifest(1)


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_version_1_is_refused_with_a_prepare_hint(fmt: str) -> None:
    doc = json.loads(dump_manifest(_manifest(1)))
    doc["manifest_version"] = 1
    text = json.dumps(doc) if fmt == "json" else yaml.safe_dump(doc)
    hint = "it was written by an older constellation: run 'constellation prepare' again"
    with pytest.raises(ValueError, match=r"manifest_version 1 \(expected 3\); " + hint):
        parse_manifest(text)


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (lambda t: t.replace(b'"manifest_version": 3', b'"manifest_version": 4'),
         r"^unsupported manifest_version 4 \(expected 3\)$"),
        (lambda t: t.replace(b' "manifest_version": 3,\n', b""),
         r"^unsupported manifest_version None \(expected 3\)$"),
        (lambda t: t.replace(b'"n_core": 7', b'"n_core": -7'),
         r"^invalid manifest: sources.n_core: Input should be greater than or equal to 0$"),
        (lambda t: t[: len(t) // 2], r"^not valid JSON: "),
        (lambda t: b"[" + t + b"]", r"^a manifest must be a mapping$"),
        (lambda t: b"\xff" + t, r"^not UTF-8 text$"),
    ],
    ids=["version", "no-version", "schema", "truncated", "not-a-mapping", "not-utf8"],
)  # fmt: skip
def test_unusable_json_is_refused_in_one_line(edit: object, problem: str) -> None:
    data = dump_manifest(_manifest(1))
    with pytest.raises(ValueError, match=problem):
        parse_manifest(edit(data))  # type: ignore[operator]


def test_layout_paths_are_pure_functions() -> None:
    assert layout.manifest_url("s3://w/", 7, 1, 2) == "s3://w/tiles/7/subtiles/r1_c2/manifest.json"
    assert layout.done_url("work", 7, 0, 0) == "work/tiles/7/subtiles/r0_c0/_DONE.json"
    assert layout.resolve_relative("s3://w/a/manifest.json", "sources.parquet") == (
        "s3://w/a/sources.parquet"
    )
    assert layout.resolve_relative("w/a/manifest.json", "/abs/x") == "/abs/x"
