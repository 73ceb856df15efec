"""The one error rule and the one driver every stage runs under (constellation.stages.base)."""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field

import pytest

from constellation.inference.base import BackendUnavailableError, NothingToFitError
from constellation.io.storage import Storage
from constellation.stages.base import (
    Failure,
    Outcome,
    OutcomeSummary,
    SubTileFailedError,
    classify,
    drive,
    failures_line,
    run_guarded,
)


@dataclass(frozen=True)
class Done:
    """A stage outcome (the fields of the Outcome protocol)."""

    label: str
    status: str = "ok"
    cause: str | None = None
    error: str | None = None
    retryable: bool = False


@dataclass
class Scripted:
    """A stage whose items say what run_one does: a list of exceptions to raise (one per
    call, in turn) before it returns an ``ok`` outcome."""

    name: str = "scripted"
    calls: list[str] = field(default_factory=list)

    def label(self, item: tuple[str, list[BaseException]]) -> str:
        return f"item {item[0]}"

    def run_one(self, item: tuple[str, list[BaseException]], storage: Storage) -> Done:
        key, script = item
        self.calls.append(key)
        if script:
            raise script.pop(0)
        return Done(self.label(item))


def test_outcomes_of_every_stage_are_outcomes() -> None:
    from constellation.stages.infer import InferOutcome
    from constellation.stages.prepare import PrepareResult

    prepared = PrepareResult(
        tile_id=7, subtiles=4, written=0, unchanged=4, files_written=0,
        sources=-1, extended_sources=-1, exposures=-1, skipped=True,
    )  # fmt: skip
    assert isinstance(prepared, Outcome)
    assert (prepared.label, prepared.status) == ("tile 7", "done")
    inferred = InferOutcome(7, 1, 2, "failed", 0.1, cause="KeyError", error="KeyError: 1")
    assert isinstance(inferred, Outcome)
    assert inferred.label == "tile 7 r1_c2"
    failure = Failure("prepare", "tile 7", "failed", "ValueError", "ValueError: x", "x")
    assert isinstance(failure, Outcome)
    assert Failure.from_dict(failure.to_dict()) == failure


@pytest.mark.parametrize(
    ("exc", "status", "cause", "retryable"),
    [
        (NothingToFitError("no sources"), "skipped", "no sources", False),
        (BackendUnavailableError("no GPU"), "unavailable", "BackendUnavailableError", False),
        (ConnectionResetError("reset"), "failed", "ConnectionResetError", True),
        (TimeoutError("slow"), "failed", "TimeoutError", True),
        (FileNotFoundError("gone"), "failed", "FileNotFoundError", False),
        (PermissionError("denied"), "failed", "PermissionError", False),
        (ValueError("bad data"), "failed", "ValueError", False),
        (SubTileFailedError("t", "e", "KeyError", True), "failed", "KeyError", True),
    ],
)
def test_classification_by_type(
    exc: BaseException, status: str, cause: str, retryable: bool
) -> None:
    verdict = classify(exc)
    assert (verdict.status, verdict.cause, verdict.retryable) == (status, cause, retryable)


def test_subtile_failed_error_pickles_with_its_cause() -> None:
    err = pickle.loads(pickle.dumps(SubTileFailedError("tile 1 r0_c0", "boom", "OSError", True)))
    got = (err.label, err.error, err.cause, err.retryable)
    assert got == ("tile 1 r0_c0", "boom", "OSError", True)


def test_a_retryable_failure_is_tried_again_up_to_the_limit() -> None:
    stage = Scripted()
    storage = Storage()
    outcome = run_guarded(stage, ("a", [ConnectionError("1"), ConnectionError("2")]), storage,
                          retries=2)  # fmt: skip
    assert outcome.status == "ok"
    assert stage.calls == ["a", "a", "a"]

    stage = Scripted()
    outcome = run_guarded(stage, ("b", [ConnectionError("1"), ConnectionError("2")]), storage,
                          retries=1)  # fmt: skip
    assert isinstance(outcome, Failure)
    assert (outcome.status, outcome.cause, outcome.retryable) == ("failed", "ConnectionError", True)
    assert outcome.message == "2"
    assert outcome.error == "ConnectionError: 2"
    assert stage.calls == ["b", "b"]


def test_a_permanent_failure_is_not_tried_again() -> None:
    stage = Scripted()
    outcome = run_guarded(stage, ("c", [ValueError("NaN coordinates")]), Storage(), retries=3)
    assert (outcome.status, outcome.cause, outcome.label) == ("failed", "ValueError", "item c")
    assert stage.calls == ["c"]


