"""The shape every stage has, and the one driver that runs any of them.

A stage (index, prepare, infer, assemble) is three things:

* an **item** model: one unit of work, small and serialisable (a tile's
  :class:`~constellation.stages.prepare.PrepareItem`, a sub-tile's manifest URL, ...);
* a **plan**: from the settings (and, for stages whose items are files, one listing of
  the work root) to the list of items; it writes nothing;
* an idempotent **run_one(item, storage)** that returns a typed :class:`Outcome` and
  leaves a marker (done marker, result file) so that running it again skips the work.

:func:`run_guarded` is the one error rule for every caller — the CLI's loops and the
Prefect tasks alike. What ``run_one`` raises is classified by its type
(:func:`classify`), never by its message:

``skipped``
    nothing to do (:class:`~constellation.inference.base.NothingToFitError`).
``failed``, retryable
    I/O and network errors (``OSError``, missing files excepted): tried again up to
    ``retries`` times, then recorded.
``failed``, permanent
    bad input data, a stale manifest, anything else: recorded once, not retried.
``unavailable``
    the stage cannot run at all (:class:`~constellation.inference.base.BackendUnavailableError`):
    the driver stops.

A failed item never stops the others; the caller decides the exit code from the
:class:`OutcomeSummary` (any failure: exit 1 or a ``Failed`` flow run).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar, runtime_checkable

from constellation.inference.base import (
    BackendUnavailableError,
    NothingToFitError,
    SubTileDataError,
)
from constellation.io.storage import Storage

__all__ = [
    "UNCONVERGED",
    "Classified",
    "Failure",
    "Outcome",
    "OutcomeStatus",
    "OutcomeSummary",
    "Stage",
    "StageRun",
    "SubTileFailedError",
    "classify",
    "drive",
    "error_text",
    "failures_line",
    "run_guarded",
]

log = logging.getLogger(__name__)

#: ``done``: the item's marker says it was already done (nothing ran).
OutcomeStatus = Literal["ok", "skipped", "failed", "unavailable", "done"]

#: ``OSError`` subclasses that a retry cannot fix: the input is not there or not allowed.
_PERMANENT_OS_ERRORS: tuple[type[OSError], ...] = (
    FileNotFoundError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
)


@runtime_checkable
class Outcome(Protocol):
    """What happened to one item: every stage's result type has these fields."""

    @property
    def label(self) -> str: ...  # "tile 102018211", "tile 102018211 r0_c1"

    @property
    def status(self) -> OutcomeStatus: ...

    @property
    def cause(self) -> str | None: ...  # the skip reason or the exception's type name

    @property
    def error(self) -> str | None: ...  # one line: "TypeName: message"

    @property
    def retryable(self) -> bool: ...


ItemT = TypeVar("ItemT")
ItemT_contra = TypeVar("ItemT_contra", contravariant=True)
OutcomeT_co = TypeVar("OutcomeT_co", bound=Outcome, covariant=True)


class Stage(Protocol[ItemT_contra, OutcomeT_co]):
    """A stage: ``name``, the ``label`` of an item, and its idempotent ``run_one``."""

    @property
    def name(self) -> str: ...

    def label(self, item: ItemT_contra) -> str: ...

    def run_one(self, item: ItemT_contra, storage: Storage) -> OutcomeT_co: ...


@dataclass(frozen=True)
class Classified:
    """What an exception means for an item (see the module docstring)."""

    status: Literal["skipped", "failed", "unavailable"]
    cause: str
    retryable: bool = False


class SubTileFailedError(RuntimeError):
    """An item's outcome was ``failed`` (raised by callers that need an exception, e.g.
    so that Prefect marks the task failed and retries it only when ``retryable``).
    Carries the outcome's cause; safe to pickle."""

    def __init__(self, label: str, error: str, cause: str, retryable: bool) -> None:
        super().__init__(f"{label}: {error}")
        self.label = label
        self.error = error
        self.cause = cause
        self.retryable = retryable

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.label, self.error, self.cause, self.retryable))

    @classmethod
    def from_outcome(cls, outcome: Outcome) -> SubTileFailedError:
        return cls(outcome.label, outcome.error or "", outcome.cause or "", outcome.retryable)


def classify(exc: BaseException) -> Classified:
    """Classify an exception raised while running an item, by its type only."""
    if isinstance(exc, NothingToFitError):
        return Classified("skipped", exc.reason)
    if isinstance(exc, BackendUnavailableError):
        return Classified("unavailable", type(exc).__name__)
    if isinstance(exc, SubTileFailedError):
        return Classified("failed", exc.cause, exc.retryable)
    if isinstance(exc, SubTileDataError):
        return Classified("failed", type(exc).__name__)
    if isinstance(exc, OSError) and not isinstance(exc, _PERMANENT_OS_ERRORS):
        return Classified("failed", type(exc).__name__, retryable=True)
    return Classified("failed", type(exc).__name__)


def error_text(exc: BaseException, limit: int = 2000) -> str:
    """``TypeName: message``, cut to ``limit`` characters."""
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def failures_line(what: str, failed: Sequence[tuple[object, str]], shown: int = 3) -> str:
    """``"N {what}: A (error); B (error) and K more"``: the one line that names the items
    a run could not do (``failed``: (item, error) pairs), the CLI's and the flow's."""
    named = "; ".join(f"{item} ({error})" for item, error in failed[:shown])
    more = f" and {len(failed) - shown} more" if len(failed) > shown else ""
    return f"{len(failed)} {what}: {named}{more}"


