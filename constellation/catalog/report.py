"""Figures and a Markdown summary of the shear catalog (matplotlib, Agg, no display).

Written to ``{out}/`` (default ``{work_uri}/report``), through :class:`Storage`, so any
URL works:

``shear_map.png``
    Whiskers at the sub-tile centres, length proportional to ``|g|``, position angle
    ``½ atan2(g2, g1)`` in the ``(u = west, v = north)`` frame of the catalog; RA
    increases to the left (as on the sky). For a simulated field the injected shear
    is drawn underneath in grey.
``coverage.png``
    Sub-tile centres coloured by the number of core sources; failed sub-tiles as
    red crosses.
``shear_hist.png``
    Distributions of g1 and g2 (and of their errors when there are any).
``shear_vs_truth.png``
    Only for a simulated field (a ``truth/field.json`` is found): recovered against
    injected g1 and g2, with the fitted ``g = (1 + m) g_true + c`` and ``χ²/N``.
``report.md``
    The figures and the key numbers.
"""

from __future__ import annotations

import io
import logging
import math
import shutil
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from matplotlib.figure import Figure
from numpy.typing import NDArray

from constellation.catalog.iceberg import SOURCES, SUBTILES, ShearCatalog, open_catalog
from constellation.config import Settings
from constellation.io.storage import Storage, local_path, storage_from_config
from constellation.manifest import layout
from constellation.truth import TruthField, load_truth_field

__all__ = [
    "LinearFit",
    "NothingToReportError",
    "ReportOutput",
    "default_truth_uri",
    "make_report",
    "provenance",
    "render_report",
]

log = logging.getLogger(__name__)

SHEAR_MAP = "shear_map.png"
COVERAGE = "coverage.png"
HISTOGRAMS = "shear_hist.png"
TRUTH = "shear_vs_truth.png"
MARKDOWN = "report.md"

_REFERENCE_SHEARS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5)


@dataclass(frozen=True)
class LinearFit:
    """``recovered = (1 + m) * injected + c`` fitted by (weighted) least squares.

    ``chi2_n`` is ``χ²/N`` of ``recovered - injected`` (the residual from the truth,
    not from the fit) with the reported errors: about 1 when the errors are right and
    there is no bias; NaN when there are no errors. ``rms`` is the rms of that residual.
    """

    m: float
    m_err: float
    c: float
    c_err: float
    chi2_n: float
    rms: float
    n: int


@dataclass
class ReportOutput:
    """Where the report went and its key numbers."""

    directory: str
    shear_map: str
    coverage: str
    histograms: str
    markdown: str
    truth_comparison: str | None = None
    numbers: dict[str, float] = field(default_factory=dict)
    fits: dict[str, LinearFit] = field(default_factory=dict)
    provenance: dict[str, str] = field(default_factory=dict)

    @property
    def summary(self) -> str:
        """The Markdown summary's path (same as :attr:`markdown`)."""
        return self.markdown

    @property
    def figures(self) -> list[str]:
        """Every PNG written."""
        out = [self.shear_map, self.coverage, self.histograms]
        return out + ([self.truth_comparison] if self.truth_comparison else [])


# --------------------------------------------------------------------------- helpers


def _floats(table: pa.Table, name: str) -> NDArray[np.float64]:
    return np.asarray(table.column(name).to_numpy(zero_copy_only=False), dtype=np.float64)


def _unwrap_ra(ra: NDArray[np.float64]) -> NDArray[np.float64]:
    """RA continuous across 0/360 around the field (the circular mean)."""
    if ra.size == 0:
        return ra
    centre = math.degrees(math.atan2(np.sin(np.radians(ra)).mean(), np.cos(np.radians(ra)).mean()))
    return centre + (ra - centre + 180.0) % 360.0 - 180.0


def provenance(subtiles: pa.Table, when: datetime | None = None) -> dict[str, str]:
    """What made the rows of ``subtiles``: backend(s), science configuration hash(es),
    run id(s), constellation version(s), and the date of the report (UTC)."""

    def values(column: str, most: int = 3) -> str:
        if column not in subtiles.column_names:
            return "-"
        found = sorted({str(v) for v in subtiles.column(column).to_pylist() if v is not None})
        if len(found) > most:
            return ", ".join(found[:most]) + f" (+{len(found) - most} more)"
        return ", ".join(found) or "-"

    return {
        "backend": values("backend"),
        "config hash": values("config_hash"),
        "run id": values("run_id"),
        "code version": values("code_version"),
        "date": f"{(when or datetime.now(UTC)):%Y-%m-%d %H:%M} UTC",
    }


