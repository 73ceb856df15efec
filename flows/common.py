"""What the flows share: settings transport, Ray start-up, the Prefect API URL for workers.

Flows take the *path* of a configuration file (a deployment parameter) and pass
the resolved settings to their tasks as a JSON string: small, serialisable, and
identical on every Ray worker whatever its environment. Tasks parse it once per
process (:func:`settings_from_json` is cached).
"""

from __future__ import annotations

import functools
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from constellation.config import Settings, load_config
from constellation.io.storage import Storage, storage_from_config

__all__ = [
    "load_settings",
    "new_run_id",
    "prefect_api_url",
    "ray_session",
    "settings_from_json",
    "settings_json",
    "storage_for",
]


def load_settings(config: str | None) -> Settings:
    """Settings from a YAML file (``None``: defaults + ``CONSTELLATION_*`` environment)."""
    return load_config(config)


def settings_json(settings: Settings) -> str:
    """The settings as the JSON string tasks receive."""
    return settings.model_dump_json()


@functools.lru_cache(maxsize=8)
def settings_from_json(payload: str) -> Settings:
    """Parse a :func:`settings_json` string (cached per process)."""
    return Settings.model_validate_json(payload)


@functools.lru_cache(maxsize=8)
def storage_for(payload: str) -> Storage:
    """One :class:`Storage` per process and settings."""
    return storage_from_config(settings_from_json(payload).runtime.storage)


def new_run_id(prefix: str = "run") -> str:
    """A run id like ``run-20261125T221500Z-3f9a``."""
    return f"{prefix}-{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(2)}"


def prefect_api_url() -> str | None:
    """The API URL of the Prefect server this process talks to (temporary server included)."""
    from prefect.client.orchestration import get_client

    try:
        with get_client(sync_client=True) as client:
            return str(client.api_url)
    except Exception:  # no server reachable: workers fall back to their own settings
        return None


def _worker_env(api_url: str | None) -> dict[str, str]:
    env = {"DO_NOT_TRACK": os.environ.get("DO_NOT_TRACK", "1")}
    if api_url:
        env["PREFECT_API_URL"] = api_url
    for name in ("PREFECT_LOGGING_LEVEL", "PREFECT_API_KEY_FILE"):
        if name in os.environ:
            env[name] = os.environ[name]
    return env


@contextmanager
def ray_session(settings: Settings, api_url: str | None) -> Iterator[dict[str, Any]]:
    """Connect to (or start) Ray for a flow run, giving workers the Prefect API URL.

    ``runtime.ray.address``: ``None`` starts a local Ray instance for the run (shut
    down at the end); ``"auto"`` or ``"ray://host:10001"`` connects to a cluster. If
    Ray is already initialised in this process (a parent flow started it), it is
    reused as it is.
    """
    import ray

    if ray.is_initialized():
        yield {"owned": False}
        return
    # see flows/__init__.py: if Ray was imported before this package, say it again
    from ray._private import ray_constants

    if os.environ.get("RAY_ENABLE_UV_RUN_RUNTIME_ENV") == "0":
        ray_constants.RAY_ENABLE_UV_RUN_RUNTIME_ENV = False
    address = settings.runtime.ray.address
    kwargs: dict[str, Any] = {
        "runtime_env": {"env_vars": _worker_env(api_url)},
        "logging_level": "WARNING",
        "log_to_driver": True,
    }
    if address is None:
        kwargs["include_dashboard"] = False
        if settings.runtime.ray.local_num_gpus is not None:
            kwargs["num_gpus"] = settings.runtime.ray.local_num_gpus
        if settings.runtime.ray.local_num_cpus is not None:
            kwargs["num_cpus"] = settings.runtime.ray.local_num_cpus
        ray.init(**kwargs)
    else:
        ray.init(address=address, **kwargs)
    try:
        yield {"owned": True}
    finally:
        ray.shutdown()
