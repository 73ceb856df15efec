"""The Iceberg shear catalog: assembly of sub-tile results, validation and QA figures.

* :mod:`~constellation.catalog.iceberg` — catalog access and the two tables (the only
  module that imports pyiceberg);
* :mod:`~constellation.catalog.assemble` — batched, idempotent, concurrent-safe commits;
* :mod:`~constellation.catalog.validate` — completeness and sanity checks;
* :mod:`~constellation.catalog.report` — PNG figures and a Markdown summary;
* :mod:`~constellation.catalog.synthetic` — synthetic results for tests and benchmarks.

See ``docs/catalog.md``.
"""
