"""Typed configuration: science config (hashed) kept apart from runtime config.

The configuration has two halves:

* :class:`ScienceConfig` — everything that changes the *results* (tiling,
  HEALPix orders, the SHINE sections). Its stable :func:`config_hash` is
  written next to every output so results can be traced to their settings.
* :class:`RuntimeConfig` — where data lives, which catalog and Ray cluster to
  use, how much work to keep in flight. Changing it never changes a result, so
  it is not part of the hash.

Values are resolved, highest priority first, from keyword arguments, environment
variables (``CONSTELLATION_`` prefix, ``__`` between nesting levels, e.g.
``CONSTELLATION_SCIENCE__TILING__MARGIN_ARCMIN=2``), a YAML file, and the
defaults declared here. Use :func:`load_config` rather than instantiating
:class:`Settings` directly: it reads the YAML file and turns every problem into
one readable :class:`ConfigError`.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal, Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from constellation.sky.tiling import SubTileGrid

__all__ = [
    "CONFIG_ENV_VAR",
    "ENV_NESTED_DELIMITER",
    "ENV_PREFIX",
    "CatalogConfig",
    "ConfigError",
    "ExposurePolicy",
    "HealpixConfig",
    "RayConfig",
    "RuntimeConfig",
    "ScienceConfig",
    "Settings",
    "ShineSections",
    "StorageConfig",
    "TilingConfig",
    "config_hash",
    "dump_config",
    "load_config",
    "preparation_hash",
]

ENV_PREFIX = "CONSTELLATION_"
"""Prefix of every environment variable that overrides a configuration value."""

ENV_NESTED_DELIMITER = "__"
"""Separator between nesting levels in environment variable names."""

CONFIG_ENV_VAR = "CONSTELLATION_CONFIG"
"""Environment variable naming the YAML file to load when no path is given."""

MAX_HEALPIX_ORDER = 29
"""Deepest HEALPix order representable in a 64-bit nested index (as in HATS)."""

_HASH_LENGTH = 16

# The YAML file the next Settings() should read; set only by load_config().
_yaml_file: ContextVar[Path | None] = ContextVar("constellation_yaml_file", default=None)


class ConfigError(ValueError):
    """The configuration could not be loaded; the message says where and why."""


class _Section(BaseModel):
    """Base of every configuration section: unknown keys rejected, values immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------- science


class TilingConfig(_Section):
    """How each Euclid tile is cut into sub-tiles and how wide their margins are."""

    n_rows: int = Field(default=4, ge=1, le=64, description="Number of sub-tile rows per tile.")
    n_cols: int = Field(default=4, ge=1, le=64, description="Number of sub-tile columns per tile.")
    margin_arcmin: float = Field(
        default=1.0,
        ge=0.0,
        allow_inf_nan=False,
        description=(
            "Width of the margin added on every side of a sub-tile core to form its extended "
            "region, in arcminutes."
        ),
    )
    core_size_arcmin: float = Field(
        default=30.0,
        gt=0.0,
        allow_inf_nan=False,
        description="Side length of the core of a generated tile, in arcminutes.",
    )
    extended_size_arcmin: float = Field(
        default=32.0,
        gt=0.0,
        allow_inf_nan=False,
        description=(
            "Side length of the extended area of a generated tile, in arcminutes; "
            "at least core_size_arcmin."
        ),
    )

    @model_validator(mode="after")
    def _extended_covers_core(self) -> Self:
        if self.extended_size_arcmin < self.core_size_arcmin:
            raise ValueError(
                f"extended_size_arcmin ({self.extended_size_arcmin}) must be >= "
                f"core_size_arcmin ({self.core_size_arcmin})"
            )
        return self

    def grid(self) -> SubTileGrid:
        """The sub-tile grid these settings describe."""
        return SubTileGrid(self.n_rows, self.n_cols, self.margin_arcmin)


