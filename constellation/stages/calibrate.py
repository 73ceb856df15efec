"""A calibration run: constant-shear fields through the pipeline's stages, then m and c.

Each field of the run is a copy of one base :class:`~constellation.simulate.FieldSpec`
with a constant injected shear (by default ``(±0.02, 0)``, ``(0, ±0.02)`` and
``(0, 0)``: five fields, every component's slope measured at three values). For each
field, in this process and in its own folder (``{root}/field-{i}/input`` and ``work``):
simulate (skipped when the field's truth is there), resolve the registry, index,
prepare, infer every sub-tile with the configured backend, assemble its catalog. Then
the ``ok`` sub-tiles of every field give ``(injected, recovered)`` pairs, and
:func:`~constellation.catalog.calibration.fit_calibration` fits m and c.

Every stage is the pipeline's own and idempotent: a rerun resumes. ``constellation
calibrate`` wraps :func:`run_calibration`, writes the report (figure and table) and
appends a row to the calibration table (keyed by backend, configuration hash and code
version) so that calibration runs can be compared over time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from constellation.catalog.calibration import Calibration, fit_calibration, subtile_shears
from constellation.config import Settings
from constellation.io.storage import Storage
from constellation.manifest import layout
from constellation.simulate import FieldSpec

__all__ = [
    "CALIBRATION_COLUMNS",
    "CalibrationRecord",
    "CalibrationRun",
    "append_calibration",
    "calibration_row",
    "calibration_shears",
    "field_settings",
    "record_calibration",
    "run_calibration",
    "write_calibration_report",
]


def calibration_shears(values: Iterable[float] = (-0.02, 0.0, 0.02)) -> list[tuple[float, float]]:
    """The constant shears of the fields: each value on g1 with g2 = 0, each non-zero
    value on g2 with g1 = 0 (the zero field serves both components)."""
    vals = sorted({float(v) for v in values})
    return [(v, 0.0) for v in vals] + [(0.0, v) for v in vals if v != 0.0]


def field_settings(base: Settings, data_uri: str, work_uri: str) -> Settings:
    """``base`` with its storage pointed at one calibration field."""
    storage = base.runtime.storage.model_copy(update={"data_uri": data_uri, "work_uri": work_uri})
    runtime = base.runtime.model_copy(update={"storage": storage})
    return base.model_copy(update={"runtime": runtime})


@dataclass(frozen=True)
class CalibrationRun:
    """What a calibration run measured: the fit, and the pairs behind it per field."""

    calibration: Calibration
    shears: tuple[tuple[float, float], ...]
    injected: np.ndarray  # (n, 2), every field's ok sub-tiles
    recovered: np.ndarray  # (n, 2)
    subtile_of_row: np.ndarray  # (n,) sub-tile key (the same sub-tile in every field)
    field_of_row: np.ndarray  # (n,) index into shears
    skipped: int  # sub-tiles not ok (nothing to fit, failed)


def _run_field(
    spec: FieldSpec, settings: Settings, storage: Storage, run_id: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    from constellation.catalog.assemble import assemble
    from constellation.catalog.iceberg import SUBTILES, open_catalog
    from constellation.inference import get_backend
    from constellation.io.quadrant_index import build_quadrant_index
    from constellation.io.registry import resolve_registry, write_registry
    from constellation.simulate.run import simulate_field
    from constellation.stages import infer, prepare
    from constellation.stages.base import drive
    from constellation.truth import load_truth_field

    data = settings.runtime.storage.data_uri
    work = settings.runtime.storage.work_uri
    truth_uri = layout.join(data, "truth")
    if not storage.exists(layout.join(truth_uri, "field.json")):
        simulate_field(spec, storage, data)
    registry = resolve_registry(storage, layout.join(data, "q1", "MER"))
    write_registry(registry, layout.registry_url(work))
    build_quadrant_index(storage, layout.join(data, "q1", "VIS"), layout.quadrant_index_url(work))
    prepared = drive(prepare.PrepareStage(), prepare.plan(settings, registry), storage)
    if prepared.failed:
        raise ValueError(f"calibration field not prepared: {prepared.summary.lines()[0]}")
    stage = infer.InferStage.from_settings(settings, get_backend(settings), run_id)
    drive(stage, infer.plan(storage, work, [int(t) for t in registry.tile_id]), storage)
    assemble(settings, run_id=run_id)
    subtiles = open_catalog(settings).read(SUBTILES)
    injected, recovered, keys = subtile_shears(subtiles, load_truth_field(storage, truth_uri))
    return injected, recovered, keys, subtiles.num_rows - injected.shape[0]


def run_calibration(
    root: str,
    base_spec: FieldSpec,
    base_settings: Settings,
    *,
    shears: Sequence[tuple[float, float]] | None = None,
    storage: Storage | None = None,
    run_id: str = "calibration",
    n_boot: int = 1000,
    progress: Callable[[str], None] | None = None,
    work_root: str | None = None,
) -> CalibrationRun:
    """Run the calibration fields under ``root`` (see the module docstring) and fit m, c.

    ``base_spec`` sets everything but the shear (use ``shape_noise=0`` and
    ``pixel_noise=False`` for a noise-free run); ``base_settings`` everything but the
    storage roots (the backend included). ``work_root``: the fields' work folders go
    there instead (``{work_root}/field-{i}/work``), so that two configurations can be
    compared on the same simulated fields.
    """
    from constellation.truth import ShearField

    store = storage or Storage()
    chosen = tuple(shears or calibration_shears())
    injected, recovered, keys, fields = [], [], [], []
    skipped = 0
    for i, (g1, g2) in enumerate(chosen):
        shear = ShearField(amplitude=0.0, g1_constant=g1, g2_constant=g2)
        spec = base_spec.model_copy(update={"shear": shear})
        folder = layout.join(root, f"field-{i}")
        work_folder = layout.join(work_root, f"field-{i}") if work_root else folder
        settings = field_settings(
            base_settings, layout.join(folder, "input"), layout.join(work_folder, "work")
        )
        inj, rec, key, n_skipped = _run_field(spec, settings, store, run_id)
        injected.append(inj)
        recovered.append(rec)
        keys.append(key)
        fields.append(np.full(inj.shape[0], i))
        skipped += n_skipped
        if progress is not None:
            progress(
                f"calibration field {i + 1}/{len(chosen)} (g = {g1:+.3f}, {g2:+.3f}): "
                f"{inj.shape[0]} sub-tiles ok, {n_skipped} not"
            )
    inj_all, rec_all = np.concatenate(injected), np.concatenate(recovered)
    key_all = np.concatenate(keys)
    return CalibrationRun(
        calibration=fit_calibration(inj_all, rec_all, groups=key_all, n_boot=n_boot),
        shears=chosen,
        injected=inj_all,
        recovered=rec_all,
        subtile_of_row=key_all,
        field_of_row=np.concatenate(fields),
        skipped=skipped,
    )


#: Columns of the calibration table (one row per calibration run).
CALIBRATION_COLUMNS = (
    "date", "backend", "config_hash", "code_version", "run_id", "fields", "subtiles",
    "m1", "m1_err", "m2", "m2_err", "c1", "c1_err", "c2", "c2_err",
)  # fmt: skip


def calibration_row(run: CalibrationRun, settings: Settings, run_id: str) -> dict[str, object]:
    """The calibration table's row for ``run``: keyed by backend, configuration hash and
    code version, so that runs can be compared over time."""
    from datetime import UTC, datetime

    from constellation._version import __version__

    cal = run.calibration
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "backend": settings.science.backend.name,
        "config_hash": settings.config_hash,
        "code_version": __version__,
        "run_id": run_id,
        "fields": len(run.shears),
        "subtiles": cal.n,
        "m1": cal.g1.m, "m1_err": cal.g1.m_err, "m2": cal.g2.m, "m2_err": cal.g2.m_err,
        "c1": cal.g1.c, "c1_err": cal.g1.c_err, "c2": cal.g2.c, "c2_err": cal.g2.c_err,
    }  # fmt: skip


def append_calibration(storage: Storage, url: str, row: dict[str, object]) -> int:
    """Add ``row`` to the calibration table at ``url`` (Parquet, written atomically);
    return the number of rows it holds now."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    new = pa.Table.from_pylist([{k: row[k] for k in CALIBRATION_COLUMNS}])
    if storage.exists(url):
        old = pq.read_table(io.BytesIO(storage.read_bytes(url)))
        new = pa.concat_tables([old.select(list(CALIBRATION_COLUMNS)), new.cast(old.schema)])
    buf = io.BytesIO()
    pq.write_table(new, buf)
    storage.write_bytes(url, buf.getvalue())
    return int(new.num_rows)


