"""Stages and helpers for the cosmos-xenna executor tests (importable by Ray workers)."""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass, field

from nemo_curator.stages.base import CompositeStage, ProcessingStage
from nemo_curator.stages.resources import Resources
from nemo_curator.tasks import EmptyTask, Task


@dataclass(repr=False)
class IntTask(Task[int]):
    """A task carrying one integer; its content id is the integer (so source ids are stable)."""

    @property
    def num_items(self) -> int:
        return 1

    def validate(self) -> bool:
        return isinstance(self.data, int)

    def get_deterministic_id(self) -> str | None:
        return f"int:{self.data}"


@dataclass
class Emit(ProcessingStage[EmptyTask, IntTask]):
    """Source: turns the initial task into ``IntTask(0) .. IntTask(count - 1)``."""

    count: int = 10
    name: str = "emit"
    resources: Resources = field(default_factory=lambda: Resources(cpus=1.0))

    def process(self, task: EmptyTask) -> list[IntTask]:
        return [IntTask(dataset_name="ints", data=i) for i in range(self.count)]


@dataclass
class FanOut(ProcessingStage[IntTask, IntTask]):
    """1-to-n: ``x`` becomes ``x * 10 + j`` for ``j < ways``."""

    ways: int = 2
    name: str = "fan_out"
    resources: Resources = field(default_factory=lambda: Resources(cpus=1.0))

    def process(self, task: IntTask) -> list[IntTask]:
        return [IntTask(dataset_name=task.dataset_name, data=task.data * 10 + j) for j in range(self.ways)]


class AddOne(ProcessingStage[IntTask, IntTask]):
    """1:1 map returning the same task object (plain class attributes, not a dataclass)."""

    name = "add_one"
    resources = Resources(cpus=1.0)

    def process(self, task: IntTask) -> IntTask:
        task.data += 1
        return task


class Double(ProcessingStage[IntTask, IntTask]):
    """1:1 map returning a new task (which keeps the input's metadata)."""

    name = "double"
    resources = Resources(cpus=0.5)

    def process(self, task: IntTask) -> IntTask:
        return IntTask(dataset_name=task.dataset_name, data=task.data * 2, _metadata=dict(task._metadata))


class DropMultiplesOf3ByNone(ProcessingStage[IntTask, IntTask]):
    """Filters by returning ``None``."""

    name = "drop_x3_none"
    resources = Resources(cpus=0.5)

    def process(self, task: IntTask) -> IntTask | None:
        return None if task.data % 3 == 0 else task


class DropMultiplesOf5ByEmptyList(ProcessingStage[IntTask, IntTask]):
    """Filters by returning ``[]``."""

    name = "drop_x5_empty"
    resources = Resources(cpus=0.5)

    def process(self, task: IntTask) -> list[IntTask]:
        return [] if task.data % 5 == 0 else [task]


@dataclass
class BatchNegate(ProcessingStage[IntTask, IntTask]):
    """``process_batch`` with ``batch_size`` 3: negates each value and records the batch length seen."""

    name: str = "batch_negate"
    batch_size: int = 3
    resources: Resources = field(default_factory=lambda: Resources(cpus=0.5))

    def process_batch(self, tasks: list[IntTask]) -> list[IntTask]:
        out = []
        for task in tasks:
            child = IntTask(dataset_name=task.dataset_name, data=-task.data)
            child._metadata["batch_len"] = len(tasks)
            out.append(child)
        return out


@dataclass
class OffsetWithSetup(ProcessingStage[IntTask, IntTask]):
    """Needs ``setup`` (adds the offset it loads there); setup and teardown leave marker files in ``marker_dir``."""

    marker_dir: str = ""
    offset: int = 1000
    name: str = "offset_with_setup"
    resources: Resources = field(default_factory=lambda: Resources(cpus=0.5))

    def __post_init__(self) -> None:
        self._loaded: int | None = None
        self._token = ""

    def setup(self, worker_metadata: object = None) -> None:
        self._loaded = self.offset
        self._token = f"{os.getpid()}-{uuid.uuid4().hex}"
        self._mark("setup")

    def process(self, task: IntTask) -> IntTask:
        if self._loaded is None:
            raise RuntimeError("process() called before setup()")
        task.data += self._loaded
        return task

    def teardown(self) -> None:
        self._mark("teardown")

    def _mark(self, what: str) -> None:
        if self.marker_dir:
            with open(os.path.join(self.marker_dir, f"{what}-{self._token}"), "w") as fh:
                fh.write(what)


class AddThenDouble(CompositeStage[IntTask, IntTask]):
    """Composite: ``AddOne`` then ``Double``."""

    name = "add_then_double"

    def decompose(self) -> list[ProcessingStage]:
        return [AddOne(), Double()]


@dataclass
class FailOn(ProcessingStage[IntTask, IntTask]):
    """Raises ``ValueError`` on the task whose value is ``bad``."""

    bad: int = 3
    name: str = "fail_on"
    resources: Resources = field(default_factory=lambda: Resources(cpus=0.5))

    def process(self, task: IntTask) -> IntTask:
        if task.data == self.bad:
            raise ValueError(f"cannot handle {task.data}")
        return task


@dataclass
class FailingSetup(ProcessingStage[IntTask, IntTask]):
    """Its ``setup`` raises."""

    name: str = "failing_setup"
    resources: Resources = field(default_factory=lambda: Resources(cpus=0.5))

    def setup(self, worker_metadata: object = None) -> None:
        raise OSError("model file missing")

    def process(self, task: IntTask) -> IntTask:
        return task


@dataclass
class SlowStamp(ProcessingStage[IntTask, IntTask]):
    """Sleeps ``seconds`` per task, then stamps the wall-clock time it finished."""

    seconds: float = 0.05
    name: str = "slow_stamp"
    resources: Resources = field(default_factory=lambda: Resources(cpus=0.5))

    def process(self, task: IntTask) -> IntTask:
        time.sleep(self.seconds)
        task._metadata["done_at"] = time.time()
        return task


@dataclass
class FilterFailOrPass(ProcessingStage[IntTask, IntTask]):
    """Last stage of the tracked run: drops values in ``drop``, raises on ``bad``, else passes."""

    drop: tuple[int, ...] = ()
    bad: int = -1
    name: str = "filter_fail_or_pass"
    resources: Resources = field(default_factory=lambda: Resources(cpus=0.5))

    def process(self, task: IntTask) -> IntTask | None:
        if task.data == self.bad:
            raise ValueError(f"cannot handle {task.data}")
        if task.data in self.drop:
            return None
        task._metadata["sink_at"] = time.time()
        return task


@dataclass(frozen=True)
class FixedSourceFilter:
    """A picklable source filter: the sources in ``done`` count as already complete."""

    done: frozenset[str] = frozenset()

    def completed(self, source_ids: list[str]) -> set[str]:
        return {s for s in source_ids if s in self.done}
