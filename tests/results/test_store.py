"""The results contract: schemas as DESIGN §4.2 lists them, exact round trips, markers."""

from __future__ import annotations

import base64
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from constellation.io.storage import Storage
from constellation.manifest import layout
from constellation.results.schema import (
    SHEAR_CONVENTION,
    SOURCE_PARAMETERS,
    SOURCE_SCHEMA,
    SUBTILE_SCHEMA,
)
from constellation.results.store import (
    ResultMarker,
    decode_result,
    encode_result,
    is_done,
    read_footer,
    read_marker,
    read_result,
    subtile_record,
    write_result,
)


def _row(**over: Any) -> dict[str, Any]:
    row: dict[str, Any] = dict(
        tile_id=102018211, subtile_row=1, subtile_col=2, ra=52.9, dec=-28.1, healpix=123,
        healpix_order=29, g1=0.01, g2=-0.02, g1_err=0.005, g2_err=0.006, g1_g2_cov=1e-6,
        n_sources_modelled=40, n_sources_core=2, n_exposures=8, n_quadrants=3, method="map",
        convergence=1.01, convergence_kind="r_hat", backend="mock", backend_version="0",
        status="ok", error=None, t_load_s=0.1, t_infer_s=1.0, t_total_s=1.2,
        finished_at=datetime(2026, 11, 25, 12, 0, tzinfo=UTC), run_id="run-1",
        config_hash="0123456789abcdef", code_version="0.1.0", shear_convention=SHEAR_CONVENTION,
        converged=True, n_steps=93,
    )  # fmt: skip
    row.update(over)
    return row


def _sources(n: int = 2) -> pa.Table:
    rows = [
        dict(
            object_id=10 + i,
            tile_id=102018211,
            subtile_row=1,
            subtile_col=2,
            ra=52.9,
            dec=-28.1,
            healpix=5,
            flux=100.0 + i,
            hlr=0.3,
            e1=0.1,
            e2=None,
            run_id="run-1",
            config_hash="0123456789abcdef",
        )
        for i in range(n)
    ]
    return pa.Table.from_pylist(rows, schema=SOURCE_SCHEMA)


def test_schemas_carry_the_design_fields() -> None:
    needed = {
        "tile_id", "subtile_row", "subtile_col", "ra", "dec", "healpix", "g1", "g2", "g1_err",
        "g2_err", "g1_g2_cov", "n_sources_modelled", "n_sources_core", "n_exposures", "method",
        "convergence", "backend", "backend_version", "status", "error", "t_total_s", "run_id",
        "config_hash", "shear_convention",
    }  # fmt: skip
    assert needed <= set(SUBTILE_SCHEMA.names)
    src = {"object_id", "tile_id", "subtile_row", "subtile_col", "ra", "dec", "healpix"}
    src |= {n for p, _ in SOURCE_PARAMETERS for n in (p, f"{p}_err")}
    assert src <= set(SOURCE_SCHEMA.names)
    for schema in (SUBTILE_SCHEMA, SOURCE_SCHEMA):
        assert all(f.metadata and f.metadata[b"doc"] for f in schema)
    assert not SUBTILE_SCHEMA.field("tile_id").nullable
    assert SUBTILE_SCHEMA.field("g1_err").nullable


def test_round_trip_is_exact() -> None:
    data = encode_result(_row(), _sources(3))
    result = decode_result(data)
    assert result.subtile.schema.equals(SUBTILE_SCHEMA)
    assert result.sources.schema.equals(SOURCE_SCHEMA)
    assert result.row == _row()
    assert result.sources.equals(_sources(3))


