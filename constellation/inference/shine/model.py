"""SHINE's model of a loaded sub-tile, and MAP fits of it, two ways.

**dense** — what SHINE's ``MultiExposureScene`` does with one ``ExposureSet`` of the
whole sub-tile: every source slot is rendered in every exposure (multiplied by 0
where it is not visible), every exposure is padded to one common image shape and its
likelihood is evaluated over all of it. A step costs (slots x exposures) renders plus
(exposures x the largest crop) pixels. Kept as the reference the sparse model is
checked against, and for VI / NUTS, which go through SHINE's ``Inference`` on the
whole scene.

**sparse** (the default) — SHINE draws a source only inside its stamp (64, 128 or 256
px around its position), so a pixel outside every stamp has no model light and its
likelihood does not depend on any parameter. The likelihood of an exposure is then,
up to a constant, a sum over *windows*: the bounding boxes of connected groups of
overlapping stamps of the sources *visible in that exposure* (:func:`stamp_windows`).
Each window is SHINE's single-exposure model of an ``ExposureSet`` holding only its
own sources — their parameters gathered from the sub-tile's parameter vector — on only
its own pixels. A step costs the (source, exposure) pairs that are seen and the pixels
of their stamps: the posterior, and every gradient, are the dense model's.

Each window goes onto an image of its own, its sides on :data:`~.buckets.IMAGE_LADDER`
and its sources per stamp tier on :func:`~.buckets.count_bucket`, or (``canvas_side``)
windows are packed onto canvases that share one slot layout (:mod:`.packing`). Canvases
of the same shape are evaluated together, ``vmap``-ped, in one compiled call (their
count on ``count_bucket``). The sparse fit runs from Python: per evaluation, one
compiled call per shape present (its log-likelihood and gradient with respect to the
whole parameter vector) and one for the prior. Each compiled piece depends only on its
shape and the length of the parameter vector (a power of two), so it is compiled once
per worker process (and found in JAX's persistent cache by the next process:
``runtime.jax_cache_dir``) and reused by every sub-tile that has that shape. The
optimiser is L-BFGS on the host (:func:`~.optim.lbfgs`) or Adam (compiled update); every
``check_every`` iterations the shear path is read back and the fit stops once g1 and g2
moved by less than ``tolerance`` over the last ``window`` iterations (``converged``),
when L-BFGS finds no lower loss (converged, to the float32 loss's precision), or after
``max_steps`` (not converged: recorded as such).

Everything here imports SHINE, JAX and NumPyro inside functions.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from constellation.inference.base import NonFiniteFitError
from constellation.inference.shine.buckets import (
    bucket,
    count_bucket,
    slot_bucket,
    source_bucket,
)
from constellation.inference.shine.geometry import MASKED_SIGMA, FloatArray
from constellation.inference.shine.loading import SubTileData
from constellation.inference.shine.optim import lbfgs
from constellation.inference.shine.packing import Canvas, bucket_windows, pack_windows
from constellation.inference.shine.params import init_values, prior_scales

__all__ = [
    "DenseModel",
    "MapFit",
    "MapSettings",
    "SparseModel",
    "dense_exposure_set",
    "init_values",
    "sparse_terms",
]

#: Per-source latent sites of SHINE's Euclid model (gathered per exposure).
PER_SOURCE = ("flux", "hlr", "e1", "e2", "dx", "dy")
#: The ``ExposureSet`` fields a compiled function takes as arguments (the rest is static).
TRACED = (
    "images",
    "noise_sigma",
    "pixel_positions",
    "wcs_jacobians",
    "psf_images",
    "source_visible",
    "catalog_flux_adu",
    "catalog_hlr_arcsec",
)
_PSF = 21  # SHINE's PSF stamps are 21 x 21 px


@dataclass(frozen=True)
class MapSettings:
    """How a MAP fit runs: Adam's step size, the step budget and the stopping rule."""

    learning_rate: float = 0.01
    max_steps: int = 1000
    tolerance: float = 1e-4  # largest change of g1 or g2 over `window` steps to stop
    window: int = 100
    check_every: int = 25
    fixed_steps: bool = False  # run exactly max_steps (comparisons)
    optimizer: str = "adam"  # "adam" or "lbfgs" (sparse model only)
    canvas_side: int = 1024  # sparse model: windows packed on canvases; 0: one per window


