"""The sub-tile manifest: everything SHINE needs to fit one sub-tile (a pure contract).

One YAML document per sub-tile, readable on its own (see ``docs/manifest.md``):

* ``identity`` — tile id, row, column, preparation hash, code version;
* ``geometry`` — the tile centre, the core and extended boxes in the tile's
  tangent plane (arcmin, ``x`` west, ``y`` north) and their sky polygons;
* ``exposures`` — one entry per quadrant exposure overlapping the extended box,
  with the DET/BKG/PSF files and the byte ranges of the extensions;
* ``sources`` — the sub-tile source table (relative to the manifest) and counts;
* ``shine`` — the SHINE sections ``inference``, ``gal`` and ``sources``, verbatim.

Serialisation is deterministic: keys sorted, floats written with ``repr`` (exact
round trip), integers (object ids, byte offsets) as integers, strings double-quoted.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

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

#: Bumped on any incompatible change of the manifest schema. Version 2: the identity
#: carries the ``preparation_hash`` (the science configuration without its backend
#: section) instead of version 1's ``config_hash`` (all of it), so that switching
#: backends keeps the manifests, and with them the results of the other backend.
MANIFEST_VERSION: Literal[2] = 2

# Safe loading only: tags such as !!python/object are errors, never constructed.
_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

_MAX_PROBLEMS = 5


class ManifestError(ValueError):
    """A manifest cannot be used; the one-line message says why (callers add its URL)."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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

    model_config = ConfigDict(extra="forbid", frozen=True)

    inference: dict[str, Any] = Field(default_factory=dict)
    gal: dict[str, Any] = Field(default_factory=dict)
    sources: dict[str, Any] = Field(default_factory=dict)


class SubTileManifest(_Model):
    """The versioned sub-tile manifest (constellation -> SHINE)."""

    manifest_version: Literal[2] = MANIFEST_VERSION
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
    """The manifest as deterministic YAML bytes (sorted keys, exact floats, UTF-8).

    A small block-style emitter (below) rather than PyYAML's representer, which
    spends ~10 ms per manifest walking a few thousand nodes; the output is plain
    YAML that any loader reads back to the same values (tested against PyYAML).
    """
    lines: list[str] = []
    _emit_mapping(manifest.model_dump(mode="python"), 0, lines)
    return ("\n".join(lines) + "\n").encode("utf-8")


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return ".nan"
        if math.isinf(value):
            return ".inf" if value > 0 else "-.inf"
        text = repr(value)
        # YAML 1.1 needs a dot in the mantissa ("1e-05" would load as a string)
        if "e" in text and "." not in text:
            text = text.replace("e", ".0e", 1)
        return text
    if isinstance(value, str):
        # a JSON string is a valid YAML double-quoted scalar with the same value
        return json.dumps(value, ensure_ascii=False)
    raise TypeError(f"cannot write {type(value).__name__} into a manifest")


_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_RESERVED = frozenset(
    ["y", "n", "yes", "no", "on", "off", "true", "false", "null"]
)  # words YAML 1.1 reads as booleans or null


def _key(key: Any) -> str:
    if not isinstance(key, str):
        raise TypeError(f"manifest keys must be strings, got {key!r}")
    if _PLAIN_KEY.fullmatch(key) and key.lower() not in _RESERVED:
        return key
    return json.dumps(key, ensure_ascii=False)


def _emit_mapping(data: dict[str, Any], indent: int, lines: list[str]) -> None:
    pad = " " * indent
    for key in sorted(data):
        value = data[key]
        k = _key(key)
        if isinstance(value, dict) and value:
            lines.append(f"{pad}{k}:")
            _emit_mapping(value, indent + 2, lines)
        elif isinstance(value, list | tuple) and value:
            lines.append(f"{pad}{k}:")
            _emit_sequence(list(value), indent + 2, lines)
        elif isinstance(value, dict):
            lines.append(f"{pad}{k}: {{}}")
        elif isinstance(value, list | tuple):
            lines.append(f"{pad}{k}: []")
        else:
            lines.append(f"{pad}{k}: {_scalar(value)}")


def _emit_sequence(items: list[Any], indent: int, lines: list[str]) -> None:
    pad = " " * indent
    for item in items:
        if isinstance(item, dict) and item:
            start = len(lines)
            _emit_mapping(item, indent + 2, lines)
            lines[start] = f"{pad}- " + lines[start][indent + 2 :]
        elif isinstance(item, list | tuple) and item:
            lines.append(f"{pad}-")
            _emit_sequence(list(item), indent + 2, lines)
        elif isinstance(item, dict):
            lines.append(f"{pad}- {{}}")
        elif isinstance(item, list | tuple):
            lines.append(f"{pad}- []")
        else:
            lines.append(f"{pad}- {_scalar(item)}")


class _UnsupportedYamlError(ValueError):
    """Text outside the YAML subset :func:`dump_manifest` writes."""


_INT = re.compile(r"[-+]?(?:0|[1-9][0-9]*)")
_FLOAT = re.compile(r"[-+]?[0-9]+\.[0-9]*(?:[eE][-+][0-9]+)?")
_PLAIN_ENTRY = re.compile(r"([A-Za-z_][A-Za-z0-9_]*):(?: (.*))?")
_SPECIAL = {"null": None, "~": None, "true": True, "false": False, ".nan": math.nan,
            ".inf": math.inf, "-.inf": -math.inf}  # fmt: skip
