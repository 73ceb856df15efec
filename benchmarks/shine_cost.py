"""The cost of a SHINE fit before and after the sparse model, on one default sub-tile.

Run from the repository root, with SHINE installed (docs/shine.md)::

    uv run --with "$SHINE_SOURCE" python benchmarks/shine_cost.py [--workdir DIR] [--steps N]
        [--reuse]   # with --workdir: the fits of the last run, only the survey part again

The field: one tile at the default position, simulated in ``pixels`` mode with every
quadrant that sub-tile r1_c1 of the default tiling (4 x 4, 1' margin) overlaps
rendered (found from a ``sparse`` simulation of the same field: 16 quadrants, 42
quadrant exposures), then resolved, indexed and prepared. ``--workdir`` keeps it
between runs. The two models (``science.backend.shine.renderer``) fit the same loaded
sub-tile from the same start for ``--steps`` Adam steps, each in its own process (so
that peak memory is its own); then the sparse model fits to convergence.

Prints ``name=value`` lines:

``rendered_exposures``         quadrant exposures of the sub-tile with valid pixels
``sources``                    sources modelled (``--max-sources``, highest S/N first)
``step_ms_before``             dense model (SHINE's whole scene): ms per Adam step, from
                               a second fit in the same process (compiled)
``step_ms_after``              sparse model, the same
``shine_step_speedup``         step_ms_before / step_ms_after (target >= 10)
``shine_g_max_diff``           max |g_dense - g_sparse| over both components after the
                               same steps (target <= 1e-3)
``param_max_rel_diff``         largest relative difference of any per-source parameter
``compile_s_before``, ``compile_s_after``  first fit minus second fit, s
``compiled_shapes_after``, ``compile_s_per_shape_after``  pieces the first sparse fit
                               compiled, and compile s per piece
``peak_rss_mb_before``, ``peak_rss_mb_after``  peak resident memory of each process
``pairs_before``, ``pairs_after``, ``pairs_visible``  (source slot, exposure) pairs
                               rendered per step; pairs seen
``pixels_before``, ``pixels_after``  pixels evaluated per step
``optimizer``, ``steps_to_converge``, ``evaluations_to_converge``, ``converged``,
``converge_s``, ``g1_converged``, ``g2_converged``  the sparse fit to convergence with
                               the configured stopping rule (``science.backend.shine``)
``compiled_shapes``, ``term_buckets``  compiled pieces after that fit; its shapes
``tier_fractions``             stamp tiers of the sub-tile's selected sources
``survey_windows_*``, ``survey_canvas1024_*``  compiled shapes a survey run needs, for a
                               canvas per window (default) and windows packed on 1024 px
                               canvases (:func:`survey_shapes`): shapes per sub-tile, the
                               union over ``--shape-samples`` plan sub-tiles and how it
                               grows, exposures per source, padding of stamps and cost
``survey_h200_hours``          the Wide-survey projection of benchmarks/projections.py
                               with the survey sub-tiles' exposures per source, stamp
                               padding and image size (above) and this run's evaluations
                               to convergence (``survey_*``: those inputs);
                               ``survey_h200_hours_before``: SHINE's whole-scene model

CPU ratios measured in one run hold on any machine; absolute times only from a GPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

SUBTILE = (1, 1)
DENSITY = 4.0
#: The dense model keeps a full image per (source slot, exposure) for its backward pass
#: on the CPU (~18 MB each here): more slots than this do not fit in 24 GB.
MAX_SOURCES = 16


def _config(
    workdir: Path,
    data: Path,
    work: Path,
    renderer: str = "sparse",
    name: str | None = None,
) -> Path:
    doc = {
        "science": {
            "backend": {"name": "shine", "shine": {"renderer": renderer}},
            "shine": {"sources": {"min_snr": 10.0}},
        },
        "runtime": {"storage": {"data_uri": str(data), "work_uri": str(work)}},
    }
    path = workdir / f"config-{name or renderer}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _prepare(config: Path) -> None:
    from constellation.config import load_config
    from constellation.io.quadrant_index import build_quadrant_index
    from constellation.io.registry import resolve_registry, write_registry
    from constellation.io.storage import Storage
    from constellation.manifest import layout
    from constellation.stages.prepare import plan, run_one

    settings = load_config(config)
    storage = Storage()
    data, work = settings.runtime.storage.data_uri, settings.runtime.storage.work_uri
    registry = resolve_registry(storage, f"{data}/q1/MER")
    write_registry(registry, layout.registry_url(work))
    build_quadrant_index(storage, f"{data}/q1/VIS", layout.quadrant_index_url(work))
    for item in plan(settings, registry):
        run_one(item, storage)


def _field(workdir: Path) -> tuple[Path, int]:
    """Simulate and prepare the field once (kept in ``workdir``); its config and tile."""
    from constellation.io.storage import Storage
    from constellation.manifest import layout
    from constellation.manifest.subtile import load_manifest
    from constellation.simulate import FieldSpec
    from constellation.simulate.run import simulate_field

    pixels = workdir / "pixels"
    config = _config(workdir, pixels / "input", pixels / "work")
    if (pixels / "ready").exists():
        return config, int((pixels / "ready").read_text())
    storage = Storage()
    sparse = workdir / "sparse"
    spec = FieldSpec(n_tiles_ra=1, n_tiles_dec=1, density_per_arcmin2=DENSITY, seed=42)
    simulate_field(spec.model_copy(update={"mode": "sparse"}), storage, str(sparse / "input"))
    probe = _config(workdir, sparse / "input", sparse / "work", name="probe")
    _prepare(probe)
    tile = int(next((sparse / "work" / "tiles").iterdir()).name)
    url = layout.manifest_url(str(sparse / "work"), tile, *SUBTILE)
    quadrants = tuple(sorted({e.quadrant for e in load_manifest(url, storage).exposures}))
    spec = spec.model_copy(update={"mode": "pixels", "pixel_quadrants": quadrants})
    simulate_field(spec, storage, str(pixels / "input"))
    _prepare(config)
    (pixels / "ready").write_text(str(tile))
    return config, tile


def _worker(
    config: Path, tile: int, steps: int, converge: bool, max_sources: int | None
) -> dict[str, Any]:
    """One model in this process: load, fit twice (compile, then warm), maybe converge."""
    from constellation.config import load_config
    from constellation.inference.base import SubTileInput
    from constellation.inference.shine import ShineBackend, read_sources
    from constellation.inference.shine.loading import load_subtile
    from constellation.io.storage import storage_from_config
    from constellation.manifest.layout import manifest_url
    from constellation.manifest.subtile import load_manifest

    settings = load_config(config)
    storage = storage_from_config(settings.runtime.storage)
    backend = ShineBackend(settings.science)
    url = manifest_url(settings.runtime.storage.work_uri, tile, *SUBTILE)
    manifest = load_manifest(url, storage)
    item = SubTileInput(manifest, url, read_sources(storage, manifest, url), storage)
    cfg = backend._config(manifest, url)
    if max_sources:  # the highest S/N sources only (SHINE's own selection setting)
        sources = cfg.sources.model_copy(update={"max_sources": max_sources})
        cfg = cfg.model_copy(update={"sources": sources})
    data = load_subtile(
        item,
        backend._load_settings(cfg),
        lambda u, ext, nx, ny: backend._psf_model(storage, u, ext, nx, ny),
    )
    # the configured model (layout, optimiser settings), Adam for exactly `steps` steps
    fixed = dataclasses.replace(
        backend._map_settings(steps, 0.01), optimizer="adam", fixed_steps=True
    )
    t0 = time.perf_counter()
    cold = backend.fit_map(cfg, data, fixed)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    fit = backend.fit_map(cfg, data, fixed)
    second = time.perf_counter() - t0
    out: dict[str, Any] = {
        "exposures": len(data.exposures),
        "sources": int(data.object_ids.size),
        "step_ms": 1e3 * fit.extras["steps_s"] / steps,
        "compile_s": first - second,
        "compiled_first": int(cold.extras.get("compiled_now", len(backend.dense.compiled))),
        "g1": float(fit.g1_path[-1]),
        "g2": float(fit.g2_path[-1]),
        "params": {
            k: [float(x) for x in v[fit.slot_of]] for k, v in fit.point.items() if v.ndim == 1
        },
        "extras": fit.extras,
    }
    if converge:
        # the stamp tiers of every selected source (not only the fitted ones), for the
        # survey's compiled shapes
        full = load_subtile(
            item,
            backend._load_settings(backend._config(manifest, url)),
            lambda u, ext, nx, ny: backend._psf_model(storage, u, ext, nx, ny),
        )
        n_tiers = len(cfg.galaxy_stamp_sizes)
        out["tier_fractions"] = (
            np.bincount(full.tiers, minlength=n_tiers) / full.tiers.size
        ).tolist()
        out["stamp_sizes"] = [int(x) for x in cfg.galaxy_stamp_sizes]
        opts = settings.science.backend.shine
        run = backend._map_settings(int(cfg.inference.map_config.num_steps), 0.01)
        before = len(backend.sparse.compiled)
        t0 = time.perf_counter()
        conv = backend.fit_map(cfg, data, run)
        out.update(
            optimizer=opts.optimizer,
            steps_to_converge=conv.n_steps,
            evaluations_to_converge=int(conv.extras["evaluations"]),
            g1_converged=float(conv.g1_path[-1]),
            g2_converged=float(conv.g2_path[-1]),
            converged=conv.converged,
            converge_s=time.perf_counter() - t0,
            compiled_shapes=len(backend.sparse.compiled),
            compiled_during_converge=len(backend.sparse.compiled) - before,
            term_buckets=int(conv.extras["term_buckets"]),
        )
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def _run_worker(
    config: Path,
    tile: int,
    steps: int,
    converge: bool,
    max_sources: int | None,
    reuse: bool = False,
) -> dict[str, Any]:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        str(config),
        "--tile",
        str(tile),
        "--steps",
        str(steps),
        "--max-sources",
        str(max_sources or 0),
    ]
    cmd += ["--converge"] if converge else []  # fmt: skip
    saved = config.with_suffix(f".steps{steps}.json")
    if reuse and saved.exists():
        result: dict[str, Any] = json.loads(saved.read_text())
        return result
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"worker failed ({config.name}):\n{proc.stderr[-4000:]}")
    saved.write_text(proc.stdout.strip().splitlines()[-1])  # --reuse reads it back
    result = json.loads(saved.read_text())
    return result


def _projections() -> Any:
    """benchmarks/projections.py as a module."""
    import importlib.util

    path = Path(__file__).with_name("projections.py")
    spec = importlib.util.spec_from_file_location("projections", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _survey(measured: dict[str, float]) -> dict[str, Any]:
    """The Wide-survey projection of benchmarks/projections.py with the measured inputs of
    the sparse model given (its other inputs: their labelled defaults)."""
    projections = _projections()
    args = projections._args([f"--{k.replace('_', '-')}={v}" for k, v in measured.items()])
    rows = {(group, what): value for group, what, value, _, _ in projections.project(args)}
    group = "GPU (MAP, sparse model)"
    out: dict[str, Any] = {f"survey_{k}": f"{v:.4g}" for k, v in measured.items()}
    out["survey_s_per_evaluation"] = f"{rows[(group, 's per loss evaluation (extrapolated)')]:.3g}"
    out["survey_h200_hours"] = round(rows[(group, "H200-hours for the survey (extrapolated)")])
    out["survey_h200_hours_before"] = round(
        rows[("GPU (MAP, H200 rate)", "H200-hours for the survey (extrapolated)")]
    )
    return out


def _survey_slots() -> float:
    """Source slots of a survey sub-tile (the projection's default inputs)."""
    projections = _projections()
    rows = {(g, what): v for g, what, v, _, _ in projections.project(projections._args([]))}
    return float(rows[("GPU (MAP, H200 rate)", "source slots per sub-tile")])


def _plan_pair_counts(fraction: float) -> np.ndarray:
    """Quadrant exposures per sub-tile of the survey plan (benchmarks/survey.py on the
    first ``fraction`` of the tiles; sub-tiles without exposures left out)."""
    import pyarrow.dataset as ds

    with tempfile.TemporaryDirectory(prefix="shine-cost-plan-") as tmp:
        cmd = [sys.executable, str(Path(__file__).with_name("survey.py")),
               "--fraction", str(fraction), "--out", tmp]  # fmt: skip
        subprocess.run(cmd, capture_output=True, check=True)
        counts = ds.dataset(tmp).to_table(columns=["n_quadrants"]).column(0).to_numpy()
    return counts[counts > 0]


def survey_shapes(
    pair_counts: np.ndarray,
    slots: float,
    tier_fractions: list[float],
    stamp_sizes: list[int],
    samples: int,
    side: int = 512,
    seed: int = 1,
) -> dict[str, Any]:
    """The compiled pieces a survey run needs, estimated on synthetic sub-tiles.

    Each sample draws a sub-tile of the plan (its quadrant exposures: ``pair_counts``),
    ``Poisson(slots)`` sources placed uniformly in the extended box (9.5' side, 0.1"
    pixels) with stamp tiers drawn from ``tier_fractions``, and each quadrant (2048 x
    2066 px) at a uniform position overlapping the box (a source is seen where its
    stamp lies inside). Its windows and buckets are those of the sparse model
    (:func:`~constellation.inference.shine.model.window_buckets`); a compiled piece is
    one (window bucket, batch size, parameter-vector length), plus the prior of each
    length. The union over samples is a lower bound of the survey's count; the number
    of pieces the last half of the samples added shows how close it is to saturating.
    """
    from types import SimpleNamespace

    from constellation.inference.shine.buckets import count_bucket, slot_bucket
    from constellation.inference.shine.packing import bucket_windows, pack_windows

    rng = np.random.default_rng(seed)
    box, qx, qy = 9.5 * 600, 2048, 2066
    sizes = np.asarray(stamp_sizes)
    pieces: set[tuple[Any, ...]] = set()
    per_subtile: list[int] = []
    growth: list[int] = []
    pairs = rendered = cost_real = cost_rendered = image_px = 0.0
    images = 0
    sources = 0
    fft = np.asarray([(1 << math.ceil(math.log2(2 * s))) ** 2 for s in stamp_sizes], float)
    for n_exp in rng.choice(pair_counts, samples):
        n = int(rng.poisson(slots))
        xy = rng.uniform(0, box, (n, 2))
        tiers = rng.choice(len(tier_fractions), n, p=np.asarray(tier_fractions))
        half = sizes[tiers][:, None] / 2
        exposures = []
        for _ in range(int(n_exp)):
            pos = xy - rng.uniform([-qx, -qy], [box, box])
            inside = (pos - half >= 0).all(axis=1) & (pos + half <= [qx, qy]).all(axis=1)
            exposures.append(SimpleNamespace(positions=pos, visible=inside))
        sources += n
        n_slots = slot_bucket(n)
        mine: set[tuple[Any, ...]] = {("prior", n_slots)}
        data = SimpleNamespace(exposures=exposures, tiers=tiers)
        groups: dict[tuple[Any, ...], list[Any]] = {}
        layout = (
            pack_windows(data, stamp_sizes, side)  # type: ignore[arg-type]
            if side
            else bucket_windows(data, stamp_sizes)  # type: ignore[arg-type]
        )
        for canvas in layout:
            groups.setdefault(canvas.key, []).append(canvas)
        for key, members in groups.items():
            mine.add((*key, count_bucket(len(members)), n_slots))
            batch = count_bucket(len(members))
            used = np.sum([c.used for c in members], axis=0)
            pairs += float(used.sum())
            rendered += float(batch * sum(key[2]))
            cost_real += float(used @ fft)
            cost_rendered += float(batch * (np.asarray(key[2]) @ fft))
            image_px += float(batch * key[0] * key[1])
            images += batch
        pieces |= mine
        per_subtile.append(len(mine))
        growth.append(len(pieces))
    tail = max(1, samples // 4)
    return {
        "compiled_shapes": len(pieces),
        "shapes_after_quarter": growth[samples // 4 - 1] if samples >= 4 else len(pieces),
        "shapes_after_half": growth[samples // 2 - 1] if samples >= 2 else len(pieces),
        "new_shapes_per_subtile_last_quarter": round((growth[-1] - growth[-1 - tail]) / tail, 1)
        if samples > tail
        else float(len(pieces)),
        "shapes_per_subtile": round(float(np.mean(per_subtile)), 1),
        "samples": samples,
        "exposures_per_source": round(pairs / max(sources, 1), 2),
        "rendered_per_visible": round(rendered / max(pairs, 1), 3),
        "render_cost_per_visible": round(cost_rendered / max(cost_real, 1), 3),
        "image_mpx": round(image_px / max(images, 1) / 1e6, 5),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, help="keep the simulated field here")
    ap.add_argument("--steps", type=int, default=5, help="Adam steps of the comparison")
    ap.add_argument("--no-converge", action="store_true", help="skip the convergence fit")
    ap.add_argument(
        "--max-sources",
        type=int,
        default=MAX_SOURCES,
        help="model the N highest-S/N sources (SHINE's sources.max_sources; 0: all)",
    )
    ap.add_argument(
        "--plan-fraction",
        type=float,
        default=0.01,
        help="plan this fraction of the survey for its sub-tiles' exposures",
    )
    ap.add_argument(
        "--shape-samples",
        type=int,
        default=200,
        help="synthetic survey sub-tiles for the compiled-shape estimate",
    )
    ap.add_argument(
        "--canvas-side",
        type=int,
        default=1024,
        help="canvas side of the packed layout the survey estimate compares",
    )
    ap.add_argument(
        "--reuse",
        action="store_true",
        help="reuse the fits of an earlier run in --workdir (saved there)",
    )
    ap.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--tile", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--converge", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker is not None:
        print(json.dumps(_worker(args.worker, args.tile, args.steps, args.converge,
                                 args.max_sources or None)))  # fmt: skip
        return 0
    try:
        import shine.euclid  # noqa: F401
    except ImportError as exc:
        print(f"SHINE is not installed ({exc}); see docs/shine.md", file=sys.stderr)
        return 2
    tmp = None
    if args.workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="shine-cost-")
        workdir = Path(tmp.name)
    else:
        workdir = args.workdir
        workdir.mkdir(parents=True, exist_ok=True)
    config, tile = _field(workdir)
    pixels = workdir / "pixels"
    limit = args.max_sources or None
    dense_config = _config(workdir, pixels / "input", pixels / "work", "dense")
    dense = _run_worker(dense_config, tile, args.steps, False, limit, args.reuse)
    sparse = _run_worker(config, tile, args.steps, not args.no_converge, limit, args.reuse)
    g_diff = max(abs(dense["g1"] - sparse["g1"]), abs(dense["g2"] - sparse["g2"]))
    rel = 0.0
    for k, before in dense["params"].items():
        for a, b in zip(before, sparse["params"][k], strict=True):
            rel = max(rel, abs(a - b) / max(abs(a), 1e-6))
    lines = {
        "rendered_exposures": sparse["exposures"],
        "sources": sparse["sources"],
        "steps_compared": args.steps,
        "step_ms_before": round(dense["step_ms"], 1),
        "step_ms_after": round(sparse["step_ms"], 1),
        "shine_step_speedup": round(dense["step_ms"] / sparse["step_ms"], 2),
        "shine_g_max_diff": f"{g_diff:.3g}",
        "param_max_rel_diff": f"{rel:.3g}",
        "compile_s_before": round(dense["compile_s"], 1),
        "compile_s_after": round(sparse["compile_s"], 1),
        "compiled_shapes_after": sparse["compiled_first"],
        "compile_s_per_shape_after": round(
            sparse["compile_s"] / max(sparse["compiled_first"], 1), 2
        ),
        "peak_rss_mb_before": round(dense["peak_rss_mb"]),
        "peak_rss_mb_after": round(sparse["peak_rss_mb"]),
        "pairs_before": int(dense["extras"]["rendered_slots"]),
        "pairs_after": int(sparse["extras"]["rendered_slots"]),
        "pairs_visible": int(sparse["extras"]["source_exposure_pairs"]),
        "pixels_before": int(dense["extras"]["term_pixels"]),
        "pixels_after": int(sparse["extras"]["term_pixels"]),
    }  # fmt: skip
    for key in ("optimizer", "steps_to_converge", "evaluations_to_converge", "converged",
                "converge_s", "g1_converged", "g2_converged", "compiled_shapes",
                "term_buckets"):  # fmt: skip
        if key in sparse:
            value = sparse[key]
            lines[key] = float(f"{value:.4g}") if isinstance(value, float) else value
    extras = sparse["extras"]
    lines["subtile_exposures_per_source"] = round(
        extras["source_exposure_pairs"] / sparse["sources"], 3
    )
    lines["subtile_rendered_per_visible"] = round(
        extras["rendered_slots"] / extras["source_exposure_pairs"], 3
    )
    if "tier_fractions" in sparse:
        lines["tier_fractions"] = ",".join(f"{x:.3f}" for x in sparse["tier_fractions"])
        counts = _plan_pair_counts(args.plan_fraction)
        slots = _survey_slots()
        by_side = {}
        for side in (0, args.canvas_side):
            shapes = survey_shapes(
                counts, slots, sparse["tier_fractions"], sparse["stamp_sizes"],
                args.shape_samples, side,
            )  # fmt: skip
            by_side[side] = shapes
            prefix = "survey_windows_" if side == 0 else f"survey_canvas{side}_"
            lines.update({prefix + k: v for k, v in shapes.items()})
        # the projection with what a survey-density sub-tile of the plan needs in the
        # configured layout, and the evaluations this run's fit took to converge
        from constellation.config import load_config

        configured = load_config(config).science.backend.shine.canvas_side
        for side, shapes in by_side.items():
            survey = _survey({
                "exposures_per_source": shapes["exposures_per_source"],
                "rendered_per_visible": shapes["rendered_per_visible"],
                "window_mpx": shapes["image_mpx"],
                "map_evaluations": sparse["evaluations_to_converge"],
            })  # fmt: skip
            if side == configured:
                lines["survey_layout"] = f"canvas{side}" if side else "windows"
                lines.update(survey)
            else:
                name = f"canvas{side}" if side else "windows"
                lines[f"survey_h200_hours_{name}"] = survey["survey_h200_hours"]
    for name, value in lines.items():
        print(f"{name}={value}")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
