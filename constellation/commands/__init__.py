"""Typer sub-applications of the ``constellation`` CLI, one module per command group."""
