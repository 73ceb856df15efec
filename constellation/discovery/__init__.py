"""Discovery: which quadrant exposures cover which tiles and sub-tiles."""
