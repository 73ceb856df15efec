"""Validate the shear catalog: completeness, failures, bad values, duplicates, counts.

Checks (each a :class:`Violation` when it finds something):

``empty``
    No sub-tile rows at all (and nothing known to be expected).
``missing``
    Expected sub-tiles with no row in ``subtiles``. Expected = the prepared
    sub-tiles (manifests under ``{work}/tiles/{tile}/subtiles/*/manifest.json``),
    else the tiling grid of the given tiles; unknown (no check) otherwise.
``failed``
    Sub-tiles recorded with status ``failed`` (listed with their errors); a
    violation unless ``allow_failed``.
``non_finite``
    NaN or infinite values in any floating-point column of either table (nulls
    are allowed).
``shear_out_of_range``
    ``ok`` sub-tiles with ``|g| >= 1``, or without a shear at all.
``unconverged``
    ``ok`` sub-tiles whose fit did not meet its stopping rule (``converged`` false: a
    MAP fit still moving at the end of its step budget); a violation unless
    ``allow_unconverged``. Backends without a stopping rule leave ``converged`` null.
``duplicate_subtiles`` / ``duplicate_sources``
    A sub-tile key present more than once; an ``object_id`` present more than once.
``count_mismatch``
    ``ok`` sub-tiles whose number of source rows differs from ``n_sources_core``.
``orphan_sources``
    Source rows whose sub-tile has no ``ok`` row in ``subtiles``.
``backend_mismatch`` / ``config_mismatch``
    Only when an expected backend / science config hash is given (the validation
    after a run passes that run's): sub-tile rows made by another backend or under
    another configuration, so that a run never passes on someone else's results.

The ``sources`` table is read a slice of the sky at a time (only the columns the
checks need), so memory stays bounded by ``max_rows``: contiguous ranges of the
sources' own ``healpix`` index, sized from the partition counts. Rows are
partitioned by their sub-tile's centre, but every row of one object has the same
position, hence is read in the same slice, where duplicate object ids are looked
for.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from constellation.catalog.iceberg import (
    KEY_COLUMN,
    SOURCES,
    SUBTILES,
    ShearCatalog,
    open_catalog,
    split_key,
    subtile_key,
)
from constellation.config import Settings
from constellation.io.storage import Storage, storage_from_config
from constellation.manifest import layout

__all__ = [
    "TileCounts",
    "ValidationReport",
    "Violation",
    "expected_subtiles",
    "validate",
    "validate_catalog",
]

_EXAMPLES = 10


@dataclass(frozen=True)
class Violation:
    """One failed check: what, how many, and a few examples."""

    kind: str
    count: int
    detail: str
    examples: tuple[str, ...] = ()


@dataclass
class TileCounts:
    """Per-tile numbers."""

    tile_id: int
    expected: int | None = None
    present: int = 0
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    sources: int = 0


@dataclass
class ValidationReport:
    """The outcome of :func:`validate_catalog`.

    ``violations`` lists every failed check; :attr:`passed` is true when it is empty.
    """

    expected: int | None
    present: int
    n_ok: int
    n_failed: int
    n_skipped: int
    sources: int
    n_unconverged: int = 0
    missing: list[tuple[int, int, int]] = field(default_factory=list)
    failures: list[tuple[int, int, int, str]] = field(default_factory=list)
    non_finite: dict[str, int] = field(default_factory=dict)
    shear_out_of_range: int = 0
    duplicate_subtiles: int = 0
    duplicate_sources: int = 0
    count_mismatch: int = 0
    orphan_sources: int = 0
    per_tile: list[TileCounts] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """True when no check failed."""
        return not self.violations

    @property
    def ok(self) -> bool:
        """Same as :attr:`passed`."""
        return self.passed

    @property
    def n_violations(self) -> int:
        """Number of failed checks."""
        return len(self.violations)

    def summary(self) -> str:
        """One line for humans."""
        verdict = "PASSED" if self.passed else f"FAILED ({len(self.violations)} checks)"
        exp = "?" if self.expected is None else str(self.expected)
        return (
            f"catalog validation {verdict}: {self.present}/{exp} sub-tiles present "
            f"({self.n_ok} ok, {self.n_failed} failed, {self.n_skipped} skipped), "
            f"{self.sources} sources"
        )

    def to_markdown(self, max_rows: int = 50) -> str:
        """A Markdown summary: numbers, violations, failed sub-tiles, per-tile counts."""
        exp = "unknown" if self.expected is None else str(self.expected)
        lines = [
            "# Shear catalog validation",
            "",
            f"**{self.summary()}**",
            "",
            "| quantity | value |",
            "|---|---|",
            f"| expected sub-tiles | {exp} |",
            f"| sub-tile rows | {self.present} |",
            f"| ok / failed / skipped | {self.n_ok} / {self.n_failed} / {self.n_skipped} |",
            f"| ok but not converged | {self.n_unconverged} |",
            f"| missing sub-tiles | {len(self.missing)} |",
            f"| source rows | {self.sources} |",
            f"| non-finite values | {sum(self.non_finite.values())} |",
            f"| shear out of range | {self.shear_out_of_range} |",
            f"| duplicate sub-tile rows | {self.duplicate_subtiles} |",
            f"| duplicate source rows | {self.duplicate_sources} |",
            f"| source-count mismatches | {self.count_mismatch} |",
            f"| orphan source rows | {self.orphan_sources} |",
            "",
            "## Violations",
            "",
        ]
        if not self.violations:
            lines.append("None.")
        for v in self.violations:
            lines.append(f"- **{v.kind}** ({v.count}): {v.detail}")
            lines.extend(f"  - {e}" for e in v.examples)
        if self.failures:
            lines += [
                "",
                "## Failed sub-tiles",
                "",
                "| tile | row | col | error |",
                "|---|---|---|---|",
            ]
            for tile, row, col, error in self.failures[:max_rows]:
                text = " ".join(error.split()).replace("|", "\\|")
                lines.append(f"| {tile} | {row} | {col} | {text} |")
            if len(self.failures) > max_rows:
                lines.append(f"\n... and {len(self.failures) - max_rows} more")
        if self.per_tile:
            lines += [
                "",
                "## Per tile",
                "",
                "| tile | expected | present | ok | failed | skipped | sources |",
                "|---|---|---|---|---|---|---|",
            ]
            for t in self.per_tile[:max_rows]:
                e = "?" if t.expected is None else str(t.expected)
                lines.append(
                    f"| {t.tile_id} | {e} | {t.present} | {t.ok} | {t.failed} | {t.skipped} "
                    f"| {t.sources} |"
                )
            if len(self.per_tile) > max_rows:
                lines.append(f"\n... and {len(self.per_tile) - max_rows} more tiles")
        return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- expected


def expected_subtiles(
    storage: Storage,
    work_uri: str,
    tiles: Iterable[int] | None = None,
    *,
    grid: tuple[int, int] | None = None,
) -> set[int] | None:
    """Keys of the prepared sub-tiles (manifests) of ``tiles`` (or all tiles); when none
    are found and tiles and a ``(n_rows, n_cols)`` grid are given, the grid's sub-tiles;
    otherwise ``None`` (unknown)."""
    tile_list = None if tiles is None else sorted({int(t) for t in tiles})
    if tile_list is None:
        patterns = [layout.join(work_uri, "tiles", "*", "subtiles", "*", layout.MANIFEST_NAME)]
    else:
        patterns = [
            layout.join(layout.tile_dir(work_uri, t), "subtiles", "*", layout.MANIFEST_NAME)
            for t in tile_list
        ]
    keys: set[int] = set()
    for pattern in patterns:
        for url in storage.glob(pattern):
            try:
                ident = layout.SubTileId.from_url(url)
            except ValueError:
                continue
            keys.add(subtile_key(ident.tile_id, ident.row, ident.col))
    if keys:
        return keys
    if tile_list and grid is not None:
        return {
            subtile_key(t, r, c) for t in tile_list for r in range(grid[0]) for c in range(grid[1])
        }
    return None


# --------------------------------------------------------------------------- checks


def _non_finite(table: pa.Table) -> dict[str, int]:
    out: dict[str, int] = {}
    for f in table.schema:
        if pa.types.is_floating(f.type):
            finite = pc.is_finite(table.column(f.name))
            bad = int(pc.sum(pc.invert(finite)).as_py() or 0)
            if bad:
                out[f.name] = bad
    return out


def _healpix_slices(
    counts: dict[int, int], max_rows: int, partition_order: int, source_order: int
) -> Iterator[tuple[int, int]]:
    """``[lo, hi)`` ranges of the order-``source_order`` index that together cover the
    whole sphere, each about ``max_rows`` rows by the partition ``counts``."""
    shift = 2 * (source_order - partition_order)
    starts = [group[0] << shift for group in _groups(counts, max_rows)]
    if not starts:
        return
    starts[0] = 0
    ends = [*starts[1:], 12 * 4**source_order]
    yield from zip(starts, ends, strict=True)


def _groups(counts: dict[int, int], max_rows: int) -> Iterator[list[int]]:
    group: list[int] = []
    rows = 0
    for pixel in sorted(counts):
        if group and rows + counts[pixel] > max_rows:
            yield group
            group, rows = [], 0
        group.append(pixel)
        rows += counts[pixel]
    if group:
        yield group


def _fmt_key(key: int) -> str:
    tile, row, col = split_key(key)
    return f"tile {tile} r{row}_c{col}"


def validate_catalog(
    catalog: ShearCatalog,
    *,
    tiles: Iterable[int] | None = None,
    expected: set[int] | None = None,
    allow_failed: bool = False,
    max_rows: int = 20_000_000,
    expect_backend: str | None = None,
    expect_config_hash: str | None = None,
    allow_unconverged: bool = False,
    allow_mixed: bool = True,
) -> ValidationReport:
    """Run every check on ``catalog`` (restricted to ``tiles`` when given); with
    ``expect_backend`` / ``expect_config_hash``, rows of other backends or science
    configurations are violations; without ``allow_mixed``, so are rows of more than one
    backend or science configuration."""
    tile_list = None if tiles is None else sorted({int(t) for t in tiles})
    sub = catalog.read(SUBTILES, tiles=tile_list) if catalog.exists(SUBTILES) else None
    if sub is None:
        sub = catalog.arrow_schema(SUBTILES).empty_table()
    status = np.asarray(sub.column("status").to_pylist(), dtype=object)
    keys = np.asarray(sub.column(KEY_COLUMN), dtype=np.int64)
    is_ok = status == "ok"
    is_failed = status == "failed"
    report = ValidationReport(
        expected=None if expected is None else len(expected),
        present=int(np.unique(keys).size),
        n_ok=int(np.count_nonzero(is_ok)),
        n_failed=int(np.count_nonzero(is_failed)),
        n_skipped=int(np.count_nonzero(status == "skipped")),
        sources=0,
    )
    violations = report.violations

    # Completeness and failures.
    present = set(keys.tolist())
    if not present and expected is None:
        violations.append(Violation("empty", 0, "the catalog has no sub-tile rows"))
    if expected is not None:
        report.missing = sorted(split_key(k) for k in expected - present)
        if report.missing:
            violations.append(
                Violation(
                    "missing",
                    len(report.missing),
                    "expected sub-tiles without a row in the subtiles table",
                    tuple(f"tile {t} r{r}_c{c}" for t, r, c in report.missing[:_EXAMPLES]),
                )
            )
    errors = sub.column("error").to_pylist()
    report.failures = sorted(
        (*split_key(int(k)), str(errors[i] or "")) for i, k in enumerate(keys) if is_failed[i]
    )
    if report.failures and not allow_failed:
        violations.append(
            Violation(
                "failed",
                len(report.failures),
                "sub-tiles whose inference failed (see the errors)",
                tuple(f"tile {t} r{r}_c{c}: {e}" for t, r, c, e in report.failures[:_EXAMPLES]),
            )
        )

    # Rows of another backend or configuration than the one asked for.
    for kind, column, wanted in (
        ("backend_mismatch", "backend", expect_backend),
        ("config_mismatch", "config_hash", expect_config_hash),
    ):
        if wanted is None:
            continue
        values = sub.column(column).to_pylist()
        other = [(int(k), v) for k, v in zip(keys.tolist(), values, strict=True) if v != wanted]
        if other:
            seen = sorted({str(v) for _, v in other})
            violations.append(
                Violation(
                    kind,
                    len(other),
                    f"sub-tile rows with {column} {', '.join(seen)} instead of {wanted}",
                    tuple(f"{_fmt_key(k)}: {v}" for k, v in other[:_EXAMPLES]),
                )
            )

    # One catalog, one maker: rows of several backends or configurations (say, mock
    # shears beside SHINE's) are a violation unless accepted.
    if not allow_mixed:
        for column in ("backend", "config_hash"):
            values = sub.column(column).to_pylist()
            seen = sorted({str(v) for v in values})
            if len(seen) > 1:
                count = {v: values.count(v) for v in seen}
                violations.append(
                    Violation(
                        "mixed",
                        len(seen),
                        f"rows of {len(seen)} {column} values: "
                        + ", ".join(f"{v} ({count[v]} sub-tiles)" for v in seen),
                        tuple(
                            f"{_fmt_key(int(k))}: {v}"
                            for k, v in zip(keys.tolist(), values, strict=True)
                            if v != seen[0]
                        )[:_EXAMPLES],
                    )
                )

    # Fits that did not converge (null where not applicable, e.g. older rows).
    converged = sub.column("converged").to_pylist() if "converged" in sub.column_names else []
    unconverged = [
        int(k) for k, c, o in zip(keys, converged, is_ok, strict=False) if o and c is False
    ]
    report.n_unconverged = len(unconverged)
    if unconverged and not allow_unconverged:
        violations.append(
            Violation(
                "unconverged",
                len(unconverged),
                "ok sub-tiles whose fit did not converge within its step budget",
                tuple(_fmt_key(k) for k in unconverged[:_EXAMPLES]),
            )
        )

    # Duplicate sub-tile rows.
    uniq, counts = np.unique(keys, return_counts=True)
    dup_keys = uniq[counts > 1]
    report.duplicate_subtiles = int((counts[counts > 1] - 1).sum())
    if report.duplicate_subtiles:
        violations.append(
            Violation(
                "duplicate_subtiles",
                report.duplicate_subtiles,
                "extra rows of sub-tiles present more than once",
                tuple(_fmt_key(int(k)) for k in dup_keys[:_EXAMPLES]),
            )
        )

    # Shear values of ok sub-tiles.
    g1 = np.asarray(sub.column("g1").to_numpy(zero_copy_only=False), dtype=np.float64)
    g2 = np.asarray(sub.column("g2").to_numpy(zero_copy_only=False), dtype=np.float64)
    with np.errstate(invalid="ignore"):
        gmod = np.hypot(g1, g2)
        bad_g = is_ok & ~(gmod < 1.0)  # |g| >= 1, NaN, or null (null -> NaN)
    report.shear_out_of_range = int(np.count_nonzero(bad_g))
    if report.shear_out_of_range:
        violations.append(
            Violation(
                "shear_out_of_range",
                report.shear_out_of_range,
                "ok sub-tiles with |g| >= 1 or no finite shear",
                tuple(
                    f"{_fmt_key(int(k))}: g = ({a}, {b})"
                    for k, a, b in list(zip(keys[bad_g], g1[bad_g], g2[bad_g], strict=True))[
                        :_EXAMPLES
                    ]
                ),
            )
        )
    non_finite = {f"{SUBTILES}.{k}": v for k, v in _non_finite(sub).items()}

    # Sources, a group of partitions at a time.
    source_counts: dict[int, int] = {}
    dup_objects: list[int] = []
    n_sources = 0
    if catalog.exists(SOURCES):
        float_cols = [
            f.name
            for f in catalog.table(SOURCES).schema().as_arrow()
            if pa.types.is_floating(f.type)
        ]
        slices = _healpix_slices(
            catalog.partition_counts(SOURCES),
            max_rows,
            catalog.table_partition_order(SOURCES),
            catalog.source_order,
        )
        for healpix_range in slices:
            src = catalog.read(
                SOURCES,
                [KEY_COLUMN, "object_id", *float_cols],
                tiles=tile_list,
                healpix_range=healpix_range,
            )
            n_sources += src.num_rows
            for k, v in _non_finite(src.select(float_cols)).items():
                name = f"{SOURCES}.{k}"
                non_finite[name] = non_finite.get(name, 0) + v
            ks, kc = np.unique(np.asarray(src.column(KEY_COLUMN)), return_counts=True)
            for k, c in zip(ks.tolist(), kc.tolist(), strict=True):
                source_counts[k] = source_counts.get(k, 0) + c
            ids, ic = np.unique(np.asarray(src.column("object_id")), return_counts=True)
            dup = ic > 1
            report.duplicate_sources += int((ic[dup] - 1).sum())
            dup_objects.extend(ids[dup][: _EXAMPLES - len(dup_objects)].tolist())
    report.sources = n_sources
    report.non_finite = dict(sorted(non_finite.items()))
    if report.non_finite:
        violations.append(
            Violation(
                "non_finite",
                sum(report.non_finite.values()),
                "NaN or infinite values",
                tuple(f"{k}: {v}" for k, v in report.non_finite.items()),
            )
        )
    if report.duplicate_sources:
        violations.append(
            Violation(
                "duplicate_sources",
                report.duplicate_sources,
                "extra rows of object ids present more than once",
                tuple(f"object_id {o}" for o in dup_objects),
            )
        )

    # Source rows against the sub-tile rows.
    n_core = np.asarray(sub.column("n_sources_core"), dtype=np.int64)
    ok_core = {int(k): int(n) for k, n, o in zip(keys, n_core, is_ok, strict=True) if o}
    mismatched = [k for k, n in ok_core.items() if source_counts.get(k, 0) != n]
    report.count_mismatch = len(mismatched)
    if mismatched:
        violations.append(
            Violation(
                "count_mismatch",
                len(mismatched),
                "ok sub-tiles whose source rows differ from n_sources_core",
                tuple(
                    f"{_fmt_key(k)}: {source_counts.get(k, 0)} rows, n_sources_core {ok_core[k]}"
                    for k in mismatched[:_EXAMPLES]
                ),
            )
        )
    orphans = {k: c for k, c in source_counts.items() if k not in ok_core}
    report.orphan_sources = sum(orphans.values())
    if orphans:
        violations.append(
            Violation(
                "orphan_sources",
                report.orphan_sources,
                "source rows without an ok sub-tile row",
                tuple(f"{_fmt_key(k)}: {c} rows" for k, c in list(orphans.items())[:_EXAMPLES]),
            )
        )

    # Per tile.
    per_tile: dict[int, TileCounts] = {}
    expected_per_tile: dict[int, int] = {}
    for ekey in expected or ():
        t = split_key(ekey)[0]
        expected_per_tile[t] = expected_per_tile.get(t, 0) + 1
    for t, n in expected_per_tile.items():
        per_tile[t] = TileCounts(t, expected=n)
    for skey, st in zip(keys.tolist(), status.tolist(), strict=True):
        t = split_key(skey)[0]
        tc = per_tile.setdefault(t, TileCounts(t, expected=0 if expected is not None else None))
        tc.present += 1
        if st == "ok":
            tc.ok += 1
        elif st == "failed":
            tc.failed += 1
        else:
            tc.skipped += 1
    for ckey, c in source_counts.items():
        t = split_key(ckey)[0]
        per_tile.setdefault(t, TileCounts(t)).sources += c
    report.per_tile = [per_tile[t] for t in sorted(per_tile)]
    return report


def validate(
    settings: Settings,
    *,
    tiles: Iterable[int] | None = None,
    allow_failed: bool = False,
    storage: Storage | None = None,
    catalog: ShearCatalog | None = None,
    expect_backend: str | None = None,
    expect_config_hash: str | None = None,
    allow_unconverged: bool = False,
    allow_mixed: bool = True,
) -> ValidationReport:
    """Validate the configured catalog against the prepared sub-tiles under the work root
    (see :func:`validate_catalog` for the ``expect_*`` and ``allow_mixed`` checks)."""
    store = storage or storage_from_config(settings.runtime.storage)
    tile_list = None if tiles is None else sorted({int(t) for t in tiles})
    tiling = settings.science.tiling
    expected = expected_subtiles(
        store,
        settings.runtime.storage.work_uri,
        tile_list,
        grid=(tiling.n_rows, tiling.n_cols),
    )
    return validate_catalog(
        catalog or open_catalog(settings),
        tiles=tile_list,
        expected=expected,
        allow_failed=allow_failed,
        expect_backend=expect_backend,
        expect_config_hash=expect_config_hash,
        allow_unconverged=allow_unconverged,
        allow_mixed=allow_mixed,
    )
