"""Security: anonymous access by default; credentials only from the environment and never
written anywhere; YAML loaded safely; staging confined to its root; no secret echoed by
the configuration commands. See ``docs/security.md``."""

from __future__ import annotations

import json
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from constellation.cli import app
from constellation.config import Settings, load_config
from constellation.io.storage import storage_from_config
from constellation.manifest import layout
from constellation.manifest.subtile import ManifestError, parse_manifest
from tests.reliability.checks import error_line

runner = CliRunner()

REPO = Path(__file__).resolve().parents[2]

# ------------------------------------------------------------------ (a) anonymous by default


@pytest.mark.parametrize("config", [None, "configs/default.yaml", "configs/examples/q1.yaml"])
def test_public_data_is_read_anonymously_by_default(config: str | None) -> None:
    settings = load_config(None if config is None else REPO / config)
    storage = storage_from_config(settings.runtime.storage)
    assert settings.runtime.storage.anon is True
    assert storage.anon is True
    options = storage._options("s3")
    assert options["anon"] is True
    assert not {"key", "secret", "token"} & set(options)


# ------------------------------------------------------------------ (b) planted secrets


@dataclass(frozen=True)
class Secrets:
    key_id: str
    secret: str
    token: str

    @property
    def all(self) -> tuple[str, str, str]:
        return (self.key_id, self.secret, self.token)

    def found_in(self, data: bytes | str) -> list[str]:
        raw = data if isinstance(data, bytes) else data.encode("utf-8", "replace")
        return [s for s in self.all if s.encode() in raw]


@pytest.fixture
def planted(monkeypatch: pytest.MonkeyPatch, s3_endpoint: str) -> Secrets:
    """Unique credentials in the standard AWS environment variables (the moto server
    accepts any); every output of the run is searched for them."""
    mark = secrets.token_hex(8)
    planted = Secrets(f"AKIA{mark.upper()}", f"secret-{mark}-{secrets.token_hex(8)}",
                      f"token-{mark}-{secrets.token_hex(8)}")  # fmt: skip
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", planted.key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", planted.secret)
    monkeypatch.setenv("AWS_SESSION_TOKEN", planted.token)
    return planted


def _parquet_text(data: bytes) -> str:
    """Every value and the key-value metadata of a Parquet file, as text (the raw bytes
    are compressed, so a search of them alone could miss a secret)."""
    import io

    table = pq.read_table(io.BytesIO(data))
    meta = {k.decode(errors="replace"): v.decode(errors="replace")
            for k, v in (table.schema.metadata or {}).items()}  # fmt: skip
    return json.dumps([meta, table.to_pylist()], default=str)


def _iceberg_text(settings: Settings) -> str:
    """Table properties, metadata, snapshot summaries and manifest entries (the Avro
    manifests are compressed) of every table of the catalog, as text."""
    from constellation.catalog.iceberg import open_catalog

    cat = open_catalog(settings)
    parts: list[Any] = []
    for ident in cat.catalog.list_tables(settings.runtime.catalog.namespace):
        table = cat.catalog.load_table(ident)
        parts += [dict(table.properties), table.metadata.model_dump_json()]
        parts += [s.model_dump_json() for s in table.snapshots()]
        parts += [table.inspect.entries().to_pylist(), table.inspect.manifests().to_pylist()]
    assert len(parts) >= 2 * 5, "the catalog should hold the sources and subtiles tables"
    return json.dumps(parts, default=str)


def _leaks_in_tree(root: Path, planted: Secrets) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        text = _parquet_text(data) if path.suffix == ".parquet" else ""
        hits = planted.found_in(data) + planted.found_in(text)
        if hits:
            found[str(path.relative_to(root))] = hits
    return found


def _leaks_in_bucket(client: Any, bucket: str, planted: Secrets) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
    assert keys, "the simulated field should be in the bucket"
    for key in keys:
        data = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        text = _parquet_text(data) if key.endswith(".parquet") else ""
        hits = planted.found_in(data) + planted.found_in(text)
        if hits:
            found[f"s3://{bucket}/{key}"] = hits
    return found


@pytest.fixture
def all_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="constellation")
    caplog.set_level(logging.DEBUG, logger="flows")
    return caplog


