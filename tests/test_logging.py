"""Tests of constellation.logging."""

from __future__ import annotations

import logging

import pytest
from rich.logging import RichHandler

from constellation.logging import setup_logging, verbosity_to_level


@pytest.mark.parametrize(
    ("verbosity", "level"),
    [(0, logging.WARNING), (1, logging.INFO), (2, logging.DEBUG), (5, logging.DEBUG)],
)
def test_verbosity_to_level(verbosity: int, level: int) -> None:
    assert verbosity_to_level(verbosity) == level


def test_setup_logging_sets_our_level_and_installs_one_rich_handler() -> None:
    setup_logging(1)
    setup_logging(2)
    rich_handlers = [h for h in logging.getLogger().handlers if isinstance(h, RichHandler)]
    assert len(rich_handlers) == 1
    assert logging.getLogger("constellation.config").getEffectiveLevel() == logging.DEBUG
    assert logging.getLogger("some.library").getEffectiveLevel() == logging.WARNING


def test_setup_logging_writes_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging(1)
    logging.getLogger("constellation.test").info("hello from the test")
    captured = capsys.readouterr()
    assert "hello from the test" in captured.err
    assert "hello from the test" not in captured.out
