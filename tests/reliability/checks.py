"""What the reliability tests share: the check that a command failed cleanly."""

from __future__ import annotations

from click.testing import Result


def error_line(result: Result, *needles: str, code: int | None = None, sole: bool = False) -> str:
    """The one stderr line holding every ``needle``, after checking the command failed
    cleanly: a non-zero exit code (``code`` if given), no Python traceback, no exception
    other than the exit itself; with ``sole``, that line is all of stderr."""
    assert result.exit_code != 0, result.output
    if code is not None:
        assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    hits = [line for line in lines if all(n in line for n in needles)]
    assert hits, f"no stderr line with all of {needles!r}:\n{result.stderr}"
    if sole:
        assert lines == hits[:1], result.stderr
    return hits[0]
