"""The inference backend interface.

A backend fits one sub-tile. It receives the parsed manifest, where the manifest
lives (relative URIs in it resolve against that location), the sub-tile source
table (Parquet, lower-case MER columns, ``in_core``, ``tile_id``, ``healpix``) and
a :class:`~constellation.io.storage.Storage` for ranged reads. It returns a
:class:`BackendOutput`: the shear, its errors where the method gives them, a
convergence diagnostic and a per-source parameter table keyed by ``object_id``.

Everything else in a result row (identity, centre, HEALPix, status, timings,
run id, config hash, sign convention) is filled in by
:mod:`constellation.stages.infer`, so backends stay small.

A backend raises to say why it returned nothing, and the *type* of the exception
decides what happens to the sub-tile (:func:`constellation.stages.infer.classify`):

=============================  ==========================================================
:class:`NothingToFitError`     ``skipped``: no sources, no exposures, no visible source;
                               written as a result, committed, never retried
:class:`SubTileDataError`      ``failed``, permanent: deterministic data or configuration
                               problems (:class:`NonFiniteFitError` among them); recorded
                               once, not retried
:class:`BackendUnavailableError`  the backend cannot be imported or built: the run stops
``OSError`` (I/O, network)     ``failed``, retryable (missing files excepted)
anything else                  ``failed``, permanent (retrying a deterministic fit repeats it)
=============================  ==========================================================

Backends are built once per process by :func:`constellation.inference.get_backend`
and reused across sub-tiles, so they may keep compiled models between calls.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pyarrow as pa

from constellation.io.storage import Storage
from constellation.manifest.subtile import SubTileManifest
from constellation.sky import plane_to_sky

__all__ = [
    "BackendError",
    "BackendOutput",
    "BackendUnavailableError",
    "InferenceBackend",
    "NonFiniteFitError",
    "NothingToFitError",
    "SubTileDataError",
    "SubTileInput",
    "core_centre",
]


def core_centre(manifest: SubTileManifest) -> tuple[float, float]:
    """RA, Dec (deg) of the centre of the sub-tile's core box (the result row's position)."""
    g = manifest.geometry
    x = 0.5 * (g.core.x_min_arcmin + g.core.x_max_arcmin)
    y = 0.5 * (g.core.y_min_arcmin + g.core.y_max_arcmin)
    ra, dec = plane_to_sky(np.array([x]), np.array([y]), g.tile_ra_deg, g.tile_dec_deg)
    return float(np.asarray(ra)[0]), float(np.asarray(dec)[0])


class BackendError(RuntimeError):
    """Base class of the errors a backend raises on purpose (see the module docstring)."""

    def __reduce__(self) -> tuple[Any, ...]:
        # one message argument, whatever the subclass's constructor: safe to pickle
        # across processes (Ray workers -> the flow's driver)
        return (_rebuild, (type(self), str(self), self.__dict__))


def _rebuild(cls: type[BackendError], message: str, state: dict[str, Any]) -> BackendError:
    exc = cls.__new__(cls)
    RuntimeError.__init__(exc, message)
    exc.__dict__.update(state)
    return exc


class BackendUnavailableError(BackendError):
    """The backend cannot be imported or built here (e.g. SHINE is not installed): no
    sub-tile can run, so the run stops at once. The message says how to fix it."""


class NothingToFitError(BackendError):
    """The sub-tile has nothing to fit: its result is ``skipped``, never retried.

    ``reason`` is a short, stable label used to group skipped sub-tiles in summaries
    (``no sources``, ``no exposures``, ``no visible source``, ...).
    """

    def __init__(self, reason: str, detail: str | None = None) -> None:
        super().__init__(reason if detail is None else f"{reason}: {detail}")
        self.reason = reason


class SubTileDataError(BackendError):
    """A deterministic problem with this sub-tile's data or configuration: the same
    inputs fail the same way, so the sub-tile fails once and is not retried."""


class NonFiniteFitError(SubTileDataError):
    """The fit produced a non-finite shear or loss."""


@dataclass(frozen=True)
class SubTileInput:
    """What a backend gets for one sub-tile."""

    manifest: SubTileManifest
    manifest_url: str  # relative URIs in the manifest resolve against this location
    sources: pa.Table  # the sub-tile source table (extended area, in_core flag)
    storage: Storage

    @property
    def core_sources(self) -> pa.Table:
        """The rows with ``in_core`` true (the sources a result reports)."""
        return self.sources.filter(self.sources.column("in_core"))


@dataclass
class BackendOutput:
    """What a backend returns for one sub-tile.

    ``sources`` has an ``object_id`` (int64) column and any of the parameter
    columns of :data:`constellation.results.schema.SOURCE_PARAMETERS` and their
    ``*_err`` companions (float64, null where unknown). It may hold all modelled
    sources; only core sources are kept in the result. Core sources the backend
    did not fit (e.g. not selected) appear in the result with null parameters.
    """

    g1: float
    g2: float
    method: str
    n_sources_modelled: int
    sources: pa.Table
    g1_err: float | None = None
    g2_err: float | None = None
    g1_g2_cov: float | None = None
    convergence: float | None = None
    convergence_kind: str | None = None
    converged: bool | None = None  # met its stopping rule; None: not applicable
    n_steps: int | None = None  # optimisation steps run
    n_exposures: int | None = None  # None = all exposures of the manifest
    t_load_s: float = 0.0
    t_infer_s: float = 0.0
    extras: dict[str, float] = field(default_factory=dict)


@runtime_checkable
class InferenceBackend(Protocol):
    """A sub-tile inference backend."""

    #: Short name recorded in results ("shine", "mock").
    name: str
    #: Version of the underlying package, recorded in results.
    version: str

    def run(self, item: SubTileInput) -> BackendOutput:
        """Fit one sub-tile; raise on failure."""
        ...
