"""Fixtures of the sky tests."""

from __future__ import annotations

import pytest

from constellation.sky import AllSkyTiling, TileRegistry


@pytest.fixture(scope="session")
def allsky_registry() -> TileRegistry:
    return AllSkyTiling().registry()
