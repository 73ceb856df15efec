"""Shared test set-up: no telemetry, no CONSTELLATION_* settings leaking in from the shell,
the local S3 server fixtures of :mod:`tests.fixtures.s3`, Prefect and Ray
(:mod:`tests.fixtures.orchestration`) and the simulated fields of
:mod:`tests.fixtures.fields`."""

from __future__ import annotations

import os

import pytest

from tests.fixtures.fields import (  # noqa: F401  (fixtures)
    light_field,
    prepared_field,
    s3_light_field,
)
from tests.fixtures.orchestration import (  # noqa: F401  (fixtures)
    local_ray,
    prefect_api,
    ray_tmpdir,
)
from tests.fixtures.s3 import (  # noqa: F401  (fixtures, used by name)
    anon_s3_storage,
    s3_bucket,
    s3_client,
    s3_endpoint,
    upload_tree,
)

os.environ["DO_NOT_TRACK"] = "1"


@pytest.fixture(autouse=True)
def _isolate_constellation_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Remove CONSTELLATION_* variables so tests see only what they set themselves."""
    for name in list(os.environ):
        if name.upper().startswith("CONSTELLATION_"):
            monkeypatch.delenv(name)