def write_calibration_report(
    run: CalibrationRun, row: dict[str, object], storage: Storage, out: str
) -> tuple[str, str]:
    """``calibration.png`` (recovered against injected, per component, with the fit) and
    ``calibration.md`` (the figures and what made them) under ``out``; their URLs."""
    import io

    from matplotlib.figure import Figure

    cal = run.calibration
    fig = Figure(figsize=(10, 4.5))
    for i, (name, comp) in enumerate((("g1", cal.g1), ("g2", cal.g2))):
        ax = fig.add_subplot(1, 2, i + 1)
        x, y = run.injected[:, i], run.recovered[:, i]
        ax.plot(x, y - x, ".", ms=4, alpha=0.6, color=f"C{i}")
        line = np.linspace(float(x.min()) - 0.005, float(x.max()) + 0.005, 2)
        label = f"m = {comp.m:+.4f} ± {comp.m_err:.4f}\nc = {comp.c:+.5f} ± {comp.c_err:.5f}"
        ax.plot(line, comp.m * line + comp.c, color="C3", lw=1.5, label=label)
        ax.axhline(0.0, color="k", lw=0.8, ls="--")
        ax.set_xlabel(f"injected {name}")
        ax.set_ylabel(f"recovered - injected {name}")
        ax.set_title(f"{name}: {cal.n} sub-tiles, {len(run.shears)} fields")
        ax.legend(loc="upper left", fontsize="small")
    keys = ("backend", "config_hash", "code_version", "run_id", "date")
    made_by = " | ".join(f"{k}: {row[k]}" for k in keys)
    fig.text(0.01, -0.01, made_by, fontsize=6, color="0.35", ha="left", va="top")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    png = layout.join(out, "calibration.png")
    storage.write_bytes(png, buf.getvalue())
    lines = [
        "# Shear calibration",
        "",
        "| made by | |",
        "|---|---|",
        *(f"| {k} | {row[k]} |" for k in keys),
        "",
        f"{len(run.shears)} constant-shear fields, {cal.n} sub-tiles fitted "
        f"({run.skipped} not ok), bootstrap errors over sub-tiles ({cal.n_boot} draws).",
        "",
        "| component | m | c |",
        "|---|---|---|",
        f"| g1 | {cal.g1.m:+.5f} ± {cal.g1.m_err:.5f} | {cal.g1.c:+.6f} ± {cal.g1.c_err:.6f} |",
        f"| g2 | {cal.g2.m:+.5f} ± {cal.g2.m_err:.5f} | {cal.g2.c:+.6f} ± {cal.g2.c_err:.6f} |",
        "",
        "![recovered against injected](calibration.png)",
        "",
    ]
    md = layout.join(out, "calibration.md")
    storage.write_bytes(md, "\n".join(lines).encode("utf-8"))
    return png, md


@dataclass(frozen=True)
class CalibrationRecord:
    """A recorded calibration run: the run, its table row and where its outputs are."""

    run: CalibrationRun
    row: dict[str, object]
    report: str  # calibration.md
    figure: str  # calibration.png
    table: str  # calibrations.parquet
    table_rows: int


def record_calibration(
    root: str,
    settings: Settings,
    spec: FieldSpec,
    shears: Sequence[tuple[float, float]],
    *,
    run_id: str,
    storage: Storage | None = None,
    progress: Callable[[str], None] | None = None,
) -> CalibrationRecord:
    """What ``constellation calibrate`` and the ``shear-calibration`` flow do: the fields
    under ``root`` (:func:`run_calibration`), the report (``calibration.md`` and
    ``.png``) and a new row of ``calibrations.parquet``, all in ``root``."""
    store = storage or Storage()
    run = run_calibration(
        root, spec, settings, shears=shears, storage=store, run_id=run_id, progress=progress
    )
    row = calibration_row(run, settings, run_id)
    png, md = write_calibration_report(run, row, store, root)
    table = layout.join(root, "calibrations.parquet")
    rows = append_calibration(store, table, row)
    return CalibrationRecord(run, row, md, png, table, rows)
