"""Stages and pipelines shared by the executor tests (importable by Ray workers)."""

from __future__ import annotations

from dataclasses import dataclass, field

from nemo_curator.pipeline import Pipeline
from nemo_curator.stages.base import CompositeStage, ProcessingStage
from nemo_curator.stages.resources import Resources
from nemo_curator.tasks import EmptyTask, Task

SMALL = Resources(cpus=0.5)


@dataclass(repr=False)
class NumberTask(Task[int]):
    """One integer; its deterministic id is the number itself (so sources keep identity)."""

    @property
    def num_items(self) -> int:
        return 1

    def validate(self) -> bool:
        return isinstance(self.data, int)

    def get_deterministic_id(self) -> str | None:
        return f"number-{self.data}"


@dataclass
class EmitNumbers(ProcessingStage[EmptyTask, NumberTask]):
    """The source stage: one task per number."""

    count: int = 12
    name: str = "emit_numbers"
    resources: Resources = field(default_factory=lambda: SMALL)

    def process(self, task: EmptyTask) -> list[NumberTask]:
        return [NumberTask("numbers", i) for i in range(self.count)]


class AddOne(ProcessingStage[NumberTask, NumberTask]):
    """1:1 map, plain class attributes (upstream style)."""

    name = "add_one"
    resources = SMALL

    def process(self, task: NumberTask) -> NumberTask:
        return NumberTask(task.dataset_name, task.data + 1)


@dataclass
class FanOut(ProcessingStage[NumberTask, NumberTask]):
    """1-to-n: ``n`` children per task."""

    n: int = 3
    name: str = "fan_out"
    resources: Resources = field(default_factory=lambda: SMALL)

    def process(self, task: NumberTask) -> list[NumberTask]:
        return [NumberTask(task.dataset_name, task.data * 10 + i) for i in range(self.n)]


class AddAndFan(CompositeStage[NumberTask, NumberTask]):
    name = "add_and_fan"

    def decompose(self) -> list[ProcessingStage]:
        return [AddOne(), FanOut(n=3)]


class DropByNone(ProcessingStage[NumberTask, NumberTask]):
    """Filters numbers divisible by 7 by returning None."""

    name = "drop_by_none"
    resources = SMALL

    def process(self, task: NumberTask) -> NumberTask | None:
        return None if task.data % 7 == 0 else task


class DropByEmptyList(ProcessingStage[NumberTask, NumberTask]):
    """Filters numbers ending in 2 by returning []; keeps others as a one-element list."""

    name = "drop_by_empty_list"
    resources = SMALL

    def process(self, task: NumberTask) -> list[NumberTask]:
        return [] if task.data % 10 == 2 else [task]


class DoubleInBatches(ProcessingStage[NumberTask, NumberTask]):
    """A vectorised 1:1 stage with batch_size > 1."""

    name = "double_in_batches"
    resources = SMALL
    batch_size = 4

    def process_batch(self, tasks: list[NumberTask]) -> list[NumberTask]:
        return [NumberTask(t.dataset_name, t.data * 2) for t in tasks]


class OffsetAfterSetup(ProcessingStage[NumberTask, NumberTask]):
    """Uses state made in setup(); fails loudly if setup was not called."""

    name = "offset_after_setup"
    resources = SMALL

    def __init__(self) -> None:
        self.offset: int | None = None

    def setup(self, worker_metadata: object = None) -> None:
        self.offset = 1000

    def process(self, task: NumberTask) -> NumberTask:
        if self.offset is None:
            raise RuntimeError("setup() was not called before process()")
        return NumberTask(task.dataset_name, task.data + self.offset)

    def teardown(self) -> None:
        self.offset = None


@dataclass
class FailOn(ProcessingStage[NumberTask, NumberTask]):
    """Raises for one value."""

    value: int = 5
    name: str = "fail_on"
    resources: Resources = field(default_factory=lambda: SMALL)

    def process(self, task: NumberTask) -> NumberTask:
        if task.data == self.value:
            raise ValueError(f"cannot handle {task.data}")
        return task


def feature_pipeline(count: int = 12) -> Pipeline:
    """Every stage shape in one pipeline: composite, 1:1, fan-out, both filters, batches, setup."""
    return Pipeline(
        name="features",
        stages=[
            EmitNumbers(count=count),
            AddAndFan(),
            DropByNone(),
            DropByEmptyList(),
            DoubleInBatches(),
            OffsetAfterSetup(),
        ],
    )


def expected_feature_values(count: int = 12) -> list[int]:
    values = []
    for i in range(count):
        for j in range(3):
            v = (i + 1) * 10 + j
            if v % 7 == 0 or v % 10 == 2:
                continue
            values.append(v * 2 + 1000)
    return sorted(values)
