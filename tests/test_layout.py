"""The codebase's shape: where the third-party stacks are imported, and module sizes."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted([*ROOT.glob("constellation/**/*.py"), *ROOT.glob("flows/*.py")])
MAX_LINES = 800


def _modules(path: Path) -> set[str]:
    """Dotted names of the modules ``path`` imports anywhere (also inside functions)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def _imported(path: Path) -> set[str]:
    """Top-level package names imported anywhere in ``path``."""
    return {name.split(".")[0] for name in _modules(path)}


def _layer(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:2])


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


#: What the bottom layers may import of the package: nothing above them.
LOWER = {
    "constellation.sky": {"constellation.sky"},
    "constellation.manifest": {"constellation.manifest", "constellation.sky"},
    "constellation.io": {
        "constellation.io", "constellation.sky", "constellation.manifest", "constellation.config",
    },
}  # fmt: skip


def test_bottom_layers_import_nothing_above_them() -> None:
    upward = {}
    for path in SOURCES:
        layer = _layer(path)
        if layer not in LOWER:
            continue
        own = {m for m in _modules(path) if m.startswith("constellation.")}
        bad = {m for m in own if not any(m.startswith(ok) for ok in LOWER[layer])}
        if bad:
            upward[str(path.relative_to(ROOT))] = sorted(bad)
    assert upward == {}


def test_only_simulating_code_imports_the_simulator() -> None:
    """Readers of a simulated field's truth use :mod:`constellation.truth`."""
    allowed = (
        "constellation/simulate/",
        "constellation/commands/",
        "constellation/stages/calibrate",
        "flows/calibration",
    )
    importers = [
        str(p.relative_to(ROOT))
        for p in SOURCES
        if any(m.startswith("constellation.simulate") for m in _modules(p))
    ]
    assert [p for p in importers if not p.startswith(allowed)] == []
