"""Benchmark of tile lookups in a survey-scale quadrant index.

Run from the repository root::

    uv run python benchmarks/discovery_lookup.py                 # 1e7 quadrant exposures
    uv run python benchmarks/discovery_lookup.py --rows 20000    # smoke test

Options: ``--rows N`` (target index rows, default 10,000,000), ``--tiles T``
(tiles timed, default 200), ``--seed S``, ``--keep PATH`` (keep the index
there instead of deleting it), ``--row-group-rows R`` (default 2048),
``--reuse PATH`` (time lookups on an index kept earlier, without rebuilding).

Output
------
stdout carries only ``name=value`` lines; progress goes to stderr.

``index_rows``, ``index_bytes``, ``index_row_groups``, ``index_build_s``
    Rows, size and row groups of the synthetic index, and the time to generate
    and write it.
``tile_candidates_ms``, ``tile_candidates_ms_p95``
    The same lookups reading only what matching needs (exposure, quadrant and
    footprint columns): the quadrant candidates of one tile.
``index_open_ms``
    Opening the index once (:class:`~constellation.io.quadrant_lookup.QuadrantIndexFile`):
    the Parquet footer and each row group's ``healpix`` range.
``tile_lookup_ms``, ``tile_lookup_ms_p95``
    Median and 95th percentile wall time of one lookup (all columns, 1'
    margin) for random tiles of the footprint, on the open file — what a
    worker preparing many tiles pays per tile.
``tile_lookup_cold_ms``, ``tile_lookup_cold_ms_p95``
    The same with a fresh :func:`~constellation.io.quadrant_lookup.lookup_tile`
    call per tile, which opens the file anew (footer included; only the OS page
    cache is warm).
``tile_lookup_rows``, ``tile_lookup_row_groups_read``
    Median rows returned and row groups read per lookup.
``lookup_peak_rss_mb``
    Peak resident set of the process that ran the lookups (a fresh child that
    did nothing else): the index is never loaded.

The index
---------
Pointing centres come from an all-sky tiling with 42' tiles (~0.7 deg apart)
cut to :func:`~constellation.sky.wide_footprint_mask`; the first pointings in
HEALPix order are taken until ``--rows`` is reached, so the index covers a
compact part of the Wide footprint at the survey's depth. Each pointing has 6
exposures with small dither offsets and a small random position angle; each
exposure has 144 quadrants, whose 32-vertex footprints (pixel edges grown by
2 px) come from :func:`~constellation.simulate.survey.focal_plane_vertices`
and :func:`~constellation.simulate.survey.fp_to_sky` (the focal-plane model
vectorised over exposures; no TPV distortion). Only the geometry columns carry real values.

Rows are written sorted by ``healpix`` without holding the index: pointings
are bucketed by the coarse HEALPix pixels (order 3) their quadrants can reach,
each bucket is generated, cut to the quadrants whose centre lies in the pixel,
sorted and appended, in pixel order, in row groups of 8192 rows.
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from numpy.typing import NDArray

from constellation.manifest.quadrant_index import FOOTPRINT_VERTICES, QUADRANT_INDEX_SCHEMA
from constellation.simulate import focal_plane
from constellation.simulate.survey import focal_plane_vertices, fp_to_sky
from constellation.sky import AllSkyTiling, healpix, plane_to_sky, wide_footprint_mask

ROW_GROUP_ROWS = 8192  # default of --row-group-rows (the index builder's)
#: What matching needs to decide which quadrant exposures a tile's sub-tiles use.
CANDIDATE_COLUMNS = ["exposure", "quadrant", "footprint_ra", "footprint_dec"]
BUCKET_ORDER = 3
EXPOSURES = 6
DITHERS_ARCSEC = (
    (0.0, 0.0),
    (105.0, 62.0),
    (38.0, 154.0),
    (-71.0, 221.0),
    (52.0, -88.0),
    (-30.0, 95.0),
)
POINTING_SPACING_ARCMIN = 42.0
GROW_PX = 2.0
MARGIN_ARCMIN = 1.0
# quadrant centres lie within ~0.53 deg of the pointing; dithers add ~0.07 deg
_REACH_DEG = 0.65


def _log(msg: str) -> None:
    print(f"[discovery-lookup-bench] {msg}", file=sys.stderr, flush=True)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# -- the index ------------------------------------------------------------------------


def _pointings(n_rows: int) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    sky = AllSkyTiling(POINTING_SPACING_ARCMIN, POINTING_SPACING_ARCMIN).registry()
    keep = wide_footprint_mask(sky.ra, sky.dec)
    ra, dec = sky.ra[keep], sky.dec[keep]
    order = np.argsort(healpix.radec_to_index(ra, dec), kind="stable")
    n = max(1, math.ceil(n_rows / (EXPOSURES * len(focal_plane.QUADRANT_IDS))))
    if n > order.size:
        raise SystemExit(f"--rows too large: the footprint has only {order.size} pointings")
    return ra[order[:n]], dec[order[:n]]


def _exposures(
    ra: NDArray[np.float64], dec: NDArray[np.float64], rng: np.random.Generator
) -> tuple[NDArray[np.float64], ...]:
    """Exposure pointings: ``EXPOSURES`` dithers about each pointing centre."""
    dx = np.array([d[0] for d in DITHERS_ARCSEC]) / 60.0
    dy = np.array([d[1] for d in DITHERS_ARCSEC]) / 60.0
    era, edec = plane_to_sky(
        np.broadcast_to(dx, (ra.size, EXPOSURES)),
        np.broadcast_to(dy, (ra.size, EXPOSURES)),
        ra[:, None],
        dec[:, None],
    )
    pa_deg = np.repeat(rng.uniform(-4.0, 4.0, ra.size), EXPOSURES)
    obs = np.repeat(np.arange(ra.size, dtype=np.int64), EXPOSURES)
    dither = np.tile(np.arange(EXPOSURES, dtype=np.int64), ra.size)
    return era.ravel(), edec.ravel(), pa_deg, obs, dither


def _bucket_table(
    rows: NDArray[np.int64],
    parent: int,
    expo: tuple[NDArray[np.float64], ...],
    fx: NDArray[np.float64],
    fy: NDArray[np.float64],
    quadrant_ids: pa.Array,
) -> pa.Table | None:
    era, edec, epa, eobs, edither = expo
    ra, dec = fp_to_sky(fx, fy, era[rows], edec[rows], epa[rows])  # (n, 144, 33)
    n_q = fx.shape[0]
    cra, cdec = ra[:, :, 0].ravel(), dec[:, :, 0].ravel()
    hp = healpix.radec_to_index(cra, cdec)
    sel = np.flatnonzero(healpix.coarsen(hp, healpix.SOURCE_ORDER, BUCKET_ORDER) == parent)
    if sel.size == 0:
        return None
    sel = sel[np.argsort(hp[sel], kind="stable")]
    n = sel.size
    v = FOOTPRINT_VERTICES
    fra = ra[:, :, 1:].reshape(-1, v)[sel]
    fdec = dec[:, :, 1:].reshape(-1, v)[sel]
    offsets = pa.array(np.arange(0, n * v + 1, v, dtype=np.int32))
    expo_row = rows[sel // n_q]
    cols: dict[str, pa.Array] = {
        "healpix": pa.array(hp[sel]),
        "center_ra": pa.array(cra[sel]),
        "center_dec": pa.array(cdec[sel]),
        "footprint_ra": pa.ListArray.from_arrays(offsets, pa.array(fra.ravel())),
        "footprint_dec": pa.ListArray.from_arrays(offsets, pa.array(fdec.ravel())),
        "obs_id": pa.array(eobs[expo_row].astype(np.int32)),
        "dither": pa.array(edither[expo_row].astype(np.int16)),
        "expnum": pa.array(np.ones(n, dtype=np.int16)),
        "quadrant": quadrant_ids.take(pa.array(sel % n_q)),
    }
    arrays = []
    for f in QUADRANT_INDEX_SCHEMA:
        if f.name in cols:
            arrays.append(cols[f.name].cast(f.type))
        elif pa.types.is_string(f.type):
            arrays.append(pa.repeat(pa.scalar(f"synthetic-{f.name}", f.type), n))
        else:
            arrays.append(pa.repeat(pa.scalar(1, f.type), n))
    return pa.Table.from_arrays(arrays, schema=QUADRANT_INDEX_SCHEMA)


def build_index(path: Path, n_rows: int, seed: int, row_group_rows: int = ROW_GROUP_ROWS) -> int:
    """Write a synthetic index of about ``n_rows`` rows to ``path``; returns its rows."""
    rng = np.random.default_rng(seed)
    fx, fy = focal_plane_vertices(GROW_PX)
    pra, pdec = _pointings(n_rows)
    expo = _exposures(pra, pdec, rng)
    era, edec = expo[0], expo[1]
    buckets: dict[int, list[int]] = defaultdict(list)
    for i in range(era.size):
        for pix in healpix.disc_pixels(float(era[i]), float(edec[i]), _REACH_DEG, BUCKET_ORDER):
            buckets[int(pix)].append(i)
    _log(f"{pra.size} pointings, {era.size} exposures, {len(buckets)} buckets")
    quadrant_ids = pa.array(list(focal_plane.QUADRANT_IDS), pa.string())
    written = 0
    pending: list[pa.Table] = []
    n_pending = 0
    with pq.ParquetWriter(path, QUADRANT_INDEX_SCHEMA, compression="snappy") as writer:
        for parent in sorted(buckets):
            rows = np.asarray(buckets[parent], dtype=np.int64)
            # generate in slices to bound memory
            parts = [
                t
                for s in range(0, rows.size, 256)
                if (t := _bucket_table(rows[s : s + 256], parent, expo, fx, fy, quadrant_ids))
                is not None
            ]
            if not parts:
                continue
            table = pa.concat_tables(parts)
            order = pc.sort_indices(table.column("healpix"))
            pending.append(table.take(order))
            n_pending += table.num_rows
            if n_pending >= row_group_rows:
                buf = pa.concat_tables(pending).combine_chunks()
                cut = (n_pending // row_group_rows) * row_group_rows
                writer.write_table(buf.slice(0, cut), row_group_size=row_group_rows)
                written += cut
                pending, n_pending = [buf.slice(cut)], n_pending - cut
                _log(
                    f"  bucket {parent}: {written} rows written, peak rss {_peak_rss_mb():.0f} MiB"
                )
        if n_pending:
            writer.write_table(pa.concat_tables(pending), row_group_size=row_group_rows)
            written += n_pending
    return written


# -- the lookups ----------------------------------------------------------------------


def run_lookups(path: Path, n_tiles: int, seed: int) -> None:
    """Child process: time lookups for random tiles of the index's area, print results."""
    from constellation.io.quadrant_lookup import LookupStats, QuadrantIndexFile, lookup_tile

    rng = np.random.default_rng(seed + 1)
    # random quadrant centres of the index (a cheap sample) choose the tiles
    meta = pq.ParquetFile(path).metadata
    picks = rng.integers(0, meta.num_row_groups, size=n_tiles)
    pf = pq.ParquetFile(path)
    sky = AllSkyTiling()
    registry = sky.registry()
    tiles = []
    for g in picks:
        t = pf.read_row_group(int(g), columns=["center_ra", "center_dec"])
        k = int(rng.integers(0, t.num_rows))
        ra, dec = t.column("center_ra")[k].as_py(), t.column("center_dec")[k].as_py()
        tiles.append(registry.tile(int(sky.tile_of(ra, dec))))
    del pf
    lookup_tile(None, path, tiles[0], MARGIN_ARCMIN)  # warm-up: imports, page cache
    # cold: every lookup opens the file anew (footer and row-group ranges included)
    cold = []
    for tile in tiles:
        t0 = time.perf_counter()
        lookup_tile(None, path, tile, MARGIN_ARCMIN)
        cold.append(time.perf_counter() - t0)
    # warm: one open file serves every lookup, as a worker preparing many tiles does
    t0 = time.perf_counter()
    index = QuadrantIndexFile(None, path)
    open_ms = (time.perf_counter() - t0) * 1e3
    times, cand_times, rows, groups = [], [], [], []
    for tile in tiles:
        stats = LookupStats()
        t0 = time.perf_counter()
        out = index.box(tile, tile.reach_box(MARGIN_ARCMIN), stats=stats)
        times.append(time.perf_counter() - t0)
        rows.append(out.num_rows)
        groups.append(stats.row_groups_read)
        del out
        t0 = time.perf_counter()
        index.box(tile, tile.reach_box(MARGIN_ARCMIN), columns=CANDIDATE_COLUMNS)
        cand_times.append(time.perf_counter() - t0)
    index.close()
    cms = np.array(cand_times) * 1e3
    ms = np.array(times) * 1e3
    kms = np.array(cold) * 1e3
    print(f"index_open_ms={open_ms:.1f}")
    print(f"tile_lookup_ms={np.median(ms):.2f}")
    print(f"tile_lookup_ms_p95={np.percentile(ms, 95):.2f}")
    print(f"tile_candidates_ms={np.median(cms):.2f}")
    print(f"tile_candidates_ms_p95={np.percentile(cms, 95):.2f}")
    print(f"tile_lookup_cold_ms={np.median(kms):.2f}")
    print(f"tile_lookup_cold_ms_p95={np.percentile(kms, 95):.2f}")
    print(f"tile_lookup_rows={np.median(rows):.0f}")
    print(f"tile_lookup_row_groups_read={np.median(groups):.1f}")
    print(f"lookup_peak_rss_mb={_peak_rss_mb():.1f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--tiles", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--keep", type=Path, default=None, help="keep the index at this path")
    ap.add_argument(
        "--row-group-rows", type=int, default=ROW_GROUP_ROWS, help="rows per Parquet row group"
    )
    ap.add_argument("--reuse", type=Path, default=None, help="time lookups on an existing index")
    ap.add_argument("--lookup-child", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.lookup_child is not None:
        run_lookups(args.lookup_child, args.tiles, args.seed)
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="quadrant-index-bench-"))
    path = args.keep if args.keep is not None else tmp / "quadrant_index.parquet"
    if args.reuse is not None:
        path = args.reuse
    try:
        if args.reuse is None:
            t0 = time.perf_counter()
            n = build_index(path, args.rows, args.seed, args.row_group_rows)
            build_s = time.perf_counter() - t0
            print(f"index_build_s={build_s:.1f}")
        n = pq.ParquetFile(path).metadata.num_rows
        size = os.path.getsize(path)
        _log(f"index: {n} rows, {size / 2**20:.0f} MiB")
        print(f"index_rows={n}")
        print(f"index_bytes={size}")
        print(f"index_row_groups={pq.ParquetFile(path).metadata.num_row_groups}")
        sys.stdout.flush()
        cmd = [sys.executable, __file__, "--lookup-child", str(path)]
        cmd += ["--tiles", str(args.tiles), "--seed", str(args.seed)]
        proc = subprocess.run(cmd, check=True, capture_output=True, text=True)
        sys.stderr.write(proc.stderr)
        sys.stdout.write(proc.stdout)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
