"""Synthetic sub-tile results for tests, benchmarks and demonstrations of the catalog.

The results are written with :func:`constellation.results.store.write_result`, exactly
as the inference stage writes them, over a small grid of tiles: each sub-tile
gets its core centre, a shear (a function of position, plus noise) and
``n_sources`` core sources scattered uniformly over its core box, with their
HEALPix index at the source order. No backend, manifest or image is involved.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
from numpy.typing import NDArray

from constellation import __version__
from constellation.io.storage import Storage
from constellation.manifest import layout
from constellation.results.schema import SHEAR_CONVENTION, SOURCE_PARAMETERS, SOURCE_SCHEMA
from constellation.results.store import DEFAULT_PARTITION_ORDER, ResultMarker, write_result
from constellation.sky.healpix import radec_to_index
from constellation.sky.tiling import SubTile, SubTileGrid, Tile

__all__ = [
    "ShearFunction",
    "SyntheticSubTile",
    "synthetic_result",
    "synthetic_tiles",
    "write_results",
]

#: ``(ra, dec) -> (g1, g2)`` in degrees; the shear injected into the synthetic results.
ShearFunction = Callable[[float, float], tuple[float, float]]

_FIRST_TILE_ID = 102_000_000


def _no_shear(ra: float, dec: float) -> tuple[float, float]:
    return 0.0, 0.0


def synthetic_tiles(
    n_ra: int,
    n_dec: int,
    *,
    ra_deg: float = 52.93,
    dec_deg: float = -28.09,
    core_size_arcmin: float = 30.0,
    first_id: int = _FIRST_TILE_ID,
) -> list[Tile]:
    """``n_ra x n_dec`` adjacent tiles centred on ``(ra_deg, dec_deg)`` (ids ascending)."""
    step = core_size_arcmin / 60.0
    tiles: list[Tile] = []
    for j in range(n_dec):
        dec = dec_deg + (j - 0.5 * (n_dec - 1)) * step
        for i in range(n_ra):
            ra = ra_deg + (i - 0.5 * (n_ra - 1)) * step / math.cos(math.radians(dec))
            tiles.append(
                Tile(first_id + len(tiles), ra, dec, core_size_arcmin, core_size_arcmin + 2.0)
            )
    return tiles


@dataclass(frozen=True)
class SyntheticSubTile:
    """One synthetic result: the sub-tile row and its core-source table."""

    row: dict[str, Any]
    sources: pa.Table


def _sources(
    st: SubTile,
    n: int,
    rng: np.random.Generator,
    *,
    source_order: int,
    run_id: str,
    config_hash: str,
) -> pa.Table:
    core = st.core
    x = rng.uniform(core.x_min, core.x_max, n)
    y = rng.uniform(core.y_min, core.y_max, n)
    ra, dec = st.tile.to_sky(x, y)
    first = (st.tile_id * 10_000 + st.row * 100 + st.col) * 10_000
    columns: dict[str, NDArray[Any] | list[str] | pa.Array] = {
        "object_id": np.arange(first, first + n, dtype=np.int64),
        "tile_id": np.full(n, st.tile_id, np.int64),
        "subtile_row": np.full(n, st.row, np.int32),
        "subtile_col": np.full(n, st.col, np.int32),
        "ra": np.asarray(ra, np.float64),
        "dec": np.asarray(dec, np.float64),
        "healpix": radec_to_index(ra, dec, source_order),
    }
    for name, _doc in SOURCE_PARAMETERS:
        if name in ("e1", "e2"):
            values = rng.normal(0.0, 0.2, n).clip(-0.9, 0.9)
        elif name == "flux":
            values = rng.lognormal(3.0, 1.0, n)
        elif name == "hlr":
            values = rng.uniform(0.1, 1.0, n)
        else:
            values = rng.normal(0.0, 0.05, n)
        columns[name] = values
        columns[f"{name}_err"] = np.abs(values) * 0.05 + 0.01
    columns["run_id"] = pa.array([run_id] * n, pa.string())
    columns["config_hash"] = pa.array([config_hash] * n, pa.string())
    return pa.table(columns, schema=SOURCE_SCHEMA)


def synthetic_result(
    st: SubTile,
    *,
    n_sources: int,
    rng: np.random.Generator,
    shear: ShearFunction = _no_shear,
    noise: float = 0.0,
    status: str = "ok",
    error: str | None = None,
    source_order: int = 29,
    run_id: str = "synthetic",
    config_hash: str = "0" * 16,
) -> SyntheticSubTile:
    """A result for one sub-tile: shear ``shear(centre) + N(0, noise)``; a ``failed`` or
    ``skipped`` one has no shear and no source rows."""
    ra, dec = st.center_sky
    ok = status == "ok"
    sources = (
        _sources(
            st, n_sources, rng, source_order=source_order, run_id=run_id, config_hash=config_hash
        )
        if ok
        else SOURCE_SCHEMA.empty_table()
    )
    g1, g2 = shear(ra, dec)
    sigma = noise if noise > 0 else None
    if sigma is not None:
        g1 += float(rng.normal(0.0, sigma))
        g2 += float(rng.normal(0.0, sigma))
    row: dict[str, Any] = {
        "tile_id": st.tile_id,
        "subtile_row": st.row,
        "subtile_col": st.col,
        "ra": ra,
        "dec": dec,
        "healpix": int(radec_to_index([ra], [dec], source_order)[0]),
        "healpix_order": source_order,
        "g1": g1 if ok else None,
        "g2": g2 if ok else None,
        "g1_err": sigma if ok else None,
        "g2_err": sigma if ok else None,
        "g1_g2_cov": 0.0 if ok and sigma is not None else None,
        "n_sources_modelled": sources.num_rows,
        "n_sources_core": sources.num_rows,
        "n_exposures": 4,
        "n_quadrants": 4,
        "method": "synthetic",
        "convergence": None,
        "convergence_kind": None,
        "backend": "synthetic",
        "backend_version": __version__,
        "status": status,
        "error": error if error is not None else (None if ok else f"synthetic {status}"),
        "t_load_s": 0.0,
        "t_infer_s": 0.0,
        "t_total_s": 0.0,
        "finished_at": datetime.now(UTC),
        "run_id": run_id,
        "config_hash": config_hash,
        "code_version": __version__,
        "shear_convention": SHEAR_CONVENTION,
    }
    return SyntheticSubTile(row, sources)


def write_results(
    storage: Storage,
    work_uri: str,
    tiles: Iterable[Tile],
    grid: SubTileGrid,
    *,
    n_sources: int = 100,
    seed: int = 0,
    shear: ShearFunction = _no_shear,
    noise: float = 0.0,
    failed: Iterable[tuple[int, int, int]] = (),
    source_order: int = 29,
    partition_order: int = DEFAULT_PARTITION_ORDER,
    run_id: str = "synthetic",
    config_hash: str = "0" * 16,
) -> dict[tuple[int, int, int], ResultMarker]:
    """Write a result for every sub-tile of ``tiles`` under ``work_uri``.

    ``failed`` lists ``(tile_id, row, col)`` written with status ``failed``. Returns the
    markers by ``(tile_id, row, col)``. The same arguments write the same values.
    """
    failures = {tuple(int(v) for v in key) for key in failed}
    markers: dict[tuple[int, int, int], ResultMarker] = {}
    for tile in tiles:
        for st in tile.iter_subtiles(grid):
            key = (st.tile_id, st.row, st.col)
            rng = np.random.default_rng([seed, st.tile_id, st.row, st.col])
            result = synthetic_result(
                st,
                n_sources=n_sources,
                rng=rng,
                shear=shear,
                noise=noise,
                status="failed" if key in failures else "ok",
                source_order=source_order,
                run_id=run_id,
                config_hash=config_hash,
            )
            directory = layout.subtile_dir(work_uri, *key)
            markers[key] = write_result(
                storage, directory, result.row, result.sources, partition_order=partition_order
            )
    return markers
