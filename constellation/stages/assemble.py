"""The assemble stage in the stage shape (:mod:`constellation.stages.base`).

One item: the tiles whose results to commit (None: all) and how. The work is
:func:`constellation.catalog.assemble.assemble`: it lists the result files (its plan),
commits in batches, and its marker is each committed file's sha256 in the catalog, so a
rerun commits nothing. ``constellation assemble`` and the assemble flow's task both run
:class:`AssembleStage` under :func:`~constellation.stages.base.run_guarded`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

from constellation.io.storage import Storage
from constellation.stages.base import OutcomeStatus

if TYPE_CHECKING:
    from constellation.catalog.assemble import AssembleReport
    from constellation.config import Settings

__all__ = ["AssembleItem", "AssembleOutcome", "AssembleStage", "plan"]


class AssembleItem(BaseModel):
    """What to commit: the results of ``tiles`` (None: every tile) under ``run_id``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tiles: list[int] | None = None
    run_id: str | None = None
    batch_size: int = 1000
    only_config: bool = True
    workers: int | None = None


def plan(
    tiles: Iterable[int] | None = None,
    run_id: str | None = None,
    *,
    batch_size: int = 1000,
    only_config: bool = True,
    workers: int | None = None,
) -> list[AssembleItem]:
    """The one item."""
    chosen = None if tiles is None else sorted(set(tiles))
    return [AssembleItem(tiles=chosen, run_id=run_id, batch_size=batch_size,
                         only_config=only_config, workers=workers)]  # fmt: skip


@dataclass(frozen=True)
class AssembleOutcome:
    """``ok`` (something committed), ``done`` (every result already in the catalog),
    ``skipped`` (no result found) or ``failed`` (results that could not be read; the
    readable ones are committed), with the :class:`AssembleReport`."""

    report: AssembleReport

    @property
    def label(self) -> str:
        return f"assemble {self.report.run_id}"

    @property
    def status(self) -> OutcomeStatus:
        r = self.report
        if r.unreadable:
            return "failed"
        if r.found == 0:
            return "skipped"
        return "ok" if r.subtiles_committed else "done"

    @property
    def cause(self) -> str | None:
        return {"failed": "unreadable results", "skipped": "no results"}.get(self.status)

    @property
    def error(self) -> str | None:
        r = self.report
        if r.unreadable:
            return f"{r.unreadable} results could not be read: {r.unreadable_dirs[:5]}"
        return None

    @property
    def retryable(self) -> bool:
        return False


@dataclass(frozen=True)
class AssembleStage:
    """Items :class:`AssembleItem`; ``progress(done, total)`` over the results."""

    settings: Settings
    progress: Callable[[int, int], None] | None = None
    name: str = "assemble"

    def label(self, item: AssembleItem) -> str:
        return "assemble " + ("every tile" if item.tiles is None else f"{len(item.tiles)} tiles")

    def run_one(self, item: AssembleItem, storage: Storage) -> AssembleOutcome:
        from constellation.catalog.assemble import assemble

        report = assemble(
            self.settings, tiles=item.tiles, batch_size=item.batch_size, run_id=item.run_id,
            only_config=item.only_config, workers=item.workers, storage=storage,
            progress=self.progress,
        )  # fmt: skip
        return AssembleOutcome(report)