class HealpixConfig(_Section):
    """HEALPix orders (nested scheme) used to index sources and partition tables."""

    source_order: int = Field(
        default=29,
        ge=0,
        le=MAX_HEALPIX_ORDER,
        description="Order of the per-source HEALPix index (29 as in HATS: ~0.4 mas pixels).",
    )
    partition_order: int = Field(
        default=7,
        ge=0,
        le=MAX_HEALPIX_ORDER,
        description=(
            "Coarse order used to partition catalogs and tables spatially "
            "(order 7: ~27 arcmin pixels); at most source_order."
        ),
    )
    candidate_order: int = Field(
        default=9,
        ge=0,
        le=MAX_HEALPIX_ORDER,
        description=(
            "Order used to find candidate neighbours and overlapping quadrants "
            "(order 9: ~6.9 arcmin pixels); at most source_order."
        ),
    )

    @model_validator(mode="after")
    def _orders_nest(self) -> Self:
        for name in ("partition_order", "candidate_order"):
            order = getattr(self, name)
            if order > self.source_order:
                raise ValueError(f"{name} ({order}) must be <= source_order ({self.source_order})")
        return self


def _default_inference() -> dict[str, Any]:
    return {
        "method": "map",
        "map_config": {"enabled": True, "num_steps": 1000, "learning_rate": 0.01},
        "rng_seed": 0,
    }


def _default_sources() -> dict[str, Any]:
    return {"min_snr": 10.0}


class ShineSections(_Section):
    """Sections passed verbatim to SHINE's ``EuclidInferenceConfig``.

    Only the section names are checked here; their contents belong to SHINE and
    are validated by it.
    """

    inference: dict[str, Any] = Field(
        default_factory=_default_inference,
        description="SHINE 'inference' section: method (map, ...), its settings, RNG seed.",
    )
    gal: dict[str, Any] = Field(
        default_factory=dict,
        description="SHINE 'gal' section: galaxy model and priors (SHINE defaults when empty).",
    )
    sources: dict[str, Any] = Field(
        default_factory=_default_sources,
        description="SHINE 'sources' section: source selection, e.g. min_snr.",
    )


class ExposurePolicy(_Section):
    """Which quadrant exposures a sub-tile manifest lists (see ``docs/prepare.md``)."""

    include_short: bool = Field(
        default=False,
        description=(
            "Keep the short exposures (expnum 2 or exptime < short_exptime_s); by default "
            "only the nominal ~560 s exposures are used."
        ),
    )
    short_exptime_s: float = Field(
        default=200.0,
        gt=0.0,
        allow_inf_nan=False,
        description="Exposures shorter than this many seconds count as short.",
    )
    drop_invisible: bool = Field(
        default=True,
        description=(
            "Drop a quadrant exposure from a sub-tile when none of the sub-tile's extended-area "
            "sources lies inside the quadrant footprint shrunk by visibility_margin_arcsec."
        ),
    )
    visibility_margin_arcsec: float = Field(
        default=3.2,
        ge=0.0,
        allow_inf_nan=False,
        description=(
            "Inward margin of the visibility test, in arcsec: half of SHINE's smallest stamp "
            "tier (64 px / 2 x 0.1 arcsec), measured in the tile plane."
        ),
    )


class MockBackendConfig(_Section):
    """Settings of the ``mock`` inference backend (a stand-in for SHINE, no GPU needed)."""

    mode: Literal["truth", "random"] = Field(
        default="truth",
        description=(
            "'truth': the simulated field's injected shear at the sub-tile centre plus Gaussian "
            "noise of sigma = shape_noise / sqrt(n_core), per-source truth parameters; "
            "'random': plausible random values."
        ),
    )
    shape_noise: float = Field(
        default=0.26,
        ge=0.0,
        allow_inf_nan=False,
        description="Per-galaxy shape noise; the shear error is shape_noise / sqrt(n_core).",
    )
    truth_uri: str | None = Field(
        default=None,
        description=(
            "Truth folder of a simulated field (field.json, sources.parquet); "
            "null = {runtime.storage.data_uri}/truth."
        ),
    )
    sleep_s: float = Field(
        default=0.0,
        ge=0.0,
        allow_inf_nan=False,
        description="Simulated run time per sub-tile, s (exercises scheduling).",
    )
    fail_rate: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="Fraction of sub-tiles that fail deterministically (exercises failure paths).",
    )


