"""Shared test set-up: no telemetry, and no CONSTELLATION_* settings leaking in from the shell."""

from __future__ import annotations

import os

import pytest

os.environ["DO_NOT_TRACK"] = "1"


@pytest.fixture(autouse=True)
def _isolate_constellation_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Remove CONSTELLATION_* variables so tests see only what they set themselves."""
    for name in list(os.environ):
        if name.upper().startswith("CONSTELLATION_"):
            monkeypatch.delenv(name)
