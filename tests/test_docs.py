"""The documentation stays true: generated reference pages are current, and the site's
navigation lists every page."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_reference", DOCS / "gen_reference.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reference_pages_are_current() -> None:
    """docs/reference/*.md equal what docs/gen_reference.py writes from the code now."""
    gen = _generator()
    pages = gen.render()
    assert set(pages) == {DOCS / "reference" / "cli.md", DOCS / "reference" / "config.md"}
    assert "`constellation catalog compact`" in pages[DOCS / "reference" / "cli.md"]
    assert "`runtime.storage.work_uri`" in pages[DOCS / "reference" / "config.md"]
    stale = [str(p.relative_to(ROOT)) for p in gen.stale()]
    assert not stale, f"stale: {stale}; run `uv run python docs/gen_reference.py`"


def _nav_pages(node: Any) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, list):
        return [p for item in node for p in _nav_pages(item)]
    if isinstance(node, dict):
        return [p for value in node.values() for p in _nav_pages(value)]
    return []


def test_every_page_is_in_the_site_navigation() -> None:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    nav = _nav_pages(config["nav"])
    assert len(nav) == len(set(nav)), "a page is listed twice"
    pages = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")}
    missing = sorted(pages - set(nav))
    assert not missing, f"pages not in mkdocs.yml nav: {missing}"
    assert config["theme"].get("font") is False, "no web fonts: the build runs offline"
