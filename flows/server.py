"""A temporary Prefect API server for one command, started as early as possible.

Without ``PREFECT_API_URL`` Prefect starts a temporary server itself at the first
flow run: it imports its whole server package into the calling process (~5 s on
2 cores) only to find the class that launches the server, then waits for the
server process to import it again (~11 s). Commands that know they will run a flow
(``run``, ``demo``, ``reprocess``) start that same server process themselves, before
they import the flows, Ray or the catalog and while they start Ray, and wait for
it only when the flow starts. It is Prefect's own temporary server (the same
module, database and ``PREFECT__SERVER_EPHEMERAL`` flag, UI and telemetry off) and
stops with the command. A configured API (``PREFECT_API_URL``, a Prefect profile,
a test harness) is used as it is.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["TemporaryServer", "prefect_api"]

log = logging.getLogger(__name__)
#: The server of the outermost :func:`prefect_api` block of this process, if it started one.
_ACTIVE: TemporaryServer | None = None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class TemporaryServer:
    """Prefect's temporary API server in a child process on a free local port."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/api"
        self._log = tempfile.NamedTemporaryFile(  # noqa: SIM115  (closed in stop())
            prefix="constellation-prefect-server-", suffix=".log", delete=False
        )
        env = {
            **os.environ,
            "PREFECT_UI_ENABLED": "0",
            "PREFECT__SERVER_EPHEMERAL": "1",  # Prefect's flag for its temporary server
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1",
        }
        env.pop("PREFECT_API_URL", None)
        self._process: subprocess.Popen[bytes] | None = subprocess.Popen(
            [
                sys.executable,
                *("-m", "uvicorn", "--factory", "prefect.server.api.server:create_app"),
                *("--host", "127.0.0.1", "--port", str(self.port)),
                *("--log-level", "error", "--lifespan", "on"),
            ],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def wait(self, timeout_s: float | None = None) -> None:
        """Return once the server answers its health check; raise RuntimeError (with
        the end of its log) if it exits or does not answer within ``timeout_s``
        (default: ``PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS``, else 120 s)."""
        if timeout_s is None:
            timeout_s = float(
                os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", 120)
            )
        deadline = time.monotonic() + timeout_s
        while True:
            if self._process is None or self._process.poll() is not None:
                raise RuntimeError(f"the temporary Prefect server exited: {self._tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the temporary Prefect server did not answer within {timeout_s:g} s "
                    f"(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS): {self._tail()}"
                )
            time.sleep(0.1)

    def _tail(self) -> str:
        self._log.flush()
        text = Path(self._log.name).read_text(errors="replace").strip().splitlines()
        return " | ".join(text[-3:]) or "no output"

    def stop(self) -> None:
        """Stop the server (terminate, then kill after 5 s) and remove its log."""
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None
        self._log.close()
        Path(self._log.name).unlink(missing_ok=True)


@contextmanager
def prefect_api() -> Iterator[TemporaryServer | None]:
    """Within the block, flows use the configured Prefect API or, when none is
    configured, a :class:`TemporaryServer` started now (yielded: call its ``wait``
    before the first flow run; a nested block yields the same one). Imports Prefect's
    settings (not its server)."""
    # start the server before importing Prefect (~3 s) unless an API is set in the
    # environment or Prefect is imported already (then its settings say it at once)
    global _ACTIVE
    early = None
    if "prefect" not in sys.modules and not os.environ.get("PREFECT_API_URL"):
        early = TemporaryServer()
    from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings

    configured = get_current_settings().api.url
    if configured:  # a profile, prefect.toml, a test harness or an enclosing block
        if early is not None:
            early.stop()
        yield _ACTIVE if _ACTIVE is not None and _ACTIVE.url == configured else None
        return
    server = early or TemporaryServer()
    _ACTIVE = server
    try:
        with temporary_settings(updates={PREFECT_API_URL: server.url}):
            try:
                yield server
            finally:
                _drain()
    finally:
        _ACTIVE = None
        server.stop()


def _drain(timeout_s: float = 5.0) -> None:
    """Send the logs and events still queued in this process before the server stops
    (else Prefect retries them against a stopped server for over a minute at exit),
    as Prefect's own test harness does."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        try:
            worker.drain_all(timeout=timeout_s)
        except Exception as exc:  # never started, or already gone
            log.debug("draining %s: %s", worker.__name__, exc)