_JSON = json.JSONDecoder()


def _fast_scalar(text: str) -> Any:
    if text in _SPECIAL:
        return _SPECIAL[text]
    if text == "{}":
        return {}
    if text == "[]":
        return []
    if text.startswith('"'):
        value, end = _JSON.raw_decode(text)
        if end != len(text):
            raise _UnsupportedYamlError(text)
        return value
    if _INT.fullmatch(text):
        return int(text)
    if _FLOAT.fullmatch(text):
        return float(text)
    raise _UnsupportedYamlError(text)


def _split_entry(content: str) -> tuple[str, str | None] | None:
    """``key: rest`` (rest None for ``key:``), or None when ``content`` is no entry."""
    if content.startswith('"'):
        key, end = _JSON.raw_decode(content)
        tail = content[end:]
        if not tail.startswith(":"):
            return None
        if tail == ":":
            return key, None
        if not tail.startswith(": "):
            raise _UnsupportedYamlError(content)
        return key, tail[2:]
    m = _PLAIN_ENTRY.fullmatch(content)
    if m is None:
        return None
    return m.group(1), m.group(2)


class _FastLoader:
    """A loader for exactly the block-style subset :func:`dump_manifest` emits.

    PyYAML spends ~1.5 us per node constructing Python objects (~60 ms for a manifest
    of 40 exposures); this reads the same text in a few ms. Anything outside the
    subset — comments, flow collections, anchors, plain strings, YAML 1.1 number
    forms — raises :class:`_UnsupportedYamlError` and the caller falls back to PyYAML, so
    hand-edited manifests still load with full YAML semantics.
    """

    def __init__(self, text: str) -> None:
        self.lines: list[tuple[int, str]] = []
        for line in text.split("\n"):
            content = line.lstrip(" ")
            if not content:
                continue
            if content.startswith("#") or "\t" in line[: len(line) - len(content)]:
                raise _UnsupportedYamlError("comments or tabs")
            self.lines.append((len(line) - len(content), content.rstrip(" ")))

    def load(self) -> Any:
        if not self.lines:
            return None
        value, end = self._block(0, self.lines[0][0])
        if end != len(self.lines):
            raise _UnsupportedYamlError("trailing content")
        return value

    def _block(self, i: int, indent: int) -> tuple[Any, int]:
        content = self.lines[i][1]
        if content == "-" or content.startswith("- "):
            return self._sequence(i, indent)
        return self._mapping(i, indent)

    def _nested(self, i: int, indent: int) -> tuple[Any, int]:
        if i < len(self.lines) and self.lines[i][0] > indent:
            return self._block(i, self.lines[i][0])
        raise _UnsupportedYamlError("empty value")

    def _mapping(self, i: int, indent: int) -> tuple[dict[str, Any], int]:
        out: dict[str, Any] = {}
        while i < len(self.lines):
            ind, content = self.lines[i]
            if ind < indent:
                break
            if ind > indent:
                raise _UnsupportedYamlError("indentation")
            entry = _split_entry(content)
            if entry is None:
                raise _UnsupportedYamlError(content)
            key, rest = entry
            if key in out:
                raise _UnsupportedYamlError(f"duplicate key {key!r}")
            if rest is None:
                out[key], i = self._nested(i + 1, indent)
            else:
                out[key] = _fast_scalar(rest)
                i += 1
        return out, i

    def _sequence(self, i: int, indent: int) -> tuple[list[Any], int]:
        out: list[Any] = []
        while i < len(self.lines):
            ind, content = self.lines[i]
            if ind < indent:
                break
            if ind > indent or not (content == "-" or content.startswith("- ")):
                raise _UnsupportedYamlError("sequence layout")
            if content == "-":
                value, i = self._nested(i + 1, indent)
                out.append(value)
                continue
            rest = content[2:].lstrip(" ")
            inner = indent + len(content) - len(rest)
            if _split_entry(rest) is not None:
                self.lines[i] = (inner, rest)  # the item's first entry
                value, i = self._mapping(i, inner)
            else:
                value = _fast_scalar(rest)
                i += 1
            out.append(value)
        return out, i


def load_yaml_subset(data: bytes | str) -> Any:
    """Load manifest YAML: the fast subset loader, PyYAML for anything else."""
    text = data.decode("utf-8") if isinstance(data, bytes) else data
    try:
        return _FastLoader(text).load()
    except (_UnsupportedYamlError, ValueError):
        return yaml.load(text, Loader=_Loader)


def parse_manifest(data: bytes | str) -> SubTileManifest:
    """Validate YAML manifest text.

    Raises
    ------
    ManifestError
        One line: not UTF-8, not (safe) YAML, not a mapping, another
        ``manifest_version``, or the fields that do not match the schema.
    """
    try:
        raw = load_yaml_subset(data)
    except UnicodeDecodeError:
        raise ManifestError("not UTF-8 text") from None
    except yaml.YAMLError as exc:
        raise ManifestError(f"not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(raw, dict):
        raise ManifestError("a manifest must be a YAML mapping")
    version = raw.get("manifest_version")
    if version != MANIFEST_VERSION:
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