@dataclass
class MapFit:
    """The result of a MAP fit."""

    point: dict[str, NDArray[Any]]  # constrained parameters (per-source: slot order)
    slot_of: NDArray[np.int64]  # slot of each loaded source (SubTileData order)
    g1_path: FloatArray  # g1 after each step
    g2_path: FloatArray
    n_steps: int
    converged: bool | None  # None when the fit ran a fixed number of steps
    drift: float  # largest change of g1 or g2 over the last `window` steps (or 10 %)
    final_loss: float | None = None
    extras: dict[str, float] = field(default_factory=dict)


def _drift(g1: FloatArray, g2: FloatArray, window: int) -> float:
    if g1.size < 2:
        return float("nan")
    k = min(window, g1.size - 1)
    return float(max(abs(g1[-1] - g1[-1 - k]), abs(g2[-1] - g2[-1 - k])))


def _outside_domain(exc: Exception) -> bool:
    """Whether a JAX runtime error is JAX-GalSim refusing an ellipticity or a shear past
    1 (an equinox check inside the compiled model: it surfaces only as this message, as
    a ``JaxRuntimeError`` or, raised by the CPU callback at the call, a ``ValueError``)."""
    text = str(exc)
    return "distortion exceeds" in text or "shear exceeds" in text


def _model_key(cfg: Any) -> tuple[str, float]:
    return (cfg.model_dump_json(include={"gal", "galaxy_stamp_sizes"}), float(cfg.data.pixel_scale))


# =============================================================================== dense