def test_planted_credentials_are_used_and_never_written(
    planted: Secrets,
    s3_endpoint: str,
    s3_client: Any,
    s3_bucket: str,
    tmp_path: Path,
    all_logs: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """simulate -> resolve -> index -> prepare -> infer (mock) -> assemble -> validate on
    a private bucket read and written with the planted credentials; then every file of
    the work root, every object of the bucket, the Iceberg catalog, every log record,
    everything printed and the Prefect flow parameters are searched for them."""
    work = tmp_path / "work"
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "science": {"backend": {"name": "mock", "mock": {"mode": "random"}},
                    "tiling": {"n_rows": 2, "n_cols": 2}},
        "runtime": {"storage": {
            "data_uri": f"s3://{s3_bucket}/input", "work_uri": str(work),
            "anon": False, "endpoint_url": s3_endpoint,
        }},
    }))  # fmt: skip
    _simulate_small_field(load_config(config))
    steps = [
        ["-vvv", "tiles", "resolve"],  # library debug logs too (botocore's among them)
        ["index", "--workers", "4"],
        ["prepare"],
        ["infer", "--backend", "mock"],
        ["assemble"],
        ["validate", "--strict"],
        ["config", "show"],
    ]
    printed: list[str] = []
    for step in steps:
        verbosity = [] if step[0].startswith("-v") else ["-vv"]
        res = runner.invoke(app, [*verbosity, "-c", str(config), *step])
        assert res.exit_code == 0, (step, res.output)
        printed += [res.stdout, res.stderr]
    assert "inferred 4 sub-tiles with mock" in printed[6]

    settings = load_config(config)
    assert len(list(work.glob("tiles/*/subtiles/*/_RESULT.json"))) == 4
    leaks = _leaks_in_tree(work, planted)
    leaks.update(_leaks_in_bucket(s3_client, s3_bucket, planted))
    if hits := planted.found_in(_iceberg_text(settings)):
        leaks["iceberg catalog"] = hits
    if hits := planted.found_in("\n".join(printed)):
        leaks["command output"] = hits
    out, err = capfd.readouterr()
    if hits := planted.found_in(out + err):
        leaks["process stdout/stderr"] = hits
    logged = "\n".join(f"{r.getMessage()} {r.args!r}" for r in all_logs.records)
    assert all_logs.records, "the run should have logged at debug level"
    if hits := planted.found_in(logged):
        leaks["log records"] = hits
    if hits := planted.found_in(json.dumps(_prefect_parameters(config))):
        leaks["prefect flow parameters"] = hits
    assert leaks == {}


def _simulate_small_field(settings: Settings) -> None:
    """The simulate stage for one tile and one exposure (its VIS files, the PSF, the MER
    mosaic and catalog), written through the configured, credentialed storage: a whole
    field would cost seconds of local S3 traffic that this test does not need."""
    import dataclasses

    from constellation.simulate import FieldSpec
    from constellation.simulate.field import plan_field
    from constellation.simulate.sources import draw_sources
    from constellation.simulate.writers import write_field_files

    spec = FieldSpec(n_tiles_ra=1, n_tiles_dec=1, density_per_arcmin2=1.0, light_binning=64)
    plan = plan_field(spec)
    sources = draw_sources(plan)
    plan = dataclasses.replace(plan, exposures=plan.exposures[:1])
    storage = storage_from_config(settings.runtime.storage)
    assert storage.anon is False
    write_field_files(plan, sources, storage, settings.runtime.storage.data_uri)


def _prefect_parameters(config: Path) -> list[dict[str, Any]]:
    """The parameters Prefect would record for the flow runs of this configuration: the
    pipeline's (a config path) and those of the flows that receive the resolved settings
    (the ``infer-batch`` sub-flow's ``payload``)."""
    from prefect.utilities.callables import get_call_parameters

    from flows.common import load_settings, settings_json
    from flows.infer import infer_batch
    from flows.pipeline import pipeline

    payload = settings_json(load_settings(str(config)))
    return [
        get_call_parameters(pipeline.fn, (), {"config": str(config)}),
        get_call_parameters(infer_batch.fn, (), {"payload": payload, "tiles": [1], "run_id": "r"}),
    ]


# ------------------------------------------------------------------ (c) safe YAML

_EVIL = "!!python/object/apply:os.system ['touch {marker}']\n"
_EVIL_NESTED = "science:\n  tiling: !!python/object/new:os.system ['touch {marker}']\n"


@pytest.mark.parametrize("text", [_EVIL, _EVIL_NESTED], ids=["top-level", "nested"])
def test_config_with_python_tags_is_refused(tmp_path: Path, text: str) -> None:
    marker = tmp_path / "executed"
    path = tmp_path / "evil.yaml"
    path.write_text(text.format(marker=marker), encoding="utf-8")
    res = runner.invoke(app, ["-c", str(path), "config", "show"])
    error_line(
        res, f"invalid YAML in configuration file {path}", "python/object", code=2, sole=True
    )
    res = runner.invoke(app, ["simulate", "--spec", str(path), "--out", str(tmp_path / "f")])
    error_line(res, f"invalid field specification in {path}", "python/object", code=2, sole=True)
    assert not marker.exists()
    assert not (tmp_path / "f").exists()


@pytest.mark.parametrize(
    "text",
    [
        "!!python/object/apply:os.system ['touch {marker}']\n",
        "manifest_version: 1\nidentity: !!python/object/apply:os.system ['touch {marker}']\n",
        "manifest_version: 1\nidentity:\n  tile_id: !!python/name:os.system\n",
    ],
    ids=["top-level", "nested", "name-tag"],
)
def test_manifest_with_python_tags_is_refused(tmp_path: Path, text: str) -> None:
    marker = tmp_path / "executed"
    data = text.format(marker=marker)
    with pytest.raises(ManifestError, match="not valid YAML: could not determine a constructor"):
        parse_manifest(data)
    assert not marker.exists()


# ------------------------------------------------------------------ (d) staging root


