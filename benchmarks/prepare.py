"""Benchmark the prepare stage's in-memory core on one dense tile.

Run from the repository root::

    uv run python benchmarks/prepare.py [--quick]

Prints ``name=value`` lines:

``prepare_tile_s``
    Wall time to prepare one 30' tile (4 x 4 sub-tiles, 1' margin) with 1e6 own
    sources, the neighbours' sources in a 2' ring around the core, and 300
    synthetic quadrant exposures: :func:`constellation.stages.prepare.prepare_tile`
    (partition, exposure matching and visibility, source tables, manifests) plus
    :func:`~constellation.stages.prepare.write_subtiles` into a temporary
    directory (16 manifests, 16 Parquet tables, 16 done markers). Catalog I/O is
    bypassed: the tables are built in memory. Median of 3 repetitions after one
    small warm-up call (imports and numba compilation are per process). Target
    <= 1 s.
``prepare_tile_first_s``
    The first of those repetitions (first full-size call in the process: page
    faults, thread-pool and Parquet-writer start-up included).
``prepare_peak_rss_mb``
    Peak resident memory of the process (inputs included). Target <= 1500 MB.
``prepare_manifest_load_ms``
    Mean time to read one of those manifests back (:func:`parse_manifest`: the fast
    loader of the emitted YAML subset, then validation).
``prepare_manifest_dump_ms``
    Mean time to serialise one manifest to YAML.
``stage_bytes_ratio``
    Staging (:func:`constellation.stages.stage.stage_subtile`) of sub-tile (1, 1)
    of a simulated 1 x 1-tile field, prepared in a temporary directory: bytes read
    for the extensions divided by the header + data bytes of the needed extensions.
    Target <= 1.05. The field is ``sparse`` (true quadrant geometry, full-size
    extensions); with ``--quick`` it is ``light`` (binned 64x) to stay fast.
``stage_s``
    Wall time of that staging call (reads, consolidated files, manifest, writes).
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa

from constellation.config import ScienceConfig
from constellation.io.storage import Storage
from constellation.manifest.quadrant_index import QUADRANT_INDEX_SCHEMA
from constellation.manifest.subtile import dump_manifest, parse_manifest
from constellation.sky.tiling import Tile
from constellation.stages.prepare import QUADRANT_COLUMNS, prepare_tile, write_subtiles


def _catalog(tile: Tile, x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> pa.Table:
    ra, dec = tile.to_sky(x, y)
    n = x.size
    oid = (np.round(ra * 1e7).astype(np.int64) * 1_000_000_000) + np.round(dec * 1e7).astype(
        np.int64
    )
    oid = oid + np.arange(n, dtype=np.int64) % 7  # keep ids unique
    point_like = rng.random(n) < 0.1
    return pa.table({
        "object_id": pa.array(oid),
        "right_ascension": pa.array(ra),
        "declination": pa.array(dec),
        "flux_detection_total": pa.array(rng.lognormal(0, 1, n).astype(np.float32)),
        "fluxerr_detection_total": pa.array(rng.lognormal(-3, 0.3, n).astype(np.float32)),
        "vis_det": pa.array(np.ones(n, np.int16)),
        "spurious_flag": pa.array(np.zeros(n, np.int16)),
        "point_like_flag": pa.array(np.ones(n, np.int16), mask=~point_like),
        "det_quality_flag": pa.array(np.zeros(n, np.int16)),
        "deblended_flag": pa.array(np.zeros(n, np.int16)),
        "semimajor_axis": pa.array(rng.uniform(1, 10, n).astype(np.float32)),
        "fwhm": pa.array(rng.uniform(0.2, 1, n).astype(np.float32)),
        "segmentation_map_id": pa.array(np.arange(n, dtype=np.int64)),
    })  # fmt: skip


def _quadrants(tile: Tile, n: int, rng: np.random.Generator) -> pa.Table:
    side = 3.4  # arcmin, a VIS quadrant
    cx = rng.uniform(-16, 16, n)
    cy = rng.uniform(-16, 16, n)
    t = np.linspace(0, 1, 8, endpoint=False)
    ex = np.concatenate([-0.5 + t, np.full(8, 0.5), 0.5 - t, np.full(8, -0.5)]) * side
    ey = np.concatenate([np.full(8, -0.5), -0.5 + t, np.full(8, 0.5), 0.5 - t]) * side
    ra, dec = tile.to_sky(cx[:, None] + ex[None, :], cy[:, None] + ey[None, :])
    rows: dict[str, object] = {
        "footprint_ra": list(ra.reshape(n, 32)),
        "footprint_dec": list(dec.reshape(n, 32)),
        "exposure": [f"{1000 + i // 36:06d}-{i % 4:02d}-1" for i in range(n)],
        "obs_id": np.full(n, 1000, np.int32) + np.arange(n, dtype=np.int32) // 36,
        "dither": (np.arange(n) % 4).astype(np.int16),
        "expnum": np.ones(n, np.int16),
        "quadrant": [f"{1 + i % 6}-{1 + i % 6}.{'EFGH'[i % 4]}" for i in range(n)],
        "exptime": np.full(n, 560.52),
        "magzerop": np.full(n, 24.57),
        "gain": np.full(n, 3.48),
        "naxis1": np.full(n, 2048, np.int32),
        "naxis2": np.full(n, 2066, np.int32),
        "det_url": [f"s3://bucket/q1/VIS/{i // 36}/DET.fits" for i in range(n)],
        "bkg_url": [f"s3://bucket/q1/VIS/{i // 36}/BKG.fits" for i in range(n)],
        "psf_url": [f"s3://bucket/q1/VIS/{i // 36}/PSF.fits" for i in range(n)],
    }
    for p in ("sci", "rms", "flg", "bkg", "psf"):
        rows[f"{p}_header_offset"] = np.arange(n, dtype=np.int64) * 20_000_000
        rows[f"{p}_data_offset"] = np.arange(n, dtype=np.int64) * 20_000_000 + 5760
        rows[f"{p}_data_bytes"] = np.full(n, 16_924_672, np.int64)
    schema = pa.schema([QUADRANT_INDEX_SCHEMA.field(c) for c in QUADRANT_COLUMNS])
    return pa.table(rows, schema=schema)


def _stage(quick: bool) -> tuple[float, float, str]:
    """Simulate, index and prepare a 1 x 1-tile field, then stage one sub-tile."""
    from constellation.config import RuntimeConfig, Settings, StorageConfig
    from constellation.io.quadrant_index import build_quadrant_index
    from constellation.io.registry import resolve_registry
    from constellation.manifest import layout
    from constellation.simulate import FieldSpec
    from constellation.simulate.run import simulate_field
    from constellation.stages.prepare import plan, run_one
    from constellation.stages.stage import stage_subtile

    mode = "light" if quick else "sparse"
    spec = FieldSpec(ra_deg=269.7, dec_deg=66.0, n_tiles_ra=1, n_tiles_dec=1,
                     density_per_arcmin2=2.0, mode=mode, light_binning=64, seed=3)  # fmt: skip
    storage = Storage()
    with tempfile.TemporaryDirectory() as tmp:
        root, work = f"{tmp}/data", f"{tmp}/work"
        simulate_field(spec, storage, root)
        registry = resolve_registry(storage, f"{root}/q1/MER")
        build_quadrant_index(storage, f"{root}/q1/VIS", layout.quadrant_index_url(work))
        runtime = RuntimeConfig(storage=StorageConfig(data_uri=root, work_uri=work))
        for item in plan(Settings(science=ScienceConfig(), runtime=runtime), registry):
            run_one(item, storage)
        url = layout.manifest_url(work, int(registry.tile_id[0]), 1, 1)
        result = stage_subtile(url, f"{tmp}/staged", Storage())
    note = (
        f"staged {mode} sub-tile: {result.quadrant_exposures} quadrant exposures, "
        f"{result.extensions_fetched} extensions, {result.needed_bytes} needed bytes"
    )
    return result.ratio, result.seconds, note


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="1e5 sources (smoke test)")
    args = parser.parse_args()
    rng = np.random.default_rng(3)
    n_own = 100_000 if args.quick else 1_000_000
    tile = Tile(102_018_211, 269.7, 66.0)
    science = ScienceConfig()
    grid = science.tiling.grid()
    own = _catalog(tile, rng.uniform(-15, 15, n_own), rng.uniform(-15, 15, n_own), rng)
    # neighbours: same density in the 2' ring around the core (what the reach needs and more)
    density = n_own / 900.0
    n_ring = int(density * (34.0**2 - 30.0**2))
    x = rng.uniform(-17, 17, 3 * n_ring)
    y = rng.uniform(-17, 17, 3 * n_ring)
    ring = (np.abs(x) >= 15) | (np.abs(y) >= 15)
    x, y = x[ring][:n_ring], y[ring][:n_ring]
    other = _catalog(tile, x, y, rng)
    other = other.append_column("tile_id", pa.array(np.full(other.num_rows, 7, np.int64)))
    quads = _quadrants(tile, 300, rng)

    # warm up once on a small input: imports (healpy) and numba compilation are a
    # per-process cost, not a per-tile one
    prepare_tile(tile, grid, own.slice(0, 1000), other.slice(0, 100), quads.slice(0, 5),
                 science=science)  # fmt: skip

    times = []
    for _ in range(3):  # each repetition writes into a fresh directory
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            prepared = prepare_tile(tile, grid, own, other, quads, science=science)
            write_subtiles(Storage(), tmp, tile.tile_id, prepared,
                           preparation_hash_value="0" * 16, fingerprint="bench")  # fmt: skip
            times.append(time.perf_counter() - t0)
    elapsed = float(np.median(times))
    with tempfile.TemporaryDirectory() as tmp:
        t1 = time.perf_counter()
        for p in prepared:
            dump_manifest(p.manifest)
        dump_ms = (time.perf_counter() - t1) / len(prepared) * 1e3
        t1 = time.perf_counter()
        for p in prepared:
            parse_manifest(p.manifest_bytes)
        load_ms = (time.perf_counter() - t1) / len(prepared) * 1e3
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    n_exp = sum(len(p.manifest.exposures) for p in prepared)
    print(f"prepare_tile_s={elapsed:.3f}")
    print(f"prepare_tile_first_s={times[0]:.3f}")
    print(f"prepare_peak_rss_mb={rss_kb / 1024:.1f}")
    print(f"prepare_manifest_dump_ms={dump_ms:.2f}")
    print(f"prepare_manifest_load_ms={load_ms:.2f}")
    print(f"{n_own} own + {other.num_rows} neighbour sources, {n_exp} sub-tile exposures",
          file=sys.stderr)  # fmt: skip
    ratio, stage_s, note = _stage(args.quick)
    print(f"stage_bytes_ratio={ratio:.4f}")
    print(f"stage_s={stage_s:.3f}")
    print(note, file=sys.stderr)


if __name__ == "__main__":
    main()
