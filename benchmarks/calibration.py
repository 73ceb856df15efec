"""Shear calibration of the shine backend: m and c on noise-free, round-galaxy fields.

Run from the repository root, with SHINE installed (docs/shine.md)::

    uv run --with "$SHINE_SOURCE" python benchmarks/calibration.py [--out DIR]
        [--compare-pixel]       # also fit with the PSF stamps' pixel divided out

The fields (:func:`constellation.stages.calibrate.run_calibration`): one tile at the
default position per injected constant shear, ``(+0.02, -0.02)`` and ``(-0.02, +0.02)``
(both components take two values; ``--shear``), simulated in ``pixels`` mode with
GalSim (``--renderer galsim``: continuous convolution, pixel-integrated PSF stamps as
PSFEx's), zero intrinsic ellipticity, no pixel noise, 2 sources per arcmin², quadrant
3-4.F rendered (``--quadrant``). The configuration is configs/examples/calibration.yaml
(16 x 16 tiling: 2' cores, 0.25' margin; MAP with L-BFGS to ``--tolerance`` within
``--steps``), so that the rendered quadrant fills 16 sub-tiles per field with 1-12
galaxies each; the other sub-tiles have no pixels and are skipped. Each field goes
through resolve, index, prepare, infer with the shine backend and assemble; then m and
c per component are fitted over the sub-tiles of both fields with a bootstrap over
sub-tiles. ``--out`` keeps the fields (a rerun resumes; delete ``OUT/default`` and
``OUT/nopix`` to refit).

The model matches the fields' population: SHINE cannot hold an ellipticity fixed (a
number in its ``gal`` section fails in its scene code), so the intrinsic ellipticity
prior is narrow (``--ellipticity-sigma``, default 0.001: round galaxies), and the shear
prior is broad (``--shear-sigma``, default 1: SHINE's default 0.05 shrinks a MAP shear
towards 0 by ``sigma_g^2 / (sigma_g^2 + prior^2)``, a few percent for ~10 galaxies).
Flux and size priors are SHINE's (LogNormal around the catalog's values).

Prints ``name=value`` lines (``_err``: bootstrap standard deviation):

``calib_m1``, ``calib_m2``, ``calib_c1``, ``calib_c2`` (+ ``_err``)  the fit
``calib_abs_m_max``   max(|m1|, |m2|) (target <= 0.01)
``calib_abs_c_max``   max(|c1|, |c2|) (target <= 0.001)
``calib_subtiles``    sub-tile fits used (ok sub-tiles over all fields)
``calib_fields``, ``calib_wall_s``, ``calib_fit_s_median``  fields, wall time, median
                      SHINE fit time per sub-tile (CPU here: a ratio between
                      configurations is the figure, not the time)
``nopix_*``           the same with ``--compare-pixel``: the PSF stamps' pixel divided
                      out before SHINE draws them (``psf_without_pixel``), on the same
                      fields
``render_response_ratio_hlr{15,30,60}``  the built-in renderer's observed ellipticity
                      over GalSim's for one galaxy sheared by 0.02, half-light radius
                      0.15 / 0.30 / 0.60", through the same PSF (adaptive moments)

Exits with status 2 and one line when SHINE (or GalSim) is missing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "examples" / "calibration.yaml"


def _config(args: argparse.Namespace, without_pixel: bool) -> dict[str, Any]:
    """configs/examples/calibration.yaml with this run's options over it."""
    doc = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))
    science = doc["science"]
    science["tiling"].update({"n_rows": args.tiling, "n_cols": args.tiling})
    science["backend"]["shine"].update(
        {"tolerance": args.tolerance, "psf_without_pixel": without_pixel}
    )
    science["shine"]["inference"]["map_config"]["num_steps"] = args.steps
    gal = science["shine"]["gal"]
    for name in ("g1", "g2"):
        gal["shear"][name]["sigma"] = args.shear_sigma
    for name in ("e1", "e2"):
        gal["ellipticity"][name]["sigma"] = args.ellipticity_sigma
    doc["runtime"] = {"jax_cache_dir": str(args.out / "jax-cache")}
    return doc


def render_response_ratios() -> dict[str, float]:
    """Observed e1 of a galaxy sheared by (0.02, 0), built-in renderer over GalSim's."""
    import galsim

    from constellation.simulate.galsim_render import galaxy_stamp_galsim
    from constellation.simulate.psf import psf_stamp
    from constellation.simulate.render import _convolve, _stamp

    jac = np.array([[0.1, 0.0], [0.0, 0.1]])
    out = {}
    for hlr in (0.15, 0.30, 0.60):
        size = int(min(64, max(21, 2 * np.ceil(6 * hlr / 0.1) + 1)))
        size += 1 - size % 2
        galaxy = _stamp(hlr, complex(0.02, 0), jac, size, (0.0, 0.0))
        builtin = _convolve(galaxy, psf_stamp(1.6, 0, 0))
        drawn = galaxy_stamp_galsim(hlr, complex(0.02, 0), jac, size, (0.0, 0.0), (1.6, 0.0, 0.0))
        e_b = galsim.hsm.FindAdaptiveMom(galsim.Image(builtin)).observed_shape.e1
        e_g = galsim.hsm.FindAdaptiveMom(galsim.Image(drawn)).observed_shape.e1
        out[f"render_response_ratio_hlr{round(hlr * 100)}"] = float(e_b / e_g)
    return out


