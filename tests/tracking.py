"""Test doubles for the driver's side of checkpointing: a recording tracker and executors that use it.

The backend tests check what an executor reports at the end of the pipeline (terminal tasks,
sentinels, failures, credit) without the real ledger: ``Tracked(XennaExecutor)`` and friends
run through the executor's own ``execute`` but get their completion tracker from the test.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from os import PathLike
from typing import Any

from nemo_curator.tasks import Task
from tests.stages import FixedSourceFilter


@dataclass
class RecordingTracker:
    """A completion tracker with a fixed source filter; records every terminal batch with its arrival time."""

    source_filter: FixedSourceFilter = field(default_factory=FixedSourceFilter)
    batches: list[tuple[float, list[Task]]] = field(default_factory=list)
    closed: list[bool] = field(default_factory=list)
    workers_started_calls: int = 0

    @classmethod
    def skipping(cls, sources: Iterable[str]) -> RecordingTracker:
        """A tracker whose filter reports ``sources`` as already complete."""
        return cls(FixedSourceFilter(frozenset(sources)))

    def on_terminal(self, tasks: list[Task]) -> None:
        self.batches.append((time.time(), list(tasks)))

    def workers_started(self) -> None:
        self.workers_started_calls += 1

    def close(self, success: bool, timeout_s: float | None = None) -> None:
        self.closed.append(success)

    @property
    def tasks(self) -> list[Task]:
        """Every terminal task received, in arrival order."""
        return [t for _, batch in self.batches for t in batch]


class TrackedExecutor:
    """Mixin before an executor class: ``tracker`` stands in for the checkpoint's ledger."""

    def __init__(
        self,
        tracker: RecordingTracker,
        checkpoint: str | PathLike = "unused-by-this-test",
        config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(config=config, checkpoint=checkpoint)  # type: ignore[call-arg]
        self.test_tracker = tracker

    def _open_tracker(self, plan: Any) -> RecordingTracker:
        return self.test_tracker