class ShineBackendConfig(_Section):
    """How the shine backend builds and fits SHINE's model (docs/shine.md)."""

    renderer: Literal["sparse", "dense"] = Field(
        default="sparse",
        description=(
            "'sparse': each exposure renders only the sources it sees, on its own crop; "
            "'dense': SHINE's whole-scene model (every source in every exposure, one image "
            "shape; the reference, many times slower)."
        ),
    )
    optimizer: Literal["lbfgs", "adam"] = Field(
        default="lbfgs",
        description=(
            "MAP optimiser of the sparse model: 'lbfgs' (limited-memory BFGS with a line "
            "search; stops at the loss's precision) or 'adam' (SHINE's fixed-step Adam, "
            "inference.map_config.learning_rate)."
        ),
    )
    tolerance: float = Field(
        default=1e-4,
        gt=0.0,
        allow_inf_nan=False,
        description=(
            "MAP stops (converged) once g1 and g2 moved by less than this over the last "
            "'window' iterations; inference.map_config.num_steps is the iteration budget."
        ),
    )
    window: int = Field(
        default=10,
        ge=1,
        description="Iterations over which the shear must settle (Adam creeps: use ~100).",
    )
    check_every: int = Field(
        default=5, ge=1, description="Iterations between two convergence checks."
    )
    psf_without_pixel: bool = Field(
        default=False,
        description=(
            "Divide the pixel's response out of each PSF stamp before SHINE draws it: VIS "
            "stamps are pixel-integrated (effective) PSFs and SHINE convolves with the pixel "
            "again (docs/shine.md, 'Double pixel convolution')."
        ),
    )
    canvas_side: int = Field(
        default=1024,
        ge=0,
        description=(
            "Stamp windows are packed onto N x N canvases (N >= 64: a few compiled shapes "
            "per survey); 0: each window on its own bucketed image (a little less GPU "
            "work, thousands of shapes). docs/shine.md compares them."
        ),
    )

    @field_validator("canvas_side")
    @classmethod
    def _canvas_side(cls, v: int) -> int:
        if 0 < v < 64:
            raise ValueError("canvas_side must be 0 (a canvas per window) or at least 64 px")
        return v


class BackendConfig(_Section):
    """Which inference backend fits the sub-tiles."""

    name: Literal["shine", "mock"] = Field(
        default="shine",
        description="'shine': SHINE in-process (needs shine.euclid); 'mock': the mock backend.",
    )
    mock: MockBackendConfig = Field(
        default_factory=MockBackendConfig, description="Settings of the mock backend."
    )
    shine: ShineBackendConfig = Field(
        default_factory=ShineBackendConfig, description="Settings of the shine backend."
    )


class ScienceConfig(_Section):
    """Everything that affects the results; hashed by :func:`config_hash`."""

    tiling: TilingConfig = Field(
        default_factory=TilingConfig, description="Tile and sub-tile geometry."
    )
    healpix: HealpixConfig = Field(
        default_factory=HealpixConfig, description="HEALPix orders for indexing."
    )
    shine: ShineSections = Field(
        default_factory=ShineSections, description="Pass-through sections for SHINE."
    )
    exposures: ExposurePolicy = Field(
        default_factory=ExposurePolicy,
        description="Which quadrant exposures the sub-tile manifests list.",
    )
    backend: BackendConfig = Field(
        default_factory=BackendConfig, description="Inference backend for the sub-tiles."
    )


# --------------------------------------------------------------------------- runtime

# Keys that hold credentials in pyiceberg / fsspec / SQLAlchemy property maps.
_CREDENTIAL_KEY = re.compile(
    r"secret|password|passwd|token|credential|access-key|access_key|account-key|account_key"
    r"|sas|private|api-key|api_key|apikey",
    re.IGNORECASE,
)
# ``scheme://user:password@host``: a password written into a URL.
_URL_PASSWORD = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/@:]*:[^/@]+@")

CREDENTIALS_ADVICE = (
    "credentials belong in the environment (the AWS chain; PYICEBERG_CATALOG__<NAME>__<KEY> "
    "for catalog properties), never in the configuration: see docs/security.md"
)
"""The advice given when a configuration value looks like a credential."""


def _reject_url_password(value: str | None) -> str | None:
    if value is not None and _URL_PASSWORD.match(value):
        raise ValueError(f"the URL contains a password; {CREDENTIALS_ADVICE}")
    return value