def _stamp(fig: Figure, prov: dict[str, str]) -> None:
    """Write the provenance under a figure (so that a figure alone says what made it)."""
    text = " | ".join(f"{k}: {v}" for k, v in prov.items())
    fig.text(0.01, -0.01, text, fontsize=6, color="0.35", ha="left", va="top", wrap=True)


def _png(fig: Figure, prov: dict[str, str]) -> bytes:
    _stamp(fig, prov)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    return buf.getvalue()


def _spacing_deg(ra: NDArray[np.float64], dec: NDArray[np.float64]) -> float:
    """Typical distance between neighbouring points (deg): sqrt(area per point)."""
    if ra.size < 2:
        return 0.125
    cosd = math.cos(math.radians(float(np.median(dec))))
    width = max(float(np.ptp(ra)) * cosd, 1e-3)
    height = max(float(np.ptp(dec)), 1e-3)
    if width < 1e-2 or height < 1e-2:  # a single row or column of points
        return max(width, height) / max(ra.size - 1, 1)
    return math.sqrt(width * height / ra.size)


def _sky_axes(fig: Figure, dec: NDArray[np.float64], title: str) -> Any:
    ax = fig.add_subplot(1, 1, 1)
    dec0 = float(np.median(dec)) if dec.size else 0.0
    ax.set_aspect(1.0 / max(math.cos(math.radians(dec0)), 1e-3))
    ax.set_xlabel("RA (deg)")
    ax.set_ylabel("Dec (deg)")
    ax.set_title(title, loc="left")
    return ax


def _whiskers(
    ax: Any,
    ra: NDArray[np.float64],
    dec: NDArray[np.float64],
    g1: NDArray[np.float64],
    g2: NDArray[np.float64],
    scale: float,
    **style: Any,
) -> Any:
    """Headless whiskers; ``scale`` = degrees on the sky per unit |g|."""
    gmod = np.hypot(g1, g2)
    phi = 0.5 * np.arctan2(g2, g1)  # from u (west) towards v (north)
    length = gmod * scale
    cosd = np.cos(np.radians(dec))
    # +u (west) is decreasing RA; in RA degrees a sky length L spans L / cos(dec).
    dra = -np.cos(phi) * length / cosd
    ddec = np.sin(phi) * length
    return ax.quiver(
        ra, dec, dra, ddec,
        angles="xy", scale_units="xy", scale=1.0, pivot="middle",
        headwidth=0, headlength=0, headaxislength=0, **style,
    )  # fmt: skip


def _fit(x: NDArray[np.float64], y: NDArray[np.float64], err: NDArray[np.float64]) -> LinearFit:
    """Fit ``y = (1 + m) x + c`` (weights 1/err² when all errors are positive)."""
    n = int(x.size)
    if n < 2 or float(np.ptp(x)) == 0.0:
        nan = float("nan")
        return LinearFit(nan, nan, nan, nan, nan, nan, n)
    has_err = bool(np.all(np.isfinite(err)) and np.all(err > 0))
    w = 1.0 / err**2 if has_err else np.ones(n)
    A = np.stack([x, np.ones(n)], axis=1)
    AtW = A.T * w
    cov = np.linalg.inv(AtW @ A)
    slope, c = cov @ (AtW @ y)
    resid = y - (slope * x + c)
    if not has_err:  # scale the covariance by the residual variance
        cov = cov * float(resid @ resid) / max(n - 2, 1)
    chi2 = float(np.sum(((y - x) / err) ** 2)) / n if has_err else float("nan")
    return LinearFit(
        m=float(slope - 1.0),
        m_err=float(math.sqrt(cov[0, 0])),
        c=float(c),
        c_err=float(math.sqrt(cov[1, 1])),
        chi2_n=chi2,
        rms=float(np.sqrt(np.mean((y - x) ** 2))),
        n=n,
    )


def default_truth_uri(settings: Settings) -> str:
    """The truth folder of a simulated field: ``science.backend.mock.truth_uri`` when
    set, else ``{data_uri}/truth``."""
    configured = settings.science.backend.mock.truth_uri
    return configured or layout.join(settings.runtime.storage.data_uri, "truth")


# --------------------------------------------------------------------------- figures


