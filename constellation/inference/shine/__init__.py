"""The ``shine`` inference backend: SHINE's Euclid model run in-process on one sub-tile.

SHINE (``shine.euclid``, installed from its source; see ``docs/shine.md``) fits
one quadrant id with one PSF grid and one zero point per run. A sub-tile's
extended box is usually covered by several quadrants of several exposures, so
this backend assembles SHINE's :class:`~shine.euclid.ExposureSet` itself:

* **Ranged reads, cropped.** For each quadrant exposure of the manifest the SCI
  header gives the WCS; the extended polygon is projected into the quadrant and
  only the rows that overlap it (grown by half the largest stamp) are read from
  SCI, RMS, FLG and BKG (a row range is one contiguous byte range), then cropped
  in columns. All crops are padded to one common, bucketed shape; padding and
  pixels outside the extended polygon are masked (noise ``1e10``).
* **One photometric reference.** Each exposure's image and noise are scaled by
  ``c_ref / c_j`` with ``c = 10**((MAGZEROP + 2.5 log10 EXPTIME - 23.9) / 2.5)``
  (ADU per uJy), so SHINE's single per-source ADU flux, centred on the catalog
  flux converted with ``c_ref``, is right in every exposure.
* **Per-quadrant PSF.** Each quadrant's 189 x 189 PSF grid becomes a
  :class:`~shine.euclid.EuclidPSFModel`, interpolated at the source's position.
  SHINE treats the stamp as a sky-frame image, draws the profile at the integer
  pixel it is given (minus half a pixel for its even stamps) and drops the
  sub-pixel part of the position; the stamp given to SHINE is therefore the
  pixel-frame PSF resampled (Lanczos-3) into SHINE's frame through the local
  Jacobian and shifted by the exact sub-pixel offset, so that every exposure sees
  the galaxy at its WCS position with the right PSF orientation (mirrored and
  rotated quadrants included).
* **Every source accounted for.** SHINE's source selection (the ``sources``
  section) picks the modelled sources; the pixels around rejected sources, and
  around modelled sources in the exposures where their stamp does not fit, are
  masked, so that no unmodelled light enters the likelihood.
* **Warm across sub-tiles.** For MAP the optimisation (Adam on the unconstrained
  parameters of SHINE's model, initialised from the catalog, all steps in one
  ``lax.scan``) is compiled once per (exposures, shape, sources per stamp tier,
  steps) bucket: source counts and image shapes are padded to buckets and the
  data are arguments of the compiled function, so a second sub-tile of the same
  bucket does not recompile. VI and NUTS go through SHINE's ``Inference``
  (which compiles on each call).

The pure helpers (crop windows, masks, zero-point scales, source selection,
PSF resampling, posterior summaries) need neither SHINE nor JAX and are tested
in CI; everything that imports SHINE does so inside functions.
"""

from __future__ import annotations

from constellation.inference.shine.backend import INSTALL_HINT, ShineBackend, read_sources
from constellation.inference.shine.buckets import bucket, source_bucket
from constellation.inference.shine.catalog import (
    flux_conversion,
    hlr_arcsec,
    select_sources,
    stamp_tiers,
    zeropoint_scales,
)
from constellation.inference.shine.geometry import (
    MASKED_SIGMA,
    CropWindow,
    convex_polygon_mask,
    crop_span,
    crop_window,
    disc_mask,
    local_jacobians,
)
from constellation.inference.shine.loading import ExposureData, SubTileData
from constellation.inference.shine.posterior import (
    PosteriorSummary,
    shear_drift,
    split_rhat,
    summarize_posterior,
)
from constellation.inference.shine.psf import lanczos_resample, psf_for_shine, remove_pixel

__all__ = [
    "INSTALL_HINT",
    "MASKED_SIGMA",
    "CropWindow",
    "ExposureData",
    "PosteriorSummary",
    "ShineBackend",
    "SubTileData",
    "bucket",
    "convex_polygon_mask",
    "crop_span",
    "crop_window",
    "disc_mask",
    "flux_conversion",
    "hlr_arcsec",
    "lanczos_resample",
    "local_jacobians",
    "psf_for_shine",
    "read_sources",
    "remove_pixel",
    "select_sources",
    "shear_drift",
    "source_bucket",
    "split_rhat",
    "stamp_tiers",
    "summarize_posterior",
    "zeropoint_scales",
]