class StorageConfig(_Section):
    """Where input data is read from and where outputs are written (any fsspec URL)."""

    data_uri: str = Field(
        default="./constellation-data/input",
        description=(
            "Root of the input data, laid out like Euclid Q1 (a 'q1/' tree); a local path or "
            "any fsspec URL such as s3://nasa-irsa-euclid-q1."
        ),
    )
    work_uri: str = Field(
        default="./constellation-data/work",
        description="Root for manifests, results and done markers; local path or fsspec URL.",
    )
    anon: bool = Field(
        default=True, description="Access object stores anonymously (no credentials)."
    )
    endpoint_url: str | None = Field(
        default=None,
        description="Custom S3 endpoint URL (e.g. a local S3 server); null for the AWS default.",
    )
    max_attempts: int = Field(
        default=4,
        ge=1,
        le=100,
        description=(
            "Attempts per storage operation, the first included: transient failures (dropped "
            "connections, timeouts, S3 5xx, throttling) are retried with exponential backoff."
        ),
    )
    base_delay_s: float = Field(
        default=0.25,
        ge=0.0,
        allow_inf_nan=False,
        description="Backoff before the first storage retry, s; doubled for each further retry.",
    )
    max_delay_s: float = Field(
        default=8.0,
        ge=0.0,
        allow_inf_nan=False,
        description="Upper bound of one storage backoff, s.",
    )
    connect_timeout_s: float = Field(
        default=10.0,
        gt=0.0,
        allow_inf_nan=False,
        description="Object stores: seconds to wait for a connection before retrying.",
    )
    read_timeout_s: float = Field(
        default=60.0,
        gt=0.0,
        allow_inf_nan=False,
        description="Object stores: seconds without an answer before a request is retried.",
    )

    _no_password = field_validator("data_uri", "work_uri", "endpoint_url")(_reject_url_password)


class CatalogConfig(_Section):
    """The Apache Iceberg catalog that receives the result tables."""

    name: str = Field(default="constellation", description="Name of the pyiceberg catalog.")
    namespace: str = Field(default="shear", description="Iceberg namespace of the result tables.")
    properties: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "pyiceberg catalog properties (type, uri, warehouse, ...); empty means an "
            "embedded SQLite catalog under work_uri. No credentials: those come from the "
            "environment (PYICEBERG_CATALOG__<NAME>__<KEY>, the AWS chain)."
        ),
    )

    @field_validator("properties")
    @classmethod
    def _no_credentials(cls, value: dict[str, str]) -> dict[str, str]:
        keys = sorted(k for k in value if _CREDENTIAL_KEY.search(k))
        if keys:
            raise ValueError(f"credential-like key(s) {keys}; {CREDENTIALS_ADVICE}")
        urls = sorted(k for k, v in value.items() if _URL_PASSWORD.match(v))
        if urls:
            raise ValueError(f"a password in the URL of key(s) {urls}; {CREDENTIALS_ADVICE}")
        return value


class RayConfig(_Section):
    """The Ray cluster that runs the sub-tile tasks and the resources each task asks for."""

    address: str | None = Field(
        default=None,
        description=(
            "Ray cluster address: null starts a local Ray for the run; 'auto' joins a running "
            "cluster; 'ray://host:10001' connects a client."
        ),
    )
    num_gpus_per_task: float = Field(
        default=1.0, ge=0.0, allow_inf_nan=False, description="GPUs requested per task."
    )
    num_cpus_per_task: float = Field(
        default=1.0, gt=0.0, allow_inf_nan=False, description="CPUs requested per task."
    )
    local_num_gpus: int | None = Field(
        default=None,
        ge=0,
        description=(
            "GPUs a local Ray instance (address null) advertises; null = what Ray detects. "
            "Set it with num_gpus_per_task 0 or to fake GPUs on a laptop."
        ),
    )
    local_num_cpus: int | None = Field(
        default=None, ge=1, description="CPUs a local Ray instance advertises; null = all."
    )
    max_retries: int = Field(
        default=3,
        ge=0,
        description="Ray retries of a sub-tile task whose worker died (node lost, OOM).",
    )
    log_to_driver: bool = Field(
        default=False,
        description=(
            "Print the Ray workers' output on the driver's terminal; false keeps it in "
            "Ray's log files and the Prefect task logs."
        ),
    )
    preflight_timeout_s: float = Field(
        default=600.0,
        gt=0.0,
        allow_inf_nan=False,
        description=(
            "Seconds the preflight waits for a worker to take its probe task (a cluster "
            "may have to start a GPU node first)."
        ),
    )


