"""Single-core benchmark of the sky geometry in :mod:`constellation.sky`.

Run from the repository root::

    uv run python benchmarks/partition.py            # full sizes (about a minute)
    uv run python benchmarks/partition.py --quick    # smoke test: 1e5 sources, no 1e7 case

Options: ``--cpu K`` pins the measurements to CPU ``K`` (default: the highest
CPU this process may run on); ``--seed S`` changes the random catalogs.

Output
------
stdout carries only ``name=value`` lines, one per figure; progress goes to
stderr. Sizes are in MiB (the ``_mb`` names), times in seconds (``_s``) or
nanoseconds per source (``_ns_per_source``).

Method
------
Every measurement runs in a fresh child process (this script re-invoked with
a hidden ``--child`` argument), so that memory figures belong to that
measurement alone. The child pins itself to one CPU
(``os.sched_setaffinity``) before importing anything, and runs with
``NUMBA_NUM_THREADS=OMP_NUM_THREADS=1``. Numba compiles into a fresh,
temporary cache directory shared by the children of one run, so compile times
do not depend on caches left in the source tree.

* ``*_peak_rss_mb`` is the child's own ``getrusage(RUSAGE_SELF).ru_maxrss``
  at the end of the measurement: everything the child ever held (interpreter,
  numpy, numba, the inputs and the results).
* ``*_baseline_rss_mb`` is the child's resident set (``VmRSS``) right after
  its imports, the generation of its inputs and the warm-up call, with the
  warm-up's result freed. ``peak - baseline`` is roughly the working memory
  of one call. (The kernel updates the peak counter lazily, so where a call
  needs little memory the peak can read a fraction of a MiB below the
  baseline.)
* Times are the best of 5 timed calls after one untimed warm-up call
  (best of 3 for the all-sky builds).

Figures
-------
Partition (``partition_sources``; 4x4 sub-tiles, 1' margin, own sources
uniform in the tile's 30' core square, i.e. ``x, y`` uniform in
``[-15, 15]`` arcmin mapped to the sky with ``Tile.to_sky``):

``partition_ns_per_source``
    Tile at (RA, Dec) = (150, 30), N = 1e6 own sources (1e5 with ``--quick``).
``partition_sources_per_s``
    The same call as sources per second.
``partition_ns_per_source_dec66``, ``partition_ns_per_source_ra0``
    Same N, tile at (269.7, 66.0) (EDF-N like) and at (0.0, -30.0), whose
    sources straddle RA = 0.
``partition_with_neighbours_ns_per_source``
    Tile at (150, 30), N own sources plus 0.3 N neighbour sources uniform in
    the ring between the 30' core and a 34' square (what neighbouring tiles
    contribute to the extended boxes); time divided by all 1.3 N sources.
``partition_1e7_ns_per_source``, ``partition_1e7_peak_rss_mb``
    Tile at (150, 30), 1e7 own sources (skipped with ``--quick``).
``partition_peak_rss_mb``, ``partition_baseline_rss_mb``
    The child that measured ``partition_ns_per_source``.
``partition_input_mb``
    Size of that case's input RA + Dec arrays (float64).
``partition_first_call_s``
    First call in a fresh process with an empty numba cache (ra=150 case):
    numba compilation of the kernels plus one partition.
``partition_first_call_cached_s``
    First call in a fresh process whose numba cache is already filled
    (loading the compiled kernels plus one partition).

All-sky tiling:

``allsky_tiles``, ``allsky_subtiles``
    Tiles of ``AllSkyTiling().registry()`` and sub-tiles (4x4 per tile) of
    ``subtile_centres``.
``allsky_first_build_s``, ``allsky_build_s``
    Time of registry + sub-tile centres: first build in the child, then the
    best of 3.
``allsky_peak_rss_mb``, ``allsky_baseline_rss_mb``
    Memory of that child.
``wide_tiles``, ``wide_subtiles``, ``wide_build_s``, ``wide_peak_rss_mb``, ``wide_baseline_rss_mb``
    The Wide-like subset, in its own child: given the all-sky registry (built
    before timing), the time of ``wide_footprint_mask`` + ``registry.select``
    + ``subtile_centres`` (best of 3).

Context: ``cpu_model``, ``numpy_version``, ``numba_version``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from typing import Any

_RESULT_TAG = "@@benchmark-result "
_REPS = 5
_BUILD_REPS = 3
_CHUNK = 1 << 16  # sources generated per chunk (keeps generation out of the peak RSS)

#: Tile centres (RA, Dec) of the partition cases.
_CENTRES = {
    "ra150": (150.0, 30.0),
    "dec66": (269.7, 66.0),
    "ra0": (0.0, -30.0),
}


def _log(msg: str) -> None:
    print(f"[partition-bench] {msg}", file=sys.stderr, flush=True)


def _rss_now_mb() -> float:
    """Current resident set size (VmRSS) of this process, MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmRSS in /proc/self/status")


