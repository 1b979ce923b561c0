"""Driver-side completion tracking for one run: terminal tasks in, acknowledged reports out.

The executors hand every batch of last-stage outputs to ``on_terminal`` as it reaches the
driver on their own result channel. The tracker turns them into ``Report``s, buffers them
briefly and sends them to the ledger actor in acknowledged batches. A report leaves the
buffer only after the ledger has committed it to LMDB, so a crash at any point can only make
work be redone, never lost.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from loguru import logger

from nemo_curator.resumability.report import Report
from nemo_curator.tasks import FailedTask, Task

if TYPE_CHECKING:
    from nemo_curator.resumability.actor import LedgerHandle
    from nemo_curator.stages.base import ProcessingStage


@dataclass
class TrackerCounts:
    """What this run's tracker has seen and the ledger has acknowledged."""

    reports_sent: int = 0
    ledger_calls: int = 0
    terminal_tasks: int = 0
    failed_tasks: int = 0
    completed_this_run: int = 0
    status: dict[str, Any] = field(default_factory=dict)


def reports_for(tasks: list[Task]) -> list[Report]:
    """One report per (terminal task, source it carries credit of)."""
    reports: list[Report] = []
    for task in tasks:
        lineage = task._lineage
        if not lineage:
            continue
        failure = (task.reason or "failed") if isinstance(task, FailedTask) else None
        for source_id, credit in lineage.items():
            reports.append(Report(source_id, task.task_id, credit, failure))
    return reports


class LedgerTracker:
    """Implements ``nemo_curator.backends.base.CompletionTracker`` over a ``LedgerHandle``.

    Invariant: every report handed to ``on_terminal`` is either acknowledged by the ledger or
    still in ``_buffer``; ``close`` flushes the buffer (also after a failed run: the outputs
    it describes were written).
    """

    def __init__(
        self,
        handle: LedgerHandle,
        checkpoint: str,
        *,
        flush_reports: int = 4096,
        flush_interval_s: float = 0.5,
        progress_interval_s: float = 15.0,
        show_progress_bar: bool | None = None,
    ) -> None:
        self.handle = handle
        self.checkpoint = checkpoint
        self.source_filter = handle.source_filter()
        self.flush_reports = flush_reports
        self.flush_interval_s = flush_interval_s
        self.progress_interval_s = progress_interval_s
        self.counts = TrackerCounts()
        self._buffer: list[Report] = []
        self._last_flush = time.monotonic()
        self._last_progress = time.monotonic()
        self._announced = False
        self._bar: Any = None
        if show_progress_bar is None:
            show_progress_bar = sys.stderr.isatty() and not os.environ.get("CI")
        self._show_bar = show_progress_bar
        status = handle.status()
        self.counts.status = status
        self._completed_at_start = int(status.get("completed_sources", 0))
        logger.info(
            "checkpoint {}: {} source(s) already complete, {} failed earlier",
            checkpoint,
            self._completed_at_start,
            status.get("failed_sources", 0),
        )

    @classmethod
    def open(
        cls,
        checkpoint: str | os.PathLike,
        stages: list[ProcessingStage],
        *,
        allow_pipeline_change: bool = False,
        **options: Any,
    ) -> LedgerTracker:
        """Validate the checkpoint, check the pipeline fingerprint and start the ledger actor."""
        from nemo_curator.resumability.actor import LedgerHandle

        handle = LedgerHandle.open(checkpoint, stages, allow_fingerprint_change=allow_pipeline_change)
        return cls(handle, str(checkpoint), **options)

    # -- the channel --------------------------------------------------------------------

    def on_terminal(self, tasks: list[Task]) -> None:
        if not tasks:
            return
        self.counts.terminal_tasks += len(tasks)
        self.counts.failed_tasks += sum(1 for t in tasks if isinstance(t, FailedTask))
        self._buffer.extend(reports_for(tasks))
        now = time.monotonic()
        if len(self._buffer) >= self.flush_reports or now - self._last_flush >= self.flush_interval_s:
            self.flush()

    def flush(self) -> None:
        """Send buffered reports; returns once the ledger has committed them."""
        self._last_flush = time.monotonic()
        if not self._buffer:
            return
        batch = self._buffer
        ack = self.handle.report(batch)
        self._buffer = []
        self.counts.reports_sent += len(batch)
        self.counts.ledger_calls += 1
        self._on_ack(ack)

    def _on_ack(self, ack: Any) -> None:
        status = ack if isinstance(ack, dict) else getattr(ack, "__dict__", {})
        if status:
            self.counts.status.update(status)
        self._progress()

    # -- progress -------------------------------------------------------------------------

    def _progress(self, final: bool = False) -> None:
        status = self.counts.status
        done = int(status.get("completed_sources", 0))
        total = int(status.get("sources_seen", 0)) or None
        skipped = int(status.get("sources_skipped", 0))
        if total and not self._announced:
            self._announced = True
            logger.info("resuming: {} of {} sources already complete", skipped, total)
        if self._show_bar:
            if self._bar is None:
                from tqdm import tqdm

                self._bar = tqdm(total=total, desc="sources complete", unit="src")
            if total and self._bar.total != total:
                self._bar.total = total
            self._bar.n = done
            self._bar.refresh()
            return
        now = time.monotonic()
        if final or now - self._last_progress >= self.progress_interval_s:
            self._last_progress = now
            logger.info("progress: {} / {} sources complete", done, total if total else "?")

    def close(self, success: bool) -> None:
        try:
            self.flush()
            self.counts.status.update(self.handle.status())
        finally:
            if self._bar is not None:
                self._bar.close()
            self.handle.close()
        status = self.counts.status
        done = int(status.get("completed_sources", 0))
        self.counts.completed_this_run = done - self._completed_at_start
        logger.info(
            "checkpoint {}: {} source(s) complete ({} in this run, {} skipped as already complete), "
            "{} failed, {} in flight{}",
            self.checkpoint,
            done,
            self.counts.completed_this_run,
            status.get("sources_skipped", 0),
            status.get("failed_sources", 0),
            status.get("in_flight_sources", 0),
            "" if success else " (the run did not finish: rerun the same command to resume)",
        )
