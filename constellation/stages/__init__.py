"""Pipeline stages, each of one shape (:mod:`constellation.stages.base`): an item model,
a ``plan()`` that writes nothing, an idempotent ``run_one(item, storage)`` that returns a
typed outcome and leaves a marker; one error rule and one driver for every caller."""
