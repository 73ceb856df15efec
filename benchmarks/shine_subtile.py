"""Run the ``shine`` backend on prepared sub-tiles of a simulated field, in one process.

Needs SHINE installed from its source (``shine.euclid``; see ``docs/shine.md``),
a ``pixels``-mode field, and ``tiles resolve`` / ``index`` / ``prepare`` run with the
same configuration. Run from the repository root, in the environment that has
SHINE::

    python benchmarks/shine_subtile.py -c CONFIG.yaml --tile TILE \\
        --subtile r6_c6 --subtile r7_c6 --quadrant 3-4.E --quadrant 3-4.F --steps 200

``--quadrant`` keeps only the manifest's exposures of those quadrants (the
rendered ones of a ``pixels`` field; the others hold no pixels). ``--steps``
overrides ``inference.map_config.num_steps``.

Prints ``name=value`` lines, per sub-tile ``k`` (0, 1, ... in the order given):

``subtile_k``          tile/rR_cC
``g1_k``, ``g2_k``     recovered shear
``g1_true_k``, ``g2_true_k``  injected shear at the core centre (truth of the field)
``n_sources_k``        sources modelled; ``n_core_k`` core sources in the manifest
``n_exposures_k``      quadrant exposures used (of ``n_exposures_manifest_k``)
``n_quadrants_k``      distinct quadrant ids among them
``convergence_k``      the diagnostic, ``convergence_kind_k`` what it is
``t_load_k``, ``t_infer_k``, ``wall_k``  seconds (``wall_0`` includes compilation)
``peak_rss_mb``        peak resident memory of the process

Exits with status 2 and a one-line message (no traceback) when SHINE is missing.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time

import numpy as np

from constellation.config import load_config
from constellation.inference.base import BackendError, SubTileInput
from constellation.io.storage import storage_from_config
from constellation.manifest.layout import join, manifest_url
from constellation.manifest.subtile import ShinePassThrough, load_manifest
from constellation.sky import plane_to_sky


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-c", "--config", required=True, help="constellation YAML config")
    parser.add_argument("--tile", type=int, required=True, help="tile id")
    parser.add_argument(
        "--subtile", action="append", required=True, help="rR_cC (repeatable, run in order)"
    )
    parser.add_argument("--quadrant", action="append", default=[], help="keep these quadrants")
    parser.add_argument("--steps", type=int, default=None, help="MAP steps (override)")
    args = parser.parse_args(argv)

    settings = load_config(args.config)
    storage = storage_from_config(settings.runtime.storage)
    work = settings.runtime.storage.work_uri
    try:
        from constellation.inference.shine import ShineBackend, read_sources

        t0 = time.perf_counter()
        backend = ShineBackend(settings.science)
    except BackendError as exc:
        print(f"shine backend unavailable: {exc}", file=sys.stderr)
        return 2
    print(f"backend_version={backend.version}")
    print(f"backend_init_s={time.perf_counter() - t0:.2f}")
    truth = None
    try:
        from constellation.truth import load_truth_field

        truth = load_truth_field(storage, join(settings.runtime.storage.data_uri, "truth"))
    except FileNotFoundError:
        pass

    for k, name in enumerate(args.subtile):
        row, col = (int(p[1:]) for p in name.split("_"))
        url = manifest_url(work, args.tile, row, col)
        manifest = load_manifest(url, storage)
        n_manifest = len(manifest.exposures)
        update: dict[str, object] = {}
        if args.quadrant:
            update["exposures"] = [e for e in manifest.exposures if e.quadrant in args.quadrant]
        if args.steps is not None:
            inference = dict(manifest.shine.inference)
            map_cfg = dict(inference.get("map_config") or {})
            map_cfg.update(enabled=True, num_steps=args.steps)
            inference["map_config"] = map_cfg
            update["shine"] = ShinePassThrough(
                inference=inference, gal=manifest.shine.gal, sources=manifest.shine.sources
            )
        manifest = manifest.model_copy(update=update)
        item = SubTileInput(
            manifest=manifest,
            manifest_url=url,
            sources=read_sources(storage, manifest, url),
            storage=storage,
        )
        t1 = time.perf_counter()
        try:
            out = backend.run(item)
        except BackendError as exc:
            print(f"sub-tile {name} failed: {exc}", file=sys.stderr)
            return 1
        wall = time.perf_counter() - t1
        geo = manifest.geometry
        ra, dec = plane_to_sky(
            0.5 * (geo.core.x_min_arcmin + geo.core.x_max_arcmin),
            0.5 * (geo.core.y_min_arcmin + geo.core.y_max_arcmin),
            geo.tile_ra_deg,
            geo.tile_dec_deg,
        )
        print(f"subtile_{k}={args.tile}/{name}")
        print(f"method_{k}={out.method}")
        print(f"g1_{k}={out.g1:.5f}")
        print(f"g2_{k}={out.g2:.5f}")
        if truth is not None:
            g1t, g2t = truth.shear_at(np.atleast_1d(ra), np.atleast_1d(dec))
            print(f"g1_true_{k}={float(g1t[0]):.5f}")
            print(f"g2_true_{k}={float(g2t[0]):.5f}")
        if out.g1_err is not None:
            print(f"g1_err_{k}={out.g1_err:.5f}")
            print(f"g2_err_{k}={out.g2_err:.5f}")
        print(f"n_sources_{k}={out.n_sources_modelled}")
        print(f"n_core_{k}={manifest.sources.n_core}")
        print(f"n_exposures_{k}={out.n_exposures}")
        print(f"n_exposures_manifest_{k}={n_manifest}")
        print(f"n_quadrants_{k}={int(out.extras.get('n_quadrants_used', 0))}")
        print(f"convergence_{k}={out.convergence}")
        print(f"convergence_kind_{k}={out.convergence_kind}")
        for key in sorted(out.extras):
            print(f"{key}_{k}={out.extras[key]:.6g}")
        print(f"t_load_{k}={out.t_load_s:.2f}")
        print(f"t_infer_{k}={out.t_infer_s:.2f}")
        print(f"wall_{k}={wall:.2f}")
        sys.stdout.flush()
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"peak_rss_mb={peak_kb / 1024:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
