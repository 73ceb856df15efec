"""Pure sky geometry: tiles, sub-tiles, tangent planes, HEALPix, partitioning.

Nothing in this package does I/O. Angles are degrees on the sky and arcmin in
a tile's tangent plane (``x`` west, ``y`` north); the unit is in every name.
"""

from constellation.sky.allsky import (
    AllSkyTiling,
    SubTileCentres,
    subtile_centres,
    wide_footprint_mask,
)
from constellation.sky.neighbours import NeighbourIndex
from constellation.sky.partition import Partition, partition_sources
from constellation.sky.projection import plane_to_sky, sky_to_plane, wrap_ra
from constellation.sky.registry import REGISTRY_COLUMNS, RegistryError, TileRegistry
from constellation.sky.tiling import Box, SubTile, SubTileGrid, Tile, grid_edges

__all__ = [
    "REGISTRY_COLUMNS",
    "AllSkyTiling",
    "Box",
    "NeighbourIndex",
    "Partition",
    "RegistryError",
    "SubTile",
    "SubTileCentres",
    "SubTileGrid",
    "Tile",
    "TileRegistry",
    "grid_edges",
    "partition_sources",
    "plane_to_sky",
    "sky_to_plane",
    "subtile_centres",
    "wide_footprint_mask",
    "wrap_ra",
]
