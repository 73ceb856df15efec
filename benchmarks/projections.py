"""Survey-scale projections from measured per-stage costs (the table of docs/survey.md).

Run from the repository root::

    uv run python benchmarks/projections.py             # markdown table on stdout
    uv run python benchmarks/projections.py --lines     # name=value lines instead

Every input is an option whose default is a measured figure (with the page or
benchmark that measured it) or a stated assumption; ``--help`` lists them.
Change one (e.g. ``--assembly-rows-per-s`` after a faster assembler, or
``--gpu-ondemand-usd`` after a price change) and rerun to update the table.
Nothing here is measured: it is arithmetic on the inputs.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass

# Geometry of a VIS quadrant (EUCLID_FACTS B.2/B.6): 2048 x 2066 px of 4 bytes per layer.
QUADRANT_NX, QUADRANT_NY, BYTES_PER_PX = 2048, 2066, 4


@dataclass(frozen=True)
class Input:
    name: str
    default: float
    source: str


INPUTS = [
    # the survey planner (benchmarks/survey.py, full run)
    Input("tiles", 61_054, "measured: benchmarks/survey.py (Wide-like footprint)"),
    Input("subtiles", 976_864, "measured: benchmarks/survey.py (4x4 grid)"),
    Input(
        "observations", 31_313, "benchmarks/survey.py synthetic survey (assumption: 42' pointings)"
    ),
    Input("exposures_per_observation", 6, "assumption: 4 nominal + 2 short (EUCLID_FACTS B.8)"),
    Input(
        "pairs_per_subtile", 55.65, "measured: benchmarks/survey.py, before the visibility filter"
    ),
    Input("plan_s", 298.7, "measured: benchmarks/survey.py survey_plan_s (2-core machine)"),
    # orchestration (docs/deploy.md)
    Input("tiles_per_subflow", 64, "config default runtime.tiles_per_subflow"),
    Input(
        "task_overhead_ms", 13, "measured: docs/deploy.md, constellation's Ray task runner (11-13)"
    ),
    Input("subflow_fixed_s", 5, "measured: docs/deploy.md, fixed seconds per sub-flow run"),
    Input("api_calls_per_task_run", 6, "assumption: create + 3 state changes + logs + events"),
    # discovery (docs/discovery.md)
    Input("det_requests", 432, "measured: docs/discovery.md, ranged reads per DET file"),
    Input("det_bytes", 2_548_096, "measured: docs/discovery.md, bytes per DET file"),
    Input("aux_requests", 145, "assumption: one read per BKG/PSF extension header + primary"),
    Input("aux_bytes", 850_000, "assumption: 145 headers of the DET files' size (5.8 kB)"),
    Input(
        "index_s_per_det", 1.25, "measured: docs/discovery.md light field, 29.9 s / 24 DET files"
    ),
    Input("index_row_bytes", 590, "measured: docs/discovery.md, 5.9 GB / 10.0 M rows"),
    Input("lookup_row_groups_per_tile", 2, "measured: docs/discovery.md (median)"),
    Input("row_group_rows", 8192, "quadrant index builder's row group size"),
    # prepare
    Input(
        "prepare_s_per_tile", 1.0, "target of benchmarks/prepare.py at 1e6 sources (upper bound)"
    ),
    Input("catalog_mb_per_tile", 50, "assumption: one MER final catalog (~25k rows x ~2 kB)"),
    Input("neighbours_per_tile", 6.18, "measured: benchmarks/survey.py survey_neighbours_mean"),
    # inference
    Input(
        "crop_rows_fraction",
        0.743,
        "geometry: mean row overlap of a quadrant with a 9.5' box + 128 px pad",
    ),
    Input("layers_per_crop", 4, "SCI, RMS, FLG, BKG rows (constellation/inference/shine.py)"),
    Input("requests_per_pair", 9, "4 headers + 4 row ranges + 1 PSF grid per quadrant exposure"),
    Input("psf_bytes", 142_884, "189 x 189 float32 PSF grid (EUCLID_FACTS B.6)"),
    # GPU time per MAP step (docs/shine.md, "Measured on a GPU (H200)")
    Input(
        "gpu_ms_per_slot_exposure",
        0.30,
        "measured on one H200: docs/shine.md, MAP step / (source slots x exposures)"
        " at the default sub-tile's 6272 x 6272 px padded image (0.23-0.30;"
        " 0.08-0.11 at 1408 x 1408)",
    ),
    Input(
        "extended_area_ratio",
        1.604,
        "geometry: (9.5'/7.5')^2, extended box over core of a 4x4 sub-tile, 1' margin",
    ),
    Input(
        "map_steps",
        1000,
        "config default map_config.num_steps (H200 fits of 27-34 galaxies settled"
        " in 300-500 steps; one of 64 had not after 1000)",
    ),
    # GPU time of the sparse model (docs/shine.md, "Cost of a fit"): a step renders each
    # source only in the exposures that see it, on its stamp's window of pixels
    Input(
        "gpu_ms_per_stamp",
        0.097,
        "derived: least-squares fit of the ten H200 MAP steps of docs/shine.md to"
        " exposures x slots x (a + b x image Mpx): a, the cost of one stamp",
    ),
    Input(
        "gpu_ms_per_stamp_mpx",
        0.0057,
        "derived: the same fit, b: per stamp and Mpx of the image it is added to"
        " (SHINE's scatter-add copies that image once per stamp)",
    ),
    Input(
        "exposures_per_source",
        3.51,
        "measured: benchmarks/shine_cost.py (survey_shapes), (source, exposure) pairs seen /"
        " sources over 200 sub-tiles of the survey plan with synthetic source positions",
    ),
    Input(
        "rendered_per_visible",
        1.153,
        "measured: the same, rendered stamps / pairs seen (slot and batch padding of the"
        " default layout: windows packed on 1024 px canvases)",
    ),
    Input(
        "window_mpx",
        1.045,
        "measured: the same, mean pixels of the image (canvas) a stamp is drawn into, Mpx",
    ),
    Input(
        "map_evaluations",
        138,
        "measured: benchmarks/shine_cost.py, L-BFGS loss evaluations to convergence"
        " (CPU, 16 sources; assumption: the same at survey size)",
    ),
    # catalog (docs/catalog.md)
    Input("sources", 1.5e9, "assumption: issue #10, ~1.5e9 sources"),
    Input("source_row_bytes", 150, "measured: docs/catalog.md, 142.6 MiB / 1e6 rows"),
    Input(
        "assembly_rows_per_s",
        1_000_000,
        "measured: docs/catalog.md, 1.01-1.24e6 on a 2-core machine (lower end, rounded)",
    ),
    Input("assembly_batch_subtiles", 1000, "assembler default batch"),
    Input(
        "files_per_batch",
        1004,
        "docs/catalog.md: one sources file per sub-tile + ~4 subtiles files per batch",
    ),
    Input("compaction_target_mb", 256, "assumption: compacted file size"),
    # money and time -- assumptions, AWS us-east-1 list prices as of 2025-06
    Input("gpu_ondemand_usd", 1.006, "assumption: g5.xlarge on-demand $/h (us-east-1, 2025-06)"),
    Input("gpu_spot_usd", 0.40, "assumption: g5.xlarge spot $/h (us-east-1, 2025-06, varies)"),
    Input("g6_ondemand_usd", 0.805, "assumption: g6.xlarge on-demand $/h (us-east-1, 2025-06)"),
    Input("g6_spot_usd", 0.33, "assumption: g6.xlarge spot $/h (us-east-1, 2025-06, varies)"),
    Input("cpu_usd", 0.192, "assumption: m6i.xlarge on-demand $/h (head node, CPU stages)"),
    Input("s3_get_usd_per_1000", 0.0004, "assumption: S3 Standard GET price, if charged"),
    Input("days", 30, "assumption: wall-clock target for the inference campaign"),
]


def _args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for i in INPUTS:
        ap.add_argument(
            f"--{i.name.replace('_', '-')}",
            type=float,
            default=i.default,
            help=f"{i.source} (default {i.default:g})",
        )
    ap.add_argument("--lines", action="store_true", help="print name=value lines")
    return ap.parse_args(argv)


def _fmt(x: float) -> str:
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 1:
        return f"{x:,.1f}"
    return f"{x:.3g}"


def project(a: argparse.Namespace) -> list[tuple[str, str, float, str, str]]:
    """Rows ``(group, quantity, value, unit, how)``."""
    rows: list[tuple[str, str, float, str, str]] = []

    def add(group: str, what: str, value: float, unit: str, how: str) -> float:
        rows.append((group, what, value, unit, how))
        return value

    # Prefect
    subflows = add(
        "Prefect",
        "infer sub-flow runs",
        math.ceil(a.tiles / a.tiles_per_subflow),
        "",
        "tiles / runtime.tiles_per_subflow",
    )
    tasks = add(
        "Prefect",
        "task runs",
        a.subtiles + a.tiles + 2 * subflows,
        "",
        "one per sub-tile (infer) + one per tile (prepare) + bookkeeping",
    )
    add("Prefect", "flow runs", 4 + subflows, "", "index, prepare, infer (+ sub-flows), assemble")
    add(
        "Prefect",
        "API calls",
        tasks * a.api_calls_per_task_run,
        "",
        "task runs x api_calls_per_task_run",
    )
    add(
        "Prefect",
        "orchestration overhead",
        (a.subtiles * a.task_overhead_ms / 1e3 + subflows * a.subflow_fixed_s) / 3600,
        "h",
        "per-task + per-sub-flow measured costs",
    )
    # discovery
    exposures = a.observations * a.exposures_per_observation
    quadrant_exposures = exposures * 144
    add("Discovery", "DET files (exposures)", exposures, "", "observations x exposures")
    reqs = add(
        "Discovery",
        "S3 requests",
        exposures * (a.det_requests + a.aux_requests) + a.observations * a.aux_requests,
        "",
        "DET + BKG per exposure, PSF per observation",
    )
    add(
        "Discovery",
        "S3 bytes",
        (exposures * (a.det_bytes + a.aux_bytes) + a.observations * a.aux_bytes) / 1e9,
        "GB",
        "header bytes only (2 rounds per file)",
    )
    add(
        "Discovery",
        "index build CPU",
        exposures * a.index_s_per_det / 3600,
        "core-h",
        "header parsing + TPV footprints, measured per DET file",
    )
    index_gb = add(
        "Discovery",
        "quadrant index size",
        quadrant_exposures * a.index_row_bytes / 1e9,
        "GB",
        "rows x bytes per row",
    )
    # prepare
    add(
        "Prepare",
        "index lookup bytes (S3)",
        a.tiles * a.lookup_row_groups_per_tile * a.row_group_rows * a.index_row_bytes / 1e9,
        "GB",
        "row groups per tile, all columns",
    )
    add(
        "Prepare",
        "catalog reads (S3)",
        a.tiles * (1 + a.neighbours_per_tile) * a.catalog_mb_per_tile / 1e6,
        "TB",
        "own + neighbour catalogs per tile",
    )
    add("Prepare", "CPU", a.tiles * a.prepare_s_per_tile / 3600, "core-h", "per tile (upper bound)")
    add(
        "Prepare",
        "planning (all sub-tiles, no I/O)",
        a.plan_s / 60,
        "min",
        "benchmarks/survey.py on the 2-core machine",
    )
    # inference I/O
    pairs = a.subtiles * a.pairs_per_subtile
    crop = a.layers_per_crop * a.crop_rows_fraction * QUADRANT_NY * QUADRANT_NX * BYTES_PER_PX
    add(
        "Inference I/O",
        "(sub-tile, quadrant exposure) pairs",
        pairs,
        "",
        "sub-tiles x pairs per sub-tile (upper bound)",
    )
    infer_reqs = add(
        "Inference I/O", "S3 requests", pairs * a.requests_per_pair, "", "pairs x requests per pair"
    )
    add(
        "Inference I/O",
        "S3 bytes (cropped row ranges)",
        pairs * (crop + a.psf_bytes) / 1e15,
        "PB",
        "pairs x (4 layers x rows overlapping the box x 2048 px x 4 B + PSF)",
    )
    add(
        "Inference I/O",
        "S3 bytes per sub-tile",
        a.pairs_per_subtile * (crop + a.psf_bytes) / 1e9,
        "GB",
        "the same per sub-tile",
    )
    add(
        "Staging (optional)",
        "S3 bytes (whole extensions)",
        pairs * (5 * QUADRANT_NX * QUADRANT_NY * BYTES_PER_PX + a.psf_bytes) / 1e15,
        "PB",
        "SCI+RMS+FLG+BKG (+PSF) per pair",
    )
    # GPU
    for minutes in (5, 10, 15):
        gpu_h = add(
            "GPU (MAP)",
            f"GPU-hours at {minutes} min/sub-tile",
            a.subtiles * minutes / 60,
            "GPU-h",
            "sub-tiles x minutes",
        )
        add(
            "GPU (MAP)",
            f"GPUs for {a.days:g} days at {minutes} min",
            gpu_h / (24 * a.days),
            "",
            "GPU-hours / campaign hours (Ray cluster size, 1 GPU per task)",
        )
    # GPU at the rate measured on an H200 (docs/shine.md) for SHINE's whole-scene model
    # (the dense renderer, before the sparse model): every source slot rendered in every
    # exposure, so a step costs slots x exposures x the measured rate
    slots = add(
        "GPU (MAP, H200 rate)",
        "source slots per sub-tile",
        a.sources / a.subtiles * a.extended_area_ratio,
        "",
        "sources / sub-tiles x extended_area_ratio (all modelled: upper bound)",
    )
    step_s = add(
        "GPU (MAP, H200 rate)",
        "s per MAP step (extrapolated)",
        slots * a.pairs_per_subtile * a.gpu_ms_per_slot_exposure / 1e3,
        "s",
        "slots x pairs_per_subtile x gpu_ms_per_slot_exposure",
    )
    h200_h = add(
        "GPU (MAP, H200 rate)",
        "H200-hours per sub-tile (extrapolated)",
        step_s * a.map_steps / 3600,
        "GPU-h",
        f"s per step x {a.map_steps:g} steps (map_steps)",
    )
    survey_h200_h = add(
        "GPU (MAP, H200 rate)",
        "H200-hours for the survey (extrapolated)",
        h200_h * a.subtiles,
        "GPU-h",
        "per sub-tile x sub-tiles",
    )
    add(
        "GPU (MAP, H200 rate)",
        f"H200s for {a.days:g} days (extrapolated)",
        survey_h200_h / (24 * a.days),
        "",
        "GPU-hours / campaign hours",
    )
    # GPU, the sparse model: each source rendered only where it is seen, on its window
    pairs_gpu = add(
        "GPU (MAP, sparse model)",
        "stamps rendered per step and sub-tile",
        slots * a.exposures_per_source * a.rendered_per_visible,
        "",
        "source slots x exposures_per_source x rendered_per_visible",
    )
    eval_s = add(
        "GPU (MAP, sparse model)",
        "s per loss evaluation (extrapolated)",
        pairs_gpu * (a.gpu_ms_per_stamp + a.gpu_ms_per_stamp_mpx * a.window_mpx) / 1e3,
        "s",
        "stamps x (gpu_ms_per_stamp + gpu_ms_per_stamp_mpx x window_mpx)",
    )
    sparse_h = add(
        "GPU (MAP, sparse model)",
        "H200-hours per sub-tile (extrapolated)",
        eval_s * a.map_evaluations / 3600,
        "GPU-h",
        f"s per evaluation x {a.map_evaluations:g} evaluations (map_evaluations)",
    )
    survey_sparse_h = add(
        "GPU (MAP, sparse model)",
        "H200-hours for the survey (extrapolated)",
        sparse_h * a.subtiles,
        "GPU-h",
        "per sub-tile x sub-tiles",
    )
    add(
        "GPU (MAP, sparse model)",
        f"H200s for {a.days:g} days (extrapolated)",
        survey_sparse_h / (24 * a.days),
        "",
        "GPU-hours / campaign hours",
    )
    # catalog
    batches = add(
        "Iceberg",
        "assembly batches (commits per table)",
        math.ceil(a.subtiles / a.assembly_batch_subtiles),
        "",
        "sub-tiles / batch",
    )
    add("Iceberg", "snapshots (both tables)", 2 * batches, "", "one commit per table per batch")
    files = add(
        "Iceberg",
        "data files before compaction",
        batches * a.files_per_batch,
        "",
        "batches x files per batch",
    )
    table_gb = add(
        "Iceberg",
        "sources table size",
        a.sources * a.source_row_bytes / 1e9,
        "GB",
        "sources x bytes per row",
    )
    add("Iceberg", "mean file size before compaction", table_gb * 1e3 / files, "MB", "")
    add(
        "Iceberg",
        "assembly time",
        a.sources / a.assembly_rows_per_s / 3600,
        "h",
        "sources / assembly rows per s",
    )
    # cost
    cpu_h = (
        exposures * a.index_s_per_det
        + a.tiles * a.prepare_s_per_tile
        + a.sources / a.assembly_rows_per_s * 2
    ) / 3600
    req_usd = (reqs + infer_reqs) * a.s3_get_usd_per_1000 / 1000
    for minutes in (5, 10, 15):
        gpu_h = a.subtiles * minutes / 60
        head = 24 * a.days * a.cpu_usd
        for label, price in (
            ("g5.xlarge on-demand", a.gpu_ondemand_usd),
            ("g5.xlarge spot", a.gpu_spot_usd),
            ("g6.xlarge on-demand", a.g6_ondemand_usd),
            ("g6.xlarge spot", a.g6_spot_usd),
        ):
            add(
                "Cost",
                f"{minutes} min/sub-tile, {label}",
                (gpu_h * price + head + cpu_h / 4 * a.cpu_usd + req_usd) / 1e3,
                "k$",
                "GPU-h x price + head node + CPU stages + S3 GETs",
            )
    add("Cost", "S3 GET requests, if charged", req_usd / 1e3, "k$", "discovery + inference")
    del index_gb
    return rows


def main(argv: list[str] | None = None) -> int:
    a = _args(argv)
    rows = project(a)
    if a.lines:
        for group, what, value, unit, _ in rows:
            key = f"{group}_{what}_{unit}".lower()
            key = "".join(c if c.isalnum() else "_" for c in key).strip("_")
            while "__" in key:
                key = key.replace("__", "_")
            print(f"{key}={value:.6g}")
        return 0
    print("| group | quantity | value | unit | from |")
    print("|---|---|---|---|---|")
    for group, what, value, unit, how in rows:
        print(f"| {group} | {what} | {_fmt(value)} | {unit} | {how} |")
    print()
    print("Inputs (the options of `benchmarks/projections.py`):")
    print()
    print("| input | value | source |")
    print("|---|---|---|")
    for i in INPUTS:
        print(f"| `--{i.name.replace('_', '-')}` | {getattr(a, i.name):g} | {i.source} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
