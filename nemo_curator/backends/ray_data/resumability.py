"""Completion reports on Ray Data: the driver's streaming iterator over the final dataset.

Imported only when a run has a checkpoint. Ids and credit ride inside the tasks (the single
task column), so the last stage's output blocks *are* the reports: the driver pulls them with
``iter_batches`` as they finish and hands each block's tasks (real outputs and the ``NoneTask``
/ ``FailedTask`` sentinels that carry filtered or failed credit) to ``tracker.on_terminal``
before asking for the next one. Nothing waits for the end of the run, and no worker talks to
the ledger: the tracker acknowledges on the driver.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nemo_curator.backends.ray_data.adapter import iter_task_batches

if TYPE_CHECKING:
    import ray.data

    from nemo_curator.backends.base import CompletionTracker
    from nemo_curator.tasks import Task


def consume_with_tracker(dataset: ray.data.Dataset, tracker: CompletionTracker) -> list[Task]:
    """Stream ``dataset``'s tasks to ``tracker.on_terminal`` block by block; return them all."""
    outputs: list[Task] = []
    for batch in iter_task_batches(dataset):
        tracker.on_terminal(batch)
        outputs.extend(batch)
    return outputs
