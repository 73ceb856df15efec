"""The ``catalog-maintenance`` flow on a small assembled catalog (session Prefect API)."""

from __future__ import annotations

from pathlib import Path

import yaml

from constellation.catalog.assemble import assemble
from constellation.catalog.iceberg import SOURCES, SUBTILES, open_catalog
from constellation.catalog.synthetic import synthetic_tiles, write_results
from constellation.config import Settings
from constellation.io.storage import Storage
from constellation.sky.tiling import SubTileGrid


def test_catalog_maintenance_flow(prefect_api: str, tmp_path: Path) -> None:
    from flows.maintenance import catalog_maintenance

    doc = {"runtime": {"storage": {"work_uri": str(tmp_path / "work")}}}
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(doc), encoding="utf-8")
    settings = Settings.model_validate(doc)
    work = settings.runtime.storage.work_uri
    grid = SubTileGrid(4, 4, 1.0)
    write_results(Storage(), work, synthetic_tiles(1, 1), grid, n_sources=5,
                  config_hash=settings.config_hash)  # fmt: skip
    assemble(settings, batch_size=4)  # 4 commits per table
    rows = {name: open_catalog(settings).count(name) for name in (SOURCES, SUBTILES)}

    out = catalog_maintenance(
        config=str(config), older_than_days=0, retain_last=1, orphan_min_age_hours=0
    )
    assert sorted(out) == sorted([SOURCES, SUBTILES])
    catalog = open_catalog(settings)
    for name, report in out.items():
        assert report["after"]["data_files"] < report["before"]["data_files"]
        assert report["after"]["data_files"] == len(catalog.data_files(name))
        assert report["after"]["snapshots"] == len(catalog.snapshots(name)) == 1
        assert report["after"]["records"] == catalog.count(name) == rows[name]