def dense_exposure_set(
    euclid: Any,
    data: SubTileData,
    n_tiers: int,
    *,
    pad: bool,
    shape_step: int = 128,
    source_step: int = 16,
) -> tuple[Any, NDArray[np.int64], tuple[int, ...]]:
    """SHINE's ``ExposureSet`` of the whole sub-tile (numpy arrays), the slot of each
    loaded source and the slots per tier.

    With ``pad``, each tier's slot count and the common image shape are padded to
    buckets (padded slots are invisible everywhere); the image shape then comes from the
    unclipped crop spans (at most a quadrant), the same for every sub-tile of a tile.
    """
    exps = data.exposures
    ny = max(e.image.shape[0] for e in exps)
    nx = max(e.image.shape[1] for e in exps)
    if pad:
        ny = max(ny, *(e.span[0] for e in exps))
        nx = max(nx, *(e.span[1] for e in exps))
        ny, nx = bucket(ny, shape_step), bucket(nx, shape_step)
    n_exp = len(exps)
    counts = [int((data.tiers == t).sum()) for t in range(n_tiers)]
    padded = [source_bucket(c, source_step) if pad else c for c in counts]
    n_slots = sum(padded)
    slot_of = np.zeros(data.object_ids.size, dtype=np.int64)
    tier_arr = np.zeros(n_slots, dtype=np.int32)
    start = src = 0
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
    psf = np.zeros((n_slots, n_exp, _PSF, _PSF))
    psf[:, :, _PSF // 2, _PSF // 2] = 1.0
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
    eset = euclid.ExposureSet(
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


def to_jax(eset: Any) -> Any:
    """The ``ExposureSet`` with its traced arrays (and masks, backgrounds) on the device."""
    import jax.numpy as jnp

    names = (*TRACED, "masks", "backgrounds")
    return dataclasses.replace(eset, **{f: jnp.asarray(getattr(eset, f)) for f in names})


class DenseModel:
    """MAP on the whole-scene model, all steps in one compiled ``lax.scan``; compiled once
    per (exposures, image shape, slots per tier, steps, model settings)."""

    def __init__(self, euclid: Any) -> None:
        self._euclid = euclid
        self._lock = threading.Lock()
        self.compiled: dict[tuple[Any, ...], Callable[..., Any]] = {}

    def fit(self, cfg: Any, data: SubTileData, settings: MapSettings) -> MapFit:
        import jax

        n_tiers = len(cfg.galaxy_stamp_sizes)
        eset, slot_of, tiers = dense_exposure_set(self._euclid, data, n_tiers, pad=True)
        key = (
            eset.n_exposures, eset.image_ny, eset.image_nx, tiers, settings.max_steps,
            *_model_key(cfg),
        )  # fmt: skip
        with self._lock:
            fn = self.compiled.get(key)
        if fn is None:
            fn = self._build(cfg, eset, settings.max_steps)
            with self._lock:
                self.compiled[key] = fn
        init = init_values(cfg, eset.n_sources, eset.catalog_flux_adu, eset.catalog_hlr_arcsec)
        arrays = {name: getattr(to_jax(eset), name) for name in TRACED}
        t0 = time.perf_counter()
        final, losses, g1s, g2s, last = fn(arrays, init, settings.learning_rate)
        jax.block_until_ready(final)
        steps_s = time.perf_counter() - t0
        g1 = np.asarray(g1s, dtype=np.float64)
        g2 = np.asarray(g2s, dtype=np.float64)
        losses = np.asarray(losses, dtype=np.float64)
        extras: dict[str, float] = {f"tier{t}_slots": float(c) for t, c in enumerate(tiers)}
        extras.update(
            image_ny=float(eset.image_ny),
            image_nx=float(eset.image_nx),
            rendered_slots=float(eset.n_sources * eset.n_exposures),
            term_pixels=float(eset.image_ny * eset.image_nx * eset.n_exposures),
            steps_s=steps_s,
        )
        if losses.size > 1:
            k = max(1, round(losses.size * 0.1))
            extras["map_loss_rel_change"] = float(
                (losses[-1 - k] - losses[-1]) / max(abs(losses[-1]), 1e-30)
            )
        return MapFit(
            point={k: np.asarray(v) for k, v in final.items()},
            slot_of=slot_of,
            g1_path=g1,
            g2_path=g2,
            n_steps=settings.max_steps,
            converged=None,
            drift=_drift(g1, g2, max(1, round(g1.size * 0.1))),
            final_loss=float(last),
            extras=extras,
        )

    def _build(self, cfg: Any, template: Any, num_steps: int) -> Callable[..., Any]:
        import jax
        import numpyro
        from numpyro import handlers
        from numpyro.distributions.transforms import biject_to
        from numpyro.infer.util import log_density

        euclid = self._euclid
        n_exp = int(template.n_exposures)

        def run(arrays: dict[str, Any], init: dict[str, Any], lr: Any) -> Any:
            scene = euclid.MultiExposureScene(cfg, dataclasses.replace(template, **arrays))
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

            def exposure_term(j: int) -> Any:
                # prior + likelihood of exposure j; rematerialised in the backward
                # pass so that one exposure's intermediates are alive at a time
                return jax.checkpoint(lambda z: log_density(singles[j], (), kwargs, z)[0])

            terms = [exposure_term(j) for j in range(n_exp)]

            def loss(u: dict[str, Any]) -> Any:
                z = constrain(u)
                return -sum((term(z) for term in terms), -(n_exp - 1) * log_prior(z))

            opt = numpyro.optim.Adam(step_size=lr)

            def body(state: Any, _: Any) -> Any:
                value, grads = jax.value_and_grad(loss)(opt.get_params(state))
                state = opt.update(grads, state)
                z = constrain(opt.get_params(state))  # the shear after the step
                return state, (value, z["g1"], z["g2"])

            state, (losses, g1s, g2s) = jax.lax.scan(body, opt.init(u0), None, length=num_steps)
            final = constrain(opt.get_params(state))
            return final, losses, g1s, g2s, loss(opt.get_params(state))

        jitted: Callable[..., Any] = jax.jit(run)
        return jitted


# =============================================================================== sparse


@dataclass(frozen=True)
class Term:
    """A batch of windows of one bucket — window shape and sources per stamp tier — with
    the traced arrays of their one-exposure ``ExposureSet`` stacked on a leading axis
    (numpy). Padding windows (to a bucketed batch size) and padding sources are invisible."""

    key: tuple[int, int, tuple[int, ...], int]  # (ny, nx, sources per tier, windows)
    index: NDArray[np.int32]  # (windows, slots) into the sub-tile's parameter vectors
    tiers: NDArray[np.int32]  # (slots,) stamp tier of each slot
    arrays: dict[str, NDArray[Any]]
    pairs: int  # visible (source, exposure) pairs
    pixels: int  # window pixels before packing
    windows: int  # windows packed onto the term's canvases


def sparse_terms(
    data: SubTileData, stamp_sizes: Sequence[int], pixel_scale: float = 0.1, side: int = 0
) -> list[Term]:
    """The sub-tile's likelihood as batches of canvases: each window on its own bucketed
    canvas (:func:`~.packing.bucket_windows`, ``side`` 0) or windows packed onto canvases
    of ``side`` px (:func:`~.packing.pack_windows`). Canvases of the same shape and slots
    form one batch, padded to a bucketed count (:func:`~.buckets.count_bucket`) with
    empty canvases."""
    n_tiers = len(stamp_sizes)
    groups: dict[tuple[int, int, tuple[int, ...]], list[Canvas]] = {}
    layout = pack_windows(data, stamp_sizes, side) if side else bucket_windows(data, stamp_sizes)
    for canvas in layout:
        groups.setdefault(canvas.key, []).append(canvas)
    delta = np.zeros((_PSF, _PSF), dtype=np.float32)
    delta[_PSF // 2, _PSF // 2] = 1.0
    identity = np.array([pixel_scale, 0.0, 0.0, pixel_scale], dtype=np.float32)
    terms: list[Term] = []
    for (ny, nx, padded), members in sorted(groups.items()):
        n_win = count_bucket(len(members))
        n_slots = sum(padded)
        tiers = np.repeat(np.arange(n_tiers, dtype=np.int32), padded)
        first = np.concatenate([[0], np.cumsum(padded)[:-1]]).astype(np.int64)
        index = np.zeros((n_win, n_slots), dtype=np.int32)
        real = np.zeros((n_win, n_slots), dtype=bool)
        images = np.zeros((n_win, 1, ny, nx), dtype=np.float32)
        sigma = np.full((n_win, 1, ny, nx), MASKED_SIGMA, dtype=np.float32)
        pos = np.zeros((n_win, n_slots, 1, 2), dtype=np.float32)
        jac = np.tile(identity, (n_win, n_slots, 1, 1))
        psf = np.tile(delta, (n_win, n_slots, 1, 1, 1))
        flux = np.ones((n_win, n_slots), dtype=np.float32)
        hlr = np.full((n_win, n_slots), 0.5, dtype=np.float32)
        pixels = 0
        for k, canvas in enumerate(members):
            filled = np.zeros(n_tiers, dtype=np.int64)
            for w, cy, cx in canvas.placements:
                e = data.exposures[w.exposure]
                # the window's pixels (all inside the crop: visible stamps fit in it)
                rows, cols_ = slice(w.y0, w.y0 + w.ny), slice(w.x0, w.x0 + w.nx)
                images[k, 0, cy : cy + w.ny, cx : cx + w.nx] = e.image[rows, cols_]
                sigma[k, 0, cy : cy + w.ny, cx : cx + w.nx] = e.sigma[rows, cols_]
                pixels += w.ny * w.nx
                shift = np.array([w.x0 - cx, w.y0 - cy])
                for t in range(n_tiers):
                    src = w.sources[data.tiers[w.sources] == t]
                    cols = np.arange(src.size) + first[t] + filled[t]
                    filled[t] += src.size
                    index[k, cols] = src
                    real[k, cols] = True
                    pos[k, cols, 0] = e.positions[src] - shift
                    jac[k, cols, 0] = e.jacobians[src]
                    psf[k, cols, 0] = e.psfs[src]
                    flux[k, cols] = data.flux_adu[src]
                    hlr[k, cols] = data.hlr[src]
        terms.append(
            Term(
                key=(ny, nx, padded, n_win),
                index=index,
                tiers=tiers,
                arrays={
                    "images": images,
                    "noise_sigma": sigma,
                    "pixel_positions": pos,
                    "wcs_jacobians": jac,
                    "psf_images": psf,
                    "source_visible": real[..., None],
                    "catalog_flux_adu": flux,
                    "catalog_hlr_arcsec": hlr,
                },
                pairs=int(real.sum()),
                pixels=pixels,
                windows=sum(len(c.placements) for c in members),
            )
        )
    return terms


@dataclass(frozen=True)
class _Prior:
    """Compiled pieces of a parameter-vector length: the log prior and its gradient, the
    transforms to and from the unconstrained space, Adam's start and step."""

    value_and_grad: Any
    start: Any
    step: Any
    constrain: Any
    unconstrain: Any
    pullback: Any


class SparseModel:
    """MAP with per-exposure terms of only the visible sources (see the module docstring).

    Keeps the compiled pieces per bucket for the life of the process:
    ``compiled`` maps each bucket key to its compiled function.
    """

    def __init__(self, euclid: Any) -> None:
        self._euclid = euclid
        self._lock = threading.Lock()
        self.compiled: dict[tuple[Any, ...], Any] = {}

    # ---------------------------------------------------------------- compiled pieces

    def _get(self, key: tuple[Any, ...], build: Callable[[], Any]) -> Any:
        with self._lock:
            fn = self.compiled.get(key)
        if fn is None:
            fn = build()
            with self._lock:
                self.compiled.setdefault(key, fn)
        return fn

    def _template(self, n_slots: int, tiers: NDArray[np.int32], ny: int, nx: int) -> Any:
        """A one-exposure ``ExposureSet`` whose traced fields are replaced at call time."""
        n_exp = 1 if ny else 0
        return self._euclid.ExposureSet(
            images=np.zeros((n_exp, 1, 1), dtype=np.float32),
            noise_sigma=np.zeros((n_exp, 1, 1), dtype=np.float32),
            masks=np.zeros((n_exp, 1, 1), dtype=bool),
            flag_maps=np.zeros((n_exp, 1, 1), dtype=np.int32),
            backgrounds=np.zeros(n_exp, dtype=np.float32),
            pixel_positions=np.zeros((n_slots, n_exp, 2), dtype=np.float32),
            wcs_jacobians=np.zeros((n_slots, n_exp, 4), dtype=np.float32),
            psf_images=np.zeros((n_slots, n_exp, _PSF, _PSF), dtype=np.float32),
            source_visible=np.zeros((n_slots, n_exp), dtype=bool),
            catalog_flux_adu=np.ones(n_slots, dtype=np.float32),
            catalog_hlr_arcsec=np.full(n_slots, 0.5, dtype=np.float32),
            catalog_ra=np.zeros(n_slots),
            catalog_dec=np.zeros(n_slots),
            source_stamp_tier=np.asarray(tiers, dtype=np.int32),
            exposure_corners_sky=np.zeros((n_exp, 4, 2)),
            source_ids=[-1] * n_slots,
            n_exposures=n_exp,
            n_sources=n_slots,
            image_ny=max(ny, 1),
            image_nx=max(nx, 1),
        )

    def _term_fn(self, cfg: Any, term: Term, n_slots: int) -> Any:
        """``f(z, index, arrays, acc) -> (acc value + log L, acc gradient + d log L / dz)``
        for a batch of windows, each SHINE's single-exposure model of its own sources."""
        import jax
        from numpyro import handlers

        key = ("term", term.key, n_slots, *_model_key(cfg))

        def build() -> Any:
            ny, nx = term.key[:2]
            template = self._template(term.tiers.size, term.tiers, ny, nx)
            euclid = self._euclid

            def window(z: dict[str, Any], index: Any, arrays: dict[str, Any]) -> Any:
                zj = {k: (v[index] if k in PER_SOURCE else v) for k, v in z.items()}
                scene = euclid.MultiExposureScene(cfg, dataclasses.replace(template, **arrays))
                model = scene.build_single_exposure_model(0)
                trace = handlers.trace(handlers.substitute(model, data=zj)).get_trace(
                    observed_data=arrays["images"]
                )
                site = trace["obs_0"]
                # the chi-square part of SHINE's Normal log-likelihood: its normalisation
                # (log sigma per pixel, 23 per masked pixel) is a constant of the data
                # that would set the float32 loss's precision far above what the line
                # search must resolve near the minimum
                normal = getattr(site["fn"], "base_dist", site["fn"])
                r = (site["value"] - normal.loc) / normal.scale
                return -0.5 * (r * r).sum()

            def loglik(z: dict[str, Any], index: Any, arrays: dict[str, Any]) -> Any:
                per_window = jax.vmap(window, in_axes=(None, 0, 0))(z, index, arrays)
                return per_window.sum()

            grad = jax.value_and_grad(loglik)

            def accumulate(z: Any, index: Any, arrays: Any, acc: Any) -> Any:
                value, g = grad(z, index, arrays)
                return acc[0] + value, jax.tree_util.tree_map(lambda a, b: a + b, acc[1], g)

            return jax.jit(accumulate)

        return self._get(key, build)

    def _prior_fns(self, cfg: Any, n_slots: int, init: dict[str, Any], lr: float) -> _Prior:
        """The compiled prior, parameter transforms and Adam step for this slot count."""
        key = ("prior", n_slots, lr, *_model_key(cfg))
        euclid = self._euclid

        def build() -> Any:
            import jax
            import numpyro
            from numpyro import handlers
            from numpyro.distributions.transforms import biject_to
            from numpyro.infer.util import log_density

            template = self._template(n_slots, np.zeros(n_slots, dtype=np.int32), 0, 0)

            def priors_model(flux: Any, hlr: Any) -> Any:
                eset = dataclasses.replace(template, catalog_flux_adu=flux, catalog_hlr_arcsec=hlr)
                return euclid.MultiExposureScene(cfg, eset).build_model()

            probe = priors_model(np.ones(n_slots, np.float32), np.full(n_slots, 0.5, np.float32))
            trace = handlers.trace(
                handlers.seed(handlers.substitute(probe, data=init), rng_seed=0)
            ).get_trace()
            transforms = {
                name: biject_to(site["fn"].support)
                for name, site in trace.items()
                if site["type"] == "sample" and not site["is_observed"]
            }

            def constrain(u: dict[str, Any]) -> dict[str, Any]:
                return {k: transforms[k](v) for k, v in u.items()}

            def unconstrain(z: dict[str, Any]) -> dict[str, Any]:
                return {k: transforms[k].inv(v) for k, v in z.items()}

            def prior(z: Any, flux: Any, hlr: Any) -> Any:
                return log_density(priors_model(flux, hlr), (), {}, z)[0]

            opt = numpyro.optim.Adam(step_size=lr)

            def step(state: Any, grad_z: Any) -> Any:
                u = opt.get_params(state)
                _, pullback = jax.vjp(constrain, u)
                (grad_u,) = pullback(grad_z)
                loss_grad = jax.tree_util.tree_map(lambda g: -g, grad_u)
                state = opt.update(loss_grad, state)
                return state, constrain(opt.get_params(state))

            def start(z0: Any) -> Any:
                return opt.init(unconstrain(z0))

            def pullback(u: Any, grad_z: Any) -> Any:
                _, back = jax.vjp(constrain, u)
                return back(grad_z)[0]

            return _Prior(
                value_and_grad=jax.jit(jax.value_and_grad(prior)),
                start=jax.jit(start),
                step=jax.jit(step),
                constrain=jax.jit(constrain),
                unconstrain=jax.jit(unconstrain),
                pullback=jax.jit(pullback),
            )

        return self._get(key, build)  # type: ignore[no-any-return]

    # ---------------------------------------------------------------- the fit

    def fit(self, cfg: Any, data: SubTileData, settings: MapSettings) -> MapFit:
        import jax
        import jax.numpy as jnp

        n_real = int(data.object_ids.size)
        n_slots = slot_bucket(n_real)
        flux = np.ones(n_slots, dtype=np.float32)
        flux[:n_real] = data.flux_adu
        hlr = np.full(n_slots, 0.5, dtype=np.float32)
        hlr[:n_real] = data.hlr
        init = init_values(cfg, n_slots, flux, hlr)
        stamp_sizes = [int(x) for x in cfg.galaxy_stamp_sizes]
        terms = sparse_terms(data, stamp_sizes, float(cfg.data.pixel_scale), settings.canvas_side)
        before = len(self.compiled)
        prior = self._prior_fns(cfg, n_slots, init, settings.learning_rate)
        fns = [self._term_fn(cfg, t, n_slots) for t in terms]
        compiled_now = len(self.compiled) - before
        device = [
            (jnp.asarray(t.index), {k: jnp.asarray(v) for k, v in t.arrays.items()}) for t in terms
        ]
        jflux, jhlr = jnp.asarray(flux), jnp.asarray(hlr)

        def log_posterior(z: Any) -> Any:
            """log p(z | data) up to a constant and its gradient in z (on the device)."""
            acc = prior.value_and_grad(z, jflux, jhlr)
            for fn, (index, arrays) in zip(fns, device, strict=True):
                acc = fn(z, index, arrays, acc)
            return acc

        z0 = {k: jnp.asarray(v) for k, v in init.items()}
        t0 = time.perf_counter()
        g1s: list[Any] = []
        g2s: list[Any] = []
        converged: bool | None = None
        n_steps = 0
        evaluations = 0
        last_value: Any = None

        def record(z: Any) -> bool:
            """Count an iteration ending at ``z``; every ``check_every`` iterations, True
            (stop) when the shear settled (``converged``) or is not finite (the caller
            reports the non-finite shear)."""
            nonlocal n_steps, converged
            g1s.append(z["g1"])
            g2s.append(z["g2"])
            n_steps += 1
            if settings.fixed_steps or n_steps % settings.check_every:
                return False
            path = np.asarray(jax.device_get(g1s[-settings.window - 1 :]), dtype=np.float64)
            path2 = np.asarray(jax.device_get(g2s[-settings.window - 1 :]), dtype=np.float64)
            if not (np.isfinite(path[-1]) and np.isfinite(path2[-1])):
                return True
            if n_steps > settings.window and (
                _drift(path, path2, settings.window) < settings.tolerance
            ):
                converged = True
                return True
            return False

        if settings.optimizer == "adam":
            state = prior.start(z0)
            z = z0
            try:
                while n_steps < settings.max_steps:
                    last_value, grad = log_posterior(z)
                    evaluations += 1
                    state, z = prior.step(state, grad)
                    if record(z):
                        break
                jax.block_until_ready(z)
            except (jax.errors.JaxRuntimeError, ValueError) as exc:
                # Adam's fixed steps can push an ellipticity past |e| = 1: the fit left
                # the model's domain, a permanent failure of this configuration
                if not _outside_domain(exc):
                    raise
                raise NonFiniteFitError(
                    f"Adam left the model's domain (|e| >= 1) after {n_steps} steps; "
                    "use science.backend.shine.optimizer: lbfgs or a smaller learning rate"
                ) from None
        else:
            from jax.flatten_util import ravel_pytree

            flat0, unravel = ravel_pytree(prior.unconstrain(z0))
            # L-BFGS on x = u / scale: every prior as wide as every other
            scale = np.asarray(ravel_pytree(prior_scales(cfg, init))[0], dtype=np.float64)

            def loss(x: NDArray[np.float64]) -> tuple[float, NDArray[np.float64]]:
                nonlocal evaluations
                evaluations += 1
                u = unravel(jnp.asarray(x * scale, dtype=jnp.float32))
                try:
                    value, grad_z = log_posterior(prior.constrain(u))
                    grad_u, _ = ravel_pytree(prior.pullback(u, grad_z))
                    return -float(value), -np.asarray(grad_u, dtype=np.float64) * scale
                except (jax.errors.JaxRuntimeError, ValueError) as exc:
                    if not _outside_domain(exc):  # a trial point past |e| = 1: too far
                        raise
                    return np.inf, np.full_like(x, np.nan)

            start = np.asarray(flat0, dtype=np.float64) / scale
            for x, value in lbfgs(loss, start, settings.max_steps):
                z = prior.constrain(unravel(jnp.asarray(x * scale, dtype=jnp.float32)))
                last_value = -value
                if record(z):
                    break
            else:
                if not settings.fixed_steps and 0 < n_steps < settings.max_steps:
                    # the line search found no lower loss: a minimum, to the precision
                    # of the float32 loss
                    converged = True
        g1 = np.asarray(jax.device_get(g1s), dtype=np.float64)
        g2 = np.asarray(jax.device_get(g2s), dtype=np.float64)
        steps_s = time.perf_counter() - t0
        if not settings.fixed_steps and converged is None:
            converged = False
        point = {k: np.asarray(v) for k, v in jax.device_get(z).items()}
        pairs = sum(t.pairs for t in terms)
        slots = sum(t.index.size for t in terms)
        extras = {
            "terms": float(len(terms)),
            "windows": float(sum(t.windows for t in terms)),
            "canvases": float(sum(t.key[3] for t in terms)),
            "source_exposure_pairs": float(pairs),
            "rendered_slots": float(slots),
            "term_pixels": float(sum(t.key[3] * t.key[0] * t.key[1] for t in terms)),
            "window_pixels": float(sum(t.pixels for t in terms)),
            "compiled_now": float(compiled_now),
            "term_buckets": float(len({t.key for t in terms})),
            "steps_s": steps_s,
            "evaluations": float(evaluations),
        }
        return MapFit(
            point=point,
            slot_of=np.arange(n_real, dtype=np.int64),
            g1_path=g1,
            g2_path=g2,
            n_steps=n_steps,
            converged=converged,
            drift=_drift(g1, g2, settings.window),
            final_loss=None if last_value is None else -float(last_value),
            extras=extras,
        )


def bucket_keys(terms: Sequence[Term]) -> set[tuple[int, int, tuple[int, ...], int]]:
    """The distinct term buckets of a sub-tile (what its fit compiles at most)."""
    return {t.key for t in terms}
