"""What the flows share: settings transport, Ray start-up, the Prefect API URL for
workers, and stopping cleanly on SIGINT / SIGTERM.

Flows take the *path* of a configuration file (a deployment parameter) and pass
the resolved settings to their tasks as a JSON string: small, serialisable, and
identical on every Ray worker whatever its environment. Tasks parse it once per
process (:func:`settings_from_json` is cached).

A flow decorated with :func:`cancellable` ends ``Cancelled`` (not ``Crashed``) when
the process is interrupted (SIGINT raises ``KeyboardInterrupt``; Prefect turns
SIGTERM into ``TerminationSignal``) or when a sub-flow run was cancelled; whoever
holds Ray tasks cancels them on the way out (:mod:`flows.infer`).
"""

from __future__ import annotations

import functools
import logging
import os
import secrets
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, ParamSpec, TypeVar

from prefect.exceptions import CancelledRun, TerminationSignal
from prefect.states import Cancelled, Failed

from constellation.config import Settings, load_config
from constellation.io.storage import Storage, storage_from_config

__all__ = [
    "STOP_SIGNALS",
    "cancellable",
    "deferred_stop_signals",
    "end_state",
    "executor_session",
    "failed_subtiles_message",
    "last_stop_signal",
    "load_settings",
    "new_run_id",
    "prefect_api_url",
    "progress",
    "ray_session",
    "set_progress_reporter",
    "settings_from_json",
    "settings_json",
    "storage_for",
    "task_runner",
]


#: What stops a flow run from outside: Ctrl-C, SIGTERM, a cancelled sub-flow run.
STOP_SIGNALS: tuple[type[BaseException], ...] = (KeyboardInterrupt, TerminationSignal, CancelledRun)

_P = ParamSpec("_P")
_R = TypeVar("_R")
_LAST_SIGNAL: dict[str, int] = {}


def _signal_of(exc: BaseException) -> int | None:
    if isinstance(exc, KeyboardInterrupt):
        return int(signal.SIGINT)
    if isinstance(exc, TerminationSignal):
        return int(exc.signal)
    return _LAST_SIGNAL.get("signal")


def _stop_exception(signum: int) -> BaseException:
    if signum == signal.SIGINT:
        return KeyboardInterrupt()
    return TerminationSignal(signal=signum)


@contextmanager
def deferred_stop_signals() -> Iterator[Callable[[], None]]:
    """Within the block, SIGINT and SIGTERM are only recorded; the ``check`` function it
    yields raises the matching exception (``KeyboardInterrupt``, ``TerminationSignal``)
    at a point of the caller's choosing.

    Waiting on Ray (``ray.wait``, ``ray.get``) is C code: an exception raised by a
    signal handler inside it comes back as a ``SystemError``, and a long wait may not
    return to Python at all. Loops that wait on Ray in short slices and call ``check``
    between them stop within a slice of the signal.
    """
    received: list[int] = []

    def record(signum: int, frame: object) -> None:
        received.append(signum)

    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, record)

    def check() -> None:
        if received:
            raise _stop_exception(received[0])

    try:
        yield check
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    check()  # a signal that came after the caller's last check


def last_stop_signal() -> int | None:
    """The signal that last stopped a flow run of this process (None: none did)."""
    return _LAST_SIGNAL.get("signal")


def cancellable(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """Make a flow body end in a ``Cancelled`` state when it is stopped (see the
    module docstring) instead of crashing. Put it under ``@flow``."""

    @functools.wraps(fn)
    def body(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return fn(*args, **kwargs)
        except STOP_SIGNALS as exc:
            signum = _signal_of(exc)
            if signum is not None:
                _LAST_SIGNAL["signal"] = signum
            name = signal.Signals(signum).name if signum is not None else type(exc).__name__
            # a flow returning a state ends in it; the caller of the flow gets CancelledRun
            return Cancelled(message=f"stopped by {name}")  # type: ignore[return-value]

    return body


_REPORTER: dict[str, Callable[[str], None]] = {}


def set_progress_reporter(reporter: Callable[[str], None] | None) -> None:
    """Where :func:`progress` lines go besides the flow run's log (the CLI: the terminal)."""
    if reporter is None:
        _REPORTER.pop("fn", None)
    else:
        _REPORTER["fn"] = reporter


def progress(message: str) -> None:
    """A progress line: to the flow run's log (Prefect UI) and to the reporter, if any."""
    from prefect.context import FlowRunContext, TaskRunContext

    if FlowRunContext.get() is not None or TaskRunContext.get() is not None:
        from prefect import get_run_logger

        get_run_logger().info("%s", message)
    reporter = _REPORTER.get("fn")
    if reporter is not None:
        reporter(message)


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


def end_state(out: dict[str, Any], message: str | None) -> dict[str, Any]:
    """What a flow returns: ``out``, or a ``Failed`` state carrying ``message`` (the
    cause, shown in the UI and by ``prefect flow-run inspect``) and ``out`` as its
    data when there is a message."""
    if message is None:
        return out
    return Failed(message=message, data=out)  # type: ignore[return-value]


def failed_subtiles_message(infer: dict[str, Any]) -> str | None:
    """ "N of M sub-tiles failed (cause: count; ...)" for an inference summary, or None."""
    failed = int(infer["counts"].get("failed", 0))
    if not failed:
        return None
    causes = [c for c in infer.get("causes", []) if c["status"] == "failed"]
    top = "; ".join(f"{c['cause']}: {c['count']}" for c in causes[:3])
    return f"{failed} of {infer['subtiles']} sub-tiles failed ({top})"


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
    # Ray's notice that token authentication is on (it is, by default): not for the terminal
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(
        logging.ERROR
    )
    address = settings.runtime.ray.address
    kwargs: dict[str, Any] = {
        "runtime_env": {"env_vars": _worker_env(api_url)},
        "logging_level": "WARNING",
        # workers' output (tracebacks, JAX warnings) stays in Ray's log files and the
        # Prefect task logs unless asked for: the terminal shows one line per cause
        "log_to_driver": settings.runtime.ray.log_to_driver,
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


@contextmanager
def executor_session(settings: Settings, api_url: str | None) -> Iterator[dict[str, Any]]:
    """What the sub-tile tasks run on, for the block: Ray (:func:`ray_session`) for
    ``runtime.executor: ray``; nothing to start for ``local`` (threads of this process)."""
    if settings.runtime.executor == "local":
        yield {"owned": False}
        return
    with ray_session(settings, api_url) as session:
        yield session


def task_runner(settings: Settings) -> Any:
    """The Prefect task runner of an infer sub-flow: sub-tile tasks on Ray (GPUs, worker
    reuse, :mod:`flows.runner`), or on ``runtime.local_workers`` threads here."""
    if settings.runtime.executor == "local":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=settings.runtime.local_workers)
    from flows.runner import SubTileRayTaskRunner

    return SubTileRayTaskRunner()
