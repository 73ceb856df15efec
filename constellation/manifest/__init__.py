"""Pure contracts: schemas and layouts shared between stages (no I/O)."""
