"""The truth of a simulated field, and how to read it back.

The simulator writes ``truth/field.json`` (the field's specification, among it the
injected :class:`ShearField`, and its centre) and ``truth/sources.parquet`` (per
source: object id, the injected g1/g2, intrinsic ellipticity, ...). The mock backend
(``truth`` mode), the catalog report (recovered against injected shear) and the
shear calibration read them through this module, without importing the simulator.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from numpy.typing import ArrayLike, NDArray
from pydantic import BaseModel, ConfigDict, Field, model_validator

from constellation.io.storage import Storage
from constellation.sky import sky_to_plane

__all__ = ["ShearField", "TruthField", "load_truth_field", "load_truth_sources"]


class ShearField(BaseModel):
    """A smooth injected reduced-shear field, defined in the field's tangent plane.

    With ``(x, y)`` the field-plane coordinates in degrees (``x`` west, ``y``
    north, tangent at the field centre: the centroid of its tiles) and ``u = x cos θ + y sin θ``,
    ``v = -x sin θ + y cos θ``::

        g1 = g1_constant + amplitude · cos(2π u / wavelength_deg)
        g2 = g2_constant + amplitude · sin(2π v / wavelength_deg)

    A calibration field is a constant shear: ``amplitude = 0`` and the constants.
    The components follow the convention of the catalog (``+g1`` stretches
    along the plane's ``x`` axis, west; ``+g2`` along the ``x = y`` diagonal).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    amplitude: float = Field(0.03, ge=0.0, le=0.2, description="Shear amplitude.")
    wavelength_deg: float = Field(2.0, gt=0.0, description="Wavelength of the pattern, deg.")
    angle_deg: float = Field(30.0, description="Orientation θ of the pattern, deg.")
    g1_constant: float = Field(0.0, ge=-0.2, le=0.2, description="Constant g1 added everywhere.")
    g2_constant: float = Field(0.0, ge=-0.2, le=0.2, description="Constant g2 added everywhere.")

    @model_validator(mode="after")
    def _bounded(self) -> ShearField:
        if self.amplitude * math.sqrt(2) + math.hypot(self.g1_constant, self.g2_constant) >= 0.5:
            raise ValueError("|g| must stay below 0.5 everywhere: lower amplitude or constants")
        return self

    def at_plane(
        self, x_deg: ArrayLike, y_deg: ArrayLike
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """(g1, g2) at field-plane positions in degrees."""
        x = np.asarray(x_deg, dtype=np.float64)
        y = np.asarray(y_deg, dtype=np.float64)
        t = math.radians(self.angle_deg)
        u = x * math.cos(t) + y * math.sin(t)
        v = -x * math.sin(t) + y * math.cos(t)
        k = 2 * math.pi / self.wavelength_deg
        g1 = self.g1_constant + self.amplitude * np.cos(k * u)
        g2 = self.g2_constant + self.amplitude * np.sin(k * v)
        return g1, g2


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
