"""The sub-tile manifest: everything SHINE needs to fit one sub-tile (a pure contract).

One JSON document per sub-tile (``manifest.json``), readable on its own (see
``docs/manifest.md``):

* ``identity`` — tile id, row, column, preparation hash, code version;
* ``geometry`` — the tile centre, the core and extended boxes in the tile's
  tangent plane (arcmin, ``x`` west, ``y`` north) and their sky polygons;
* ``exposures`` — one entry per quadrant exposure overlapping the extended box,
  with the DET/BKG/PSF files and the byte ranges of the extensions;
* ``sources`` — the sub-tile source table (relative to the manifest) and counts;
* ``shine`` — the SHINE sections ``inference``, ``gal`` and ``sources``, verbatim.

Serialisation is pydantic's JSON: deterministic (fields in schema order, the SHINE
sections' keys sorted), floats in their shortest exact form, integers (object ids,
byte offsets) as integers. Version 2 manifests were YAML written and read by ~230
lines of hand-written emitter and subset loader; pydantic's JSON replaced them on
these figures (a 55 kB manifest of 60 quadrant exposures, median of 200 calls, on a
2-core machine shared with other jobs): dump 4.7 ms (YAML emitter) -> 0.43 ms
(indented JSON; 0.22 ms compact, so the indentation stays); validated load 7.3 ms
(subset loader) -> 0.71 ms. Version-2 YAML manifests (same schema) are still read,
with PyYAML's safe loader (32 ms: only for a work root prepared before version 3).
Read ``manifest.json`` with a JSON parser: a YAML 1.1 reader (PyYAML) reads the
float ``1e-05`` as a string.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

__all__ = [
    "MANIFEST_VERSION",
    "AuxFile",
    "DetFile",
    "FitsExtension",
    "ManifestError",
    "ManifestGeometry",
    "ManifestIdentity",
    "ManifestSources",
    "PlaneBox",
    "QuadrantExposure",
    "ShinePassThrough",
    "SkyPolygon",
    "SubTileManifest",
    "dump_manifest",
    "load_manifest",
    "parse_manifest",
]

#: Bumped on any incompatible change of the manifest schema or format. Version 2: the
#: identity carries the ``preparation_hash`` (the science configuration without its
#: backend section) instead of version 1's ``config_hash`` (all of it), so that
#: switching backends keeps the manifests, and with them the results of the other
#: backend. Version 3: JSON (``manifest.json``) instead of YAML, the same schema;
#: :func:`parse_manifest` still reads version 2 and refuses version 1.
MANIFEST_VERSION: Literal[3] = 3

# Safe loading only: tags such as !!python/object are errors, never constructed.
_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

_MAX_PROBLEMS = 5


class ManifestError(ValueError):
    """A manifest cannot be used; the one-line message says why (callers add its URL)."""


class _Model(BaseModel):
    # NaN and infinities round trip as the constants NaN / Infinity (json and pydantic
    # read them back), not as null
    model_config = ConfigDict(extra="forbid", frozen=True, ser_json_inf_nan="constants")


class ManifestIdentity(_Model):
    """Which sub-tile this is and what produced it."""

    tile_id: int = Field(description="Euclid MER tile index.")
    row: int = Field(ge=0, description="Sub-tile row (0 = southernmost).")
    col: int = Field(ge=0, description="Sub-tile column (0 = easternmost).")
    preparation_hash: str = Field(
        description="Hash of the science configuration without its backend section "
        "(16 hex digits): what the manifest was prepared under."
    )
    code_version: str = Field(description="constellation version that wrote the manifest.")


class PlaneBox(_Model):
    """A half-open box ``[x_min, x_max) x [y_min, y_max)`` in the tile plane (arcmin)."""

    x_min_arcmin: float
    x_max_arcmin: float
    y_min_arcmin: float
    y_max_arcmin: float


class SkyPolygon(_Model):
    """The 4 sky corners of a plane box (great-circle edges), counter-clockwise in the plane
    from ``(x_min, y_min)``; degrees (ICRS)."""

    ra_deg: list[float] = Field(min_length=4, max_length=4)
    dec_deg: list[float] = Field(min_length=4, max_length=4)


class ManifestGeometry(_Model):
    """Tile frame and the sub-tile's boxes."""

    tile_ra_deg: float = Field(description="Tile centre RA (tangent point), deg.")
    tile_dec_deg: float = Field(description="Tile centre Dec (tangent point), deg.")
    tile_core_size_arcmin: float = Field(description="Side of the tile core square, arcmin.")
    margin_arcmin: float = Field(description="Margin between core and extended box, arcmin.")
    core: PlaneBox = Field(description="Core box: sources reported by this sub-tile.")
    extended: PlaneBox = Field(description="Extended box: sources modelled by this sub-tile.")
    core_polygon: SkyPolygon = Field(description="Sky corners of the core box.")
    extended_polygon: SkyPolygon = Field(description="Sky corners of the extended box.")


