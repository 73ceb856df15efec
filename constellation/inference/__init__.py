"""Sub-tile inference backends: ``mock`` (a stand-in, no GPU) and ``shine`` (SHINE in-process).

:func:`get_backend` builds the configured backend once per process and per
science configuration, so a worker that fits many sub-tiles keeps SHINE's
compiled model warm.
"""

from __future__ import annotations

import threading

from constellation.config import Settings
from constellation.inference.base import (
    BackendError,
    BackendOutput,
    BackendUnavailableError,
    InferenceBackend,
    NonFiniteFitError,
    NothingToFitError,
    SubTileDataError,
    SubTileInput,
)
from constellation.manifest.layout import join

__all__ = [
    "BackendError",
    "BackendOutput",
    "BackendUnavailableError",
    "InferenceBackend",
    "NonFiniteFitError",
    "NothingToFitError",
    "SubTileDataError",
    "SubTileInput",
    "clear_backends",
    "get_backend",
]

_LOCK = threading.Lock()
_BACKENDS: dict[tuple[str, str, str], InferenceBackend] = {}


def _build(settings: Settings, name: str) -> InferenceBackend:
    science = settings.science
    if name == "mock":
        from constellation.inference.mock import MockBackend

        mock = science.backend.mock
        truth = mock.truth_uri or join(settings.runtime.storage.data_uri, "truth")
        return MockBackend(mock, truth_uri=truth)
    if name == "shine":
        from constellation.inference.shine import ShineBackend

        return ShineBackend(science, cache_dir=settings.runtime.jax_cache_dir)
    raise BackendUnavailableError(f"unknown inference backend {name!r}; use 'shine' or 'mock'")


def get_backend(settings: Settings, name: str | None = None) -> InferenceBackend:
    """The backend named ``name`` (default: ``science.backend.name``), built once per process.

    Raises
    ------
    BackendUnavailableError
        When the backend cannot be built (e.g. SHINE is not installed); the
        message says how to fix it. Any error while building is reported as this.
    """
    chosen = name or settings.science.backend.name
    key = (chosen, settings.config_hash, settings.runtime.storage.data_uri)
    with _LOCK:
        backend = _BACKENDS.get(key)
        if backend is None:
            try:
                backend = _build(settings, chosen)
            except BackendUnavailableError:
                raise
            except Exception as exc:  # building failed: no sub-tile can run
                raise BackendUnavailableError(
                    f"the {chosen!r} backend could not be built: {type(exc).__name__}: {exc}"
                ) from exc
            _BACKENDS[key] = backend
        return backend


def clear_backends() -> None:
    """Forget the cached backends (tests)."""
    with _LOCK:
        _BACKENDS.clear()
