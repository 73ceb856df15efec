"""The codebase's shape: where the third-party stacks are imported, and module sizes."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted([*ROOT.glob("constellation/**/*.py"), *ROOT.glob("flows/*.py")])
MAX_LINES = 800


def _imported(path: Path) -> set[str]:
    """Top-level package names imported anywhere in ``path`` (also inside functions)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


def _importers(package: str) -> list[str]:
    return [str(p.relative_to(ROOT)) for p in SOURCES if package in _imported(p)]


def test_sources_found() -> None:
    assert len(SOURCES) > 50


def test_only_the_iceberg_package_imports_pyiceberg() -> None:
    outside = [
        p for p in _importers("pyiceberg") if not p.startswith("constellation/catalog/iceberg/")
    ]
    assert outside == []


def test_the_library_imports_neither_prefect_nor_ray() -> None:
    """Flows orchestrate; the library under them runs without either."""
    library = [
        p for p in (*_importers("prefect"), *_importers("ray")) if p.startswith("constellation/")
    ]
    assert library == []


def test_no_module_over_800_lines() -> None:
    sizes = {
        str(p.relative_to(ROOT)): len(p.read_text(encoding="utf-8").splitlines()) for p in SOURCES
    }
    assert {p: n for p, n in sizes.items() if n > MAX_LINES} == {}