class RuntimeConfig(_Section):
    """Everything that does not affect the results; excluded from the hash."""

    storage: StorageConfig = Field(
        default_factory=StorageConfig, description="Input and output locations."
    )
    catalog: CatalogConfig = Field(
        default_factory=CatalogConfig, description="Iceberg catalog for result tables."
    )
    ray: RayConfig = Field(default_factory=RayConfig, description="Ray cluster and task resources.")
    executor: Literal["ray", "local"] = Field(
        default="ray",
        description="Where sub-tile tasks run: 'ray' (local Ray or a cluster) or 'local' "
        "(threads of the flow's own process, no Ray: one tile on a workstation).",
    )
    local_workers: int = Field(
        default=2, ge=1, description="Sub-tiles the local executor runs at once (threads)."
    )
    max_in_flight: int = Field(
        default=64, ge=1, description="Maximum number of sub-tiles being processed at once."
    )
    task_retries: int = Field(
        default=1,
        ge=0,
        description=(
            "Prefect retries of a sub-tile that failed with a retryable error (I/O, network); "
            "deterministic failures are not retried."
        ),
    )
    tiles_per_subflow: int = Field(
        default=64,
        ge=1,
        description="Tiles per infer sub-flow run (bounds the task runs of one flow run).",
    )
    tiles: list[int] = Field(
        default_factory=list,
        description="Tile ids to process when none are given on the command line.",
    )
    jax_cache_dir: str | None = Field(
        default="~/.cache/constellation/jax",
        description=(
            "JAX's persistent compilation cache of the shine backend, on each worker: a "
            "model bucket compiled once is loaded from here by later processes; null: off."
        ),
    )


# --------------------------------------------------------------------------- settings


class Settings(BaseSettings):
    """The full effective configuration: science (hashed) plus runtime."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_NESTED_DELIMITER,
        extra="forbid",
        frozen=True,
    )

    science: ScienceConfig = Field(
        default_factory=ScienceConfig, description="Settings that affect the results (hashed)."
    )
    runtime: RuntimeConfig = Field(
        default_factory=RuntimeConfig, description="Settings that do not affect the results."
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Resolve values from init kwargs, then environment, then the YAML file, then defaults."""
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        yaml_file = _yaml_file.get()
        if yaml_file is not None:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=yaml_file))
        return tuple(sources)

    @property
    def config_hash(self) -> str:
        """Stable hash of the science configuration (see :func:`config_hash`)."""
        return config_hash(self.science)

    @property
    def preparation_hash(self) -> str:
        """Hash of the science configuration but the backend (:func:`preparation_hash`)."""
        return preparation_hash(self.science)

    def with_backend(self, name: str | None) -> Settings:
        """These settings with ``science.backend.name`` set to ``name`` (unchanged for
        ``None``): the configuration a ``--backend`` option actually runs with."""
        if name is None:
            return self
        backend = self.science.backend.model_copy(update={"name": name})
        science = self.science.model_copy(update={"backend": backend})
        return self.model_copy(update={"science": science})


def config_hash(science: ScienceConfig) -> str:
    """A stable short hash of the science configuration: the first 16 hex digits of
    the SHA-256 of its canonical JSON form (sorted keys, compact separators), whatever
    the key order of the YAML file and the runtime configuration. Results carry it."""
    return _digest(science.model_dump(mode="json"))


def preparation_hash(science: ScienceConfig) -> str:
    """The hash of what preparation depends on: :func:`config_hash`'s form of the science
    configuration without its ``backend`` section (which backend fits a sub-tile, and
    how, changes its results, not its manifest). Manifests carry it."""
    return _digest(science.model_dump(mode="json", exclude={"backend"}))


def _digest(doc: Any) -> str:
    canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                           allow_nan=False)  # fmt: skip
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:_HASH_LENGTH]


