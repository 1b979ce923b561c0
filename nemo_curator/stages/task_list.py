"""``TaskListStage``: a source stage that emits a fixed list of tasks (planned by the driver).

A workflow plans its sources in the driver (e.g. the pinned input groups of a deduplication, or
the partitions of a shuffle) and hands them to this stage, which turns the initial ``EmptyTask``
into copies of them. Each copy is a source; its id comes from its ``get_deterministic_id``.

The tasks are left out of the pipeline fingerprint (``fingerprint_ignore``): the workflow that
plans them records and checks them itself (``resumability.workflow``), and a fingerprint over a
million tasks would cost more than it tells.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import ClassVar

from nemo_curator.stages.base import ProcessingStage
from nemo_curator.stages.resources import Resources
from nemo_curator.tasks import EmptyTask, Task


@dataclass
class TaskListStage(ProcessingStage[EmptyTask, Task]):
    """Emits a deep copy of each of ``tasks``, in order, for the one initial task."""

    tasks: list[Task]
    name: str = "task_list"
    resources: Resources = field(default_factory=lambda: Resources(cpus=0.5))
    batch_size: int = 1

    fingerprint_ignore: ClassVar[tuple[str, ...]] = ("tasks",)

    def process(self, task: EmptyTask) -> list[Task]:
        return [copy.deepcopy(t) for t in self.tasks]
