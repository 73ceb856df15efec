"""Plan the Euclid Wide Survey at full scale on one machine, streamed.

Run from the repository root::

    uv run python benchmarks/survey.py                    # the whole survey (minutes)
    uv run python benchmarks/survey.py --fraction 0.01    # smoke test: 1 % of the tiles

Options: ``--fraction F`` or ``--max-tiles N`` plan only the first tiles in
HEALPix order (a compact part of the footprint); ``--chunk-order K`` (HEALPix
order of the chunks, default 4); ``-c CONFIG`` (a constellation config; the
defaults otherwise); ``--out DIR`` writes one Parquet plan file per chunk (one
row per sub-tile); ``--seed S`` (position angles of the pointings).

What is planned
---------------
* **Tiles.** :class:`~constellation.sky.AllSkyTiling` with the configured tile
  sizes, cut to :func:`~constellation.sky.wide_footprint_mask` (|b| >= 28 deg,
  |ecliptic latitude| >= 15 deg: ~15,300 deg², the extent of the Wide survey),
  cut into ``science.tiling`` sub-tiles (4 x 4, 1' margin by default).
* **Quadrant index.** The synthetic survey index of
  :mod:`constellation.simulate.survey` (pointings every 42' over the same
  footprint, 4 dithers + 2 short exposures each, 144 quadrants: ~27 M quadrant
  exposures), generated chunk by chunk in the index's form (schema columns and
  types, rows sorted by ``healpix``) and never held whole.
* **Per chunk** (the tiles whose centre lies in one HEALPix pixel of order
  ``--chunk-order``), with the functions the stages use:

  1. ``neighbours``: :func:`constellation.stages.prepare.plan` (one
     ``PrepareItem`` per tile, the neighbours of each tile through
     :class:`~constellation.sky.NeighbourIndex`) and the sub-tile rows
     (:func:`~constellation.sky.subtile_centres`);
  2. ``regions``: each tile's lookup region (:func:`~constellation.io.quadrant_lookup.box_region`
     of its reach, as ``QuadrantIndexFile.box`` in the prepare stage);
  3. ``index``: the index rows of the pointings that reach the chunk, only
     those inside the union of the chunk's regions, then the exposure policy
     (:func:`~constellation.stages.prepare.select_exposures`: short exposures out);
  4. ``lookup``: each tile's rows (:class:`~constellation.io.quadrant_lookup.QuadrantIndexTable`,
     the in-memory twin of ``QuadrantIndexFile.box``);
  5. ``match``: the footprints projected into the tile plane
     (:class:`~constellation.discovery.match.PlaneFootprints`) and tested
     exactly against each sub-tile's extended box
     (``PlaneFootprints.intersecting_boxes``), as ``prepare_tile`` does.

  The visibility filter of ``prepare`` (``drop_invisible``) needs the source
  catalogs and is not applied: the candidate pairs are an upper bound of the
  manifests' exposure lists (a quadrant overlapping a box by a sliver less than
  3.2" deep is dropped there).

Output
------
stdout carries only ``name=value`` lines; progress goes to stderr.

``survey_tiles``, ``survey_subtiles``, ``survey_area_deg2``
    Tiles and sub-tiles planned; the footprint's area (tiles x core area).
``survey_pointings``, ``survey_quadrant_exposures``
    Observations and rows of the whole synthetic index (all exposures).
``survey_index_rows_generated``, ``survey_index_rows_nominal``
    Index rows generated over all chunks (a row near a chunk border is made
    for each chunk that needs it) and those left by the exposure policy.
``survey_neighbours_mean``
    Mean neighbour tiles per tile.
``survey_candidate_pairs``
    (sub-tile, quadrant exposure) matches: the exposure lists before the
    visibility filter.
``survey_pairs_per_subtile_mean``, ``_p50``, ``_max``, ``survey_subtiles_without_exposures``
    Their distribution over sub-tiles.
``survey_quadrants_per_tile_mean``, ``survey_lookup_rows_per_tile_mean``
    Distinct quadrant exposures matched per tile, and rows its lookup returned.
``survey_chunks``, ``survey_chunk_rows_max``
    Chunks and the largest chunk's index rows.
``survey_plan_s``
    Wall time of the whole plan (from the registry to the last chunk).
``survey_<stage>_s``, ``survey_<stage>_cpu_s``
    Wall and CPU time of each stage above (``registry``, ``pointings``,
    ``neighbours``, ``regions``, ``index``, ``lookup``, ``match``, ``write``).
    On a shared machine the CPU times are the steadier figures.
``survey_cpu_s``
    CPU time of the process (all threads).
``survey_peak_rss_mb``
    Peak resident set of the process (``ru_maxrss``).
``load_avg_start``, ``load_avg_end``
    1-minute load average of the machine before and after (it is shared).
``cpu_count``
    CPUs this process may use.
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np


def _log(msg: str) -> None:
    print(f"[survey-bench] {msg}", file=sys.stderr, flush=True)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class _Timer:
    """Wall and CPU time (this process, all threads) per stage."""

    def __init__(self) -> None:
        self.s: dict[str, float] = defaultdict(float)
        self.cpu: dict[str, float] = defaultdict(float)
        self._cpu0 = time.process_time()

    def start(self) -> float:
        self._cpu0 = time.process_time()
        return time.perf_counter()

    def add(self, name: str, t0: float) -> float:
        now, cpu = time.perf_counter(), time.process_time()
        self.s[name] += now - t0
        self.cpu[name] += cpu - self._cpu0
        self._cpu0 = cpu
        return now


def plan_survey(args: argparse.Namespace) -> dict[str, object]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from constellation.config import Settings, load_config
    from constellation.discovery.match import PlaneFootprints, footprints_from_table
    from constellation.io.quadrant_lookup import QuadrantIndexTable, box_disc, box_region
    from constellation.manifest.quadrant_index import MAX_QUADRANT_RADIUS_DEG
    from constellation.simulate.survey import SurveyPointings, survey_index_table
    from constellation.sky import AllSkyTiling, healpix, subtile_centres, wide_footprint_mask
    from constellation.stages.prepare import plan, select_exposures

    settings = load_config(args.config) if args.config else Settings()
    science = settings.science
    grid = science.tiling.grid()
    policy = science.exposures
    timer = _Timer()
    start = t0 = timer.start()

    # -- registry: the Wide-like tiles, HEALPix-ordered so that a prefix is compact
    tiling = AllSkyTiling(science.tiling.core_size_arcmin, science.tiling.extended_size_arcmin)
    allsky = tiling.registry()
    wide = allsky.select(wide_footprint_mask(allsky.ra, allsky.dec))
    tile_hp = healpix.radec_to_index(wide.ra, wide.dec)
    order = np.argsort(tile_hp, kind="stable")
    n_tiles = len(wide)
    if args.max_tiles is not None:
        n_tiles = min(n_tiles, args.max_tiles)
    elif args.fraction < 1.0:
        n_tiles = max(1, round(args.fraction * n_tiles))
    chosen = order[:n_tiles]
    chunk_of = healpix.coarsen(tile_hp[chosen], healpix.SOURCE_ORDER, args.chunk_order)
    chunks: dict[int, list[int]] = defaultdict(list)
    for row, chunk in zip(chosen.tolist(), chunk_of.tolist(), strict=True):
        chunks[chunk].append(row)
    t0 = timer.add("registry", t0)
    _log(f"{len(wide)} Wide tiles, planning {n_tiles} in {len(chunks)} chunks")

    # -- pointings, bucketed by the chunks they can reach
    pointings = SurveyPointings.wide(seed=args.seed)
    t = wide.tile(int(wide.tile_id[0]))
    tile_disc = box_disc(t, t.reach_box(grid.margin_arcmin))[2] + MAX_QUADRANT_RADIUS_DEG
    reach = SurveyPointings.reach_deg() + tile_disc
    wanted = set(chunks)
    buckets: dict[int, list[int]] = defaultdict(list)
    for i in range(len(pointings)):
        pix = healpix.disc_pixels(float(pointings.ra[i]), float(pointings.dec[i]), reach,
                                  args.chunk_order)  # fmt: skip
        for p in pix.tolist():
            if p in wanted:
                buckets[p].append(i)
    t0 = timer.add("pointings", t0)
    _log(f"{len(pointings)} pointings, {pointings.quadrant_exposures} quadrant exposures")

    stats = defaultdict(int)
    pair_counts: list[np.ndarray] = []
    rows_max = 0
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
    for n_chunks_done, chunk in enumerate(sorted(chunks), start=1):
        t0 = timer.start()
        rows = np.asarray(chunks[chunk], dtype=np.int64)
        ids = wide.tile_id[rows]
        # 1. prepare's plan (neighbours) and the sub-tile rows
        items = plan(settings, wide, ids.tolist())
        stats["neighbours"] += sum(len(it.neighbours) for it in items)
        centres = subtile_centres(wide.subset(ids), grid)
        t0 = timer.add("neighbours", t0)
        # 2. lookup regions
        tiles = [it.tile.to_tile() for it in items]
        regions = [box_region(tile, tile.reach_box(grid.margin_arcmin)) for tile in tiles]
        union = np.concatenate([r.ranges for r in regions])
        union = union[np.argsort(union[:, 0], kind="stable")]
        t0 = timer.add("regions", t0)
        # 3. the chunk's index rows, then the exposure policy
        table = survey_index_table(pointings, buckets.get(chunk, []), _merge(union))
        stats["rows_generated"] += table.num_rows
        rows_max = max(rows_max, table.num_rows)
        # the policy looks at exposure columns only: filter a slim copy, keep row numbers
        slim = table.drop_columns(["footprint_ra", "footprint_dec"])
        slim = select_exposures(slim.append_column("row", pa.array(np.arange(table.num_rows))),
                                policy)  # fmt: skip
        stats["rows_nominal"] += slim.num_rows
        kept = slim.column("row").to_numpy()
        index = QuadrantIndexTable(slim)
        fra, fdec = footprints_from_table(table) if table.num_rows else (np.empty((0, 3)),) * 2
        t0 = timer.add("index", t0)
        counts = np.zeros(len(tiles) * grid.n_subtiles, dtype=np.int32)
        for k, (tile, region) in enumerate(zip(tiles, regions, strict=True)):
            # 4. the tile's candidate rows
            t0 = timer.start()
            cand = kept[index.region_rows(region)]
            stats["lookup_rows"] += cand.size
            t0 = timer.add("lookup", t0)
            # 5. exact matching per sub-tile, as prepare_tile
            plane = PlaneFootprints(tile, fra[cand], fdec[cand])
            seen = np.zeros(cand.size, dtype=bool)
            hits = plane.intersecting_boxes([st.extended for st in tile.iter_subtiles(grid)])
            for j, hit in enumerate(hits):
                counts[k * grid.n_subtiles + j] = hit.size
                seen[hit] = True
            stats["tile_quadrants"] += int(seen.sum())
            timer.add("match", t0)
        pair_counts.append(counts)
        if args.out is not None:
            t0 = timer.start()
            n_nb = np.repeat([len(it.neighbours) for it in items], grid.n_subtiles)
            pq.write_table(
                pa.table({
                    "tile_id": ids[centres.tile_row], "row": centres.row, "col": centres.col,
                    "ra": centres.ra, "dec": centres.dec, "n_quadrants": counts,
                    "n_neighbours": n_nb,
                }),
                args.out / f"plan-o{args.chunk_order}-{chunk:06d}.parquet",
            )  # fmt: skip
            timer.add("write", t0)
        if n_chunks_done % 25 == 0 or n_chunks_done == len(chunks):
            _log(f"  {n_chunks_done}/{len(chunks)} chunks, {time.perf_counter() - start:.0f} s, "
                 f"peak rss {_peak_rss_mb():.0f} MiB")  # fmt: skip
    plan_s = time.perf_counter() - start

    counts = np.concatenate(pair_counts) if pair_counts else np.zeros(0, np.int32)
    n_sub = n_tiles * grid.n_subtiles
    area = n_tiles * (tiling.core_size_arcmin / 60.0) ** 2
    out: dict[str, object] = {
        "survey_tiles": n_tiles,
        "survey_subtiles": n_sub,
        "survey_grid": f"{grid.n_rows}x{grid.n_cols}",
        "survey_margin_arcmin": grid.margin_arcmin,
        "survey_area_deg2": round(area, 1),
        "survey_pointings": len(pointings),
        "survey_quadrant_exposures": pointings.quadrant_exposures,
        "survey_index_rows_generated": stats["rows_generated"],
        "survey_index_rows_nominal": stats["rows_nominal"],
        "survey_neighbours_mean": round(stats["neighbours"] / max(n_tiles, 1), 2),
        "survey_candidate_pairs": int(counts.sum()),
        "survey_pairs_per_subtile_mean": round(float(counts.mean()), 2) if n_sub else 0,
        "survey_pairs_per_subtile_p50": float(np.median(counts)) if n_sub else 0,
        "survey_pairs_per_subtile_max": int(counts.max()) if n_sub else 0,
        "survey_subtiles_without_exposures": int((counts == 0).sum()),
        "survey_quadrants_per_tile_mean": round(stats["tile_quadrants"] / max(n_tiles, 1), 1),
        "survey_lookup_rows_per_tile_mean": round(stats["lookup_rows"] / max(n_tiles, 1), 1),
        "survey_chunks": len(chunks),
        "survey_chunk_rows_max": rows_max,
        "survey_plan_s": round(plan_s, 1),
    }
    for name in ("registry", "pointings", "neighbours", "regions", "index", "lookup", "match",
                 "write"):  # fmt: skip
        out[f"survey_{name}_s"] = round(timer.s.get(name, 0.0), 2)
        out[f"survey_{name}_cpu_s"] = round(timer.cpu.get(name, 0.0), 2)
    return out


def _merge(ranges: np.ndarray) -> np.ndarray:
    """Sorted ``[start, stop)`` ranges merged into disjoint ones."""
    if ranges.size == 0:
        return ranges.reshape(0, 2)
    ends = np.maximum.accumulate(ranges[:, 1])
    new = np.concatenate([[True], ranges[1:, 0] > ends[:-1]])
    starts = ranges[new, 0]
    last = np.concatenate([np.flatnonzero(new)[1:] - 1, [ranges.shape[0] - 1]])
    return np.stack([starts, ends[last]], axis=1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fraction", type=float, default=1.0, help="plan this fraction of the tiles")
    ap.add_argument("--max-tiles", type=int, default=None, help="plan at most this many tiles")
    ap.add_argument("--chunk-order", type=int, default=4, help="HEALPix order of the chunks")
    ap.add_argument("-c", "--config", default=None, help="constellation config (YAML)")
    ap.add_argument("--out", type=Path, default=None, help="write per-chunk plan files here")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if not 0.0 < args.fraction <= 1.0:
        ap.error("--fraction must be in (0, 1]")
    if args.max_tiles is not None and args.max_tiles < 1:
        ap.error("--max-tiles must be >= 1")
    if not 0 <= args.chunk_order <= 8:
        ap.error("--chunk-order must be in [0, 8]")
    load_start = os.getloadavg()[0]
    cpu0 = time.process_time()
    out = plan_survey(args)
    out["survey_cpu_s"] = round(time.process_time() - cpu0, 1)
    out["survey_peak_rss_mb"] = round(_peak_rss_mb(), 0)
    out["load_avg_start"] = round(load_start, 2)
    out["load_avg_end"] = round(os.getloadavg()[0], 2)
    out["cpu_count"] = len(os.sched_getaffinity(0))
    for k, v in out.items():
        print(f"{k}={v}")
    return 0 if math.isfinite(float(out["survey_plan_s"])) else 1  # type: ignore[arg-type]


if __name__ == "__main__":
    sys.exit(main())
