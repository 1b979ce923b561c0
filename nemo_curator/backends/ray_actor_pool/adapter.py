"""The Ray actor that runs one stage's worker: a thin shell around one ``StageAdapter``.

The actor never interprets user results: ``process_batch`` hands the resolved input tasks to
``adapter.process_batch`` and returns its list unchanged (sentinels included), together with
the list's length so that the driver can rebatch without fetching the tasks themselves.

Invariants:
- ``setup()`` runs at most once per actor process before its first batch; after Ray restarts
  a dead actor process (``max_restarts``), the fresh process runs ``setup()`` again lazily
  before it processes its first (retried) batch;
- ``teardown()`` runs only on ``close()`` and only if ``setup()`` ran in this process;
- calls on one actor run one at a time (default ``max_concurrency=1``), so stage code never
  sees two batches at once.
"""

from __future__ import annotations

from typing import Any

import ray

from nemo_curator.backends.stage_adapter import StageAdapter
from nemo_curator.tasks import Task

#: What the driver sends as one batch: whole upstream output lists (as ``ObjectRef``s, resolved
#: here) and single tasks, in batch order.
BatchPart = Any


@ray.remote
class StageActor:
    """One worker of one stage. Created by ``RayActorPoolExecutor``; killed by it after the run."""

    def __init__(self, adapter: StageAdapter) -> None:
        self._adapter = adapter
        self._started = False

    def node_id(self) -> str:
        """The Ray node this worker landed on (the driver runs ``setup_on_node`` once per node)."""
        return ray.get_runtime_context().get_node_id()

    def setup_on_node(self) -> None:
        self._adapter.setup_on_node()

    def start(self) -> None:
        """Run the stage's ``setup()`` (idempotent within one process)."""
        if not self._started:
            self._adapter.setup()
            self._started = True

    @ray.method(num_returns=2)
    def process_batch(self, parts: list[BatchPart]) -> tuple[int, list[Task]]:
        """Resolve ``parts`` into one list of tasks, run the adapter; return ``(len(out), out)``."""
        self.start()
        refs = [p for p in parts if isinstance(p, ray.ObjectRef)]
        fetched = iter(ray.get(refs)) if refs else iter(())
        tasks: list[Task] = []
        for part in parts:
            if isinstance(part, ray.ObjectRef):
                tasks.extend(next(fetched))
            else:
                tasks.append(part)
        outputs = self._adapter.process_batch(tasks)
        return len(outputs), outputs

    def close(self) -> int:
        """Run the stage's ``teardown()`` if it was set up; returns the sources this worker skipped."""
        if self._started:
            self._started = False
            self._adapter.teardown()
        return self._adapter.skipped_sources
