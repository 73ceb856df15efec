"""Faults injected and recovered (issue 9, "Faults"; docs/reliability.md has the table).

* S3 5xx answers, stalls and short reads on the reads of discovery, prepare and
  staging, through a fault-injecting proxy in front of the moto server: retried
  with backoff and bounded, then reported in one line naming the object.
* A Ray worker killed mid-sub-tile: Ray runs the task again; one result per sub-tile.
* The pipeline process killed mid-run: the rerun resumes and duplicates nothing.
* Assembly interrupted after its data files are written: no partial rows; the rerun
  completes. (Two assemblies at once: tests/catalog/test_concurrency.py.)
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest

from constellation.config import RuntimeConfig, ScienceConfig, Settings, StorageConfig
from constellation.io.storage import Storage, StorageError, storage_from_config
from constellation.manifest import layout
from constellation.simulate.run import FieldSummary
from tests.fixtures.faultproxy import FaultProxy

# --------------------------------------------------------------------------- S3 faults


@pytest.fixture
def proxy(s3_endpoint: str) -> Iterator[FaultProxy]:
    """A fault proxy in front of the session's moto server (no faults until told)."""
    with FaultProxy(s3_endpoint, stall_s=10.0) as p:
        yield p


def _settings(data_uri: str, work: Path, endpoint: str, **storage: object) -> Settings:
    cfg = StorageConfig.model_validate(
        {"data_uri": data_uri, "work_uri": str(work), "endpoint_url": endpoint, **storage}
    )
    return Settings(science=ScienceConfig(), runtime=RuntimeConfig(storage=cfg))


_FAST_RETRIES = {"base_delay_s": 0.01, "max_delay_s": 0.05, "read_timeout_s": 0.5}


def _discover_prepare_stage(settings: Settings, storage: Storage) -> dict[str, bytes]:
    """Resolve the registry and build the quadrant index (of one exposure, to stay quick),
    prepare one tile and stage one of its sub-tiles, reading the field through ``storage``;
    the bytes of every output file by path (``_DONE.json`` aside: it records the local
    index file's modification time)."""
    from dataclasses import replace

    from constellation.discovery.observations import list_observations
    from constellation.io.quadrant_index import build_quadrant_index
    from constellation.io.registry import resolve_registry, write_registry
    from constellation.manifest.subtile import parse_manifest
    from constellation.stages.prepare import plan, run_one
    from constellation.stages.stage import stage_subtile

    data = settings.runtime.storage.data_uri
    work = Path(settings.runtime.storage.work_uri)
    registry = resolve_registry(storage, f"{data}/q1/MER")
    write_registry(registry, layout.registry_url(str(work)))
    observations = list_observations(storage, f"{data}/q1/VIS")
    subset = replace(observations, exposures=observations.exposures[:1])
    build_quadrant_index(storage, subset, layout.quadrant_index_url(str(work)), workers=2)
    for item in plan(settings, registry):
        run_one(item, storage)
    # stage the first sub-tile that the exposure covers
    manifests = sorted(work.glob("tiles/*/subtiles/*/manifest.yaml"))
    covered = next(m for m in manifests if parse_manifest(m.read_bytes()).exposures)
    stage_subtile(str(covered), str(work / "staged"), storage)
    return {
        p.relative_to(work).as_posix(): p.read_bytes()
        for p in sorted(work.rglob("*"))
        if p.is_file() and p.name != layout.DONE_NAME
    }


def _digest(files: dict[str, bytes]) -> dict[str, str]:
    return {k: hashlib.sha256(v).hexdigest() for k, v in files.items()}


def test_transient_s3_faults_are_retried_and_the_outputs_are_exact(
    s3_light_field: tuple[str, FieldSummary], proxy: FaultProxy, tmp_path: Path
) -> None:
    root, _ = s3_light_field
    # the same discovery, prepare and staging without faults, then with them
    clean = _settings(root, tmp_path / "clean", proxy.url, **_FAST_RETRIES)
    expected = _discover_prepare_stage(clean, storage_from_config(clean.runtime.storage))
    assert proxy.total_injected == 0

    faults = {1: "503", 2: "stall", 3: "truncate"}
    seen: dict[str, int] = {}

    def rule(method: str, key: str, n: int) -> str | None:
        # a third of the objects: a 503 on the first request, then a read that stalls past
        # the client's timeout, then a short body; the fourth attempt is served
        if method != "GET" or not key.endswith(".fits"):
            return None
        slot = seen.setdefault(key, len(seen))
        return faults.get(n) if slot % 3 == 0 else None

    proxy.reset(rule=rule)
    faulty = _settings(root, tmp_path / "faulty", proxy.url, **_FAST_RETRIES)
    storage = storage_from_config(faulty.runtime.storage)
    got = _discover_prepare_stage(faulty, storage)

    assert _digest(got) == _digest(expected)  # every output, byte for byte
    assert any(k.startswith("staged/exposures/") for k in got)
    assert set(proxy.injected) == {"503", "stall", "truncate"}
    # every fault cost exactly one retry of the storage layer, nothing more
    assert storage.stats.retries == proxy.total_injected >= 6


def test_persistent_s3_faults_are_bounded_reported_and_leave_nothing(
    s3_light_field: tuple[str, FieldSummary], proxy: FaultProxy, tmp_path: Path
) -> None:
    from constellation.io.registry import resolve_registry

    root, _ = s3_light_field
    settings = _settings(root, tmp_path / "work", proxy.url, max_attempts=3, **_FAST_RETRIES)
    storage = storage_from_config(settings.runtime.storage)
    clean = Storage(endpoint_url=proxy.url)
    registry = resolve_registry(clean, f"{root}/q1/MER")
    tile = int(registry.tile_id[0])
    from constellation.io.mer_catalogs import find_catalog

    info = find_catalog(clean, root, tile)
    assert info is not None
    key = "/" + info.url.removeprefix("s3://")
    proxy.reset(rule=lambda method, k, n: "503" if k == key else None)

    from constellation.stages.prepare import plan, run_one

    item = next(i for i in plan(settings, registry) if i.tile.tile_id == tile)
    with pytest.raises(StorageError) as excinfo:
        run_one(item, storage)
    message = str(excinfo.value)
    assert "\n" not in message
    assert info.url in message and "after 3 attempts" in message
    assert proxy.requests_for(key) == 3  # bounded: max_attempts, then reported
    work = tmp_path / "work"
    assert not work.exists() or not [p for p in work.rglob("*") if p.is_file()]

    # a stalled object: each attempt waits for the read timeout, then gives up
    proxy.reset(rule=lambda method, k, n: "stall" if k == key else None)
    storage.stats.reset()
    with pytest.raises(StorageError, match=r"after 3 attempts.*Timeout"):
        storage.read_bytes(info.url)
    assert storage.stats.retries == 2


def _table_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())
