"""Tasks: the units of work that flow between stages."""

from nemo_curator.tasks.tasks import (
    DocumentBatch,
    EmptyTask,
    FailedTask,
    FileGroupTask,
    NoneTask,
    Task,
    is_sentinel,
)

__all__ = ["DocumentBatch", "EmptyTask", "FailedTask", "FileGroupTask", "NoneTask", "Task", "is_sentinel"]