def dump_config(settings: Settings) -> str:
    """Return the full effective configuration as YAML text (loadable by :func:`load_config`)."""
    return yaml.safe_dump(settings.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def load_config(path: str | Path | None = None) -> Settings:
    """Load the configuration from defaults, a YAML file and the environment.

    Parameters
    ----------
    path
        YAML file to read. When ``None``, the file named by the ``CONSTELLATION_CONFIG``
        environment variable is read if it is set; otherwise only defaults and
        environment variables apply.

    Returns
    -------
    Settings
        The validated configuration.

    Raises
    ------
    ConfigError
        If the file is missing, is not valid YAML, its top level is not a mapping, or
        any value is invalid. The message is one line: it names the file, every
        offending field as a dotted path (an unknown key with the closest valid one),
        and the environment variable when a value came from one. Values are shown
        except those of unknown keys and of credential-like keys, which may be secrets.
    """
    if path is None and os.environ.get(CONFIG_ENV_VAR):
        path = os.environ[CONFIG_ENV_VAR]
    yaml_path = None if path is None else Path(path)
    if yaml_path is not None:
        _check_yaml_file(yaml_path)
    where = f"in {yaml_path}" if yaml_path is not None else "(defaults and environment)"
    try:
        with _reading_yaml(yaml_path):
            return Settings()
    except ValidationError as exc:
        env_paths = _env_var_paths(os.environ)
        problems = [_format_error(error, env_paths) for error in exc.errors()]
        raise ConfigError(f"invalid configuration {where}: " + "; ".join(problems)) from None


@contextmanager
def _reading_yaml(path: Path | None) -> Iterator[None]:
    token = _yaml_file.set(path)
    try:
        yield
    finally:
        _yaml_file.reset(token)


def _check_yaml_file(path: Path) -> None:
    """Raise ConfigError unless ``path`` is a readable YAML file whose top level is a mapping."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"configuration file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read configuration file {path}: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        problem = " ".join(str(exc).split())
        raise ConfigError(f"invalid YAML in configuration file {path}: {problem}") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(
            f"invalid configuration in {path}: the top level must be a mapping of sections "
            f"(science, runtime), not a {type(data).__name__}"
        )


def _env_var_paths(environ: Mapping[str, str]) -> dict[tuple[str, ...], str]:
    """Map the dotted path each ``CONSTELLATION_*`` variable sets to the variable's name."""
    paths: dict[tuple[str, ...], str] = {}
    prefix = ENV_PREFIX.lower()
    for name in environ:
        lowered = name.lower()
        if lowered.startswith(prefix) and name != CONFIG_ENV_VAR:
            parts = tuple(lowered[len(prefix) :].split(ENV_NESTED_DELIMITER))
            paths[parts] = name
    return paths


def _format_error(error: ErrorDetails, env_paths: Mapping[tuple[str, ...], str]) -> str:
    loc = tuple(str(part) for part in error["loc"])
    dotted = "".join(
        f"[{part}]" if isinstance(part, int) else f".{part}" for part in error["loc"]
    ).removeprefix(".")
    dotted = dotted or "(top level)"
    if error["type"] == "extra_forbidden":
        # the value of an unknown key is not shown: it may be a misplaced secret
        text = f"{dotted}: unknown key"
        suggestion = _closest_key(loc)
        if suggestion is not None:
            text += f" (did you mean {suggestion!r}?)"
    else:
        text = f"{dotted}: {error['msg'].removeprefix('Value error, ')}"
        secret = CREDENTIALS_ADVICE in text or any(_CREDENTIAL_KEY.search(p) for p in loc)
        if not secret and not isinstance(error["input"], Mapping):
            text += f" (got {_short_repr(error['input'])})"
    env_name = _env_source(tuple(part.lower() for part in loc), env_paths)
    if env_name is not None:
        text += f" (from environment variable {env_name})"
    return text


def _env_source(loc: tuple[str, ...], env_paths: Mapping[tuple[str, ...], str]) -> str | None:
    """The environment variable that set the field at ``loc``, one of its parents or (an
    unknown key) one of its children; environment variables win over the file."""
    for depth in range(len(loc), 0, -1):
        if loc[:depth] in env_paths:
            return env_paths[loc[:depth]]
    below = sorted(name for path, name in env_paths.items() if path[: len(loc)] == loc)
    return below[0] if below else None


def _closest_key(loc: tuple[str, ...]) -> str | None:
    """The valid key closest to the unknown last part of ``loc`` (None if none is close)."""
    if not loc:
        return None
    model: type[BaseModel] = Settings
    for part in loc[:-1]:
        field = model.model_fields.get(part)
        annotation = field.annotation if field is not None else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    close = difflib.get_close_matches(loc[-1].lower(), list(model.model_fields), n=1, cutoff=0.6)
    return close[0] if close else None


def _short_repr(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
