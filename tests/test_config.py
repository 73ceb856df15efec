"""Tests of constellation.config: loading, precedence, errors, hashing, dumping."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml

from constellation.config import (
    ConfigError,
    HealpixConfig,
    RuntimeConfig,
    ScienceConfig,
    Settings,
    TilingConfig,
    config_hash,
    dump_config,
    load_config,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


def write_yaml(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


# ----------------------------------------------------------------- defaults and files


def test_default_yaml_equals_builtin_defaults() -> None:
    assert load_config(REPO_ROOT / "configs" / "default.yaml") == Settings()


def test_default_yaml_lists_every_key() -> None:
    data = yaml.safe_load((REPO_ROOT / "configs" / "default.yaml").read_text(encoding="utf-8"))
    assert data == Settings().model_dump(mode="json")


def test_q1_example_loads_and_points_at_the_public_bucket() -> None:
    settings = load_config(REPO_ROOT / "configs" / "examples" / "q1.yaml")
    assert settings.runtime.storage.data_uri == "s3://nasa-irsa-euclid-q1"
    assert settings.runtime.storage.anon is True


def test_no_file_gives_defaults() -> None:
    assert load_config() == Settings()


def test_yaml_values_override_defaults_and_keep_the_rest(tmp_path: Path) -> None:
    path = write_yaml(
        tmp_path,
        """
        science:
          tiling:
            n_rows: 3
            margin_arcmin: 2.5
        runtime:
          tiles: [7, 8]
        """,
    )
    settings = load_config(path)
    assert settings.science.tiling.n_rows == 3
    assert settings.science.tiling.margin_arcmin == 2.5
    assert settings.science.tiling.n_cols == TilingConfig().n_cols
    assert settings.runtime.tiles == [7, 8]


def test_empty_yaml_file_gives_defaults(tmp_path: Path) -> None:
    assert load_config(write_yaml(tmp_path, "")) == Settings()


def test_config_env_var_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_yaml(tmp_path, "runtime:\n  max_in_flight: 5\n")
    monkeypatch.setenv("CONSTELLATION_CONFIG", str(path))
    assert load_config().runtime.max_in_flight == 5


def test_explicit_path_beats_config_env_var(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "CONSTELLATION_CONFIG", str(write_yaml(tmp_path, "runtime: 3\n", "bad.yaml"))
    )
    good = write_yaml(tmp_path, "runtime:\n  max_in_flight: 6\n", "good.yaml")
    assert load_config(good).runtime.max_in_flight == 6


def test_shine_sections_pass_unknown_inner_keys_through(tmp_path: Path) -> None:
    path = write_yaml(
        tmp_path,
        """
        science:
          shine:
            gal:
              profile: sersic
              anything: {nested: [1, 2]}
        """,
    )
    assert load_config(path).science.shine.gal == {
        "profile": "sersic",
        "anything": {"nested": [1, 2]},
    }


# ----------------------------------------------------------------- environment


def test_env_overrides_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_yaml(tmp_path, "science:\n  tiling:\n    margin_arcmin: 3.0\n    n_rows: 2\n")
    monkeypatch.setenv("CONSTELLATION_SCIENCE__TILING__MARGIN_ARCMIN", "2")
    settings = load_config(path)
    assert settings.science.tiling.margin_arcmin == 2.0
    assert settings.science.tiling.n_rows == 2  # the rest of the file still applies


def test_env_overrides_defaults_without_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONSTELLATION_RUNTIME__RAY__ADDRESS", "auto")
    assert load_config().runtime.ray.address == "auto"


# ----------------------------------------------------------------- errors


def test_error_names_file_field_problem_and_input(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "science:\n  tiling:\n    margin_arcmin: -1\n", "bad.yaml")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message == (
        f"invalid configuration in {path}: "
        "science.tiling.margin_arcmin: Input should be greater than or equal to 0 (got -1)"
    )
    assert "environment variable" not in message


def test_error_names_the_environment_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_yaml(tmp_path, "science:\n  tiling:\n    n_rows: 2\n")
    monkeypatch.setenv("CONSTELLATION_SCIENCE__TILING__MARGIN_ARCMIN", "-1")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message
    assert "science.tiling.margin_arcmin" in message
    assert "from environment variable CONSTELLATION_SCIENCE__TILING__MARGIN_ARCMIN" in message


def test_every_offending_field_is_reported(tmp_path: Path) -> None:
    path = write_yaml(
        tmp_path,
        """
        science:
          tiling: {n_rows: 0}
          healpix: {partition_order: 30}
        runtime:
          max_in_flight: 0
        """,
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    for field in (
        "science.tiling.n_rows",
        "science.healpix.partition_order",
        "runtime.max_in_flight",
    ):
        assert f"{field}: " in message
    assert "\n" not in message  # one line, problems separated by "; "
    assert message.count("; ") == 2


@pytest.mark.parametrize(
    ("text", "dotted"),
    [
        ("sciense: {}\n", "sciense"),
        ("science:\n  tiling:\n    margin: 1\n", "science.tiling.margin"),
        ("science:\n  shine:\n    extra_section: {}\n", "science.shine.extra_section"),
        ("runtime:\n  storage:\n    bucket: x\n", "runtime.storage.bucket"),
    ],
)
def test_unknown_keys_are_rejected(tmp_path: Path, text: str, dotted: str) -> None:
    with pytest.raises(ConfigError, match=rf": {dotted}: unknown key"):
        load_config(write_yaml(tmp_path, text))


def test_unknown_env_key_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONSTELLATION_SCIENCE__TILING__MARGINS", "1")
    with pytest.raises(ConfigError) as info:
        load_config()
    assert "science.tiling.margins: unknown key" in str(info.value)
    assert "CONSTELLATION_SCIENCE__TILING__MARGINS" in str(info.value)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="not found") as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_unparsable_yaml_is_a_config_error(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "science: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML") as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_non_mapping_top_level_is_a_config_error(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "- science\n- runtime\n")
    with pytest.raises(ConfigError, match="top level must be a mapping") as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"margin_arcmin": -0.1},
        {"margin_arcmin": float("inf")},
        {"margin_arcmin": float("nan")},
        {"n_rows": 0},
        {"n_cols": 0},
        {"core_size_arcmin": 0.0},
        {"core_size_arcmin": 30.0, "extended_size_arcmin": 29.0},
    ],
)
def test_tiling_rejects_invalid_values(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=r"Input should|extended_size_arcmin"):
        TilingConfig.model_validate(kwargs)


def test_tiling_allows_any_nonnegative_margin() -> None:
    assert TilingConfig(margin_arcmin=100.0, n_rows=8).margin_arcmin == 100.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"source_order": 30},
        {"partition_order": -1},
        {"source_order": 8, "partition_order": 9, "candidate_order": 8},
        {"source_order": 8, "partition_order": 7, "candidate_order": 9},
    ],
)
def test_healpix_rejects_invalid_orders(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="order"):
        HealpixConfig.model_validate(kwargs)


def test_model_level_error_is_reported_at_its_section(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "science:\n  healpix:\n    source_order: 5\n")
    with pytest.raises(ConfigError, match=r": science\.healpix: partition_order \(7\) must be <="):
        load_config(path)


def test_sections_are_frozen() -> None:
    tiling = TilingConfig()
    with pytest.raises(ValueError, match="frozen"):
        tiling.n_rows = 2  # type: ignore[misc]


# ----------------------------------------------------------------- hash and dump


def test_hash_is_sixteen_hex_digits() -> None:
    digest = config_hash(ScienceConfig())
    assert len(digest) == 16
    int(digest, 16)


def test_hash_is_independent_of_yaml_key_order(tmp_path: Path) -> None:
    one = write_yaml(
        tmp_path,
        """
        science:
          tiling: {n_rows: 3, margin_arcmin: 2.0}
          shine:
            inference: {method: map, rng_seed: 4, map_config: {num_steps: 5, enabled: true}}
        """,
        "one.yaml",
    )
    two = write_yaml(
        tmp_path,
        """
        science:
          shine:
            inference: {map_config: {enabled: true, num_steps: 5}, rng_seed: 4, method: map}
          tiling: {margin_arcmin: 2.0, n_rows: 3}
        """,
        "two.yaml",
    )
    assert load_config(one).config_hash == load_config(two).config_hash


def test_hash_ignores_runtime_config() -> None:
    runtime = RuntimeConfig.model_validate(
        {"max_in_flight": 3, "storage": {"data_uri": "s3://elsewhere"}, "tiles": [1]}
    )
    assert Settings(runtime=runtime).config_hash == Settings().config_hash


@pytest.mark.parametrize(
    "science",
    [
        {"tiling": {"margin_arcmin": 1.5}},
        {"tiling": {"n_cols": 5}},
        {"healpix": {"candidate_order": 10}},
        {
            "shine": {
                "inference": {
                    "method": "map",
                    "map_config": {"enabled": True, "num_steps": 1000, "learning_rate": 0.01},
                    "rng_seed": 1,
                }
            }
        },
        {"shine": {"gal": {"profile": "sersic"}}},
    ],
)
def test_hash_changes_when_a_science_value_changes(science: dict[str, object]) -> None:
    changed = ScienceConfig.model_validate(science)
    assert config_hash(changed) != config_hash(ScienceConfig())


def test_settings_hash_delegates_to_config_hash() -> None:
    settings = Settings(science=ScienceConfig(tiling=TilingConfig(n_rows=2)))
    assert settings.config_hash == config_hash(settings.science)


def test_dump_round_trips(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONSTELLATION_SCIENCE__TILING__MARGIN_ARCMIN", "2.5")
    monkeypatch.setenv("CONSTELLATION_RUNTIME__TILES", "[3, 4]")
    settings = load_config()
    path = tmp_path / "dumped.yaml"
    path.write_text(dump_config(settings), encoding="utf-8")
    monkeypatch.delenv("CONSTELLATION_SCIENCE__TILING__MARGIN_ARCMIN")
    monkeypatch.delenv("CONSTELLATION_RUNTIME__TILES")
    assert load_config(path) == settings
