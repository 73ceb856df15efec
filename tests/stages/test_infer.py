"""The infer stage with the mock backend on a prepared 2x2-tile field (64 sub-tiles)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from constellation.inference import clear_backends, get_backend
from constellation.inference.base import (
    BackendUnavailableError,
    NonFiniteFitError,
    NothingToFitError,
    SubTileDataError,
    SubTileInput,
)
from constellation.inference.mock import MockBackend, MockFailureError, subtile_seed
from constellation.io.storage import Storage, StorageError
from constellation.manifest import layout
from constellation.manifest.subtile import load_manifest
from constellation.results.schema import SOURCE_SCHEMA, SUBTILE_SCHEMA
from constellation.results.store import read_marker, read_result
from constellation.stages.infer import (
    OutcomeSummary,
    SubTileFailedError,
    classify,
    infer_subtile,
    subtile_dir_of,
)
from constellation.truth import load_truth_field
from tests.fixtures.fields import PreparedField


def _manifests(field: PreparedField, work: Path, n_tiles: int = 4) -> list[str]:
    return sorted(
        layout.manifest_url(str(work), t, r, c)
        for t in field.tile_ids[:n_tiles]
        for r in range(4)
        for c in range(4)
    )


def _run_all(
    field: PreparedField, work: Path, run_id: str = "t", n_tiles: int = 4, **science: object
) -> list:
    clear_backends()
    settings = field.settings(work, **science)
    backend = get_backend(settings)
    storage = Storage()
    return [
        infer_subtile(
            u,
            storage,
            backend,
            run_id=run_id,
            healpix_order=29,
            config_hash=settings.config_hash,
            expected_preparation_hash=settings.preparation_hash,
        )
        for u in _manifests(field, work, n_tiles)
    ]


@pytest.fixture(scope="module")
def truth_run(prepared_field: PreparedField, tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = prepared_field.copy_work(tmp_path_factory.mktemp("infer") / "work")
    outcomes = _run_all(prepared_field, work)
    assert [o.status for o in outcomes] == ["ok"] * 64
    return work


def test_results_match_the_contract(prepared_field: PreparedField, truth_run: Path) -> None:
    storage = Storage()
    for url in _manifests(prepared_field, truth_run)[:5]:
        manifest = load_manifest(url)
        result = read_result(storage, layout.join(subtile_dir_of(url), layout.RESULT_NAME))
        assert result.subtile.schema.equals(SUBTILE_SCHEMA)
        assert result.sources.schema.equals(SOURCE_SCHEMA)
        row = result.row
        assert (row["tile_id"], row["subtile_row"], row["subtile_col"]) == (
            manifest.identity.tile_id, manifest.identity.row, manifest.identity.col,
        )  # fmt: skip
        assert row["status"] == "ok"
        assert row["backend"] == "mock"
        assert row["method"] == "mock-truth"
        assert row["n_sources_core"] == manifest.sources.n_core == result.sources.num_rows
        assert row["n_sources_modelled"] == manifest.sources.n_extended
        assert row["n_exposures"] == len(manifest.exposures)
        assert row["config_hash"] == prepared_field.settings().config_hash  # the run's
        # every reported source lies in this sub-tile's core and carries truth parameters
        assert result.sources.column("subtile_row").to_pylist() == [row["subtile_row"]] * (
            result.sources.num_rows
        )
        assert result.sources.column("e1").null_count == 0


def test_truth_mode_recovers_the_injected_field(
    prepared_field: PreparedField, truth_run: Path
) -> None:
    storage = Storage()
    truth = load_truth_field(storage, str(prepared_field.root / "truth"))
    rows = [
        read_result(storage, layout.join(subtile_dir_of(u), layout.RESULT_NAME)).row
        for u in _manifests(prepared_field, truth_run)
    ]
    g1 = np.array([r["g1"] for r in rows])
    g2 = np.array([r["g2"] for r in rows])
    err = np.array([r["g1_err"] for r in rows])
    n_core = np.array([r["n_sources_core"] for r in rows])
    np.testing.assert_allclose(err, 0.26 / np.sqrt(n_core))
    t1, t2 = truth.shear_at([r["ra"] for r in rows], [r["dec"] for r in rows])
    pulls = np.concatenate([(g1 - t1) / err, (g2 - t2) / err])
    # 128 standard normal pulls: mean within 4 sigma/sqrt(n), spread 0.7..1.3
    assert abs(pulls.mean()) < 4 / np.sqrt(pulls.size)
    assert 0.7 < pulls.std() < 1.3
    # and the signal is really there: the injected field explains the variance
    assert np.corrcoef(g1, t1)[0, 1] > 0.5 or np.std(t1) < 3 * err.mean()


def test_mock_is_deterministic(prepared_field: PreparedField) -> None:
    settings = prepared_field.settings()
    url = _manifests(prepared_field, prepared_field.work)[3]
    manifest = load_manifest(url)
    import pyarrow.parquet as pq

    sources = pq.read_table(layout.resolve_relative(url, manifest.sources.uri))
    item = SubTileInput(manifest, url, sources, Storage())
    outs = [
        MockBackend(settings.science.backend.mock, str(prepared_field.root / "truth")).run(item)
        for _ in range(2)
    ]
    assert outs[0].g1 == outs[1].g1
    assert outs[0].g2 == outs[1].g2
    assert outs[0].sources.equals(outs[1].sources)
    ident = manifest.identity
    key = ident.preparation_hash
    seeds = {subtile_seed(ident.tile_id, r, c, key) for r in range(4) for c in range(4)}
    assert len(seeds) == 16
    assert subtile_seed(1, 0, 0, "a") != subtile_seed(1, 0, 0, "b")


def test_random_mode_is_plausible(prepared_field: PreparedField, tmp_path: Path) -> None:
    work = prepared_field.copy_work(tmp_path / "work")
    storage = Storage()
    settings = prepared_field.settings(work, backend={"name": "mock", "mock": {"mode": "random"}})
    clear_backends()
    backend = get_backend(settings)
    url = _manifests(prepared_field, work)[0]
    # prepared under another configuration: refused, not silently mixed
    with pytest.raises(ValueError, match="run 'constellation prepare' again"):
        infer_subtile(url, storage, backend, run_id="r", healpix_order=29,
                      config_hash=settings.config_hash,
                      expected_preparation_hash="f" * 16)  # fmt: skip
    # another backend setting is not another preparation: the manifest serves as it is,
    # the rows carry the configuration the sub-tile ran with
    assert settings.config_hash != prepared_field.settings().config_hash
    assert settings.preparation_hash == prepared_field.settings().preparation_hash
    outcome = infer_subtile(url, storage, backend, run_id="r", healpix_order=29,
                            config_hash=settings.config_hash,
                            expected_preparation_hash=settings.preparation_hash)  # fmt: skip
    assert outcome.status == "ok"
    row = read_result(storage, layout.join(subtile_dir_of(url), layout.RESULT_NAME)).row
    assert row["config_hash"] == settings.config_hash
    assert row["method"] == "mock-random"
    assert abs(row["g1"]) < 0.3
    assert abs(row["g2"]) < 0.3


def test_failures_write_failed_results_and_are_retried(
    prepared_field: PreparedField, tmp_path: Path
) -> None:
    work = prepared_field.copy_work(tmp_path / "work")
    storage = Storage()
    science = {"backend": {"name": "mock", "mock": {"fail_rate": 0.4}}}
    outcomes = _run_all(prepared_field, work, n_tiles=2, **science)
    failed = [o for o in outcomes if o.status == "failed"]
    assert 2 < len(failed) < 24
    assert all("injected failure" in (o.error or "") for o in failed)
    for o in failed:
        folder = layout.subtile_dir(str(work), o.tile_id, o.row, o.col)
        marker = read_marker(storage, folder)
        assert marker is not None
        assert marker.status == "failed"
        result = read_result(storage, layout.join(folder, layout.RESULT_NAME))
        assert result.sources.num_rows == 0
        assert result.row["g1"] is None
        assert "injected failure" in result.row["error"]
    # a re-run skips the ok sub-tiles and retries the failed ones (same outcome: deterministic)
    again = _run_all(prepared_field, work, n_tiles=2, **science)
    assert sum(o.status == "done" for o in again) == 32 - len(failed)
    assert sum(o.status == "failed" for o in again) == len(failed)


def test_missing_truth_means_the_backend_is_unavailable(
    prepared_field: PreparedField, tmp_path: Path
) -> None:
    work = prepared_field.copy_work(tmp_path / "work")
    science = {"backend": {"name": "mock", "mock": {"truth_uri": str(tmp_path / "nowhere")}}}
    outcomes = _run_all(prepared_field, work, n_tiles=1, **science)
    assert {o.status for o in outcomes} == {"unavailable"}
    assert {o.cause for o in outcomes} == {"BackendUnavailableError"}
    assert "truth folder" in (outcomes[0].error or "")
    # nothing happened to the sub-tiles: no result is written for them
    assert not Path(layout.result_done_url(str(work), outcomes[0].tile_id, 0, 0)).exists()


def test_a_subtile_with_nothing_to_fit_is_skipped_once(
    prepared_field: PreparedField, tmp_path: Path
) -> None:
    work = prepared_field.copy_work(tmp_path / "work")
    storage = Storage()
    url = _manifests(prepared_field, work, 1)[3]
    manifest = load_manifest(url, storage)
    src = Path(layout.resolve_relative(url, manifest.sources.uri))
    table = pq.read_table(src)
    pq.write_table(table.slice(0, 0), src)  # the sub-tile's sources are gone
    clear_backends()
    settings = prepared_field.settings(work)
    backend = get_backend(settings)
    first = infer_subtile(url, storage, backend, run_id="a", healpix_order=29,
                          config_hash="c")  # fmt: skip
    assert (first.status, first.cause, first.retryable) == ("skipped", "no sources", False)
    result = read_result(storage, layout.join(subtile_dir_of(url), layout.RESULT_NAME))
    assert result.row["status"] == "skipped"
    assert result.row["g1"] is None
    assert "no sources" in result.row["error"]
    assert result.sources.num_rows == 0
    # final: a rerun does not run it again
    again = infer_subtile(url, storage, backend, run_id="b", healpix_order=29,
                          config_hash="c")  # fmt: skip
    assert again.status == "done"


def test_unknown_backend() -> None:
    from constellation.config import Settings

    clear_backends()
    with pytest.raises(BackendUnavailableError, match="unknown inference backend"):
        get_backend(Settings(), "nope")


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (NothingToFitError("no exposures", "none listed"), ("skipped", "no exposures", False)),
        (SubTileDataError("no PSF grid"), ("failed", "SubTileDataError", False)),
        (NonFiniteFitError("g1 = nan"), ("failed", "NonFiniteFitError", False)),
        (MockFailureError("injected"), ("failed", "MockFailureError", False)),
        (BackendUnavailableError("no SHINE"), ("unavailable", "BackendUnavailableError", False)),
        (OSError("connection reset"), ("failed", "OSError", True)),
        (TimeoutError("read timed out"), ("failed", "TimeoutError", True)),
        (StorageError("503 from S3", "s3://b/k"), ("failed", "StorageError", True)),
        (FileNotFoundError("gone"), ("failed", "FileNotFoundError", False)),
        (PermissionError("denied"), ("failed", "PermissionError", False)),
        (ValueError("Requested distortion exceeds 1."), ("failed", "ValueError", False)),
        (SubTileFailedError("tile 1 r0_c0", "x", "OSError", True), ("failed", "OSError", True)),
    ],
)
def test_classify_by_type(exc: BaseException, expected: tuple[str, str, bool]) -> None:
    verdict = classify(exc)
    assert (verdict.status, verdict.cause, verdict.retryable) == expected
    # the message never matters: the same text in another type classifies differently
    assert classify(RuntimeError(str(exc))).status == "failed"
    assert not classify(RuntimeError(str(exc))).retryable


@pytest.mark.parametrize(
    "exc",
    [
        NothingToFitError("no sources", "the sub-tile has no sources"),
        NonFiniteFitError("g = nan"),
        BackendUnavailableError("install SHINE"),
        SubTileFailedError("tile 1 r2_c3", "OSError: reset", "OSError", True),
    ],
)
def test_outcome_errors_survive_pickling(exc: BaseException) -> None:
    # they travel from Ray workers to the driver inside Prefect states
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is type(exc)
    assert str(back) == str(exc)
    assert classify(back) == classify(exc)


def test_outcome_summary_groups_by_cause() -> None:
    summary = OutcomeSummary()
    for i in range(3):
        summary.add("failed", "MockFailureError", f"tile 1 r0_c{i}: injected")
    summary.add("failed", "OSError", "tile 1 r1_c0: reset")
    summary.add("skipped", "no exposures", "tile 1 r2_c0: none")
    summary.add("ok")
    assert summary.counts == {"failed": 4, "skipped": 1, "ok": 1}
    assert summary.lines() == [
        "failed 3: MockFailureError (e.g. tile 1 r0_c0: injected)",
        "failed 1: OSError (e.g. tile 1 r1_c0: reset)",
        "skipped 1: no exposures (e.g. tile 1 r2_c0: none)",
    ]
    merged = OutcomeSummary.from_dict(summary.to_dict())
    merged.merge(summary)
    assert merged.counts["failed"] == 8
    assert merged.lines()[0] == "failed 6: MockFailureError (e.g. tile 1 r0_c0: injected)"


def test_changed_manifest_is_redone(prepared_field: PreparedField, tmp_path: Path) -> None:
    work = prepared_field.copy_work(tmp_path / "work")
    assert {o.status for o in _run_all(prepared_field, work, n_tiles=1)} == {"ok"}
    url = _manifests(prepared_field, work, 1)[5]
    # same config, new inputs (e.g. a new exposure): the manifest bytes change
    Path(url).write_bytes(Path(url).read_bytes() + b"\n")
    again = _run_all(prepared_field, work, n_tiles=1)
    assert [o.status for o in again].count("ok") == 1
    assert [o.status for o in again].count("done") == 15
