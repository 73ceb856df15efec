"""Pipeline stages: each has a pure ``plan()``, an idempotent ``run_one()`` and a done marker."""
