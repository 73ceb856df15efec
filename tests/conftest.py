"""Shared test set-up: no telemetry, no CONSTELLATION_* settings leaking in from the shell,
the local S3 server fixtures of :mod:`tests.fixtures.s3`, Prefect and Ray
(:mod:`tests.fixtures.orchestration`), the simulated fields of
:mod:`tests.fixtures.fields` and SHINE (:mod:`tests.fixtures.shine`)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import pytest

from tests.fixtures.fields import (  # noqa: F401  (fixtures)
    fields,
    light_field,
    pixels_field,
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
from tests.fixtures.shine import shine_euclid  # noqa: F401  (fixture)

os.environ["DO_NOT_TRACK"] = "1"

#: Fixtures that start a server or a cluster (Prefect's API, Ray, the moto S3 server):
#: a test that uses one, directly or through another fixture, is an ``integration`` test.
INTEGRATION_FIXTURES = frozenset({"prefect_api", "local_ray", "s3_endpoint"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark ``integration``, for the fast loop ``-m "not integration"``: the tests that use
    :data:`INTEGRATION_FIXTURES` and the ``slow`` ones (more than ~5 s on the 2-core
    machine, each with a faster test of the same behaviour left in the fast loop); tests
    that start subprocesses say so themselves."""
    for item in items:
        if INTEGRATION_FIXTURES.intersection(getattr(item, "fixturenames", ())) or (
            item.get_closest_marker("slow") is not None
        ):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(autouse=True)
def _isolate_constellation_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Remove CONSTELLATION_* variables so tests see only what they set themselves."""
    for name in list(os.environ):
        if name.upper().startswith("CONSTELLATION_"):
            monkeypatch.delenv(name)


# Loggers whose level the CLI's set-up (constellation.logging.setup_logging) changes.
_CLI_LOGGERS = ("constellation", "flows", "botocore", "aiobotocore", "boto3", "s3transfer")


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """Commands run in-process configure logging (handlers, levels); undo it after each
    test so the others are unaffected."""
    root = logging.getLogger()
    loggers = [logging.getLogger(name) for name in _CLI_LOGGERS]
    saved = (list(root.handlers), root.level, [lg.level for lg in loggers])
    yield
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    for lg, level in zip(loggers, saved[2], strict=True):
        lg.setLevel(level)