def test_subtile_row_round_trip_is_exact_for_awkward_values() -> None:
    """The sub-tile row travels as JSON in the footer: floats must survive to the bit."""
    awkward = _row(g1=0.1 + 0.2, g2=-0.0, g1_err=5e-324, g2_err=float("inf"),
                   g1_g2_cov=float("nan"), convergence=None, error="quote \" and ünïcode",
                   finished_at=datetime(2026, 11, 25, 12, 0, 0, 123456, tzinfo=UTC))  # fmt: skip
    row = decode_result(encode_result(awkward, _sources(1))).row
    assert math.isnan(row.pop("g1_g2_cov"))
    expected = {k: v for k, v in awkward.items() if k != "g1_g2_cov"}
    assert row == expected
    assert math.copysign(1.0, row["g2"]) == -1.0


def test_results_of_earlier_versions_are_read() -> None:
    """Before this layout: the source columns only, the sub-tile row as a base64 Arrow
    IPC stream in the metadata (here with the columns of that time: no ``converged``,
    ``n_steps``, which read back as null)."""
    old = {k: v for k, v in _row().items() if k not in ("converged", "n_steps")}
    old_schema = pa.schema([f for f in SUBTILE_SCHEMA if f.name in old])
    sub = pa.Table.from_pylist([old], schema=old_schema)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, sub.schema) as writer:
        writer.write_table(sub)
    meta = {b"constellation.subtile": base64.b64encode(sink.getvalue().to_pybytes())}
    buf = pa.BufferOutputStream()
    pq.write_table(_sources(2).replace_schema_metadata(meta), buf)
    result = decode_result(buf.getvalue().to_pybytes())
    assert result.row == _row(converged=None, n_steps=None)
    assert result.sources.equals(_sources(2))


def test_unknown_columns_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown sub-tile result columns"):
        encode_result(_row(bogus=1), _sources())
    with pytest.raises(ValueError, match="unknown source result columns"):
        encode_result(_row(), _sources().append_column("bogus", pa.array([1, 2])))


def test_not_a_result() -> None:
    import io

    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(_sources(), buf)
    with pytest.raises(ValueError, match="not a constellation result"):
        decode_result(buf.getvalue())


def test_write_then_marker(tmp_path: Path) -> None:
    storage = Storage()
    folder = str(tmp_path / "r1_c2")
    assert read_marker(storage, folder) is None
    assert not is_done(storage, folder, "0123456789abcdef")
    marker = write_result(storage, folder, _row(), _sources(2))
    assert read_marker(storage, folder) == marker
    assert marker.n_sources == 2
    assert marker.backend == "mock"
    assert is_done(storage, folder, "0123456789abcdef")
    assert is_done(storage, folder, "0123456789abcdef", "mock")
    assert not is_done(storage, folder, "0123456789abcdef", "shine")
    assert not is_done(storage, folder, "ffffffffffffffff")
    back = read_result(storage, layout.join(folder, layout.RESULT_NAME))
    assert back.row["g1"] == 0.01


def test_failed_result_is_not_done(tmp_path: Path) -> None:
    storage = Storage()
    folder = str(tmp_path / "f")
    row = _row(status="failed", error="RuntimeError: boom", g1=None, g2=None)
    write_result(storage, folder, row, SOURCE_SCHEMA.empty_table())
    marker = read_marker(storage, folder)
    assert marker is not None
    assert marker.status == "failed"
    assert marker.error == row["error"]
    assert not is_done(storage, folder, "0123456789abcdef")


def test_marker_version_is_checked() -> None:
    m = ResultMarker("h", "r", "ok", 1, "x", "mock")
    assert ResultMarker.from_bytes(m.to_bytes()) == m
    with pytest.raises(ValueError, match="version"):
        ResultMarker.from_bytes(b'{"version": 99}')


def test_read_footer_gives_the_rows_and_the_subtile_row() -> None:
    data = encode_result(_row(), _sources(3))
    footer = read_footer(data)
    assert footer.num_rows == 3
    assert footer.equals(pq.read_metadata(pa.BufferReader(data)))
    row = subtile_record(footer.metadata)  # the sub-tile row, from the footer alone
    assert (row["tile_id"], row["run_id"], row["n_steps"]) == (102018211, "run-1", 93)