def _run(args: argparse.Namespace, without_pixel: bool, prefix: str) -> dict[str, Any]:
    from constellation.catalog.iceberg import SUBTILES, open_catalog
    from constellation.config import load_config
    from constellation.inference import clear_backends
    from constellation.io.storage import Storage
    from constellation.simulate import FieldSpec
    from constellation.stages.calibrate import (
        append_calibration,
        calibration_row,
        field_settings,
        run_calibration,
        write_calibration_report,
    )

    label = "nopix" if without_pixel else "default"
    config = args.out / f"config-{label}.yaml"
    config.write_text(yaml.safe_dump(_config(args, without_pixel)))
    settings = load_config(config)
    spec = FieldSpec(
        n_tiles_ra=1, n_tiles_dec=1, mode="pixels", density_per_arcmin2=args.density,
        pixel_quadrants=tuple(args.quadrant), shape_noise=0.0, pixel_noise=False,
        renderer=args.renderer, seed=args.seed,
    )  # fmt: skip
    shears = [(args.shear, -args.shear), (-args.shear, args.shear)]
    clear_backends()
    storage = Storage()
    t0 = time.perf_counter()
    run = run_calibration(
        str(args.out), spec, settings, shears=shears, storage=storage, run_id=f"bench-{label}",
        progress=lambda line: print(f"# {label}: {line}", file=sys.stderr, flush=True),
        work_root=str(args.out / label),
    )  # fmt: skip
    wall = time.perf_counter() - t0
    row = calibration_row(run, settings, f"bench-{label}")
    write_calibration_report(run, row, storage, str(args.out / label))
    append_calibration(storage, str(args.out / "calibrations.parquet"), row)
    fit_s = []
    for i in range(len(shears)):
        folder = args.out / label / f"field-{i}"
        fs = field_settings(settings, str(args.out / f"field-{i}" / "input"), str(folder / "work"))
        table = open_catalog(fs).read(SUBTILES).to_pylist()
        fit_s += [r["t_infer_s"] for r in table if r["status"] == "ok" and r["t_infer_s"]]
    cal = run.calibration
    figures = cal.figures()
    out: dict[str, Any] = {f"{prefix}{k}": v for k, v in figures.items()}
    out[f"{prefix}calib_abs_m_max"] = max(abs(cal.g1.m), abs(cal.g2.m))
    out[f"{prefix}calib_abs_c_max"] = max(abs(cal.g1.c), abs(cal.g2.c))
    out[f"{prefix}calib_subtiles"] = cal.n
    out[f"{prefix}calib_fields"] = len(shears)
    out[f"{prefix}calib_wall_s"] = round(wall, 1)
    out[f"{prefix}calib_fit_s_median"] = round(statistics.median(fit_s), 2) if fit_s else None
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="folder for the fields and reports (kept)")
    ap.add_argument("--shear", type=float, default=0.02, help="|g| per component")
    ap.add_argument("--renderer", choices=("galsim", "builtin"), default="galsim")
    ap.add_argument("--density", type=float, default=2.0, help="sources per arcmin²")
    ap.add_argument("--quadrant", action="append", help="rendered quadrants (repeatable)")
    ap.add_argument("--tiling", type=int, default=16, help="sub-tiles per tile side")
    ap.add_argument("--steps", type=int, default=300, help="MAP iteration budget")
    ap.add_argument("--tolerance", type=float, default=1e-5, help="shear settling tolerance")
    ap.add_argument("--shear-sigma", type=float, default=1.0, help="shear prior width")
    ap.add_argument("--ellipticity-sigma", type=float, default=0.001, help="e prior width")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--compare-pixel", action="store_true", help="also psf_without_pixel")
    args = ap.parse_args(argv)
    args.quadrant = args.quadrant or ["3-4.F"]
    try:
        import galsim  # noqa: F401
        import shine.euclid  # noqa: F401
    except ImportError as exc:
        print(f"SHINE is not installed ({exc}); see docs/shine.md", file=sys.stderr)
        return 2
    tmp = None
    if args.out is None:
        tmp = tempfile.TemporaryDirectory(prefix="calibration-")
        args.out = Path(tmp.name)
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    figures: dict[str, Any] = {"renderer": args.renderer, "shear": args.shear}
    figures.update(render_response_ratios())
    figures.update(_run(args, without_pixel=False, prefix=""))
    if args.compare_pixel:
        figures.update(_run(args, without_pixel=True, prefix="nopix_"))
    for name, value in figures.items():
        print(f"{name}={value:.6g}" if isinstance(value, float) else f"{name}={value}")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
