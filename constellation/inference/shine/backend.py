"""The ``shine`` backend: SHINE's Euclid model run in-process on one sub-tile (see the
package docstring)."""

from __future__ import annotations

import importlib
import importlib.metadata
import io
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from numpy.typing import NDArray

from constellation.config import ScienceConfig
from constellation.inference.base import (
    BackendOutput,
    BackendUnavailableError,
    NonFiniteFitError,
    SubTileDataError,
    SubTileInput,
)
from constellation.inference.shine.buckets import bucket, source_bucket
from constellation.inference.shine.geometry import MASKED_SIGMA, FloatArray
from constellation.inference.shine.loading import (
    LoadSettings,
    SubTileData,
    load_subtile,
    read_image,
)
from constellation.inference.shine.posterior import (
    PosteriorSummary,
    _chains,
    _posterior_arrays,
    shear_drift,
    split_rhat,
    summarize_posterior,
)
from constellation.io.storage import Storage
from constellation.manifest.layout import resolve_relative
from constellation.manifest.subtile import FitsExtension, SubTileManifest

__all__ = ["INSTALL_HINT", "ShineBackend", "read_sources"]

INSTALL_HINT = (
    "the 'shine' backend needs SHINE with its Euclid module (shine.euclid), which is only in "
    "SHINE's source tree: pip install 'git+https://github.com/CosmoStat/SHINE' (Python >= 3.11; "
    "the PyPI package shine-wl 0.0.3 lacks shine.euclid). Or use science.backend.name: mock."
)


def _import_shine() -> Any:
    """Import ``shine.euclid`` (and check its pieces) or raise :class:`BackendUnavailableError`."""
    try:
        euclid = importlib.import_module("shine.euclid")
        for name in ("ExposureSet", "EuclidPSFModel", "MultiExposureScene"):
            getattr(euclid, name)
        importlib.import_module("shine.inference")
    except (ImportError, AttributeError) as exc:
        raise BackendUnavailableError(f"{INSTALL_HINT} (import failed: {exc})") from exc
    return euclid


def _shine_config(sections: Any, data: dict[str, Any]) -> Any:
    """SHINE's ``EuclidInferenceConfig`` from the pass-through ``sections`` (``inference``,
    ``gal``, ``sources``) and a ``data`` section."""
    from shine.euclid.config import EuclidInferenceConfig

    raw: dict[str, Any] = {"data": data, "inference": dict(sections.inference)}
    if sections.sources:
        raw["sources"] = dict(sections.sources)
    if sections.gal:
        raw["gal"] = dict(sections.gal)
    return EuclidInferenceConfig.model_validate(raw)


