"""Logging set-up for command-line entry points.

Library modules never print: they log through ``logging.getLogger(__name__)``.
Only entry points (the CLI, flows) call :func:`setup_logging`.
"""

from __future__ import annotations

import logging

from rich.console import Console
from rich.logging import RichHandler

__all__ = ["setup_logging"]

# Our own loggers follow -v/-vv; third-party loggers stay at WARNING until -vvv.
_OWN_LOGGERS = ("constellation", "flows")
# AWS SDK loggers print request headers (the access key id, the session token) and
# signing material at debug level: never below INFO, whatever the verbosity.
_CREDENTIAL_LOGGERS = ("botocore", "aiobotocore", "boto3", "s3transfer")
_HANDLER_NAME = "constellation-rich"


def verbosity_to_level(verbosity: int) -> int:
    """Map a ``-v`` count to a logging level: 0 WARNING, 1 INFO, 2 or more DEBUG."""
    if verbosity <= 0:
        return logging.WARNING
    if verbosity == 1:
        return logging.INFO
    return logging.DEBUG


def setup_logging(verbosity: int) -> None:
    """Send log records to stderr through rich, at a level chosen by ``verbosity``.

    Parameters
    ----------
    verbosity
        Number of ``-v`` flags: 0 shows warnings and errors, 1 adds info, 2 adds
        debug messages from constellation, 3 or more also debug from libraries
        (except the AWS SDK's, which would log credentials: those stop at INFO).

    Notes
    -----
    Safe to call more than once: the handler installed by a previous call is replaced.
    """
    level = verbosity_to_level(verbosity)
    root = logging.getLogger()
    for handler in list(root.handlers):
        if handler.get_name() == _HANDLER_NAME:
            root.removeHandler(handler)
    handler = RichHandler(console=Console(stderr=True), show_path=verbosity >= 2)
    handler.set_name(_HANDLER_NAME)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbosity >= 3 else logging.WARNING)
    for name in _OWN_LOGGERS:
        logging.getLogger(name).setLevel(level)
    for name in _CREDENTIAL_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO if verbosity >= 3 else logging.NOTSET)
