"""Completion reports on the actor pool: the driver's own result loop is the channel.

Every batch of last-stage outputs reaches the driver through ``ray.wait`` / ``ray.get`` in the
scheduler loop; the executor hands it here the moment it arrives, and this module forwards it
to the run's ``CompletionTracker`` (which acknowledges reports into the ledger). No worker
talks to the ledger, so there is no fire-and-forget message to lose and no ordering between
workers to worry about: credit rides inside the tasks and comes back with them.

This module is imported only when a tracker is present, so ``checkpoint=None`` costs nothing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from loguru import logger

from nemo_curator.backends.base import CompletionTracker
from nemo_curator.tasks import FailedTask, NoneTask, Task


@dataclass
class TerminalForwarder:
    """Forwards each batch of terminal tasks (outputs and sentinels) to ``tracker.on_terminal``.

    Invariant: every non-empty batch given to ``forward`` is passed to the tracker exactly once,
    synchronously, before ``forward`` returns, and in the order the driver received them.
    """

    tracker: CompletionTracker
    batches: int = 0
    outputs: int = 0
    filtered: int = 0
    failed: int = 0
    started_at: float = field(default_factory=time.perf_counter)
    first_batch_after_s: float | None = None

    def forward(self, tasks: list[Task]) -> None:
        if not tasks:
            return
        self.tracker.on_terminal(tasks)
        if self.first_batch_after_s is None:
            self.first_batch_after_s = time.perf_counter() - self.started_at
        self.batches += 1
        for task in tasks:
            if isinstance(task, FailedTask):
                self.failed += 1
            elif isinstance(task, NoneTask):
                self.filtered += 1
            else:
                self.outputs += 1

    def log_summary(self, skipped_sources: int) -> None:
        first = "n/a" if self.first_batch_after_s is None else f"{self.first_batch_after_s:.2f}s"
        logger.info(
            "ray_actor_pool: forwarded {} terminal batch(es) to the checkpoint: {} output(s), {} filtered, "
            "{} failed; first batch {} after the pools were up; {} source(s) skipped as already complete",
            self.batches,
            self.outputs,
            self.filtered,
            self.failed,
            first,
            skipped_sources,
        )
