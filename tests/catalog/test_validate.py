"""Validation of the catalog, through the API and ``constellation validate --strict``."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
from typer.testing import CliRunner

from constellation.catalog.assemble import assemble
from constellation.catalog.iceberg import (
    KEY_COLUMN,
    PARTITION_COLUMN,
    SOURCES,
    split_key,
    subtile_key,
)
from constellation.catalog.synthetic import synthetic_result
from constellation.catalog.validate import expected_subtiles, validate, validate_catalog
from constellation.cli import app
from constellation.manifest import layout
from constellation.results.store import write_result
from tests.catalog.conftest import GRID, Field

runner = CliRunner()


def _strict(field: Field, *extra: str) -> tuple[int, str]:
    result = runner.invoke(
        app, ["--config", str(field.config_path), "validate", "--strict", *extra]
    )
    return result.exit_code, result.output


def test_clean_catalog_passes_strict(field: Field) -> None:
    field.write(n_sources=6)
    assemble(field.settings)
    report = validate(field.settings, tiles=[t.tile_id for t in field.tiles])
    assert report.passed
    assert report.ok
    assert report.n_violations == 0
    assert report.expected == 32  # no manifests: the tiling grid of the given tiles
    assert (report.present, report.n_ok, report.sources) == (32, 32, 32 * 6)
    assert [t.sources for t in report.per_tile] == [16 * 6, 16 * 6]
    md = report.to_markdown()
    assert "PASSED" in md
    assert "| source rows | 192 |" in md
    code, out = _strict(field)
    assert code == 0, out
    assert "PASSED" in out


def test_duplicate_across_partitions_is_found(field: Field) -> None:
    """An object reported by two sub-tiles whose centres are in different partitions
    (an ownership bug) is still a duplicate: sources are checked by their own position."""
    field.write(n_sources=6)
    assemble(field.settings)
    cat = field.catalog()
    key = subtile_key(field.tiles[0].tile_id, 1, 1)
    pairs = cat.read(SOURCES, [KEY_COLUMN, PARTITION_COLUMN])
    src_pixels = dict(
        zip(pairs.column(KEY_COLUMN).to_pylist(), pairs.column(PARTITION_COLUMN).to_pylist(),
            strict=True)
    )  # fmt: skip
    other = next(k for k, p in src_pixels.items() if p != src_pixels[key])
    # Two of sub-tile ``key``'s objects also reported by ``other`` (another partition).
    rows = cat.read(SOURCES, keys=[key]).select(cat.arrow_schema(SOURCES).names).slice(0, 2)
    tile, row, col = split_key(other)
    for name, value in (("tile_id", tile), ("subtile_row", row), ("subtile_col", col),
                        (KEY_COLUMN, other), (PARTITION_COLUMN, src_pixels[other])):  # fmt: skip
        i = rows.schema.get_field_index(name)
        field_i = rows.schema.field(i)
        rows = rows.set_column(i, field_i, pa.array([value] * 2, field_i.type))
    cat.replace(SOURCES, [], cat.write_files(SOURCES, rows), {})
    assert validate(field.settings).duplicate_sources == 2
    # Read in slices of ~one partition each: every row once, the pair in one slice.
    report = validate_catalog(field.catalog(), max_rows=6)
    assert report.sources == 32 * 6 + 2
    assert report.duplicate_sources == 2


def test_strict_fails_on_planted_duplicate(field: Field) -> None:
    field.write(n_sources=6)
    assemble(field.settings)
    assert _strict(field)[0] == 0
    # Plant a duplicate: append one sub-tile's source rows again (no delete).
    cat = field.catalog()
    key = subtile_key(field.tiles[0].tile_id, 1, 1)
    rows = cat.read(SOURCES, keys=[key])
    rows = rows.select([n for n in cat.arrow_schema(SOURCES).names])
    cat.replace(SOURCES, [], cat.write_files(SOURCES, rows), {})
    code, out = _strict(field)
    assert code == 1
    assert "duplicate_sources** (6)" in out
    assert "count_mismatch** (1)" in out
    report = validate(field.settings)
    assert report.duplicate_sources == 6
    assert not report.passed


def test_strict_fails_on_planted_nan(field: Field) -> None:
    field.write(n_sources=6)
    tile = field.tiles[1]
    res = synthetic_result(tile.subtile(GRID, 0, 3), n_sources=6, rng=np.random.default_rng(5),
                           config_hash=field.settings.config_hash)  # fmt: skip
    flux = res.sources.column("flux").to_pylist()
    flux[2] = math.nan
    sources = res.sources.set_column(
        res.sources.schema.get_field_index("flux"), res.sources.schema.field("flux"),
        pa.array(flux, pa.float64()),
    )  # fmt: skip
    write_result(
        field.storage, layout.subtile_dir(field.work, tile.tile_id, 0, 3), res.row, sources
    )
    assemble(field.settings)
    code, out = _strict(field)
    assert code == 1
    assert "non_finite** (1)" in out
    assert "sources.flux: 1" in out
    assert validate(field.settings).non_finite == {"sources.flux": 1}


def test_missing_failed_and_out_of_range(field: Field) -> None:
    a, b = field.tiles
    field.write(failed=((a.tile_id, 2, 2),))
    # A sub-tile with |g| >= 1.
    res = synthetic_result(b.subtile(GRID, 3, 3), n_sources=4, rng=np.random.default_rng(2),
                           shear=lambda ra, dec: (0.9, 0.6),
                           config_hash=field.settings.config_hash)  # fmt: skip
    write_result(
        field.storage, layout.subtile_dir(field.work, b.tile_id, 3, 3), res.row, res.sources
    )
    # A prepared sub-tile of a third tile that has no result.
    field.storage.write_bytes(layout.manifest_url(field.work, 102000099, 0, 0), b"identity: {}\n")
    for t in (a, b):
        for r in range(4):
            for c in range(4):
                field.storage.write_bytes(layout.manifest_url(field.work, t.tile_id, r, c), b"")
    assemble(field.settings)
    expected = expected_subtiles(field.storage, field.work)
    assert expected is not None
    assert len(expected) == 33
    report = validate(field.settings)
    kinds = {v.kind: v.count for v in report.violations}
    assert kinds == {"missing": 1, "failed": 1, "shear_out_of_range": 1}
    assert report.missing == [(102000099, 0, 0)]
    assert report.failures == [(a.tile_id, 2, 2, "synthetic failed")]
    assert "synthetic failed" in report.to_markdown()
    lenient = validate(field.settings, allow_failed=True)
    assert {v.kind for v in lenient.violations} == {"missing", "shear_out_of_range"}
    code, out = _strict(field, "--allow-failed", "--tile", str(a.tile_id))
    assert code == 0, out  # tile a alone: one failure, allowed; nothing missing
    assert _strict(field, "--tile", str(a.tile_id))[0] == 1


def test_orphan_sources(field: Field) -> None:
    field.write(n_sources=3)
    assemble(field.settings)
    cat = field.catalog()
    key = subtile_key(field.tiles[0].tile_id, 0, 0)
    rows = cat.read(SOURCES, keys=[key]).select(list(cat.arrow_schema(SOURCES).names))
    ghost = subtile_key(777, 0, 0)
    rows = rows.set_column(
        rows.schema.get_field_index(KEY_COLUMN), rows.schema.field(KEY_COLUMN),
        pa.array([ghost] * rows.num_rows, pa.int64()),
    )  # fmt: skip
    rows = rows.set_column(
        rows.schema.get_field_index("object_id"), rows.schema.field("object_id"),
        pa.array([1, 2, 3], pa.int64()),
    )  # fmt: skip
    cat.replace(SOURCES, [ghost], cat.write_files(SOURCES, rows), {})
    report = validate(field.settings)
    assert report.orphan_sources == 3
    assert [v.kind for v in report.violations] == ["orphan_sources"]


def test_empty_catalog_fails_strict(field: Field) -> None:
    report = validate(field.settings)
    assert [v.kind for v in report.violations] == ["empty"]
    assert _strict(field)[0] == 1


def test_a_run_never_passes_on_another_backend_or_configuration(field: Field) -> None:
    """The validation after a run names the run's backend and config hash: rows made by
    another backend (older mock results, say) or another configuration fail it."""
    field.write(n_sources=4)
    assemble(field.settings)
    rows = field.catalog().read("subtiles")
    backend = rows.column("backend")[0].as_py()
    config_hash = rows.column("config_hash")[0].as_py()
    assert validate(field.settings, expect_backend=backend, expect_config_hash=config_hash).ok
    other = validate(field.settings, expect_backend="shine" if backend != "shine" else "mock")
    assert [v.kind for v in other.violations] == ["backend_mismatch"]
    assert other.violations[0].count == 32
    assert f"backend {backend} instead of" in other.violations[0].detail
    stale = validate(field.settings, expect_config_hash="f" * 16)
    assert [v.kind for v in stale.violations] == ["config_mismatch"]
    assert stale.violations[0].examples[0].endswith(config_hash)


def test_a_catalog_of_two_configurations_is_flagged_unless_accepted(field: Field) -> None:
    a, b = field.tiles
    field.write(tiles=[a])
    field.write(tiles=[b], config_hash="0" * 16)
    assemble(field.settings, only_config=False)
    assert "mixed" not in {v.kind for v in validate(field.settings).violations}  # library
    code, out = _strict(field)
    assert code == 1, out
    assert f"rows of 2 config_hash values: {'0' * 16} (16 sub-tiles)" in out
    assert f"{field.settings.config_hash} (16 sub-tiles)" in out
    code, out = _strict(field, "--allow-mixed")
    assert code == 0, out
    assert "mixed" not in out
