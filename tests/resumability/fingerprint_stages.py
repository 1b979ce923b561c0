"""Stage classes for the fingerprint tests (importable by name from a subprocess)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from nemo_curator.stages.base import ProcessingStage
from nemo_curator.stages.resources import Resources
from nemo_curator.tasks import Task


class Mode(enum.Enum):
    FAST = "fast"
    EXACT = "exact"


def normalize(text: str) -> str:
    return text.lower()


class Helper:
    """A plain configuration object (default repr shows a memory address)."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold


@dataclass
class ScoreFilter(ProcessingStage[Task, Task]):
    name: str = "score_filter"
    resources: Resources = field(default_factory=lambda: Resources(cpus=1.0))
    batch_size: int = 1
    min_score: float = 0.5
    fields: list[str] = field(default_factory=lambda: ["text"])
    options: dict[str, Any] = field(default_factory=dict)
    mode: Mode = Mode.FAST
    fn: Any = normalize
    helper: Any = None
    input_path: str = "/data/in"
    fingerprint_ignore: tuple[str, ...] = ("input_path",)

    def process(self, task: Task) -> Task:
        return task


class PlainStage(ProcessingStage[Task, Task]):
    """A non-dataclass stage configured through ``__init__``."""

    name = "plain"
    resources = Resources(cpus=0.5)

    def __init__(self, factor: int = 2, label: str = "x") -> None:
        self.factor = factor
        self.label = label
        self._cache: dict[str, int] = {}

    def process(self, task: Task) -> Task:
        return task