@dataclass(frozen=True)
class Failure:
    """The outcome of an item whose ``run_one`` raised (nothing else is known of it)."""

    stage: str
    label: str
    status: OutcomeStatus
    cause: str
    error: str  # "TypeName: message"
    message: str  # the exception's own message (what a CLI line shows)
    retryable: bool = False
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage, "label": self.label, "status": self.status,
            "cause": self.cause, "error": self.error, "message": self.message,
            "retryable": self.retryable, "seconds": self.seconds,
        }  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Failure:
        return cls(**data)


def run_guarded(
    stage: Stage[ItemT, Outcome], item: ItemT, storage: Storage, *, retries: int = 0
) -> Outcome:
    """Run ``stage.run_one(item)``; an exception becomes a :class:`Failure` outcome.

    A retryable failure — raised, or an outcome marked ``retryable`` — is tried again
    up to ``retries`` times. Nothing but ``KeyboardInterrupt``/``SystemExit`` escapes.
    """
    t0 = time.perf_counter()
    for attempt in range(retries + 1):
        last = attempt == retries
        try:
            outcome = stage.run_one(item, storage)
        except Exception as exc:  # classified by type; the other items go on
            verdict = classify(exc)
            if verdict.retryable and not last:
                log.info("%s: %s; try %d of %d", stage.label(item), exc, attempt + 2, retries + 1)
                continue
            return Failure(
                stage.name, stage.label(item), verdict.status, verdict.cause,
                error_text(exc), str(exc), verdict.retryable, time.perf_counter() - t0,
            )  # fmt: skip
        if not (outcome.retryable and outcome.status == "failed" and not last):
            return outcome
    raise AssertionError("unreachable")  # pragma: no cover


#: The cause an ``ok`` outcome carries when its fit did not converge within its budget.
UNCONVERGED = "not converged within the step budget"


@dataclass
class OutcomeSummary:
    """Counts by status, and failures and skips grouped by cause with one example each."""

    counts: Counter[str] = field(default_factory=Counter)
    #: (status, cause) -> number of items
    by_cause: Counter[tuple[str, str]] = field(default_factory=Counter)
    #: (status, cause) -> one example: "label: message"
    examples: dict[tuple[str, str], str] = field(default_factory=dict)

    def add(self, status: str, cause: str | None = None, example: str | None = None) -> None:
        self.counts[status] += 1
        if cause is not None:
            key = (status, cause)
            self.by_cause[key] += 1
            if example is not None:
                self.examples.setdefault(key, example)

    def add_outcome(self, outcome: Outcome) -> None:
        if outcome.status == "ok" and getattr(outcome, "converged", None) is False:
            steps = getattr(outcome, "n_steps", None)
            self.add("ok", UNCONVERGED, f"{outcome.label}: stopped after {steps} steps")
        else:
            self.add(outcome.status, outcome.cause, f"{outcome.label}: {outcome.error}")

    def merge(self, other: OutcomeSummary) -> None:
        self.counts.update(other.counts)
        self.by_cause.update(other.by_cause)
        for key, text in other.examples.items():
            self.examples.setdefault(key, text)

    @property
    def n_failed(self) -> int:
        return self.counts.get("failed", 0)

    @property
    def n_unconverged(self) -> int:
        return self.by_cause.get(("ok", UNCONVERGED), 0)

    def lines(
        self, statuses: Iterable[str] = ("failed", "unavailable", "skipped", "ok")
    ) -> list[str]:
        """One line per (status, cause), most frequent first: count, cause, example."""
        wanted = tuple(statuses)
        keys = sorted(
            (k for k in self.by_cause if k[0] in wanted),
            key=lambda k: (wanted.index(k[0]), -self.by_cause[k], k[1]),
        )
        return [
            f"{status} {self.by_cause[(status, cause)]}: {cause} "
            f"(e.g. {self.examples.get((status, cause), '?')})"
            for status, cause in keys
        ]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (flow results)."""
        return {
            "counts": dict(self.counts),
            "causes": [
                {"status": s, "cause": c, "count": n, "example": self.examples.get((s, c))}
                for (s, c), n in self.by_cause.most_common()
            ],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OutcomeSummary:
        out = cls(counts=Counter(data.get("counts", {})))
        for row in data.get("causes", []):
            key = (str(row["status"]), str(row["cause"]))
            out.by_cause[key] += int(row["count"])
            if row.get("example"):
                out.examples.setdefault(key, str(row["example"]))
        return out


@dataclass
class StageRun:
    """What :func:`drive` did: every outcome in item order, and their summary."""

    outcomes: list[Outcome] = field(default_factory=list)
    summary: OutcomeSummary = field(default_factory=OutcomeSummary)
    #: the outcome that stopped the run (status ``unavailable``), if any
    stopped_by: Outcome | None = None

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == "failed"]

    def add(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)
        self.summary.add_outcome(outcome)


def drive(
    stage: Stage[ItemT, Outcome],
    items: Sequence[ItemT],
    storage: Storage,
    *,
    retries: int = 0,
    on_outcome: Callable[[ItemT, Outcome], None] | None = None,
) -> StageRun:
    """Run ``items`` one after another with :func:`run_guarded`.

    A failed item is recorded and the next one goes on; an ``unavailable`` outcome
    (the stage cannot run at all) stops the run and is kept in ``stopped_by``.
    ``on_outcome`` is called after each item (progress bars, error lines).
    """
    run = StageRun()
    for item in items:
        outcome = run_guarded(stage, item, storage, retries=retries)
        if on_outcome is not None:
            on_outcome(item, outcome)
        if outcome.status == "unavailable":
            run.stopped_by = outcome
            break
        run.add(outcome)
    return run