class FitsExtension(_Model):
    """One FITS extension: its name and absolute byte positions in the file.

    The data unit is ``[data_offset, data_offset + data_bytes)`` (no padding); the
    header starts at ``header_offset``.
    """

    name: str = Field(description="EXTNAME, e.g. '3-4.F.SCI'.")
    header_offset: int = Field(ge=0)
    data_offset: int = Field(ge=0)
    data_bytes: int = Field(ge=0)


class DetFile(_Model):
    """A VIS DET file and the three extensions of one quadrant."""

    uri: str
    sci: FitsExtension
    rms: FitsExtension
    flg: FitsExtension


class AuxFile(_Model):
    """A background (BKG) or PSF file and the extension of one quadrant."""

    uri: str
    extension: FitsExtension


class QuadrantExposure(_Model):
    """One quadrant of one exposure that overlaps the sub-tile's extended box."""

    exposure: str = Field(description="Exposure key '{obs_id:06d}-{dither:02d}-{expnum}'.")
    obs_id: int
    dither: int
    expnum: int = Field(description="Exposure number (2 = short exposure in Q1).")
    exptime: float = Field(description="Exposure time, s.")
    magzerop: float = Field(description="AB zero point for 1 ADU/s.")
    gain: float = Field(description="Gain, e-/ADU.")
    quadrant: str = Field(description="Quadrant id, e.g. '3-4.F'.")
    naxis1: int
    naxis2: int
    det: DetFile
    bkg: AuxFile | None = Field(default=None, description="Background map; null when absent.")
    psf: AuxFile | None = Field(default=None, description="PSF grid; null when absent.")


class ManifestSources(_Model):
    """The sub-tile source table and its counts."""

    uri: str = Field(
        description="Parquet source table; relative names are relative to the manifest."
    )
    n_extended: int = Field(ge=0, description="Rows of the table (sources to model).")
    n_core: int = Field(ge=0, description="Rows with in_core = true (sources to report).")


class ShinePassThrough(_Model):
    """SHINE sections copied verbatim from the science configuration."""

    inference: dict[str, Any] = Field(default_factory=dict)
    gal: dict[str, Any] = Field(default_factory=dict)
    sources: dict[str, Any] = Field(default_factory=dict)

    @field_validator("inference", "gal", "sources")
    @classmethod
    def _sorted(cls, value: dict[str, Any]) -> dict[str, Any]:
        """Keys sorted (recursively): the manifest's bytes do not depend on the order
        of the configuration file."""
        return _sort_keys(value)  # type: ignore[no-any-return]


def _sort_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _sort_keys(value[k]) for k in sorted(value, key=str)}
    if isinstance(value, list | tuple):
        return [_sort_keys(v) for v in value]
    return value


