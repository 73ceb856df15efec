"""Allow ``python -m constellation``."""

from constellation.cli import app

app(prog_name="constellation")
