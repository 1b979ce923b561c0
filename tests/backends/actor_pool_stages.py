"""Stages for the actor-pool executor tests (a module of its own so Ray workers can import it).

Stages that must leave evidence outside their worker process (setup calls, timestamps, crash
markers) write small files under a directory the test passes in.
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from nemo_curator.stages.base import CompositeStage, ProcessingStage
from nemo_curator.stages.resources import Resources
from nemo_curator.tasks import Task


@dataclass(repr=False)
class ValueTask(Task[int]):
    """One integer."""

    @property
    def num_items(self) -> int:
        return 1

    def validate(self) -> bool:
        return isinstance(self.data, int)


@dataclass(repr=False)
class KeyedTask(ValueTask):
    """An integer with a content id, as a file group would have."""

    def get_deterministic_id(self) -> str | None:
        return f"value:{self.data}"


@dataclass
class Numbers(ProcessingStage[Task, ValueTask]):
    """Source: turns the initial task into ``count`` values ``0..count-1``."""

    count: int = 8
    keyed: bool = False
    name: str = "numbers"
    resources: Resources = field(default_factory=lambda: Resources(cpus=0.5))

    def process(self, task: Task) -> list[ValueTask]:
        cls = KeyedTask if self.keyed else ValueTask
        return [cls(dataset_name="nums", data=i) for i in range(self.count)]


@dataclass
class AddOne(ProcessingStage[ValueTask, ValueTask]):
    """1:1 map."""

    name: str = "add_one"
    resources: Resources = field(default_factory=lambda: Resources(cpus=0.5))

    def process(self, task: ValueTask) -> ValueTask:
        return ValueTask(dataset_name=task.dataset_name, data=task.data + 1)


@dataclass
class Explode(ProcessingStage[ValueTask, ValueTask]):
    """1-to-``k`` fan-out: ``v`` -> ``10*v + j``."""

    k: int = 3
    name: str = "explode"
    resources: Resources = field(default_factory=lambda: Resources(cpus=0.5))

    def process(self, task: ValueTask) -> list[ValueTask]:
        return [ValueTask(dataset_name=task.dataset_name, data=10 * task.data + j) for j in range(self.k)]


@dataclass
class DropMultiplesNone(ProcessingStage[ValueTask, ValueTask]):
    """Filters multiples of ``mod`` by returning ``None``."""

    mod: int = 3
    name: str = "drop_none"
    resources: Resources = field(default_factory=lambda: Resources(cpus=0.5))

    def process(self, task: ValueTask) -> ValueTask | None:
        return None if task.data % self.mod == 0 else task


@dataclass
class DropMultiplesEmpty(ProcessingStage[ValueTask, ValueTask]):
    """Filters multiples of ``mod`` by returning ``[]``."""

    mod: int = 4
    name: str = "drop_empty"
    resources: Resources = field(default_factory=lambda: Resources(cpus=0.5))

    def process(self, task: ValueTask) -> list[ValueTask]:
        return [] if task.data % self.mod == 0 else [task]


@dataclass
class BatchDouble(ProcessingStage[ValueTask, ValueTask]):
    """A vectorised 1:1 stage with ``batch_size > 1``; records the batch sizes it saw."""

    log_dir: str = ""
    batch_size: int = 3
    name: str = "batch_double"
    resources: Resources = field(default_factory=lambda: Resources(cpus=0.5))

    def process_batch(self, tasks: list[ValueTask]) -> list[ValueTask]:
        if self.log_dir:
            with open(Path(self.log_dir) / f"batches-{os.getpid()}.log", "a") as fh:
                fh.write(f"{len(tasks)}\n")
        return [ValueTask(dataset_name=t.dataset_name, data=2 * t.data) for t in tasks]


@dataclass
class SetupRecorder(ProcessingStage[ValueTask, ValueTask]):
    """Records ``setup`` / ``teardown`` through files; ``process`` needs ``setup`` to have run."""

    log_dir: str = ""
    name: str = "setup_recorder"
    resources: Resources = field(default_factory=lambda: Resources(cpus=0.5))

    def setup(self, worker_metadata: object = None) -> None:
        self._token = uuid.uuid4().hex
        (Path(self.log_dir) / f"setup-{self._token}").write_text(str(os.getpid()))

    def process(self, task: ValueTask) -> ValueTask:
        if not getattr(self, "_token", None):
            raise RuntimeError("process() called before setup()")
        return task

    def teardown(self) -> None:
        (Path(self.log_dir) / f"teardown-{self._token}").write_text(str(os.getpid()))


class AddThenExplode(CompositeStage[ValueTask, ValueTask]):
    """A composite of ``AddOne`` and ``Explode(k=2)``."""

    name = "add_then_explode"

    def decompose(self) -> list[ProcessingStage]:
        return [AddOne(name="composite_add"), Explode(k=2, name="composite_explode")]


@dataclass
class Boom(ProcessingStage[ValueTask, ValueTask]):
    """Raises ``ValueError`` on ``bad``."""

    bad: int = 5
    name: str = "boom"
    resources: Resources = field(default_factory=lambda: Resources(cpus=0.5))

    def process(self, task: ValueTask) -> ValueTask:
        if task.data == self.bad:
            raise ValueError(f"cannot handle {task.data}")
        return task


@dataclass
class SlowStamp(ProcessingStage[ValueTask, ValueTask]):
    """Sleeps ``delay`` per task, then appends ``<time> <value>`` to ``<log_dir>/<tag>.log``."""

    log_dir: str = ""
    tag: str = "slow"
    delay: float = 0.1
    name: str = "slow_stamp"
    resources: Resources = field(default_factory=lambda: Resources(cpus=0.5))

    def process(self, task: ValueTask) -> ValueTask:
        time.sleep(self.delay)
        with open(Path(self.log_dir) / f"{self.tag}.log", "a") as fh:
            fh.write(f"{time.time()} {task.data}\n")
        return task


@dataclass
class CrashOnce(ProcessingStage[ValueTask, ValueTask]):
    """Kills its own worker process the first time it sees ``trigger`` while ``marker`` is absent
    (every time with ``always``)."""

    marker: str = ""
    trigger: int = 3
    always: bool = False
    name: str = "crash_once"
    resources: Resources = field(default_factory=lambda: Resources(cpus=0.5))

    def process(self, task: ValueTask) -> ValueTask:
        if task.data == self.trigger and (self.always or not os.path.exists(self.marker)):
            Path(self.marker).write_text(str(os.getpid()))
            os._exit(1)
        return task


@dataclass(frozen=True)
class FixedFilter:
    """A picklable ``SourceFilter`` that reports a fixed set of sources as complete."""

    done: frozenset[str] = frozenset()

    def completed(self, source_ids: list[str]) -> set[str]:
        return {s for s in source_ids if s in self.done}
