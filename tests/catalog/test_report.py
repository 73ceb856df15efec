"""QA figures and the Markdown summary."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure
from typer.testing import CliRunner

from constellation.catalog.assemble import assemble
from constellation.catalog.iceberg import SUBTILES
from constellation.catalog.report import _fit, _whiskers, make_report
from constellation.cli import app
from constellation.simulate.field import ShearField
from constellation.truth import load_truth_field
from tests.catalog.conftest import Field

PNG = b"\x89PNG\r\n\x1a\n"
runner = CliRunner()


def _write_truth(field: Field) -> ShearField:
    """A simulated field's ``truth/field.json`` (the parts the report reads)."""
    shear = ShearField(amplitude=0.05, wavelength_deg=1.0, angle_deg=20.0)
    ra = float(np.mean([t.ra_deg for t in field.tiles]))
    dec = float(np.mean([t.dec_deg for t in field.tiles]))
    doc = {"spec": {"shear": shear.model_dump()}, "centre": {"ra": ra, "dec": dec}}
    truth = Path(field.settings.runtime.storage.data_uri) / "truth"
    truth.mkdir(parents=True)
    (truth / "field.json").write_text(json.dumps(doc), encoding="utf-8")
    return shear


def test_report_with_truth(field: Field) -> None:
    _write_truth(field)
    truth = load_truth_field(
        field.storage, str(Path(field.settings.runtime.storage.data_uri) / "truth")
    )

    def injected(ra: float, dec: float) -> tuple[float, float]:
        g1, g2 = truth.shear_at([ra], [dec])
        return float(g1[0]), float(g2[0])

    t = field.tiles[0].tile_id
    field.write(n_sources=5, shear=injected, noise=0.004, failed=((t, 1, 1),))
    assemble(field.settings)
    out = make_report(field.settings)
    assert out.directory.endswith("/report")
    assert out.truth_comparison is not None
    assert len(out.figures) == 4
    for path in out.figures:
        assert Path(path).read_bytes()[:8] == PNG
    assert Path(out.shear_map).name == "shear_map.png"
    md = Path(out.markdown).read_text(encoding="utf-8")
    for name in ("shear_map.png", "coverage.png", "shear_hist.png", "shear_vs_truth.png"):
        assert f"]({name})" in md
    assert "| sub-tiles (ok / failed) | 32 (31 / 1) |" in md
    # what made the shears, read from the rows
    rows = field.catalog().read(SUBTILES)
    assert out.provenance["backend"] == ",".join(sorted(set(rows.column("backend").to_pylist())))
    assert out.provenance["config hash"] == rows.column("config_hash")[0].as_py()
    for key in ("backend", "config hash", "run id", "code version", "date"):
        assert f"| {key} | {out.provenance[key]} |" in md
    assert out.numbers["sources"] == 31 * 5
    # Recovered = injected + N(0, 0.004): slope 1, offset 0, chi2/N ~ 1.
    for name in ("g1", "g2"):
        fit = out.fits[name]
        assert fit.n == 31
        assert abs(fit.m) < 5 * fit.m_err + 0.02
        assert abs(fit.c) < 5 * fit.c_err
        assert 0.3 < fit.chi2_n < 2.5
        assert f"| {name} vs injected" in md


def test_report_without_truth_via_cli(field: Field, tmp_path: Path) -> None:
    field.write(n_sources=3, noise=0.02)
    assemble(field.settings)
    out_dir = tmp_path / "qa"
    result = runner.invoke(
        app, ["--config", str(field.config_path), "report", "--out", str(out_dir)]
    )
    assert result.exit_code == 0, result.output
    made_by, first = result.output.splitlines()[:2]
    assert made_by.startswith("made by: backend ")
    assert "config hash" in made_by
    assert first == f"shear map: {out_dir / 'shear_map.png'}"
    assert sorted(p.name for p in out_dir.iterdir()) == [
        "coverage.png", "report.md", "shear_hist.png", "shear_map.png"
    ]  # fmt: skip
    assert "vs injected" not in (out_dir / "report.md").read_text(encoding="utf-8")


def test_whisker_orientation() -> None:
    """+g1 lies along u (west: decreasing RA), +g2 along u = v (north-west), -g1 north."""
    fig = Figure()
    ax = fig.add_subplot(1, 1, 1)
    dec = np.array([0.0, 0.0, 0.0, 60.0])
    q = _whiskers(ax, np.zeros(4), dec, np.array([0.1, 0.0, -0.1, 0.1]),
                  np.array([0.0, 0.1, 0.0, 0.0]), scale=1.0)  # fmt: skip
    u, v = np.asarray(q.U), np.asarray(q.V)
    np.testing.assert_allclose([u[0], v[0]], [-0.1, 0.0], atol=1e-12)  # west
    np.testing.assert_allclose([u[1], v[1]], [-0.1 / math.sqrt(2), 0.1 / math.sqrt(2)])
    np.testing.assert_allclose([u[2], v[2]], [0.0, 0.1], atol=1e-12)  # north
    np.testing.assert_allclose([u[3], v[3]], [-0.2, 0.0], atol=1e-12)  # RA stretched by 1/cos


def test_fit_recovers_slope_and_offset() -> None:
    rng = np.random.default_rng(0)
    x = rng.uniform(-0.05, 0.05, 400)
    err = np.full(400, 0.002)
    y = 1.1 * x + 0.003 + rng.normal(0, 0.002, 400)
    fit = _fit(x, y, err)
    assert fit.m == pytest.approx(0.1, abs=5 * fit.m_err)
    assert fit.c == pytest.approx(0.003, abs=5 * fit.c_err)
    unweighted = _fit(x, y, np.full(400, np.nan))
    assert math.isnan(unweighted.chi2_n)
    assert unweighted.m == pytest.approx(0.1, abs=0.02)


def test_a_report_folder_is_replaced_as_a_whole(field: Field, tmp_path: Path) -> None:
    """A folder of report files is swapped for the new one (no file of the earlier report
    is left, nothing half-written is visible); a folder that holds other files is written
    in place and keeps them."""
    _write_truth(field)
    field.write(n_sources=3, noise=0.02)
    assemble(field.settings)
    folder = tmp_path / "qa"
    first = make_report(field.settings, out=str(folder))
    assert first.truth_comparison is not None
    (folder / "shear_map.png").write_bytes(b"an earlier report's figure")
    second = make_report(field.settings, out=str(folder), truth_uri=str(tmp_path / "no-truth"))
    assert second.truth_comparison is None
    assert second.directory == str(folder)
    assert sorted(p.name for p in folder.iterdir()) == [
        "coverage.png", "report.md", "shear_hist.png", "shear_map.png"
    ]  # fmt: skip
    assert Path(second.shear_map).read_bytes()[:8] == PNG
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no leftovers
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "notes.txt").write_text("mine", encoding="utf-8")
    out = make_report(field.settings, out=str(shared))
    assert (shared / "notes.txt").read_text(encoding="utf-8") == "mine"
    assert Path(out.markdown).parent == shared