@pytest.fixture
def staged_input(tmp_path: Path) -> Path:
    """A minimal valid manifest (no exposures) and its source table, under ``in/``."""
    from constellation.manifest import subtile as m

    box = m.PlaneBox(x_min_arcmin=0, x_max_arcmin=1, y_min_arcmin=0, y_max_arcmin=1)
    poly = m.SkyPolygon(ra_deg=[0, 1, 1, 0], dec_deg=[0, 0, 1, 1])
    manifest = m.SubTileManifest(
        identity=m.ManifestIdentity(tile_id=7, row=0, col=0, preparation_hash="0" * 16,
                                    code_version="test"),
        geometry=m.ManifestGeometry(tile_ra_deg=0, tile_dec_deg=0, tile_core_size_arcmin=30,
                                    margin_arcmin=1, core=box, extended=box, core_polygon=poly,
                                    extended_polygon=poly),
        sources=m.ManifestSources(uri=layout.SOURCES_NAME, n_extended=0, n_core=0),
    )  # fmt: skip
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / layout.MANIFEST_NAME).write_bytes(m.dump_manifest(manifest))
    (folder / layout.SOURCES_NAME).write_bytes(b"PAR1 not really")
    return folder / layout.MANIFEST_NAME


def test_staging_writes_inside_its_root(staged_input: Path, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    res = runner.invoke(app, ["stage", "-d", str(dest), str(staged_input)])
    assert res.exit_code == 0, res.output
    written = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    assert written == ["7/r0_c0/manifest.json", "7/r0_c0/sources.parquet"]


def test_staging_does_not_follow_a_symlink_out_of_its_root(
    staged_input: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "7").symlink_to(outside, target_is_directory=True)
    res = runner.invoke(app, ["stage", "-d", str(dest), str(staged_input)])
    error_line(res, str(staged_input), "would be outside", str(dest))
    assert list(outside.rglob("*")) == []


def test_staging_refuses_escaping_paths_before_writing(staged_input: Path, tmp_path: Path) -> None:
    text = staged_input.read_text(encoding="utf-8")
    staged_input.write_text(text.replace('"uri": "sources.parquet"', '"uri": "../../secret"'))
    (tmp_path / "secret").write_text("do not copy me")
    res = runner.invoke(app, ["stage", "-d", str(tmp_path / "dest"), str(staged_input)])
    error_line(res, str(staged_input), "is not a plain relative name")
    assert not (tmp_path / "dest").exists()


# ------------------------------------------------------------------ (e) secrets in config


@pytest.mark.parametrize(
    ("yaml_text", "problem"),
    [
        ("runtime:\n  catalog:\n    properties:\n      s3.secret-access-key: {s}\n",
         "runtime.catalog.properties: credential-like key(s) ['s3.secret-access-key']"),
        ("runtime:\n  catalog:\n    properties:\n      uri: postgresql://u:{s}@db/cat\n",
         "runtime.catalog.properties: a password in the URL of key(s) ['uri']"),
        ("runtime:\n  storage:\n    endpoint_url: https://u:{s}@s3.example\n",
         "runtime.storage.endpoint_url: the URL contains a password"),
        ("runtime:\n  storage:\n    secret: {s}\n", "runtime.storage.secret: unknown key"),
        ("runtime:\n  storage:\n    key: {s}\n", "runtime.storage.key: unknown key"),
    ],
    ids=["catalog-secret-key", "catalog-uri-password", "endpoint-password", "storage-secret",
         "storage-key"],
)  # fmt: skip
@pytest.mark.parametrize("command", [["config", "show"], ["config", "validate"], ["prepare"]])
def test_a_secret_in_the_configuration_is_refused_and_not_echoed(
    tmp_path: Path,
    all_logs: pytest.LogCaptureFixture,
    yaml_text: str,
    problem: str,
    command: list[str],
) -> None:
    secret = f"s3cr3t{secrets.token_hex(8)}"
    path = tmp_path / "c.yaml"
    path.write_text(yaml_text.format(s=secret), encoding="utf-8")
    res = runner.invoke(app, ["-vv", "-c", str(path), *command])
    error_line(res, str(path), problem, code=2, sole=True)
    assert secret not in res.output
    assert all(secret not in r.getMessage() for r in all_logs.records)


def test_a_secret_from_a_constellation_variable_is_refused_and_not_echoed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    secret = f"s3cr3t{secrets.token_hex(8)}"
    monkeypatch.setenv(
        "CONSTELLATION_RUNTIME__CATALOG__PROPERTIES", json.dumps({"s3.session-token": secret})
    )
    res = runner.invoke(app, ["config", "show"])
    error_line(res, "credential-like key(s) ['s3.session-token']",
               "CONSTELLATION_RUNTIME__CATALOG__PROPERTIES", code=2)  # fmt: skip
    assert secret not in res.output


def test_config_show_never_shows_environment_credentials(planted: Secrets) -> None:
    res = runner.invoke(app, ["config", "show"])
    assert res.exit_code == 0, res.output
    assert planted.found_in(res.output) == []
    assert os.environ["AWS_SECRET_ACCESS_KEY"] == planted.secret  # they were there to find
