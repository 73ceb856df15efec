"""Reading back a simulated field's truth (``truth/field.json``, ``truth/sources.parquet``).

Used by the mock backend (``truth`` mode) and by the catalog report, which
compares recovered with injected shear.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from numpy.typing import ArrayLike, NDArray

from constellation.io.storage import Storage
from constellation.simulate.field import ShearField
from constellation.sky import sky_to_plane

__all__ = ["TruthField", "load_truth_field", "load_truth_sources"]


@dataclass(frozen=True)
class TruthField:
    """The injected shear field of a simulated field."""

    shear: ShearField
    centre_ra: float
    centre_dec: float

    def shear_at(
        self, ra: ArrayLike, dec: ArrayLike
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Injected reduced shear (g1, g2) at sky positions (deg)."""
        x, y = sky_to_plane(ra, dec, self.centre_ra, self.centre_dec)
        return self.shear.at_plane(np.asarray(x) / 60.0, np.asarray(y) / 60.0)


def load_truth_field(storage: Storage, truth_uri: str) -> TruthField:
    """Parse ``{truth_uri}/field.json``.

    Raises
    ------
    FileNotFoundError
        When the folder has no ``field.json`` (not a simulated field).
    """
    doc = json.loads(storage.read_bytes(storage.join(truth_uri, "field.json")))
    return TruthField(
        shear=ShearField.model_validate(doc["spec"]["shear"]),
        centre_ra=float(doc["centre"]["ra"]),
        centre_dec=float(doc["centre"]["dec"]),
    )


def load_truth_sources(storage: Storage, truth_uri: str) -> pa.Table:
    """``{truth_uri}/sources.parquet``: per-source truth (object_id, g1, g2, e1/e2, ...)."""
    return pq.read_table(io.BytesIO(storage.read_bytes(storage.join(truth_uri, "sources.parquet"))))