def test_a_returned_retryable_failure_is_run_again() -> None:
    class Flaky(Scripted):
        def run_one(self, item: tuple[str, list[BaseException]], storage: Storage) -> Done:
            self.calls.append(item[0])
            if len(self.calls) == 1:
                return Done("x", "failed", "OSError", "OSError: reset", retryable=True)
            return Done("x")

    stage = Flaky()
    assert run_guarded(stage, ("x", []), Storage(), retries=1).status == "ok"
    assert stage.calls == ["x", "x"]


def test_drive_goes_on_after_a_failure_and_stops_when_the_stage_cannot_run() -> None:
    stage = Scripted()
    seen: list[str] = []
    items = [
        ("1", []),
        ("2", [KeyError("OBJECT_ID")]),
        ("3", [NothingToFitError("no sources")]),
        ("4", []),
        ("5", [BackendUnavailableError("SHINE is not installed")]),
        ("6", []),
    ]
    run = drive(stage, items, Storage(), on_outcome=lambda item, o: seen.append(item[0]))
    assert stage.calls == ["1", "2", "3", "4", "5"]  # 6 never ran
    assert seen == ["1", "2", "3", "4", "5"]
    assert [o.status for o in run.outcomes] == ["ok", "failed", "skipped", "ok"]
    assert run.stopped_by is not None
    assert run.stopped_by.label == "item 5"
    assert [o.label for o in run.failed] == ["item 2"]
    assert run.summary.counts == {"ok": 2, "failed": 1, "skipped": 1}
    assert run.summary.lines() == [
        "failed 1: KeyError (e.g. item 2: KeyError: 'OBJECT_ID')",
        "skipped 1: no sources (e.g. item 3: NothingToFitError: no sources)",
    ]


def test_summary_round_trips_and_merges() -> None:
    a = OutcomeSummary()
    a.add_outcome(Done("t1", "failed", "OSError", "OSError: x"))
    a.add_outcome(Done("t2"))
    b = OutcomeSummary.from_dict(a.to_dict())
    assert b == a
    b.merge(a)
    assert b.counts == {"failed": 2, "ok": 2}
    assert b.n_failed == 2


def test_index_and_assemble_outcomes() -> None:
    from constellation.catalog.assemble import AssembleReport
    from constellation.io.quadrant_index import IndexSummary
    from constellation.stages.assemble import AssembleOutcome
    from constellation.stages.index import IndexOutcome

    assert IndexOutcome(IndexSummary("i", exposures=2, det_read=2)).status == "ok"
    unchanged = IndexOutcome(IndexSummary("i", exposures=2, det_skipped=2))
    assert isinstance(unchanged, Outcome)
    assert unchanged.status == "done"
    assert IndexOutcome(IndexSummary("i", det_skipped=1, det_removed=1)).status == "ok"
    nothing = IndexOutcome(IndexSummary("i", exposures=3, written=False), "s3://b/VIS")
    assert (nothing.status, nothing.cause) == ("failed", "nothing indexed")
    assert (
        nothing.error == "none of the 3 exposures under s3://b/VIS could be indexed: i not written"
    )

    def status(**counts: object) -> tuple[str, str | None]:
        outcome = AssembleOutcome(AssembleReport(run_id="r", **counts))  # type: ignore[arg-type]
        assert isinstance(outcome, Outcome)
        return outcome.status, outcome.cause

    assert status(found=0) == ("skipped", "no results")
    assert status(found=4, subtiles_committed=4) == ("ok", None)
    assert status(found=4, skipped_unchanged=4) == ("done", None)
    assert status(found=4, subtiles_committed=3, unreadable=1, unreadable_dirs=["d"]) == (
        "failed", "unreadable results",
    )  # fmt: skip


def test_failures_line_names_three_and_counts_the_rest() -> None:
    assert failures_line("tile(s) not prepared", [(7, "OSError: gone")]) == (
        "1 tile(s) not prepared: 7 (OSError: gone)"
    )
    five = [(t, f"e{t}") for t in range(5)]
    assert failures_line("tile(s) not prepared", five) == (
        "5 tile(s) not prepared: 0 (e0); 1 (e1); 2 (e2) and 2 more"
    )
    assert failures_line("x", five, shown=5).endswith("4 (e4)")