def render_report(
    subtiles: pa.Table,
    storage: Storage,
    out: str,
    *,
    truth: TruthField | None = None,
    n_source_rows: int | None = None,
    title: str = "constellation shear catalog",
) -> ReportOutput:
    """Draw the figures and write ``report.md`` for the rows of the ``subtiles`` table;
    each names what made those rows (:func:`provenance`)."""
    prov = provenance(subtiles)
    status = np.asarray(subtiles.column("status").to_pylist(), dtype=object)
    ra_all = _unwrap_ra(_floats(subtiles, "ra"))
    dec_all = _floats(subtiles, "dec")
    g1_all = _floats(subtiles, "g1")
    g2_all = _floats(subtiles, "g2")
    ok = (status == "ok") & np.isfinite(g1_all) & np.isfinite(g2_all)
    failed = status == "failed"
    ra, dec, g1, g2 = ra_all[ok], dec_all[ok], g1_all[ok], g2_all[ok]
    e1 = _floats(subtiles, "g1_err")[ok]
    e2 = _floats(subtiles, "g2_err")[ok]
    n_core = np.asarray(subtiles.column("n_sources_core"), dtype=np.int64)
    gmod = np.hypot(g1, g2)
    spacing = _spacing_deg(ra_all, dec_all)
    ref = float(np.percentile(gmod, 95)) if gmod.size else 0.05
    ref = next((r for r in _REFERENCE_SHEARS if r >= ref), _REFERENCE_SHEARS[-1])
    scale = 0.9 * spacing / ref  # a reference-shear whisker spans 90% of the spacing

    # Shear map.
    fig = Figure(figsize=(8, 7))
    ax = _sky_axes(fig, dec_all, f"shear whiskers, {int(ok.sum())} sub-tiles")
    if truth is not None and ra.size:
        t1, t2 = truth.shear_at(ra, dec)
        _whiskers(ax, ra, dec, t1, t2, scale, color="0.75", width=0.006, label="injected")
    if ra.size:
        q = _whiskers(ax, ra, dec, g1, g2, scale, color="C0", width=0.003, label="recovered")
        cosd = math.cos(math.radians(float(np.median(dec))))
        ax.quiverkey(q, X=0.82, Y=1.03, U=ref * scale / cosd, label=f"|g| = {ref:g}", labelpos="E")
        ax.legend(loc="lower left", fontsize="small")
    if failed.any():
        ax.plot(ra_all[failed], dec_all[failed], "rx", label="failed")
    pad = spacing
    if ra_all.size:
        ax.set_xlim(float(ra_all.max()) + pad, float(ra_all.min()) - pad)  # RA to the left
        ax.set_ylim(float(dec_all.min()) - pad, float(dec_all.max()) + pad)
    else:
        ax.invert_xaxis()
    storage.write_bytes(layout.join(out, SHEAR_MAP), _png(fig, prov))

    # Coverage.
    fig = Figure(figsize=(8, 7))
    ax = _sky_axes(fig, dec_all, "core sources per sub-tile")
    if ra_all.size:
        sc = ax.scatter(ra_all[~failed], dec_all[~failed], c=n_core[~failed], marker="s", s=30)
        fig.colorbar(sc, ax=ax, label="core sources")
        if failed.any():
            ax.plot(ra_all[failed], dec_all[failed], "rx", ms=8, label="failed")
            ax.legend(loc="lower left", fontsize="small")
        ax.set_xlim(float(ra_all.max()) + pad, float(ra_all.min()) - pad)
        ax.set_ylim(float(dec_all.min()) - pad, float(dec_all.max()) + pad)
    else:
        ax.invert_xaxis()
    storage.write_bytes(layout.join(out, COVERAGE), _png(fig, prov))

    # Distributions.
    finite_err = e1[np.isfinite(e1)]
    has_err = bool(finite_err.size and np.ptp(finite_err) > 0)  # a constant error: no plot
    fig = Figure(figsize=(10, 4 if not has_err else 7.5))
    nrows = 2 if has_err else 1
    for i, (values, name) in enumerate(((g1, "g1"), (g2, "g2"))):
        ax = fig.add_subplot(nrows, 2, i + 1)
        ax.hist(values, bins=max(10, min(60, values.size // 5 or 10)), color=f"C{i}")
        ax.set_xlabel(name)
        ax.set_ylabel("sub-tiles")
        if values.size:
            ax.set_title(f"mean {values.mean():+.4f}, std {values.std():.4f}")
    if has_err:
        for i, (values, name) in enumerate(((e1, "g1_err"), (e2, "g2_err"))):
            ax = fig.add_subplot(nrows, 2, 3 + i)
            finite = values[np.isfinite(values)]
            ax.hist(finite, bins=max(10, min(60, finite.size // 5 or 10)), color=f"C{i + 2}")
            ax.set_xlabel(name)
            ax.set_ylabel("sub-tiles")
    fig.tight_layout()
    storage.write_bytes(layout.join(out, HISTOGRAMS), _png(fig, prov))

    result = ReportOutput(
        directory=out,
        shear_map=layout.join(out, SHEAR_MAP),
        coverage=layout.join(out, COVERAGE),
        histograms=layout.join(out, HISTOGRAMS),
        markdown=layout.join(out, MARKDOWN),
        provenance=prov,
    )
    numbers: dict[str, float] = {
        "subtiles": float(subtiles.num_rows),
        "subtiles_ok": float(ok.sum()),
        "subtiles_failed": float(failed.sum()),
        "sources": float(n_source_rows if n_source_rows is not None else n_core[ok].sum()),
        "g1_mean": float(g1.mean()) if g1.size else math.nan,
        "g2_mean": float(g2.mean()) if g2.size else math.nan,
        "g1_std": float(g1.std()) if g1.size else math.nan,
        "g2_std": float(g2.std()) if g2.size else math.nan,
    }

    # Recovered against injected.
    if truth is not None and ra.size:
        t1, t2 = truth.shear_at(ra, dec)
        fig = Figure(figsize=(10, 4.5))
        for i, (t, g, e, name) in enumerate(((t1, g1, e1, "g1"), (t2, g2, e2, "g2"))):
            fit = _fit(np.asarray(t, np.float64), g, e)
            result.fits[name] = fit
            ax = fig.add_subplot(1, 2, i + 1)
            yerr = e if bool(np.isfinite(e).all()) else None
            ax.errorbar(t, g, yerr=yerr, fmt=".", ms=3, alpha=0.6, color=f"C{i}", lw=0.5)
            lim = float(max(np.abs(t).max(), np.abs(g).max())) * 1.1 or 0.1
            line = np.array([-lim, lim])
            ax.plot(line, line, "k--", lw=1, label="recovered = injected")
            if math.isfinite(fit.m):
                label = f"m = {fit.m:+.3f} ± {fit.m_err:.3f}\nc = {fit.c:+.4f} ± {fit.c_err:.4f}"
                ax.plot(line, (1 + fit.m) * line + fit.c, color="C3", lw=1.5, label=label)
            ax.set_xlim(-lim, lim)
            ax.set_ylim(-lim, lim)
            ax.set_aspect("equal")
            ax.set_xlabel(f"injected {name}")
            ax.set_ylabel(f"recovered {name}")
            chi = "" if not math.isfinite(fit.chi2_n) else f", χ²/N = {fit.chi2_n:.2f}"
            ax.set_title(f"{name}: {fit.n} sub-tiles{chi}")
            ax.legend(loc="upper left", fontsize="small")
            numbers[f"{name}_m"] = fit.m
            numbers[f"{name}_c"] = fit.c
            numbers[f"{name}_chi2_n"] = fit.chi2_n
            numbers[f"{name}_rms_residual"] = fit.rms
        fig.tight_layout()
        result.truth_comparison = layout.join(out, TRUTH)
        storage.write_bytes(result.truth_comparison, _png(fig, prov))
    elif storage.exists(layout.join(out, TRUTH)):
        # an earlier report's truth comparison must not sit beside figures it does not
        # describe
        storage.rm(layout.join(out, TRUTH), missing_ok=True)
    result.numbers = numbers
    storage.write_bytes(result.markdown, _markdown(result, title).encode("utf-8"))
    return result


def _num(value: float) -> str:
    if not math.isfinite(value):
        return "n/a"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.5g}"


def _markdown(result: ReportOutput, title: str) -> str:
    n = result.numbers
    lines = [
        f"# {title}",
        "",
        "| made by | |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in result.provenance.items()),
        "",
        "| quantity | value |",
        "|---|---|",
        f"| sub-tiles (ok / failed) | {_num(n['subtiles'])} "
        f"({_num(n['subtiles_ok'])} / {_num(n['subtiles_failed'])}) |",
        f"| source rows | {_num(n['sources'])} |",
        f"| mean g1, g2 | {_num(n['g1_mean'])}, {_num(n['g2_mean'])} |",
        f"| std g1, g2 | {_num(n['g1_std'])}, {_num(n['g2_std'])} |",
    ]
    for name, fit in result.fits.items():
        lines.append(
            f"| {name} vs injected: m, c, χ²/N, rms | {_num(fit.m)} ± {_num(fit.m_err)}, "
            f"{_num(fit.c)} ± {_num(fit.c_err)}, {_num(fit.chi2_n)}, {_num(fit.rms)} |"
        )
    lines += [
        "",
        "## Figures",
        "",
        f"- Shear whisker map (RA increases to the left): ![shear map]({SHEAR_MAP})",
        f"- Core sources per sub-tile: ![coverage]({COVERAGE})",
        f"- g1/g2 distributions: ![distributions]({HISTOGRAMS})",
    ]
    if result.truth_comparison:
        lines.append(f"- Recovered against injected shear: ![truth]({TRUTH})")
    return "\n".join(lines) + "\n"


class NothingToReportError(ValueError):
    """The catalog has no rows for the request: no report is written."""


def make_report(
    settings: Settings,
    *,
    out: str | None = None,
    truth_uri: str | None = None,
    tiles: Iterable[int] | None = None,
    storage: Storage | None = None,
    catalog: ShearCatalog | None = None,
) -> ReportOutput:
    """Report on the configured catalog; figures go to ``out`` (default
    ``{work_uri}/report``), the truth of a simulated field is looked for at
    ``truth_uri`` (default :func:`default_truth_uri`) and skipped when absent."""
    store = storage or storage_from_config(settings.runtime.storage)
    cat = catalog or open_catalog(settings)
    tile_list = None if tiles is None else sorted({int(t) for t in tiles})
    if cat.exists(SUBTILES):
        subtiles = cat.read(SUBTILES, tiles=tile_list)
    else:
        subtiles = cat.arrow_schema(SUBTILES).empty_table()
    if subtiles.num_rows == 0:  # never replace a report with an empty one
        which = "" if tile_list is None else f" for tile(s) {', '.join(map(str, tile_list))}"
        raise NothingToReportError(
            f"the catalog has no sub-tile rows{which}: run 'constellation assemble' first"
        )
    n_sources = cat.count(SOURCES) if tile_list is None and cat.exists(SOURCES) else None
    uri = truth_uri or default_truth_uri(settings)
    truth: TruthField | None
    try:
        truth = load_truth_field(store, uri)
    except FileNotFoundError:
        truth = None
        log.info("no truth field at %s: not a simulated field", uri)
    directory = out or layout.join(settings.runtime.storage.work_uri, "report")
    folder = local_path(directory)
    if folder is None or not _only_report_files(folder):
        # an object store (no folder rename), or a folder holding other files: in place
        return render_report(subtiles, store, directory, truth=truth, n_source_rows=n_sources)
    # a local report folder is replaced as a whole: never a mix of two reports' files
    staging = folder.with_name(f".{folder.name}.new-{uuid.uuid4().hex[:8]}")
    try:
        result = render_report(subtiles, store, str(staging), truth=truth, n_source_rows=n_sources)
        _swap_folder(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return _moved(result, str(staging), directory)


_REPORT_FILES = frozenset({SHEAR_MAP, COVERAGE, HISTOGRAMS, TRUTH, MARKDOWN})


def _only_report_files(folder: Path) -> bool:
    """Whether ``folder`` is absent or holds nothing but report files (then the whole
    folder may be replaced)."""
    if not folder.exists():
        return True
    return folder.is_dir() and all(p.name in _REPORT_FILES for p in folder.iterdir())


def _swap_folder(new: Path, folder: Path) -> None:
    """Put folder ``new`` in the place of ``folder`` (two renames; the old one is removed)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    old = folder.with_name(f".{folder.name}.old-{uuid.uuid4().hex[:8]}")
    if folder.exists():
        folder.rename(old)
    new.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def _moved(result: ReportOutput, staging: str, directory: str) -> ReportOutput:
    """``result`` with its paths under ``directory`` instead of ``staging``."""

    def at(path: str) -> str:
        return layout.join(directory, path.rstrip("/").rsplit("/", 1)[-1])

    return replace(
        result,
        directory=directory,
        shear_map=at(result.shear_map),
        coverage=at(result.coverage),
        histograms=at(result.histograms),
        markdown=at(result.markdown),
        truth_comparison=None if result.truth_comparison is None else at(result.truth_comparison),
    )
