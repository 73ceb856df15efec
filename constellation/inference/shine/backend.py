"""The ``shine`` backend: SHINE's Euclid model run in-process on one sub-tile (see the
package docstring)."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import io
import math
import os
import threading
import time
from collections import OrderedDict
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from constellation.config import ScienceConfig
from constellation.inference.base import (
    BackendOutput,
    BackendUnavailableError,
    NonFiniteFitError,
    SubTileDataError,
    SubTileInput,
)
from constellation.inference.shine.loading import (
    LoadSettings,
    SubTileData,
    load_subtile,
    read_image,
)
from constellation.inference.shine.model import (
    DenseModel,
    MapFit,
    MapSettings,
    SparseModel,
    dense_exposure_set,
    init_values,
    to_jax,
)
from constellation.inference.shine.posterior import (
    PosteriorSummary,
    _chains,
    _posterior_arrays,
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


def _use_compilation_cache(cache_dir: str) -> None:
    """Keep JAX's compiled programs in ``cache_dir`` (shared by the processes of a node):
    a process that meets a bucket compiled before loads it instead of compiling."""
    import jax

    path = os.path.expanduser(cache_dir)
    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


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

    def __init__(self, science: ScienceConfig, cache_dir: str | None = None) -> None:
        self.science = science
        self._euclid = _import_shine()
        self.version = _shine_version()
        if cache_dir:
            _use_compilation_cache(cache_dir)
        try:
            _shine_config(science.shine, {"exposure_paths": [], "psf_path": "", "catalog_path": ""})
        except Exception as exc:  # pydantic.ValidationError, kept generic
            raise BackendUnavailableError(
                f"science.shine is not a valid SHINE configuration: {exc}"
            ) from exc
        self._lock = threading.Lock()
        self._psf_cache: OrderedDict[tuple[str, int], Any] = OrderedDict()
        #: MAP models, keeping their compiled pieces for the life of the process
        self.sparse = SparseModel(self._euclid)
        self.dense = DenseModel(self._euclid)

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

    def _load_settings(self, cfg: Any) -> LoadSettings:
        return LoadSettings(
            pixel_scale=float(cfg.data.pixel_scale),
            stamp_sizes=tuple(int(s) for s in cfg.galaxy_stamp_sizes),
            selection=cfg.sources.model_dump(),
            bad_pixel_mask=int(cfg.data.bad_pixel_mask),
            psf_without_pixel=self.science.backend.shine.psf_without_pixel,
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

    # ------------------------------------------------------------------ MAP

    def _map_settings(self, num_steps: int, learning_rate: float) -> MapSettings:
        opts = self.science.backend.shine
        return MapSettings(
            learning_rate=learning_rate,
            max_steps=num_steps,
            tolerance=opts.tolerance,
            window=opts.window,
            check_every=opts.check_every,
            optimizer=opts.optimizer,
            canvas_side=opts.canvas_side,
        )

    def fit_map(self, cfg: Any, data: SubTileData, settings: MapSettings) -> MapFit:
        """A MAP fit with the configured renderer (``science.backend.shine.renderer``)."""
        model = self.dense if self.science.backend.shine.renderer == "dense" else self.sparse
        return model.fit(cfg, data, settings)

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
        converged: bool | None = None
        n_steps: int | None = None
        if method == "map":
            map_cfg = cfg.inference.map_config
            steps = int(map_cfg.num_steps) if map_cfg is not None else 1000
            lr = float(map_cfg.learning_rate) if map_cfg is not None else 1e-2
            fit = self.fit_map(cfg, data, self._map_settings(steps, lr))
            posterior = {k: v[None, None, ...] for k, v in fit.point.items()}
            summary = summarize_posterior(
                posterior, data.object_ids, fit.slot_of, with_errors=False
            )
            convergence = fit.drift
            convergence_kind = "map_shear_drift"
            converged, n_steps = fit.converged, fit.n_steps
            if fit.final_loss is not None:
                extras["map_final_loss"] = fit.final_loss
            extras.update(fit.extras)
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
            converged=converged,
            n_steps=n_steps,
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

        eset, slot_of, _ = dense_exposure_set(self._euclid, data, n_tiers, pad=False)
        jeset = to_jax(eset)
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
        init: dict[str, Any]
        if nuts is not None and nuts.map_init is not None and nuts.map_init.enabled:
            # SHINE's own MAP start ignores the catalog; start from ours instead
            settings = dataclasses.replace(
                self._map_settings(
                    int(nuts.map_init.num_steps), float(nuts.map_init.learning_rate)
                ),
                fixed_steps=True,
            )
            fit = self.fit_map(cfg, data, settings)
            # from the fit's slots to the scene's (same sources, another layout)
            start = init_values(cfg, eset.n_sources, eset.catalog_flux_adu, eset.catalog_hlr_arcsec)
            init = {}
            for k, v in fit.point.items():
                if np.ndim(v) >= 1:
                    full = np.asarray(start[k]).copy()
                    full[slot_of] = np.asarray(v)[..., fit.slot_of]
                    init[k] = full
                else:
                    init[k] = np.asarray(v)
        else:
            init = init_values(cfg, eset.n_sources, eset.catalog_flux_adu, eset.catalog_hlr_arcsec)
        idata = inference.run_mcmc(key, jeset.images, init_params=init)
        posterior = _posterior_arrays(idata)
        summary = summarize_posterior(posterior, data.object_ids, slot_of, with_errors=True)
        rhat = max(split_rhat(_chains(posterior["g1"])), split_rhat(_chains(posterior["g2"])))
        return summary, rhat, "r_hat"


def read_sources(storage: Storage, manifest: SubTileManifest, manifest_url: str) -> pa.Table:
    """The sub-tile source table of a manifest (a convenience for scripts)."""
    url = resolve_relative(manifest_url, manifest.sources.uri)
    return pq.read_table(io.BytesIO(storage.read_bytes(url)))
