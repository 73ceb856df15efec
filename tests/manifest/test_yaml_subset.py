"""The manifest's fast YAML loader reads exactly what PyYAML reads, or defers to it."""

from __future__ import annotations

import math
from typing import Any

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from constellation.manifest.subtile import (
    _emit_mapping,
    _FastLoader,
    _UnsupportedYamlError,
    load_yaml_subset,
)

# PyYAML refuses control characters in a stream, whatever the quoting
_text = st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=12)
_scalars = (
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False) | _text
)  # fmt: skip
_keys = st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=8)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_keys, inner, max_size=4),
    max_leaves=20,
)


def _dump(doc: dict[str, Any]) -> str:
    lines: list[str] = []
    _emit_mapping(doc, 0, lines)
    return "\n".join(lines) + "\n"


@given(st.dictionaries(_keys, _values, min_size=1, max_size=5))
@settings(max_examples=300, deadline=None)
def test_fast_loader_equals_pyyaml_on_emitted_text(doc: dict[str, Any]) -> None:
    text = _dump(doc)
    assert _FastLoader(text).load() == yaml.safe_load(text)


def test_special_floats_and_exponents() -> None:
    text = _dump({"a": 1e-05, "b": math.inf, "c": -math.inf, "d": 1.5e16, "e": [0.1, -2.0]})
    fast = _FastLoader(text).load()
    assert fast == yaml.safe_load(text)
    assert fast["a"] == 1e-05
    nan = _FastLoader(_dump({"x": math.nan})).load()["x"]
    assert math.isnan(nan)


def test_other_yaml_falls_back_to_pyyaml() -> None:
    hand_edited = [
        "a: 1  # a comment\n",
        "a: plain string\n",
        "a: {b: 1}\n",
        "a: 0x10\n",          # YAML 1.1 hexadecimal
        "a: 1e5\n",           # a string in YAML 1.1
        "a:\n- 1\n- 2\n",     # sequence not indented under its key
        "a: &x 1\nb: *x\n",   # anchors
    ]  # fmt: skip
    for text in hand_edited:
        try:
            _FastLoader(text).load()
        except _UnsupportedYamlError:
            pass
        else:
            raise AssertionError(f"fast loader accepted {text!r}")
        assert load_yaml_subset(text) == yaml.safe_load(text)
