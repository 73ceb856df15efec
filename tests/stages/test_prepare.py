"""The prepare stage on the session's simulated and indexed 2x2-tile field (``LIGHT_2X2``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from constellation.config import (
    ExposurePolicy,
    RuntimeConfig,
    ScienceConfig,
    Settings,
    StorageConfig,
    config_hash,
    preparation_hash,
)
from constellation.io.mer_catalogs import find_catalog, read_mer_catalog
from constellation.io.storage import Storage
from constellation.manifest import layout
from constellation.manifest.subtile import SubTileManifest, load_manifest
from constellation.sky.registry import TileRegistry
from constellation.stages.prepare import PrepareResult, plan, run_one
from tests.fixtures.fields import LIGHT_1X1, LIGHT_2X2, FieldFactory


@dataclass(frozen=True)
class Field:
    root: Path
    registry: TileRegistry
    index: Path


@pytest.fixture(scope="module")
def field(fields: FieldFactory) -> Field:
    indexed = fields.indexed(LIGHT_2X2)
    return Field(indexed.root, indexed.registry, indexed.index)


def _settings(field: Field, work: Path, science: ScienceConfig | None = None) -> Settings:
    storage = StorageConfig(data_uri=str(field.root), work_uri=str(work))
    return Settings(science=science or ScienceConfig(), runtime=RuntimeConfig(storage=storage))


def _prepare(field: Field, work: Path, science: ScienceConfig | None = None) -> list[PrepareResult]:
    work.mkdir(parents=True, exist_ok=True)
    target = Path(layout.quadrant_index_url(str(work)))
    if not target.exists():
        target.write_bytes(field.index.read_bytes())
    settings = _settings(field, work, science)
    return [run_one(item, Storage()) for item in plan(settings, field.registry)]


@pytest.fixture(scope="module")
def work(field: Field, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("work") / "work"
    _prepare(field, out)
    return out


def _manifests(work: Path, tile_id: int) -> list[SubTileManifest]:
    return [
        load_manifest(layout.manifest_url(str(work), tile_id, r, c))
        for r in range(4)
        for c in range(4)
    ]


def _sources(work: Path, tile_id: int, row: int, col: int) -> pa.Table:
    return pq.read_table(layout.sources_url(str(work), tile_id, row, col))


def _catalogs(field: Field) -> dict[int, pa.Table]:
    storage = Storage()
    out = {}
    for tid in field.registry.tile_id.tolist():
        info = find_catalog(storage, str(field.root), tid)
        assert info is not None
        out[int(tid)] = read_mer_catalog(storage, info.url)
    return out


def test_every_own_source_is_in_exactly_one_core(field: Field, work: Path) -> None:
    catalogs = _catalogs(field)
    for tid, cat in catalogs.items():
        seen: list[np.ndarray] = []
        for r in range(4):
            for c in range(4):
                t = _sources(work, tid, r, c)
                core = t.filter(t.column("in_core"))
                assert np.all(core.column("tile_id").to_numpy() == tid)
                seen.append(core.column("object_id").to_numpy())
        ids = np.concatenate(seen)
        assert ids.dtype == np.int64
        assert ids.size == np.unique(ids).size == cat.num_rows
        assert set(ids.tolist()) == set(cat.column("object_id").to_pylist())


def test_extended_sources_match_brute_force_over_all_catalogs(field: Field, work: Path) -> None:
    catalogs = _catalogs(field)
    everything = pa.concat_tables(
        [
            t.append_column("tile_id", pa.array(np.full(t.num_rows, k, np.int64)))
            for k, t in catalogs.items()
        ]
    )
    ra = everything.column("right_ascension").to_numpy()
    dec = everything.column("declination").to_numpy()
    oid = everything.column("object_id").to_numpy()
    grid = ScienceConfig().tiling.grid()
    for tid in catalogs:
        tile = field.registry.tile(tid)
        neighbour_sources = 0
        for st in tile.iter_subtiles(grid):
            t = _sources(work, tid, st.row, st.col)
            x, y = tile.to_plane(ra, dec)
            inside = st.extended.contains(x, y)
            expected = set(oid[inside].tolist())
            core_ids = set(t.filter(t.column("in_core")).column("object_id").to_pylist())
            got = set(t.column("object_id").to_pylist())
            assert got == expected | core_ids
            assert t.column("object_id").to_pylist() == sorted(got)
            foreign = t.filter(pa.compute.not_equal(t.column("tile_id"), tid))
            assert not any(foreign.column("in_core").to_pylist())
            edge = st.row in (0, 3) or st.col in (0, 3)
            if not edge:
                assert foreign.num_rows == 0
            neighbour_sources += foreign.num_rows
        assert neighbour_sources > 0


def test_manifests_count_and_pass_through(field: Field, work: Path) -> None:
    science = ScienceConfig()
    tid = int(field.registry.tile_id[0])
    for m in _manifests(work, tid):
        t = _sources(work, tid, m.identity.row, m.identity.col)
        assert m.sources.n_extended == t.num_rows
        assert m.sources.n_core == int(np.sum(t.column("in_core").to_numpy()))
        assert m.sources.uri == layout.SOURCES_NAME
        assert m.shine.inference == science.shine.inference
        assert m.shine.sources == science.shine.sources
        assert m.exposures, "every sub-tile of the field is observed"
        assert all(e.expnum == 1 and e.exptime > 200 for e in m.exposures)
        assert set(t.column_names) >= {"object_id", "right_ascension", "point_like_flag",
                                       "in_core", "tile_id", "healpix"}  # fmt: skip
        assert t.schema.field("object_id").type == pa.int64()


def test_short_exposures_included_with_the_policy(fields: FieldFactory, tmp_path: Path) -> None:
    indexed = fields.indexed(LIGHT_1X1)  # LIGHT_2X2 has no short exposures
    field = Field(indexed.root, indexed.registry, indexed.index)
    science = ScienceConfig(exposures=ExposurePolicy(include_short=True))
    tid = int(field.registry.tile_id[0])
    work = tmp_path / "short"
    work.mkdir()
    Path(layout.quadrant_index_url(str(work))).write_bytes(field.index.read_bytes())
    item = next(
        i for i in plan(_settings(field, work, science), field.registry) if i.tile.tile_id == tid
    )
    run_one(item, Storage())
    assert any(e.expnum == 2 for m in _manifests(work, tid) for e in m.exposures)


def test_drop_invisible_keeps_a_subset(field: Field, work: Path, tmp_path: Path) -> None:
    science = ScienceConfig(exposures=ExposurePolicy(drop_invisible=False))
    tid = int(field.registry.tile_id[0])
    other = tmp_path / "all"
    other.mkdir()
    Path(layout.quadrant_index_url(str(other))).write_bytes(field.index.read_bytes())
    item = next(
        i for i in plan(_settings(field, other, science), field.registry) if i.tile.tile_id == tid
    )
    run_one(item, Storage())
    for kept, every in zip(_manifests(work, tid), _manifests(other, tid), strict=True):
        k = {(e.exposure, e.quadrant) for e in kept.exposures}
        a = {(e.exposure, e.quadrant) for e in every.exposures}
        assert k <= a


def test_rerun_writes_nothing_and_outputs_are_byte_identical(
    field: Field, work: Path, tmp_path: Path
) -> None:
    again = _prepare(field, work)
    assert all(r.written == 0 and r.unchanged == 16 and r.files_written == 0 for r in again)
    # a second run elsewhere: same bytes for every output
    other = tmp_path / "again"
    _prepare(field, other)
    files = sorted(p.relative_to(work) for p in (work / "tiles").rglob("*") if p.is_file())
    assert len(files) == 4 * 16 * 3
    for rel in files:
        mine, theirs = (work / rel).read_bytes(), (other / rel).read_bytes()
        if rel.name == layout.DONE_NAME:
            # the input fingerprint names the (different) quadrant-index path
            a, b = json.loads(mine), json.loads(theirs)
            assert a["outputs"] == b["outputs"]
            assert a["preparation_hash"] == b["preparation_hash"]
        else:
            assert mine == theirs, rel
    # a changed done marker (e.g. after an input change) re-checks bytes: still nothing rewritten
    tid = int(field.registry.tile_id[0])
    done = Path(layout.done_url(str(other), tid, 0, 0))
    doc = json.loads(done.read_bytes())
    doc["inputs_fingerprint"] = "stale"
    done.write_text(json.dumps(doc))
    results = _prepare(field, other)
    first = next(r for r in results if r.tile_id == tid)
    assert not first.skipped
    assert first.written == 1
    assert first.files_written == 1


_YAML_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def test_a_work_root_of_version_2_manifests_is_prepared_again(
    field: Field, work: Path, tmp_path: Path
) -> None:
    """A work root prepared before manifests were JSON (version-2 ``manifest.yaml``, done
    markers of version 2): the rerun writes ``manifest.json`` and deletes the YAML one."""
    old = tmp_path / "old"
    old.mkdir()
    Path(layout.quadrant_index_url(str(old))).write_bytes(field.index.read_bytes())
    tid = int(field.registry.tile_id[0])
    item = next(i for i in plan(_settings(field, old), field.registry) if i.tile.tile_id == tid)
    run_one(item, Storage())
    for sub in (old / "tiles" / str(tid) / "subtiles").iterdir():
        doc = json.loads((sub / layout.MANIFEST_NAME).read_bytes())
        (sub / layout.MANIFEST_NAME).unlink()
        v2 = yaml.dump({**doc, "manifest_version": 2}, Dumper=_YAML_DUMPER)  # C: 0.5 s -> ms
        (sub / layout.MANIFEST_NAME_V2).write_text(v2)
        done = json.loads((sub / layout.DONE_NAME).read_bytes())
        (sub / layout.DONE_NAME).write_text(json.dumps({**done, "version": 2}))
    again = run_one(item, Storage())
    assert not again.skipped
    assert again.written == 16
    assert not list(old.rglob(layout.MANIFEST_NAME_V2))
    for path in (work / "tiles" / str(tid)).rglob("*"):
        if path.name != layout.DONE_NAME and path.is_file():
            assert (old / path.relative_to(work)).read_bytes() == path.read_bytes()
    assert run_one(item, Storage()).skipped


def test_another_backend_keeps_the_manifests(field: Field, work: Path) -> None:
    """Which backend fits, and how, is not part of a manifest: switching the backend
    (or its settings) re-prepares nothing, so the other backend's results stay valid.
    Any other science setting re-prepares."""
    mock = ScienceConfig.model_validate(
        {"backend": {"name": "mock", "mock": {"mode": "random", "fail_rate": 0.5}}}
    )
    assert config_hash(mock) != config_hash(ScienceConfig())
    again = _prepare(field, work, mock)
    assert all(r.skipped and r.written == 0 for r in again)
    exposures = ScienceConfig(exposures=ExposurePolicy(include_short=True))
    assert preparation_hash(exposures) != preparation_hash(ScienceConfig())


def test_byte_ranges_point_at_the_extension(field: Field, work: Path) -> None:
    from astropy.io import fits

    tid = int(field.registry.tile_id[0])
    m = _manifests(work, tid)[5]
    e = m.exposures[0]
    storage = Storage()
    for ext in (e.det.sci, e.det.rms, e.det.flg):
        raw = storage.read_range(e.det.uri, ext.data_offset, ext.data_offset + ext.data_bytes)
        with fits.open(e.det.uri) as hdul:
            hdu = hdul[ext.name]
            assert hdu.header["EXTNAME"] == ext.name
            expected = hdu.data.astype(hdu.data.dtype.newbyteorder(">")).tobytes()
        assert raw == expected
        head = storage.read_range(e.det.uri, ext.header_offset, ext.header_offset + 80)
        assert head.startswith(b"XTENSION")


def test_tile_without_catalog_or_exposures_gets_empty_manifests(
    field: Field, tmp_path: Path
) -> None:
    from constellation.sky.tiling import Tile

    lonely = Tile(999_999_999, 10.0, -40.0)
    registry = TileRegistry.from_tiles([lonely])
    settings = _settings(field, tmp_path)
    (item,) = plan(settings, registry)
    result = run_one(item, Storage())
    assert result.missing_catalog
    assert result.written == 16
    for m in _manifests(tmp_path, lonely.tile_id):
        assert m.sources.n_core == m.sources.n_extended == 0
        assert m.exposures == []


def test_cli_prepare_and_plan(field: Field, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from constellation.cli import app
    from constellation.io.registry import write_registry

    work = tmp_path / "cliwork"
    work.mkdir()
    Path(layout.quadrant_index_url(str(work))).write_bytes(field.index.read_bytes())
    write_registry(field.registry, layout.registry_url(str(work)))
    tid = int(field.registry.tile_id[1])
    config = tmp_path / "c.yaml"
    config.write_text(f"runtime:\n  storage:\n    data_uri: {field.root}\n    work_uri: {work}\n")
    runner = CliRunner()
    result = runner.invoke(app, ["-c", str(config), "prepare", "--tile", str(tid)])
    assert result.exit_code == 0, result.output
    assert "16 manifests written, 0 unchanged" in result.output
    result = runner.invoke(app, ["-c", str(config), "prepare", "--tile", str(tid)])
    assert "0 manifests written, 16 unchanged" in result.output
    result = runner.invoke(app, ["-c", str(config), "plan", "--json"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.splitlines()]
    assert len(rows) == 16
    assert {r["tile"] for r in rows} == {tid}
    assert all(r["exposures"] > 0 and r["quadrants"] > 0 and r["core"] > 0 for r in rows)
    result = runner.invoke(app, ["-c", str(config), "plan"])
    assert result.exit_code == 0, result.output


def test_shrunk_footprint_test_matches_a_square() -> None:
    from constellation.stages.prepare import _Edges

    t = np.linspace(0, 1, 8, endpoint=False)
    xs = np.concatenate([t, np.ones(8), 1 - t, np.zeros(8)])
    ys = np.concatenate([np.zeros(8), t, np.ones(8), 1 - t])
    edges = _Edges(np.stack([xs, ys], axis=-1)[None])
    rng = np.random.default_rng(1)
    x, y = rng.uniform(-0.2, 1.2, 5000), rng.uniform(-0.2, 1.2, 5000)
    margin = 0.1
    expected = np.minimum.reduce([x, 1 - x, y, 1 - y]) >= margin
    got = edges.inside_shrunk(0, x, y, margin)
    assert np.array_equal(got, expected)
