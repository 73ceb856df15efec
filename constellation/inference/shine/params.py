"""The sampled sites of SHINE's model as the MAP optimisers see them: where a fit
starts (:func:`init_values`) and how wide each prior is (:func:`prior_scales`).

numpy only; ``cfg`` is SHINE's ``EuclidInferenceConfig`` (its ``gal`` section).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["init_values", "prior_scales"]


def init_values(
    cfg: Any, n_slots: int, flux: NDArray[Any], hlr: NDArray[Any]
) -> dict[str, NDArray[np.float32]]:
    """Catalog start of the sampled sites: flux and size from the catalog, shapes,
    offsets and shear at 0 (SHINE's own start, the prior median, does not converge)."""
    init: dict[str, NDArray[np.float32]] = {
        "g1": np.asarray(0.0, dtype=np.float32),
        "g2": np.asarray(0.0, dtype=np.float32),
        "flux": np.asarray(flux, dtype=np.float32),
        "hlr": np.asarray(hlr, dtype=np.float32),
    }
    gal = cfg.gal
    if gal.ellipticity is not None:
        init["e1"] = np.zeros(n_slots, dtype=np.float32)
        init["e2"] = np.zeros(n_slots, dtype=np.float32)
    if gal.position is not None and gal.position.type == "Offset":
        init["dx"] = np.zeros(n_slots, dtype=np.float32)
        init["dy"] = np.zeros(n_slots, dtype=np.float32)
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


def prior_scales(cfg: Any, init: dict[str, NDArray[Any]]) -> dict[str, NDArray[np.float64]]:
    """Per sampled site, the width of its prior in the optimiser's unconstrained space
    (``sigma`` of a Normal, or of a LogNormal's logarithm; 1 otherwise), shaped as
    ``init``. L-BFGS works on the parameters divided by these: the prior's curvature
    is then the same along every axis, so that a narrow prior (an ellipticity known to
    ~0.01) does not make the problem ill-conditioned."""
    gal = cfg.gal
    ell = gal.ellipticity
    pos = gal.position
    sites = {
        "g1": gal.shear.g1,
        "g2": gal.shear.g2,
        "flux": gal.flux,
        "hlr": gal.half_light_radius,
        "e1": ell.e1 if ell is not None else None,
        "e2": ell.e2 if ell is not None else None,
        "dx": getattr(pos, "dx", None),
        "dy": getattr(pos, "dy", None),
    }
    out = {}
    for name, value in init.items():
        sigma = getattr(sites.get(name), "sigma", None)
        width = float(sigma) if sigma is not None and sigma > 0 else 1.0
        out[name] = np.full(np.shape(value), width, dtype=np.float64)
    return out
