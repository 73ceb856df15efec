"""The whole pipeline with its data, its work root and its Iceberg warehouse in an S3
store (the moto server): resolve -> index -> prepare -> infer (mock) -> assemble ->
validate, driven through the CLI as an operator would. Every file of the run lands in
the bucket; the only local file is the SQLite catalog database (SQLite needs one)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from constellation.cli import app
from constellation.io.storage import Storage
from constellation.manifest import layout
from constellation.simulate.run import FieldSummary

runner = CliRunner()


def _invoke(config: Path, *args: str) -> str:
    result = runner.invoke(app, ["-c", str(config), *args])
    assert result.exit_code == 0, f"{args}: {result.output}"
    return str(result.output)


def _keys(s3_client: Any, bucket: str, prefix: str = "") -> list[str]:
    pages = s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def test_pipeline_on_an_s3_work_root(
    s3_light_field: tuple[str, FieldSummary],
    s3_endpoint: str,
    s3_client: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from constellation.catalog.iceberg import SOURCES, SUBTILES, open_catalog
    from constellation.config import load_config
    from constellation.results.schema import KEY_COLUMN

    data_uri, summary = s3_light_field
    tile_ids = sorted(int(t) for t in summary.plan.tiles.tile_id)
    bucket = "constellation-work"
    s3_client.create_bucket(Bucket=bucket)
    work = f"s3://{bucket}/work"
    here = tmp_path / "cwd"  # the working directory: nothing may be written here
    here.mkdir()
    monkeypatch.chdir(here)
    db = tmp_path / "catalog.db"
    doc = {
        "science": {
            "tiling": {"n_rows": 2, "n_cols": 2},
            "backend": {"name": "mock"},
        },
        "runtime": {
            "storage": {
                "data_uri": data_uri,
                "work_uri": work,
                "endpoint_url": s3_endpoint,
                "anon": False,  # writes are signed (the test credentials in the environment)
                "base_delay_s": 0.01,
            },
            "catalog": {
                "properties": {
                    "type": "sql",
                    "uri": f"sqlite:///{db}",
                    "warehouse": f"s3://{bucket}/warehouse",  # s3.endpoint: the storage's
                    "s3.region": "us-east-1",
                }
            },
        },
    }
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(doc))

    out = _invoke(config, "tiles", "resolve")
    assert f"{len(tile_ids)} tile(s) in {work}/registry.parquet" in out
    _invoke(config, "index")
    out = _invoke(config, "prepare")
    _invoke(config, "infer")
    out = _invoke(config, "assemble")
    report = _invoke(config, "validate", "--strict")

    # every output is an object under the work root or the warehouse
    storage = Storage(anon=False, endpoint_url=s3_endpoint)
    keys = _keys(s3_client, bucket)
    assert "work/registry.parquet" in keys
    assert "work/quadrant_index.parquet" in keys
    n_subtiles = len(tile_ids) * 4
    manifests = [k for k in keys if k.endswith("/" + layout.MANIFEST_NAME)]
    markers = [k for k in keys if k.endswith("/" + layout.RESULT_DONE_NAME)]
    results = [k for k in keys if k.endswith("/" + layout.RESULT_NAME)]
    assert len(manifests) == len(markers) == len(results) == n_subtiles
    assert any(k.startswith("warehouse/") and k.endswith(".metadata.json") for k in keys)
    assert any(k.startswith("warehouse/") and "/data/" in k for k in keys)
    # nothing in a local fallback: the working directory stays empty, and beside the
    # configuration only the SQLite catalog database exists
    assert list(here.iterdir()) == []
    assert {p.name for p in tmp_path.iterdir()} == {"cwd", "config.yaml", "catalog.db"}

    # the catalog holds exactly the sub-tiles' results
    expected_sources = 0
    statuses = {}
    for key in results:
        data = storage.read_bytes(f"s3://{bucket}/{key}")
        expected_sources += pq.read_metadata(io.BytesIO(data)).num_rows
    for key in markers:
        statuses[key] = json.loads(storage.read_bytes(f"s3://{bucket}/{key}"))["status"]
    assert set(statuses.values()) <= {"ok", "skipped"}
    assert "ok" in statuses.values()
    assert expected_sources > 0
    catalog = open_catalog(load_config(config))
    subtiles = catalog.read(SUBTILES, [KEY_COLUMN, "tile_id", "status"])
    assert subtiles.num_rows == n_subtiles
    assert sorted(set(subtiles.column("tile_id").to_pylist())) == tile_ids
    assert catalog.count(SOURCES) == expected_sources
    assert f"catalog validation PASSED: {n_subtiles}/{n_subtiles} sub-tiles present" in report
    assert f"{expected_sources} sources" in report


def test_index_flow_resolves_the_registry_on_an_s3_work_root(
    s3_light_field: tuple[str, FieldSummary], s3_endpoint: str, s3_client: Any
) -> None:
    """The index flow's registry task writes and reuses ``registry.parquet`` in the
    bucket (it used to refuse a work root that is not local)."""
    from constellation.config import RuntimeConfig, Settings, StorageConfig
    from flows.common import settings_json
    from flows.index import resolve_registry_task

    data_uri, summary = s3_light_field
    bucket = "constellation-flow-work"
    s3_client.create_bucket(Bucket=bucket)
    storage_cfg = StorageConfig(
        data_uri=data_uri, work_uri=f"s3://{bucket}/w", endpoint_url=s3_endpoint, anon=False
    )
    payload = settings_json(Settings(runtime=RuntimeConfig(storage=storage_cfg)))
    tiles = resolve_registry_task.fn(payload)
    assert tiles == sorted(int(t) for t in summary.plan.tiles.tile_id)
    assert _keys(s3_client, bucket) == ["w/registry.parquet"]
    assert resolve_registry_task.fn(payload) == tiles  # from the cache