def _shine_version() -> str:
    for dist in ("shine-wl", "shine"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    module = importlib.import_module("shine")
    return str(getattr(module, "__version__", "unknown"))


class ShineBackend:
    """SHINE's Euclid model on one sub-tile, in-process (see the module docstring).

    Built once per process (:func:`constellation.inference.get_backend`); keeps
    the PSF grids it has read and the compiled MAP optimisers between sub-tiles.

    Raises
    ------
    BackendUnavailableError
        When ``shine.euclid`` cannot be imported (the message says how to install it)
        or the ``science.shine`` sections are not a valid SHINE configuration: either
        would fail every sub-tile the same way.
    """

    name = "shine"

    #: Image sides are padded up to a multiple of this (compile-cache buckets).
    shape_step = 128
    #: Per-tier source counts are padded up to a multiple of this.
    source_step = 16

    def __init__(self, science: ScienceConfig) -> None:
        self.science = science
        self._euclid = _import_shine()
        self.version = _shine_version()
        try:
            _shine_config(science.shine, {"exposure_paths": [], "psf_path": "", "catalog_path": ""})
        except Exception as exc:  # pydantic.ValidationError, kept generic
            raise BackendUnavailableError(
                f"science.shine is not a valid SHINE configuration: {exc}"
            ) from exc
        self._lock = threading.Lock()
        self._psf_cache: OrderedDict[tuple[str, int], Any] = OrderedDict()
        self._compiled: dict[tuple[Any, ...], Callable[..., Any]] = {}

    @property
    def device(self) -> str:
        """Where JAX computes in this process: ``cpu``, ``gpu`` or ``tpu``."""
        import jax

        return str(jax.default_backend())

    # ------------------------------------------------------------------ config

    def _config(self, manifest: SubTileManifest, manifest_url: str) -> Any:
        exposures = manifest.exposures
        data: dict[str, Any] = {
            # descriptive only: this backend reads the pixels itself
            "exposure_paths": [resolve_relative(manifest_url, e.det.uri) for e in exposures],
            "psf_path": next(
                (resolve_relative(manifest_url, e.psf.uri) for e in exposures if e.psf), ""
            ),
            "catalog_path": resolve_relative(manifest_url, manifest.sources.uri),
        }
        if exposures:
            data["quadrant"] = exposures[0].quadrant
        try:
            return _shine_config(manifest.shine, data)
        except Exception as exc:  # pydantic.ValidationError, kept generic
            raise SubTileDataError(f"invalid SHINE configuration in the manifest: {exc}") from exc

    # ------------------------------------------------------------------ loading

    @staticmethod
    def _load_settings(cfg: Any) -> LoadSettings:
        return LoadSettings(
            pixel_scale=float(cfg.data.pixel_scale),
            stamp_sizes=tuple(int(s) for s in cfg.galaxy_stamp_sizes),
            selection=cfg.sources.model_dump(),
            bad_pixel_mask=int(cfg.data.bad_pixel_mask),
        )

    def _psf_model(
        self, storage: Storage, url: str, ext: FitsExtension, naxis1: int, naxis2: int
    ) -> Any:
        key = (url, ext.data_offset)
        with self._lock:
            model = self._psf_cache.get(key)
            if model is not None:
                self._psf_cache.move_to_end(key)
                return model
        data = read_image(storage, url, ext)
        shape = data.shape
        grid = 9
        stamp = shape[0] // grid
        model = self._euclid.EuclidPSFModel(
            data, stamp_size=stamp, grid_nx=grid, grid_ny=grid, quad_nx=naxis1, quad_ny=naxis2
        )
        with self._lock:
            self._psf_cache[key] = model
            while len(self._psf_cache) > 256:
                self._psf_cache.popitem(last=False)
        return model

    # ------------------------------------------------------------------ ExposureSet

    def _exposure_set(
        self, data: SubTileData, n_tiers: int, pad_sources: bool
    ) -> tuple[Any, NDArray[np.int64], tuple[int, ...]]:
        """SHINE's ExposureSet (numpy arrays) and the slot of each real source.

        With ``pad_sources`` each tier's source count and the image shape are
        padded to buckets (padded sources are invisible everywhere).
        """
        exps = data.exposures
        ny = max(e.image.shape[0] for e in exps)
        nx = max(e.image.shape[1] for e in exps)
        if pad_sources:
            # from the unclipped crops (at most a quadrant): the same for every sub-tile
            # of a tile, even where the quadrant edges cut the crops differently
            ny = max(ny, *(e.span[0] for e in exps))
            nx = max(nx, *(e.span[1] for e in exps))
            ny, nx = bucket(ny, self.shape_step), bucket(nx, self.shape_step)
        n_exp = len(exps)
        counts = [int((data.tiers == t).sum()) for t in range(n_tiers)]
        padded = [source_bucket(c, self.source_step) if pad_sources else c for c in counts]
        n_slots = sum(padded)
        slot_of = np.zeros(data.object_ids.size, dtype=np.int64)
        tier_arr = np.zeros(n_slots, dtype=np.int32)
        start = 0
        src = 0
        for t in range(n_tiers):
            tier_arr[start : start + padded[t]] = t
            slot_of[src : src + counts[t]] = np.arange(start, start + counts[t])
            start += padded[t]
            src += counts[t]
        images = np.zeros((n_exp, ny, nx), dtype=np.float32)
        sigma = np.full((n_exp, ny, nx), MASKED_SIGMA, dtype=np.float32)
        masks = np.zeros((n_exp, ny, nx), dtype=bool)
        pos = np.zeros((n_slots, n_exp, 2))
        jac = np.tile(np.array([0.1, 0.0, 0.0, 0.1]), (n_slots, n_exp, 1))
        psf = np.zeros((n_slots, n_exp, 21, 21))
        psf[:, :, 10, 10] = 1.0
        vis = np.zeros((n_slots, n_exp), dtype=bool)
        for j, e in enumerate(exps):
            h, w = e.image.shape
            images[j, :h, :w] = e.image
            sigma[j, :h, :w] = e.sigma
            masks[j, :h, :w] = e.valid
            pos[slot_of, j] = e.positions
            jac[slot_of, j] = e.jacobians
            psf[slot_of, j] = e.psfs
            vis[slot_of, j] = e.visible
        flux = np.ones(n_slots)
        flux[slot_of] = data.flux_adu
        hlr = np.full(n_slots, 0.5)
        hlr[slot_of] = data.hlr
        ras = np.zeros(n_slots)
        ras[slot_of] = data.ra
        decs = np.zeros(n_slots)
        decs[slot_of] = data.dec
        ids = [-1] * n_slots
        for i, s in enumerate(slot_of):
            ids[int(s)] = int(data.object_ids[i])
        eset = self._euclid.ExposureSet(
            images=images,
            noise_sigma=sigma,
            masks=masks,
            flag_maps=np.zeros((n_exp, 1, 1), dtype=np.int32),
            backgrounds=np.array([e.background for e in exps], dtype=np.float32),
            pixel_positions=pos.astype(np.float32),
            wcs_jacobians=jac.astype(np.float32),
            psf_images=psf.astype(np.float32),
            source_visible=vis,
            catalog_flux_adu=flux.astype(np.float32),
            catalog_hlr_arcsec=hlr.astype(np.float32),
            catalog_ra=ras,
            catalog_dec=decs,
            source_stamp_tier=tier_arr,
            exposure_corners_sky=np.stack([e.corners_sky for e in exps]),
            source_ids=ids,
            n_exposures=n_exp,
            n_sources=n_slots,
            image_ny=ny,
            image_nx=nx,
        )
        return eset, slot_of, tuple(padded)

    def _to_jax(self, eset: Any) -> Any:
        import dataclasses

        import jax.numpy as jnp

        arrays = {
            f: jnp.asarray(getattr(eset, f))
            for f in (
                "images",
                "noise_sigma",
                "masks",
                "backgrounds",
                "pixel_positions",
                "wcs_jacobians",
                "psf_images",
                "source_visible",
                "catalog_flux_adu",
                "catalog_hlr_arcsec",
            )
        }
        return dataclasses.replace(eset, **arrays)

    # ------------------------------------------------------------------ MAP (cached)

    _TRACED = (
        "images",
        "noise_sigma",
        "pixel_positions",
        "wcs_jacobians",
        "psf_images",
        "source_visible",
        "catalog_flux_adu",
        "catalog_hlr_arcsec",
    )

    def _map_fn(self, cfg: Any, eset: Any, tiers: tuple[int, ...], num_steps: int) -> Any:
        """The compiled MAP optimiser for this bucket (built on first use)."""
        key = (
            eset.n_exposures,
            eset.image_ny,
            eset.image_nx,
            tiers,
            num_steps,
            cfg.model_dump_json(include={"gal", "galaxy_stamp_sizes"}),
            float(cfg.data.pixel_scale),
        )
        with self._lock:
            fn = self._compiled.get(key)
        if fn is not None:
            return fn
        fn = self._build_map_fn(cfg, eset, num_steps)
        with self._lock:
            self._compiled[key] = fn
        return fn

    def _build_map_fn(self, cfg: Any, template: Any, num_steps: int) -> Any:
        import dataclasses

        import jax
        import numpyro
        from numpyro import handlers
        from numpyro.distributions.transforms import biject_to
        from numpyro.infer.util import log_density

        euclid = self._euclid
        static = {
            "source_stamp_tier": np.asarray(template.source_stamp_tier),
            "n_exposures": template.n_exposures,
            "n_sources": template.n_sources,
            "image_ny": template.image_ny,
            "image_nx": template.image_nx,
        }
        traced_names = self._TRACED

        n_exp = int(template.n_exposures)

        def run(arrays: dict[str, Any], init: dict[str, Any], lr: Any) -> Any:
            scene = euclid.MultiExposureScene(
                cfg, dataclasses.replace(template, **static, **arrays)
            )
            model = scene.build_model()
            singles = [scene.build_single_exposure_model(j) for j in range(n_exp)]
            images = arrays["images"]
            kwargs = {"observed_data": images}
            priors_only = handlers.block(model, hide_fn=lambda site: site["name"].startswith("obs"))
            seeded = handlers.seed(handlers.substitute(model, data=init), rng_seed=0)
            trace = handlers.trace(seeded).get_trace(observed_data=images)
            transforms = {
                name: biject_to(site["fn"].support)
                for name, site in trace.items()
                if site["type"] == "sample" and not site["is_observed"]
            }
            u0 = {k: transforms[k].inv(init[k]) for k in transforms}

            def constrain(u: dict[str, Any]) -> dict[str, Any]:
                return {k: transforms[k](v) for k, v in u.items()}

            def log_prior(z: dict[str, Any]) -> Any:
                return log_density(priors_only, (), kwargs, z)[0]

            def exposure_terms(j: int) -> Any:
                # prior + likelihood of exposure j; rematerialised in the backward
                # pass so that one exposure's intermediates are alive at a time
                return jax.checkpoint(lambda z: log_density(singles[j], (), kwargs, z)[0])

            terms = [exposure_terms(j) for j in range(n_exp)]

            def loss(u: dict[str, Any]) -> Any:
                z = constrain(u)
                total = sum((term(z) for term in terms), -(n_exp - 1) * log_prior(z))
                return -total

            opt = numpyro.optim.Adam(step_size=lr)
            state = opt.init(u0)

            def body(state: Any, _: Any) -> Any:
                u = opt.get_params(state)
                value, grads = jax.value_and_grad(loss)(u)
                z = constrain(u)
                return opt.update(grads, state), (value, z["g1"], z["g2"])

            state, (losses, g1s, g2s) = jax.lax.scan(body, state, None, length=num_steps)
            final = constrain(opt.get_params(state))
            return final, losses, g1s, g2s, loss(opt.get_params(state))

        jitted = jax.jit(run)

        def call(eset: Any, init: dict[str, Any], lr: float) -> Any:
            arrays = {name: getattr(eset, name) for name in traced_names}
            return jitted(arrays, init, lr)

        call.jitted = jitted  # type: ignore[attr-defined]  # for inspection (memory analysis)
        return call

    def _init_values(self, cfg: Any, eset: Any) -> dict[str, Any]:
        """Catalog start: flux, hlr from the catalog, shapes, offsets and shear 0."""
        import jax.numpy as jnp

        n = eset.n_sources
        init: dict[str, Any] = {
            "g1": jnp.asarray(0.0, dtype=jnp.float32),
            "g2": jnp.asarray(0.0, dtype=jnp.float32),
            "flux": jnp.asarray(eset.catalog_flux_adu, dtype=jnp.float32),
            "hlr": jnp.asarray(eset.catalog_hlr_arcsec, dtype=jnp.float32),
        }
        gal = cfg.gal
        if gal.ellipticity is not None:
            init["e1"] = jnp.zeros(n, dtype=jnp.float32)
            init["e2"] = jnp.zeros(n, dtype=jnp.float32)
        if gal.position is not None and gal.position.type == "Offset":
            init["dx"] = jnp.zeros(n, dtype=jnp.float32)
            init["dy"] = jnp.zeros(n, dtype=jnp.float32)
        # only sites that are sampled (fixed numbers in the config are constants)
        sampled = {
            "g1": gal.shear.g1,
            "g2": gal.shear.g2,
            "flux": gal.flux,
            "hlr": gal.half_light_radius,
            "e1": gal.ellipticity.e1 if gal.ellipticity is not None else 0.0,
            "e2": gal.ellipticity.e2 if gal.ellipticity is not None else 0.0,
            "dx": getattr(gal.position, "dx", 0.0) if gal.position is not None else 0.0,
            "dy": getattr(gal.position, "dy", 0.0) if gal.position is not None else 0.0,
        }
        return {k: v for k, v in init.items() if not isinstance(sampled[k], int | float)}

    def _run_map(
        self, cfg: Any, eset: Any, tiers: tuple[int, ...], num_steps: int, lr: float
    ) -> tuple[dict[str, NDArray[Any]], FloatArray, FloatArray, FloatArray, float]:
        fn = self._map_fn(cfg, eset, tiers, num_steps)
        jeset = self._to_jax(eset)
        final, losses, g1s, g2s, last = fn(jeset, self._init_values(cfg, eset), lr)
        point = {k: np.asarray(v) for k, v in final.items()}
        return (
            point,
            np.asarray(losses, dtype=np.float64),
            np.asarray(g1s, dtype=np.float64),
            np.asarray(g2s, dtype=np.float64),
            float(last),
        )

    # ------------------------------------------------------------------ run

    def run(self, item: SubTileInput) -> BackendOutput:
        """Fit one sub-tile (see the module docstring); raise on failure."""
        t0 = time.perf_counter()
        cfg = self._config(item.manifest, item.manifest_url)
        data = load_subtile(
            item,
            self._load_settings(cfg),
            lambda url, ext, nx, ny: self._psf_model(item.storage, url, ext, nx, ny),
        )
        t_load = time.perf_counter() - t0
        method = str(cfg.inference.method)
        n_tiers = len(cfg.galaxy_stamp_sizes)
        t1 = time.perf_counter()
        extras: dict[str, float] = {
            "n_sources_rejected": float(data.n_rejected),
            "n_source_exposures_masked": float(data.n_masked_invisible),
            "n_quadrants_used": float(len({e.quadrant for e in data.exposures})),
            "reference_magzerop": data.reference_magzerop,
            "reference_exptime": data.reference_exptime,
        }
        convergence: float | None = None
        convergence_kind: str | None = None
        if method == "map":
            map_cfg = cfg.inference.map_config
            steps = int(map_cfg.num_steps) if map_cfg is not None else 1000
            lr = float(map_cfg.learning_rate) if map_cfg is not None else 1e-2
            eset, slot_of, tiers = self._exposure_set(data, n_tiers, pad_sources=True)
            point, losses, g1s, g2s, last = self._run_map(cfg, eset, tiers, steps, lr)
            posterior = {k: v[None, None, ...] for k, v in point.items()}
            summary = summarize_posterior(posterior, data.object_ids, slot_of, with_errors=False)
            convergence = shear_drift(g1s, g2s)
            convergence_kind = "map_shear_drift"
            extras["map_final_loss"] = last
            if losses.size > 1:
                k = max(1, round(losses.size * 0.1))
                extras["map_loss_rel_change"] = float(
                    (losses[-1 - k] - losses[-1]) / max(abs(losses[-1]), 1e-30)
                )
            for t, count in enumerate(tiers):
                extras[f"tier{t}_slots"] = float(count)
            extras["image_ny"] = float(eset.image_ny)
            extras["image_nx"] = float(eset.image_nx)
        elif method in ("vi", "nuts"):
            summary, convergence, convergence_kind = self._run_sampler(
                cfg, data, n_tiers, method, extras
            )
        else:  # SHINE's config validation refuses other methods
            raise SubTileDataError(f"unsupported SHINE inference method {method!r}")
        t_infer = time.perf_counter() - t1
        if not (math.isfinite(summary.g1) and math.isfinite(summary.g2)):
            raise NonFiniteFitError(
                f"the {method} fit gave a non-finite shear (g1={summary.g1}, g2={summary.g2})"
            )
        return BackendOutput(
            g1=summary.g1,
            g2=summary.g2,
            g1_err=summary.g1_err,
            g2_err=summary.g2_err,
            g1_g2_cov=summary.g1_g2_cov,
            method=method,
            n_sources_modelled=int(data.object_ids.size),
            sources=summary.sources,
            convergence=convergence,
            convergence_kind=convergence_kind,
            n_exposures=len(data.exposures),
            t_load_s=t_load,
            t_infer_s=t_infer,
            extras=extras,
        )

    def _run_sampler(
        self, cfg: Any, data: SubTileData, n_tiers: int, method: str, extras: dict[str, float]
    ) -> tuple[PosteriorSummary, float | None, str | None]:
        import jax
        from shine.inference import Inference

        eset, slot_of, _ = self._exposure_set(data, n_tiers, pad_sources=False)
        jeset = self._to_jax(eset)
        model = self._euclid.MultiExposureScene(cfg, jeset).build_model()
        inference = Inference(model, cfg.inference)
        key = jax.random.PRNGKey(int(cfg.inference.rng_seed))
        if method == "vi":
            idata = inference.run(key, observed_data=jeset.images)
            posterior = _posterior_arrays(idata)
            loss = idata.posterior.attrs.get("vi_final_loss")
            summary = summarize_posterior(posterior, data.object_ids, slot_of, with_errors=True)
            return summary, (float(loss) if loss is not None else None), "vi_final_loss"
        nuts = cfg.inference.nuts_config
        init = None
        if nuts is not None and nuts.map_init is not None and nuts.map_init.enabled:
            # SHINE's own MAP start ignores the catalog; start from ours instead
            peset, pslot, ptiers = self._exposure_set(data, n_tiers, pad_sources=True)
            point, _, _, _, _ = self._run_map(
                cfg, peset, ptiers, int(nuts.map_init.num_steps), float(nuts.map_init.learning_rate)
            )
            init = {
                k: (v[..., pslot] if np.ndim(v) >= 1 and v.shape[-1] == peset.n_sources else v)
                for k, v in point.items()
            }
        else:
            init = {k: np.asarray(v) for k, v in self._init_values(cfg, eset).items()}
        idata = inference.run_mcmc(key, jeset.images, init_params=init)
        posterior = _posterior_arrays(idata)
        summary = summarize_posterior(posterior, data.object_ids, slot_of, with_errors=True)
        rhat = max(split_rhat(_chains(posterior["g1"])), split_rhat(_chains(posterior["g2"])))
        return summary, rhat, "r_hat"


def read_sources(storage: Storage, manifest: SubTileManifest, manifest_url: str) -> pa.Table:
    """The sub-tile source table of a manifest (a convenience for scripts)."""
    url = resolve_relative(manifest_url, manifest.sources.uri)
    return pq.read_table(io.BytesIO(storage.read_bytes(url)))
