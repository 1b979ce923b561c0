"""Checkpointed runs on cosmos-xenna: SERVING mode, so the driver sees every terminal task.

In STREAMING mode xenna hands the last stage's outputs back only when ``run_pipeline``
returns. In SERVING mode its main loop pushes each last-stage output to a sink queue as it
completes, which is the channel completion reports travel on here (the last stage hands
each call's outputs over as one ``OutputPack``, because xenna fetches sink items one by one):

- ``run_pipeline`` runs on a background thread (its exception is kept and re-raised on the
  caller's thread);
- the initial tasks go in as the spec's ``input_data``, which xenna queues all at once; the
  source queue gets only ``None``, the close signal. (xenna reads the source queue one item
  per main-loop iteration, at most 100 per second: 4,000 initial tasks fed that way took 43 s
  against 15 s without a checkpoint.) With ``serving_drain_on_close`` xenna finishes
  everything it read before it returns;
- the caller's thread drains the sink and hands the tasks to ``tracker.on_terminal`` in
  batches: whatever has arrived when it looks (a batch goes as soon as it holds
  ``report_batch_size`` tasks), or, with ``report_interval_s`` > 0, whatever arrived within
  that time of a batch's first task. It returns all of them at the end.

Both queues are plain ``queue.Queue`` objects: the pipeline's main loop runs in this process,
so nothing needs pickling. If reporting fails (or the caller is interrupted) the sink is
closed: xenna's next push raises, which stops its loop and its worker pools.

This module is imported only when a tracker is present.
"""

from __future__ import annotations

import gc
import queue
import threading
import time
from typing import Any

from loguru import logger

from nemo_curator.backends.base import CompletionTracker
from nemo_curator.backends.xenna.executor import (
    XennaSettings,
    clear_traceback_frames,
    pipeline_config,
    surface_failure,
)
from nemo_curator.tasks import Task

#: How long to wait for xenna's loop to stop after the driver gave up on a run.
_ABORT_GRACE_S = 30.0
#: Poll period of the drain loop while no batch is pending (checks the pipeline thread).
_IDLE_POLL_S = 0.2


class SinkClosedError(RuntimeError):
    """Raised inside xenna's loop when it pushes to a sink the driver no longer reads."""


class _ClosableSink(queue.Queue):
    """The SERVING sink: once closed, a push raises and so stops xenna's main loop."""

    def __init__(self) -> None:
        super().__init__()
        self._closed = threading.Event()

    def close(self) -> None:
        self._closed.set()

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        if self._closed.is_set():
            raise SinkClosedError("the driver stopped reading this run's results; stopping the pipeline")
        super().put(item, block, timeout)


class _PipelineThread:
    """``xenna.run_pipeline(spec)`` on a daemon thread; keeps what it raised."""

    def __init__(self, spec: Any) -> None:
        self._spec = spec
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="xenna-serving", daemon=True)

    def _run(self) -> None:
        from cosmos_xenna.pipelines import v1 as xenna

        try:
            xenna.run_pipeline(self._spec)
        except BaseException as exc:  # re-raised on the caller's thread
            self.error = exc

    def start(self) -> _PipelineThread:
        self._thread.start()
        return self

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)


class _TerminalBatcher:
    """Groups terminal tasks into batches for ``tracker.on_terminal``."""

    def __init__(self, tracker: CompletionTracker, max_items: int, max_wait_s: float) -> None:
        self._tracker = tracker
        self.max_items = max_items
        self._max_wait_s = max_wait_s
        self._pending: list[Task] = []
        self._first_at = 0.0
        self.batches = 0

    def add_all(self, tasks: list[Task]) -> None:
        if not tasks:
            return
        if not self._pending:
            self._first_at = time.monotonic()
        self._pending.extend(tasks)
        if len(self._pending) >= self.max_items:
            self.flush()

    @property
    def pending(self) -> int:
        return len(self._pending)

    def wait_s(self) -> float:
        """How long the drain loop may block before this batch is due."""
        if not self._pending:
            return _IDLE_POLL_S
        return max(0.0, self._first_at + self._max_wait_s - time.monotonic())

    def flush_if_due(self) -> None:
        if self._pending and time.monotonic() >= self._first_at + self._max_wait_s:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        self._tracker.on_terminal(batch)
        self.batches += 1


def run_serving(
    stages: list[Any], settings: XennaSettings, initial_tasks: list[Task], tracker: CompletionTracker
) -> list[Task]:
    """Run ``stages`` in SERVING mode; report terminal tasks as they arrive; return them all."""
    from cosmos_xenna.pipelines import v1 as xenna

    config = pipeline_config(settings, xenna.ExecutionMode.SERVING)
    config.serving_drain_on_close = True
    source: queue.Queue = queue.Queue()
    sink = _ClosableSink()
    source.put(None)  # close: xenna drains the input data, then returns
    spec = xenna.PipelineSpec(
        input_data=list(initial_tasks),
        stages=stages,
        config=config,
        serving_queues=xenna.ServingQueues(source=source, sink=sink),  # type: ignore[arg-type]
    )
    batcher = _TerminalBatcher(tracker, settings.report_batch_size, settings.report_interval_s)
    outputs: list[Task] = []
    runner = _PipelineThread(spec).start()
    try:
        while True:
            finished = not runner.is_alive()  # read before draining: later pushes cannot happen
            try:
                pack = sink.get_nowait() if finished else sink.get(timeout=batcher.wait_s())
            except queue.Empty:
                if finished:
                    break
                batcher.flush_if_due()
                continue
            batcher.add_all(pack.tasks)
            outputs.extend(pack.tasks)
            # Take what else has already arrived, so one call carries a burst of outputs.
            while batcher.pending < batcher.max_items:
                try:
                    pack = sink.get_nowait()
                except queue.Empty:
                    break
                batcher.add_all(pack.tasks)
                outputs.extend(pack.tasks)
            batcher.flush_if_due()
        batcher.flush()
    except BaseException:
        sink.close()
        runner.join(_ABORT_GRACE_S)
        if runner.is_alive():
            logger.warning(
                "xenna: the pipeline was still running {:.0f}s after the driver stopped reading; "
                "it stops at its next output",
                _ABORT_GRACE_S,
            )
        elif runner.error is not None:
            clear_traceback_frames(runner.error)  # release the worker handles its frames hold
            runner.error = None
        raise
    if runner.error is not None:
        failure = surface_failure(runner.error)
        runner.error = None
        gc.collect()  # frees the cleared frames' cycles, and with them stray worker handles
        raise failure
    logger.debug("xenna: {} terminal task(s) reported in {} batch(es)", len(outputs), batcher.batches)
    return outputs
