"""Checkpointed runs on cosmos-xenna: SERVING mode, so the driver sees every terminal task.

In STREAMING mode xenna hands the last stage's outputs back only when ``run_pipeline``
returns. In SERVING mode its main loop pushes each last-stage output to a sink queue as it
completes, which is the channel completion reports travel on here (the last stage hands
each call's outputs over as one ``OutputPack``, because xenna fetches sink items one by one):

- ``run_pipeline`` runs on a background thread (its exception is kept and re-raised on the
  caller's thread);
- the initial tasks go in as the spec's ``input_data``, which xenna queues all at once; the
  source queue gets only ``None``, the close signal. (xenna reads the source queue one item
  per main-loop iteration, a hundred at most per second, far too slow for many initial
  tasks.) With ``serving_drain_on_close`` xenna finishes everything it read before it returns;
- the caller's thread drains the sink and hands what has arrived to ``tracker.on_terminal``
  in one call: a pack, and the packs already queued behind it while the call holds fewer
  than ``report_batch_size`` tasks. The tracker batches its ledger commits itself. It
  returns all of them at the end.

Both queues are plain ``queue.Queue`` objects: the pipeline's main loop runs in this process,
so nothing needs pickling. If reporting fails (or the caller is interrupted) the sink is
closed: xenna's next push raises, which stops its loop and its worker pools.

The executor uses this module with a tracker that tracks, and for ``execution_mode="serving"``.
"""

from __future__ import annotations

import gc
import queue
import threading
from typing import Any

from loguru import logger

from nemo_curator.backends.base import CompletionTracker
from nemo_curator.backends.errors import clear_traceback_frames, error_to_raise
from nemo_curator.backends.xenna.config import XennaSettings
from nemo_curator.backends.xenna.pipeline import pipeline_config
from nemo_curator.tasks import Task

#: How long to wait for xenna's loop to stop after the driver gave up on a run.
_ABORT_GRACE_S = 30.0
#: When the process is exiting (``SystemExit``, e.g. a preempted run) xenna's loop is not left
#: to stop at its next output, which may never come: after this long it is interrupted, and it
#: then gets ``_EXIT_GRACE_S`` to stop its worker pools.
_EXIT_WAIT_S = 0.5
_EXIT_GRACE_S = 15.0
#: Poll period of the drain loop while nothing arrives (checks the pipeline thread).
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

    def interrupt(self) -> None:
        """Raise ``SinkClosedError`` in the pipeline thread at its next bytecode.

        xenna's loop then stops its worker pools and returns, as when a push to the closed
        sink raises, without waiting for an output that may never come (workers stuck, or
        stopped by a signal).
        """
        import ctypes

        ident = self._thread.ident
        if ident is not None and self._thread.is_alive():
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(SinkClosedError))

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)


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
    outputs: list[Task] = []
    calls = 0
    runner = _PipelineThread(spec).start()
    try:
        while True:
            finished = not runner.is_alive()  # read before draining: later pushes cannot happen
            try:
                pack = sink.get_nowait() if finished else sink.get(timeout=_IDLE_POLL_S)
            except queue.Empty:
                if finished:
                    break
                continue
            burst = _take_burst(sink, pack.tasks, settings.report_batch_size)
            tracker.on_terminal(burst)
            outputs.extend(burst)
            calls += 1
    except BaseException as exc:
        sink.close()
        grace = _ABORT_GRACE_S
        if isinstance(exc, SystemExit):
            runner.join(_EXIT_WAIT_S)
            runner.interrupt()
            grace = _EXIT_GRACE_S
        runner.join(grace)
        if runner.is_alive():
            logger.warning(
                "xenna: the pipeline was still running {:.0f}s after the driver stopped reading; "
                "it stops at its next output",
                grace,
            )
        elif runner.error is not None:
            clear_traceback_frames(runner.error)  # release the worker handles its frames hold
            runner.error = None
        raise
    if runner.error is not None:
        failure = error_to_raise(runner.error, where="a cosmos-xenna worker", unwrap_remote=False)
        runner.error = None
        gc.collect()  # frees the cleared frames' cycles, and with them stray worker handles
        raise failure
    logger.debug("xenna: {} terminal task(s) reported in {} call(s)", len(outputs), calls)
    return outputs


def _take_burst(sink: queue.Queue, first: list[Task], max_tasks: int) -> list[Task]:
    """``first`` and the tasks of the packs already queued behind it, while fewer than ``max_tasks``.

    A pack (one last-stage call's outputs) is never split, so a burst may exceed ``max_tasks``.
    """
    burst = list(first)
    while len(burst) < max_tasks:
        try:
            burst.extend(sink.get_nowait().tasks)
        except queue.Empty:
            break
    return burst
