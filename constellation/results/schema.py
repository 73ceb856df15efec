"""The results contract (inference -> assembly), DESIGN §4.2.

Each inferred sub-tile yields

* one **sub-tile row** (:data:`SUBTILE_SCHEMA`): identity, centre, shear and its
  errors, counts, method and convergence diagnostic, backend, status, timings,
  run id, config hash and the shear sign convention;
* zero or more **source rows** (:data:`SOURCE_SCHEMA`): the fitted parameters of
  the sub-tile's *core* sources only, so that every source of the survey appears
  in exactly one sub-tile.

Both schemas are exact: writers build tables with them and readers check them, so
the Iceberg tables built from them (``constellation.catalog``) see fixed types,
nullability and integer widths.

Result files are written in the layout of the catalog's ``sources`` data files
(:func:`source_file_schema`: the source columns, then :data:`KEY_COLUMN` and
:data:`PARTITION_COLUMN`, with Parquet field ids), so that assembly can commit them
as they are instead of decoding and re-encoding every row.

Shear sign convention (:data:`SHEAR_CONVENTION`): reduced shear in the local
``(u, v) = (-RA cos δ, Dec)`` frame — ``u`` points west, ``v`` north — so ``+g1``
stretches along west-east and ``+g2`` along the north-west/south-east diagonal.
This is SHINE's frame (``local_wcs_jacobian``) and the simulator's.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pyarrow as pa

__all__ = [
    "KEY_COLUMN",
    "PARTITION_COLUMN",
    "SHEAR_CONVENTION",
    "SOURCE_PARAMETERS",
    "SOURCE_SCHEMA",
    "STATUSES",
    "SUBTILE_SCHEMA",
    "Status",
    "empty_sources",
    "partition_pixel",
    "partition_pixels",
    "source_file_schema",
    "split_key",
    "subtile_key",
    "subtile_table",
    "with_field_ids",
]

#: Recorded in every sub-tile row; see the module docstring.
SHEAR_CONVENTION = "reduced shear, (u, v) = (-RA cos dec, Dec): +g1 along u (west), +g2 along u=v"

Status = Literal["ok", "failed", "skipped"]
STATUSES: tuple[str, ...] = ("ok", "failed", "skipped")

_F64 = pa.float64()
_I64 = pa.int64()
_I32 = pa.int32()
_STR = pa.string()
_TS = pa.timestamp("us", tz="UTC")


def _f(name: str, typ: pa.DataType, nullable: bool, doc: str) -> pa.Field:
    return pa.field(name, typ, nullable=nullable, metadata={"doc": doc})


SUBTILE_SCHEMA = pa.schema(
    [
        _f("tile_id", _I64, False, "Euclid MER tile index."),
        _f("subtile_row", _I32, False, "Sub-tile row (0 = southernmost)."),
        _f("subtile_col", _I32, False, "Sub-tile column (0 = easternmost)."),
        _f("ra", _F64, False, "Sub-tile core centre RA, deg (ICRS)."),
        _f("dec", _F64, False, "Sub-tile core centre Dec, deg (ICRS)."),
        _f("healpix", _I64, False, "Nested HEALPix index of the centre at science.healpix."),
        _f("healpix_order", _I32, False, "Order of the healpix column."),
        _f("g1", _F64, True, "Reduced shear g1 (null unless status = ok)."),
        _f("g2", _F64, True, "Reduced shear g2 (null unless status = ok)."),
        _f("g1_err", _F64, True, "1-sigma error of g1; null when the method gives none (MAP)."),
        _f("g2_err", _F64, True, "1-sigma error of g2; null when the method gives none (MAP)."),
        _f("g1_g2_cov", _F64, True, "Covariance of g1 and g2 where available."),
        _f("n_sources_modelled", _I32, False, "Sources modelled (extended area, selected)."),
        _f("n_sources_core", _I32, False, "Core sources reported in the source table."),
        _f("n_exposures", _I32, False, "Quadrant exposures used."),
        _f("n_quadrants", _I32, False, "Distinct quadrant ids among the exposures."),
        _f("method", _STR, False, "Inference method: map, vi, nuts (mock: mock-truth, ...)."),
        _f("convergence", _F64, True, "Convergence diagnostic (see convergence_kind)."),
        _f("convergence_kind", _STR, True, "What convergence is: r_hat, vi_final_loss, ..."),
        _f("backend", _STR, False, "Backend that produced the row: shine or mock."),
        _f("backend_version", _STR, False, "Version of the backend package."),
        _f("status", _STR, False, "ok, failed or skipped."),
        _f("error", _STR, True, "Error message when status is not ok."),
        _f("t_load_s", _F64, False, "Wall time reading inputs, s."),
        _f("t_infer_s", _F64, False, "Wall time of the inference, s."),
        _f("t_total_s", _F64, False, "Wall time of the whole sub-tile, s."),
        _f("finished_at", _TS, False, "When the result was written (UTC)."),
        _f("run_id", _STR, False, "Pipeline run that produced the row."),
        _f("config_hash", _STR, False, "Science configuration hash."),
        _f("code_version", _STR, False, "constellation version."),
        _f("shear_convention", _STR, False, "Shear sign convention."),
        _f(
            "converged",
            pa.bool_(),
            True,
            "Whether the fit met its stopping rule (MAP: the shear settled within the "
            "step budget); null where the method has none.",
        ),
        _f("n_steps", _I32, True, "Optimisation steps run (MAP); null otherwise."),
    ]
)

#: Fitted per-source parameters; each has a nullable ``{name}_err`` companion.
SOURCE_PARAMETERS: tuple[tuple[str, str], ...] = (
    ("flux", "Flux, ADU (SHINE's flux site)."),
    ("hlr", "Half-light radius, arcsec."),
    ("e1", "Intrinsic ellipticity e1 (same frame as g1)."),
    ("e2", "Intrinsic ellipticity e2 (same frame as g2)."),
    ("dx", "Position offset along u (west), arcsec."),
    ("dy", "Position offset along v (north), arcsec."),
)

SOURCE_SCHEMA = pa.schema(
    [
        _f("object_id", _I64, False, "MER OBJECT_ID."),
        _f("tile_id", _I64, False, "Tile owning the source (its core holds it)."),
        _f("subtile_row", _I32, False, "Sub-tile row that reports the source."),
        _f("subtile_col", _I32, False, "Sub-tile column that reports the source."),
        _f("ra", _F64, False, "RA, deg (MER catalog)."),
        _f("dec", _F64, False, "Dec, deg (MER catalog)."),
        _f("healpix", _I64, False, "Nested HEALPix index at science.healpix.source_order."),
    ]
    + [
        f
        for name, doc in SOURCE_PARAMETERS
        for f in (_f(name, _F64, True, doc), _f(f"{name}_err", _F64, True, f"Error of {name}."))
    ]
    + [
        _f("run_id", _STR, False, "Pipeline run that produced the row."),
        _f("config_hash", _STR, False, "Science configuration hash."),
    ]
)


def subtile_table(row: dict[str, Any]) -> pa.Table:
    """One sub-tile row as a table of :data:`SUBTILE_SCHEMA` (missing nullable keys -> null)."""
    unknown = set(row) - set(SUBTILE_SCHEMA.names)
    if unknown:
        raise ValueError(f"unknown sub-tile result columns: {sorted(unknown)}")
    return pa.Table.from_pylist([row], schema=SUBTILE_SCHEMA)


def empty_sources() -> pa.Table:
    """A source table with no rows."""
    return SOURCE_SCHEMA.empty_table()


# --------------------------------------------------------------------------- data-file layout

KEY_COLUMN = "subtile_key"
"""``tile_id * 10000 + subtile_row * 100 + subtile_col`` (rows and columns are < 100)."""

PARTITION_COLUMN = "partition_healpix"
"""Nested HEALPix pixel, at a coarse partition order, of the centre of the sub-tile that
owns the row: every row of a sub-tile shares it, so one sub-tile's rows form one file
of one partition."""


def subtile_key(tile_id: int, row: int, col: int) -> int:
    """The int64 key of a sub-tile: ``tile_id * 10000 + row * 100 + col``."""
    if not (0 <= row < 100 and 0 <= col < 100):
        raise ValueError(f"sub-tile row/col must be in [0, 100), got ({row}, {col})")
    return int(tile_id) * 10_000 + int(row) * 100 + int(col)


def split_key(key: int) -> tuple[int, int, int]:
    """``(tile_id, row, col)`` of a :func:`subtile_key`."""
    tile, rest = divmod(int(key), 10_000)
    return tile, rest // 100, rest % 100


def partition_pixels(
    healpix: pa.Array | pa.ChunkedArray | Any,
    order: int | pa.Array | pa.ChunkedArray | Any,
    partition_order: int,
) -> pa.Array:
    """Nested pixels at ``partition_order`` of nested indices at ``order`` (int64).

    Coarser orders shift right; an index at an order below ``partition_order`` maps to
    its first child pixel.
    """
    hp = np.asarray(healpix, dtype=np.int64)
    orders = np.asarray(order, dtype=np.int64)
    shift = 2 * (orders - partition_order)
    out = np.where(shift >= 0, hp >> np.maximum(shift, 0), hp << np.maximum(-shift, 0))
    return pa.array(out, pa.int64())


def partition_pixel(healpix: int, order: int, partition_order: int) -> int:
    """:func:`partition_pixels` of one index."""
    shift = 2 * (int(order) - partition_order)
    return int(healpix) >> shift if shift >= 0 else int(healpix) << -shift


def key_field() -> pa.Field:
    """The :data:`KEY_COLUMN` field, documented."""
    return _f(KEY_COLUMN, _I64, False, "Sub-tile key: tile_id * 10000 + subtile_row * 100 + col.")


def partition_field(partition_order: int, of: str) -> pa.Field:
    """The :data:`PARTITION_COLUMN` field at ``partition_order``, documented; ``of`` says
    whose position the pixel is."""
    return _f(
        PARTITION_COLUMN,
        _I64,
        False,
        f"Nested HEALPix pixel at order {partition_order} of {of}; the table's partition.",
    )


def source_file_schema(partition_order: int) -> pa.Schema:
    """The columns of a result file and of the catalog's ``sources`` table:
    :data:`SOURCE_SCHEMA`, :data:`KEY_COLUMN` and :data:`PARTITION_COLUMN` (the pixel of
    the owning sub-tile's centre at ``partition_order``)."""
    return pa.schema(
        [*SOURCE_SCHEMA, key_field(), partition_field(partition_order, "the sub-tile centre")]
    )


def with_field_ids(schema: pa.Schema) -> pa.Schema:
    """``schema`` with Parquet field ids 1, 2, ... in column order (the ids an Iceberg
    table created from it assigns) and without field docs."""
    return pa.schema(
        [
            f.with_metadata({b"PARQUET:field_id": str(i).encode()})
            for i, f in enumerate(schema, start=1)
        ]
    )
