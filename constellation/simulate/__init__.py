"""Synthetic Euclid-like fields in the real Q1 file formats (seeded, reproducible).

Public entry point: :func:`simulate_field` (see :mod:`constellation.simulate.run`).
"""

from constellation.simulate.field import FieldSpec, ShearField, plan_field

__all__ = ["FieldSpec", "ShearField", "plan_field"]