class SubTileManifest(_Model):
    """The versioned sub-tile manifest (constellation -> SHINE)."""

    manifest_version: Literal[3] = MANIFEST_VERSION
    identity: ManifestIdentity
    geometry: ManifestGeometry
    exposures: list[QuadrantExposure] = Field(
        default_factory=list, description="Quadrant exposures, sorted by (exposure, quadrant)."
    )
    sources: ManifestSources
    shine: ShinePassThrough = Field(default_factory=ShinePassThrough)

    @property
    def n_quadrants(self) -> int:
        """Distinct quadrant ids among the exposures."""
        return len({e.quadrant for e in self.exposures})


def dump_manifest(manifest: SubTileManifest) -> bytes:
    """The manifest as JSON bytes (UTF-8, indented by one space, final newline).

    pydantic's serialiser writes fields in schema order (the SHINE sections' keys
    are sorted when the model is built), floats in their shortest exact form and
    integers as integers; NaN and infinities as ``NaN`` / ``Infinity``.
    """
    return manifest.model_dump_json(indent=1).encode("utf-8") + b"\n"


_JSON_START = re.compile(rb"\s*\{")


def _load_document(data: bytes | str) -> Any:
    """JSON text (starts with ``{``) with the JSON parser, anything else with PyYAML's
    safe loader (version-2 manifests were YAML)."""
    text = data.decode("utf-8") if isinstance(data, bytes) else data
    if text.lstrip().startswith("{"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ManifestError(f"not valid JSON: {exc}") from None
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        raise ManifestError(f"not valid YAML: {' '.join(str(exc).split())}") from None


def parse_manifest(data: bytes | str) -> SubTileManifest:
    """Validate manifest text: JSON (version 3), or YAML of version 2 (same schema).

    A JSON document that states version 3 is validated by pydantic straight from its
    bytes; otherwise (or for YAML) the document is parsed first, so that the error says
    which version it is.

    Raises
    ------
    ManifestError
        One line: not UTF-8, not JSON / (safe) YAML, not a mapping, another
        ``manifest_version``, or the fields that do not match the schema.
    """
    raw_bytes = data.encode("utf-8") if isinstance(data, str) else data
    if _JSON_START.match(raw_bytes):
        try:
            manifest = SubTileManifest.model_validate_json(raw_bytes)
        except ValidationError:
            pass  # below: which version, or which fields
        else:
            if "manifest_version" in manifest.model_fields_set:  # not the default
                return manifest
    try:
        raw = _load_document(raw_bytes)
    except UnicodeDecodeError:
        raise ManifestError("not UTF-8 text") from None
    if not isinstance(raw, dict):
        raise ManifestError("a manifest must be a mapping")
    version = raw.get("manifest_version")
    if version == 2:  # the YAML manifests of constellation 0.x: the same schema
        raw = {**raw, "manifest_version": MANIFEST_VERSION}
    elif version != MANIFEST_VERSION:
        older = isinstance(version, int) and 1 <= version < MANIFEST_VERSION
        raise ManifestError(
            f"unsupported manifest_version {version!r} (expected {MANIFEST_VERSION})"
            + ("; it was written by an older constellation: run 'constellation prepare' again"
               if older else "")
        )  # fmt: skip
    try:
        return SubTileManifest.model_validate(raw)
    except ValidationError as exc:
        errors = exc.errors()
        problems = [
            f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}"
            for e in errors[:_MAX_PROBLEMS]
        ]
        if len(errors) > _MAX_PROBLEMS:
            problems.append(f"and {len(errors) - _MAX_PROBLEMS} more")
        raise ManifestError("invalid manifest: " + "; ".join(problems)) from None


def load_manifest(path_or_url: str, storage: Any | None = None) -> SubTileManifest:
    """Read and validate a manifest (through ``storage`` if given, else a local file)."""
    if storage is not None:
        return parse_manifest(storage.read_bytes(path_or_url))
    with open(path_or_url, "rb") as fh:
        return parse_manifest(fh.read())
