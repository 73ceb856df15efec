"""constellation: orchestration of SHINE shear inference over Euclid tiles."""

from constellation._version import __version__

__all__ = ["__version__"]
