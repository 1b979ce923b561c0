"""Driver-side completion tracking for one run: terminal tasks in, acknowledged reports out.

The executors hand every batch of last-stage outputs to ``on_terminal`` as it reaches the
driver on their own result channel. The tracker turns them into ``Report``s and a sender
thread commits them to the ledger actor in acknowledged batches, as fast as the ledger
commits (the executor's loop does not wait for it). A report leaves the
buffer only after the ledger has committed it to LMDB, so a crash at any point can only make
work be redone, never lost.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from loguru import logger

from nemo_curator.resumability.report import Report
from nemo_curator.resumability.status import LedgerStatus
from nemo_curator.tasks import FailedTask, Task

if TYPE_CHECKING:
    from nemo_curator.resumability.actor import LedgerHandle
    from nemo_curator.resumability.shard import Shard
    from nemo_curator.stages.base import ProcessingStage

#: How long a close that gave up on the ledger waits for the sender thread to end.
_ABANDON_JOIN_S = 2.0


@dataclass
class TrackerCounts:
    """What this run's tracker has seen and the ledger has acknowledged.

    ``status`` is the ledger's latest status or acknowledgement (``None`` until the ledger is ready).
    """

    reports_sent: int = 0
    ledger_calls: int = 0
    terminal_tasks: int = 0
    failed_tasks: int = 0
    completed_this_run: int = 0
    status: LedgerStatus | None = None


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

    ``on_terminal`` never waits for the ledger: it appends reports to a buffer that a sender
    thread commits in acknowledged batches. A batch goes once ``send_at_reports`` reports are
    buffered or the oldest has waited ``max_delay_s``, and calls are at least
    ``min_interval_s`` apart. The first bound keeps the outputs a kill makes us redo few when
    outputs arrive fast; the second keeps them bounded in time when outputs arrive slowly,
    without a call (an LMDB commit) per trickle of outputs. The executor's result loop never
    stalls on the ledger.

    Invariant: every report handed to ``on_terminal`` is acknowledged by the ledger, or is in
    the buffer, or is in the one batch being sent. ``close`` commits everything (also after a
    failed run: the outputs the reports describe were written). A failed send is kept and
    raised by the next ``on_terminal``, ``flush`` or ``close``: unacknowledged reports only
    mean redone work, never a wrong skip.
    """

    def __init__(
        self,
        handle: LedgerHandle,
        checkpoint: str,
        *,
        send_at_reports: int = 64,
        max_delay_s: float = 0.1,
        min_interval_s: float = 0.1,
        max_buffered_reports: int = 200_000,
        progress_interval_s: float = 15.0,
        show_progress_bar: bool | None = None,
        defer_ledger_s: float = 30.0,
    ) -> None:
        self.handle = handle
        self.defer_ledger_s = defer_ledger_s
        self.checkpoint = checkpoint
        self.source_filter = handle.source_filter()
        self.send_at_reports = send_at_reports
        self.max_delay_s = max_delay_s
        self.min_interval_s = min_interval_s
        self.max_buffered_reports = max_buffered_reports
        self.progress_interval_s = progress_interval_s
        self.counts = TrackerCounts()
        self._cond = threading.Condition()
        self._buffer: list[Report] = []
        self._oldest_at = 0.0
        self._flush_requested = False
        self._sending = 0
        self._error: BaseException | None = None
        self._stop = False
        self._completed_at_start: int | None = None
        self._last_progress = time.monotonic()
        self._announced = False
        self._bar: Any = None
        if show_progress_bar is None:
            show_progress_bar = sys.stderr.isatty() and not os.environ.get("CI")
        self._show_bar = show_progress_bar
        self._sender = threading.Thread(target=self._send_loop, name="ledger-reports", daemon=True)
        self._sender.start()

    @classmethod
    def open(
        cls,
        checkpoint: str | os.PathLike,
        stages: list[ProcessingStage],
        *,
        allow_pipeline_change: bool = False,
        shard: Shard | None = None,
        defer_start: bool = True,
        ledger_in_driver: bool = False,
        **options: Any,
    ) -> LedgerTracker:
        """Validate the checkpoint, check the pipeline fingerprint and start the ledger actor.

        With ``shard`` the run processes only the sources of that shard (see ``shard``).

        The actor loads the checkpoint in the background while the executor starts its workers;
        a ledger that cannot start fails the run at the tracker's next call. With ``defer_start``
        and a fresh checkpoint (nothing to look up) the actor is submitted later still, so that
        its process start does not compete with the executor's own workers: at
        ``workers_started`` (an executor that knows when its workers are up), at the first
        report, or ``defer_ledger_s`` after the open, whichever comes first. A run that ends
        before any of these leaves no record. (A fresh checkpoint's source filter answers without
        the ledger, memberships of a partitioning stage included: ``LedgerSourceFilter``.)
        ``ledger_in_driver`` hosts a fresh checkpoint's ledger in this process instead of a Ray
        actor (``LedgerHandle.open``'s ``in_driver``).
        """
        from nemo_curator.resumability.actor import LedgerHandle

        handle = LedgerHandle.open(
            checkpoint,
            stages,
            allow_fingerprint_change=allow_pipeline_change,
            wait=False,
            shard=shard,
            defer_start=defer_start,
            in_driver=ledger_in_driver and defer_start,
        )
        return cls(handle, str(checkpoint), **options)

    def workers_started(self) -> None:
        """The executor's workers are up: submit the ledger actor now if its start was deferred.

        A ledger in the driver is made by the sender thread at the first report instead: it
        would write its first records on the executor's thread here.
        """
        if not self.handle.in_driver:
            self.handle.start()
        with self._cond:
            self._cond.notify_all()

    # -- the channel --------------------------------------------------------------------

    def on_terminal(self, tasks: list[Task]) -> None:
        if not tasks:
            return
        reports = reports_for(tasks)
        with self._cond:
            self._raise_error()
            self.counts.terminal_tasks += len(tasks)
            self.counts.failed_tasks += sum(1 for t in tasks if isinstance(t, FailedTask))
            was_empty = not self._buffer
            if was_empty:
                self._oldest_at = time.monotonic()
            self._buffer.extend(reports)
            # Wake the sender when its deadline starts (it waits without one on an empty
            # buffer) and when a batch is full; not for every report in between.
            if was_empty or len(self._buffer) >= self.send_at_reports:
                self._cond.notify_all()
            # Backpressure only when the ledger falls far behind (bounds the driver's memory).
            while len(self._buffer) > self.max_buffered_reports and self._error is None:
                self._cond.wait()

    def flush(self) -> None:
        """Block until every report given so far is committed (raises a failed send)."""
        with self._cond:
            self._flush_requested = True
            self._cond.notify_all()
            while (self._buffer or self._sending) and self._error is None:
                self._cond.wait()
            self._flush_requested = False
            self._raise_error()

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    # -- the sender thread --------------------------------------------------------------

    def _due(self) -> bool:
        """Whether the sender should stop waiting (called holding the condition)."""
        if not self._buffer:
            return self._stop
        return (
            self._stop
            or self._flush_requested
            or len(self._buffer) >= self.send_at_reports
            or time.monotonic() - self._oldest_at >= self.max_delay_s
        )

    def _send_loop(self) -> None:
        try:
            with self._cond:  # a deferred actor starts with the first report (or workers_started)
                start_by = time.monotonic() + self.defer_ledger_s
                while not (self.handle.started or self._buffer or self._stop or self._flush_requested):
                    if (left := start_by - time.monotonic()) <= 0:
                        break
                    self._cond.wait(left)
                if not (self.handle.started or self._buffer):
                    if self._stop:
                        return  # stopped before anything was reported: the deferred actor is not needed
                    self.handle.start()
            status = self.handle.wait_ready()
            with self._cond:
                self.counts.status = status
                self._completed_at_start = status.completed_sources
            logger.info(
                "checkpoint {}: {} source(s) already complete, {} failed earlier",
                self.checkpoint,
                self._completed_at_start,
                status.failed_sources,
            )
            while True:
                with self._cond:
                    while not self._due():
                        self._cond.wait(self._oldest_at + self.max_delay_s - time.monotonic() if self._buffer else None)
                    if not self._buffer:
                        return
                    batch, self._buffer = self._buffer, []
                    self._sending = len(batch)
                    self._cond.notify_all()  # wakes an on_terminal held by backpressure
                began = time.monotonic()
                ack = self.handle.report(batch)
                with self._cond:
                    self._sending = 0
                    self.counts.reports_sent += len(batch)
                    self.counts.ledger_calls += 1
                    if isinstance(ack, LedgerStatus):
                        self.counts.status = ack
                    self._cond.notify_all()
                self._progress()
                # At most one call per min_interval_s (new reports notify the condition, so
                # wait for the deadline, not for the first wake-up); flush and close skip it.
                resume_at = began + self.min_interval_s
                with self._cond:
                    while not (self._stop or self._flush_requested) and (left := resume_at - time.monotonic()) > 0:
                        self._cond.wait(left)
        except BaseException as exc:  # kept, and raised on the executor's thread
            with self._cond:
                self._error = exc
                self._cond.notify_all()

    # -- progress -------------------------------------------------------------------------

    def _progress(self, final: bool = False) -> None:
        status = self.counts.status
        if status is None:
            return
        done = status.completed_sources
        total = status.sources_seen or None
        skipped = status.sources_skipped
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

    def close(self, success: bool, timeout_s: float | None = None) -> None:
        """Commit every report still held, close the ledger and log the summary.

        With ``timeout_s`` (a preempted run) this returns within about that many seconds: the
        reports not acknowledged by then are given up (logged with their number; their sources
        are redone by the next run) and the ledger actor is stopped without waiting for it.
        Stopping it can lose nothing it acknowledged, and a report it never acknowledged can
        only make work be redone.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        status: LedgerStatus | None = None
        handle_stuck = False
        try:
            with self._cond:
                self._stop = True
                self._cond.notify_all()
            self._sender.join(_left(deadline))
            if self._sender.is_alive():
                handle_stuck = self._abandon(timeout_s or 0.0)
            else:
                self._raise_error()
                if self.handle.started:  # else nothing was reported: no record, no status
                    if deadline is not None:  # the handle's calls wait at most what is left
                        self.handle.timeout_s = min(self.handle.timeout_s, max(_left(deadline) or 0.0, 1.0))
                    status = self.handle.status()
                    self.counts.status = status
        finally:
            if self._bar is not None:
                self._bar.close()
            if not handle_stuck:
                self.handle.close()
        if status is None:
            return
        done = status.completed_sources
        self.counts.completed_this_run = done - (self._completed_at_start or 0)
        logger.info(
            "checkpoint {}: {} source(s) complete ({} in this run, {} skipped as already complete), "
            "{} failed, {} in flight{}",
            self.checkpoint,
            done,
            self.counts.completed_this_run,
            status.sources_skipped,
            status.failed_sources,
            status.in_flight_sources,
            "" if success else " (the run did not finish: rerun the same command to resume)",
        )

    def _abandon(self, waited_s: float) -> bool:
        """Give up on the reports not yet acknowledged and stop the ledger actor without waiting.

        Returns whether the handle is left unclosed: its lock is held by the sender thread,
        which is stuck in a ledger call. Killing the actor ends that call, and the thread with it.
        """
        import ray

        with self._cond:
            pending = len(self._buffer) + self._sending
            self._buffer = []
        logger.warning(
            "checkpoint {}: the ledger did not acknowledge {} report(s) within {:g} s; their sources stay "
            "incomplete and are redone by the next run",
            self.checkpoint,
            pending,
            waited_s,
        )
        if not self.handle.in_driver:  # a ledger in the driver ends with the process
            with contextlib.suppress(Exception):
                ray.kill(self.handle.actor, no_restart=True)
        self._sender.join(_ABANDON_JOIN_S)
        return self._sender.is_alive()


def _left(deadline: float | None) -> float | None:
    """Seconds until ``deadline`` (never negative), or ``None`` for no deadline."""
    return None if deadline is None else max(deadline - time.monotonic(), 0.0)
