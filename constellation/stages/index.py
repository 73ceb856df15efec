"""The index stage in the stage shape (:mod:`constellation.stages.base`).

The quadrant index is one file, so the stage has one item: the VIS prefix to list and
the index to build or update (:func:`constellation.io.quadrant_index.build_quadrant_index`
does the work; its marker is the size and ETag it records per file, so a rerun over
unchanged files reads nothing). ``constellation index`` and the index flow's task both
run :class:`IndexStage` under :func:`~constellation.stages.base.run_guarded`: the same
refusals (no DET file under the prefix; no exposure readable) in the same words.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

from constellation.io.quadrant_index import IndexSummary, ProgressFn
from constellation.io.storage import Storage, join_url
from constellation.manifest import layout
from constellation.stages.base import OutcomeStatus

if TYPE_CHECKING:
    from constellation.config import Settings

__all__ = ["IndexItem", "IndexOutcome", "IndexStage", "plan"]


class IndexItem(BaseModel):
    """The VIS prefix to index and the index file to build or update."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    vis_uri: str
    index_url: str
    full: bool = False
    workers: int = 8


def plan(
    settings: Settings,
    *,
    vis_uri: str | None = None,
    index_url: str | None = None,
    full: bool = False,
    workers: int = 8,
) -> list[IndexItem]:
    """The one item: ``{data_uri}/q1/VIS`` into ``{work_uri}/quadrant_index.parquet``
    unless given."""
    storage_cfg = settings.runtime.storage
    return [
        IndexItem(
            vis_uri=vis_uri or join_url(storage_cfg.data_uri, "q1", "VIS"),
            index_url=index_url or layout.quadrant_index_url(storage_cfg.work_uri),
            full=full,
            workers=workers,
        )
    ]


@dataclass(frozen=True)
class IndexOutcome:
    """The index build's outcome: ``ok`` (something read), ``done`` (every file
    unchanged) or ``failed`` (no exposure could be read: nothing written), with the
    build's :class:`~constellation.io.quadrant_index.IndexSummary`. Exposures left out
    are in ``summary.failed`` (the index is written without them)."""

    summary: IndexSummary
    vis_uri: str = ""

    @property
    def label(self) -> str:
        return f"index {self.summary.url}"

    @property
    def status(self) -> OutcomeStatus:
        if not self.summary.written:
            return "failed"
        return "ok" if self.summary.files_read or self.summary.det_removed else "done"

    @property
    def cause(self) -> str | None:
        return "nothing indexed" if self.status == "failed" else None

    @property
    def error(self) -> str | None:
        if self.status != "failed":
            return None
        return (
            f"none of the {self.summary.exposures} exposures under {self.vis_uri} could be "
            f"indexed: {self.summary.url} not written"
        )

    @property
    def retryable(self) -> bool:
        return False


@dataclass(frozen=True)
class IndexStage:
    """Items :class:`IndexItem`; ``progress(done, total)`` over the exposures."""

    progress: ProgressFn | None = None
    name: str = "index"

    def label(self, item: IndexItem) -> str:
        return f"index of {item.vis_uri}"

    def run_one(self, item: IndexItem, storage: Storage) -> IndexOutcome:
        """Build or update the index; ``ValueError`` when there is no DET file under the
        prefix (an outcome ``failed`` when no exposure could be read)."""
        from constellation.io.observations import list_observations
        from constellation.io.quadrant_index import build_quadrant_index

        obs = list_observations(storage, item.vis_uri)
        if not obs.exposures:
            raise ValueError(
                f"no DET file under {item.vis_uri} (expected {{obs_id}}/EUC_VIS_SWL-DET-*.fits)"
            )
        summary = build_quadrant_index(
            storage, obs, item.index_url, full=item.full, workers=item.workers,
            progress=self.progress,
        )  # fmt: skip
        return IndexOutcome(summary, item.vis_uri)
