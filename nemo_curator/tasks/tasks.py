"""Task types that flow between stages.

Framework-owned fields (``task_id``, ``_lineage``) are set by the stage adapters, never by
user code: a stage may build its outputs however it likes and the framework stamps them.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from nemo_curator.tasks.credit import Credit

T = TypeVar("T")


@dataclass
class Task(ABC, Generic[T]):
    """A unit of work: ``Task(dataset_name, data)``.

    ``task_id`` is a deterministic lineage id set by the framework at every stage boundary.
    ``_lineage`` maps source id -> credit while checkpointing is on and is ``None`` otherwise.
    """

    dataset_name: str
    data: T
    task_id: str = ""
    _metadata: dict[str, Any] = field(default_factory=dict)
    _stage_perf: list[Any] = field(default_factory=list)
    _lineage: dict[str, Credit] | None = field(default=None, repr=False, compare=False)

    @property
    @abstractmethod
    def num_items(self) -> int:
        """Number of items (documents, files, ...) in this task."""

    @abstractmethod
    def validate(self) -> bool:
        """Whether the task's data is well formed."""

    def get_deterministic_id(self) -> str | None:
        """A stable id derived from the task's content, or ``None`` (position is used then)."""
        return None

    def __repr__(self) -> str:
        name = type(self).__name__
        return f"{name}(task_id={self.task_id!r}, dataset_name={self.dataset_name!r}, items={self._safe_items()})"

    def _safe_items(self) -> int | str:
        try:
            return self.num_items
        except Exception:  # repr must never raise
            return "?"


@dataclass(repr=False)
class EmptyTask(Task[None]):
    """The default initial task: carries nothing, starts the first stage."""

    dataset_name: str = "empty"
    data: None = None

    @property
    def num_items(self) -> int:
        return 0

    def validate(self) -> bool:
        return True


@dataclass(repr=False)
class NoneTask(Task[None]):
    """A filtered slot. It carries its credit to the end of the pipeline when checkpointing is on."""

    dataset_name: str = ""
    data: None = None

    @property
    def num_items(self) -> int:
        return 0

    def validate(self) -> bool:
        return True


@dataclass(repr=False)
class FailedTask(Task[None]):
    """A failed slot: its source stays incomplete and is redone on the next run."""

    dataset_name: str = ""
    data: None = None
    reason: str = ""
    stage_name: str = ""

    @property
    def num_items(self) -> int:
        return 0

    def validate(self) -> bool:
        return True


def is_sentinel(task: Task) -> bool:
    """Sentinels mark ended slots; stages pass them through without calling user code."""
    return isinstance(task, NoneTask | FailedTask)


@dataclass(repr=False)
class FileGroupTask(Task[list[str]]):
    """A group of input files: ``FileGroupTask(dataset_name, data=[paths], reader_config={})``.

    Its deterministic id hashes the sorted paths (JSON-encoded, so no join is ambiguous) and,
    when the partitioning stage recorded them in ``_metadata["file_stats"]``, each file's size
    and modification time: a file rewritten in place gets a new id and is redone.
    """

    reader_config: dict[str, Any] = field(default_factory=dict)

    @property
    def num_items(self) -> int:
        return len(self.data)

    def validate(self) -> bool:
        return isinstance(self.data, list) and all(isinstance(p, str) for p in self.data)

    def get_deterministic_id(self) -> str | None:
        stats = self._metadata.get("file_stats") or {}
        entries = sorted([p, stats.get(p)] for p in self.data)
        payload = json.dumps(entries, separators=(",", ":"), default=str)
        return hashlib.blake2b(payload.encode(), digest_size=16).hexdigest()


@dataclass(repr=False)
class DocumentBatch(Task[Any]):
    """A batch of documents as a ``pyarrow.Table`` or ``pandas.DataFrame``."""

    @property
    def num_items(self) -> int:
        return len(self.data)

    def validate(self) -> bool:
        import pandas as pd
        import pyarrow as pa

        return isinstance(self.data, pa.Table | pd.DataFrame)

    def to_pandas(self) -> Any:
        import pyarrow as pa

        return self.data.to_pandas() if isinstance(self.data, pa.Table) else self.data

    def to_pyarrow(self) -> Any:
        import pyarrow as pa

        return self.data if isinstance(self.data, pa.Table) else pa.Table.from_pandas(self.data, preserve_index=False)
