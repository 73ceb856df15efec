"""``SubTileId``: a sub-tile's identity and the inverse of the layout's paths."""

from __future__ import annotations

import pytest

from constellation.manifest import layout
from constellation.manifest.layout import SubTileId


@pytest.mark.parametrize("work", ["/data/work", "s3://bucket/work", "work", "gs://b/w/"])
def test_every_subtile_path_maps_back_to_its_identity(work: str) -> None:
    ident = SubTileId(102018211, 3, 1)
    paths = [
        layout.subtile_dir(work, 102018211, 3, 1),
        layout.subtile_dir(work, 102018211, 3, 1) + "/",
        layout.manifest_url(work, 102018211, 3, 1),
        layout.sources_url(work, 102018211, 3, 1),
        layout.done_url(work, 102018211, 3, 1),
        layout.result_url(work, 102018211, 3, 1),
        layout.result_done_url(work, 102018211, 3, 1),
    ]
    assert {SubTileId.from_url(p) for p in paths} == {ident}
    assert ident.directory(work) == layout.subtile_dir(work, 102018211, 3, 1)
    assert str(ident) == "tile 102018211 r3_c1"


@pytest.mark.parametrize(
    "url",
    [
        "/w/tiles/1/subtiles/r1_c1/deeper/file",  # not directly in the folder
        "/w/tiles/x/subtiles/r1_c1/manifest.json",
        "/w/tiles/1/r1_c1/manifest.json",
        "/w/tiles/1/subtiles/rx_c1",
        "",
    ],
)
def test_other_paths_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match="not a sub-tile folder or file"):
        SubTileId.from_url(url)


def test_order_is_tile_row_col() -> None:
    ids = [SubTileId(2, 0, 0), SubTileId(1, 1, 0), SubTileId(1, 0, 3)]
    assert sorted(ids) == [SubTileId(1, 0, 3), SubTileId(1, 1, 0), SubTileId(2, 0, 0)]


@pytest.mark.parametrize("work", ["base", "s3://bucket/base/", "s3://b/tiles/7/base"])
def test_tile_paths_map_back_to_their_tile(work: str) -> None:
    for url in (
        layout.tile_dir(work, 102018211),
        layout.tile_dir(work, 102018211) + "/",
        layout.join(layout.tile_dir(work, 102018211), "subtiles"),
        layout.manifest_url(work, 102018211, 3, 1),
    ):
        assert layout.tile_id_from_url(url) == 102018211, url
    # a work root that is itself a tile folder: the last tile folder counts
    assert layout.tile_id_from_url("s3://b/tiles/7/tiles/102018211/subtiles") == 102018211
    for url in ("/w/subtiles/3", "/w/tiles/x/subtiles", "/w/mytiles/3/subtiles", ""):
        with pytest.raises(ValueError, match="not in a tile folder"):
            layout.tile_id_from_url(url)