def _peak_rss_mb() -> float:
    """Peak resident set size of this process (ru_maxrss is KiB on Linux), MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown"


# -- children -------------------------------------------------------------------------


def _uniform_square(rng: Any, tile: Any, n: int, half_arcmin: float, hole_arcmin: float) -> Any:
    """``n`` sky positions uniform in a square of half-side ``half_arcmin`` around the tile
    centre (tangent plane), excluding the central square of half-side ``hole_arcmin``.

    Generated in chunks into preallocated arrays so that the temporaries of
    the projection stay small next to the measured call.
    """
    import numpy as np

    ra = np.empty(n)
    dec = np.empty(n)
    filled = 0
    while filled < n:
        k = min(_CHUNK, n - filled)
        x = rng.uniform(-half_arcmin, half_arcmin, k)
        y = rng.uniform(-half_arcmin, half_arcmin, k)
        if hole_arcmin > 0:
            keep = (np.abs(x) >= hole_arcmin) | (np.abs(y) >= hole_arcmin)
            x, y = x[keep], y[keep]
        r, d = tile.to_sky(x, y)
        ra[filled : filled + r.size] = r
        dec[filled : filled + d.size] = d
        filled += r.size
    return ra, dec


def _child_partition(spec: dict[str, Any]) -> dict[str, Any]:
    import numpy as np

    from constellation.sky import SubTileGrid, Tile, partition_sources

    ra0, dec0 = _CENTRES[spec["centre"]]
    n_own, n_other = int(spec["n_own"]), int(spec["n_other"])
    tile = Tile(102_000_000, ra0, dec0)
    grid = SubTileGrid(4, 4, 1.0)
    half = 0.5 * tile.core_size_arcmin
    rng = np.random.default_rng(spec["seed"])
    ra, dec = _uniform_square(rng, tile, n_own, half, 0.0)
    if n_other:
        oth_ra, oth_dec = _uniform_square(rng, tile, n_other, half + 2.0, half)
        args: tuple[Any, ...] = (ra, dec, oth_ra, oth_dec)
    else:
        args = (ra, dec)
    rss_inputs = _rss_now_mb()
    peak_inputs = _peak_rss_mb()

    t0 = time.perf_counter()
    part = partition_sources(tile, grid, *args)
    first = time.perf_counter() - t0
    if int(part.core_counts.sum()) != n_own:  # every own source lands in exactly one core
        raise RuntimeError("core lists do not cover the own catalog")
    ext_total = int(part.extended_counts.sum())
    n_outside = part.n_outside_core
    del part
    baseline = _rss_now_mb()
    peak_warm = _peak_rss_mb()

    times = []
    faults = []  # minor page faults per call: fresh memory the kernel had to map
    for _ in range(int(spec["reps"])):
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t0 = time.perf_counter()
        part = partition_sources(tile, grid, *args)
        times.append(time.perf_counter() - t0)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
        del part
    n_total = n_own + n_other
    _log(
        f"  {spec['centre']}: n_own={n_own} n_other={n_other} first={first:.3f}s "
        f"times={[round(t, 4) for t in times]} page-faults={faults} "
        f"extended/(own+other)={ext_total / n_total:.3f} "
        f"outside_core={n_outside} rss: after-inputs={rss_inputs:.1f} "
        f"(peak {peak_inputs:.1f}) after-warm-up={baseline:.1f} (peak {peak_warm:.1f}) MiB"
    )
    return {
        "first_call_s": first,
        "best_s": min(times) if times else math.nan,
        "n_total": n_total,
        "input_mb": (ra.nbytes + dec.nbytes) / 2**20,
        "baseline_rss_mb": baseline,
        "peak_rss_mb": _peak_rss_mb(),
    }


def _child_allsky(spec: dict[str, Any]) -> dict[str, Any]:
    from constellation.sky import AllSkyTiling, SubTileGrid, subtile_centres, wide_footprint_mask

    grid = SubTileGrid()

    if spec["what"] == "allsky":

        def build() -> tuple[int, int]:
            registry = AllSkyTiling().registry()
            centres = subtile_centres(registry, grid)
            return len(registry), len(centres)

    else:
        registry = AllSkyTiling().registry()

        def build() -> tuple[int, int]:
            wide = registry.select(wide_footprint_mask(registry.ra, registry.dec))
            centres = subtile_centres(wide, grid)
            return len(wide), len(centres)

    t0 = time.perf_counter()
    n_tiles, n_sub = build()
    first = time.perf_counter() - t0
    baseline = _rss_now_mb()
    times = []
    for _ in range(_BUILD_REPS):
        t0 = time.perf_counter()
        build()
        times.append(time.perf_counter() - t0)
    _log(
        f"  {spec['what']}: tiles={n_tiles} subtiles={n_sub} first={first:.3f}s "
        f"times={[round(t, 4) for t in times]} rss after first build={baseline:.1f} MiB"
    )
    return {
        "tiles": n_tiles,
        "subtiles": n_sub,
        "first_build_s": first,
        "build_s": min(times),
        "baseline_rss_mb": baseline,
        "peak_rss_mb": _peak_rss_mb(),
    }


def _child_main(spec_json: str) -> None:
    spec = json.loads(spec_json)
    os.sched_setaffinity(0, {int(spec["cpu"])})  # before any import that may start threads
    run = _child_partition if spec["kind"] == "partition" else _child_allsky
    result = run(spec)
    sys.stdout.write(_RESULT_TAG + json.dumps(result) + "\n")
    sys.stdout.flush()


# -- parent ---------------------------------------------------------------------------


def _run_child(spec: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)],
        stdout=subprocess.PIPE,
        env=env,
        text=True,
        check=True,
    )
    for line in proc.stdout.splitlines():
        if line.startswith(_RESULT_TAG):
            result: dict[str, Any] = json.loads(line[len(_RESULT_TAG) :])
            return result
    raise RuntimeError(f"child {spec} returned no result; stdout was {proc.stdout!r}")


def _fmt(value: float | int | str) -> str:
    if isinstance(value, (int, str)):  # counts and text as they are
        return str(value)
    return f"{value:.6g}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small sizes, skip the 1e7 case")
    parser.add_argument("--cpu", type=int, default=None, help="CPU to pin the children to")
    parser.add_argument("--seed", type=int, default=20240611, help="base random seed")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        _child_main(args.child)
        return

    allowed = sorted(os.sched_getaffinity(0))
    cpu = max(allowed) if args.cpu is None else args.cpu
    if cpu not in allowed:
        parser.error(f"--cpu {cpu} is not among the CPUs available: {allowed}")
    n = 100_000 if args.quick else 1_000_000
    n_other = (3 * n) // 10

    out: dict[str, float | int | str] = {}
    with tempfile.TemporaryDirectory(prefix="constellation-bench-numba-") as cache_dir:
        env = dict(os.environ)
        env.update(
            NUMBA_NUM_THREADS="1",
            OMP_NUM_THREADS="1",
            OPENBLAS_NUM_THREADS="1",
            MKL_NUM_THREADS="1",
            NUMBA_CACHE_DIR=cache_dir,
        )
        _log(f"pinned to cpu {cpu} of {allowed}; quick={args.quick}; numba cache {cache_dir}")

        def partition(centre: str, n_own: int, n_oth: int = 0, reps: int = _REPS) -> dict[str, Any]:
            spec = {
                "kind": "partition",
                "cpu": cpu,
                "centre": centre,
                "n_own": n_own,
                "n_other": n_oth,
                "reps": reps,
                "seed": [args.seed, n_own, n_oth, sorted(_CENTRES).index(centre)],
            }
            return _run_child(spec, env)

        _log("partition: cold numba compile")
        cold = partition("ra150", n, reps=0)
        out["partition_first_call_s"] = cold["first_call_s"]

        _log(f"partition: {n} sources")
        r = partition("ra150", n)
        out["partition_first_call_cached_s"] = r["first_call_s"]
        out["partition_ns_per_source"] = 1e9 * r["best_s"] / r["n_total"]
        out["partition_sources_per_s"] = r["n_total"] / r["best_s"]
        out["partition_input_mb"] = r["input_mb"]
        out["partition_baseline_rss_mb"] = r["baseline_rss_mb"]
        out["partition_peak_rss_mb"] = r["peak_rss_mb"]

        for centre in ("dec66", "ra0"):
            r = partition(centre, n)
            out[f"partition_ns_per_source_{centre}"] = 1e9 * r["best_s"] / r["n_total"]

        _log(f"partition: {n} + {n_other} neighbour sources")
        r = partition("ra150", n, n_other)
        out["partition_with_neighbours_ns_per_source"] = 1e9 * r["best_s"] / r["n_total"]

        if not args.quick:
            _log("partition: 1e7 sources")
            r = partition("ra150", 10_000_000)
            out["partition_1e7_ns_per_source"] = 1e9 * r["best_s"] / r["n_total"]
            out["partition_1e7_peak_rss_mb"] = r["peak_rss_mb"]

        for what in ("allsky", "wide"):
            _log(f"{what} tiling")
            r = _run_child({"kind": "allsky", "what": what, "cpu": cpu}, env)
            out[f"{what}_tiles"] = r["tiles"]
            out[f"{what}_subtiles"] = r["subtiles"]
            if what == "allsky":
                out["allsky_first_build_s"] = r["first_build_s"]
            out[f"{what}_build_s"] = r["build_s"]
            out[f"{what}_baseline_rss_mb"] = r["baseline_rss_mb"]
            out[f"{what}_peak_rss_mb"] = r["peak_rss_mb"]

    out["cpu_model"] = _cpu_model()
    out["numpy_version"] = version("numpy")
    out["numba_version"] = version("numba")
    for name, value in out.items():
        print(f"{name}={_fmt(value)}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
