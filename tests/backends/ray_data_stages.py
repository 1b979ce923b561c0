"""Stages and helpers for the Ray Data executor tests (importable by Ray workers)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa

from nemo_curator.stages.base import ProcessingStage
from nemo_curator.stages.resources import Resources
from nemo_curator.tasks import DocumentBatch, EmptyTask
from tests.pipelines_for_tests import NumberTask

SMALL = Resources(cpus=0.5)


@dataclass
class FixedSourceFilter:
    """A picklable source filter: the sources in ``done`` count as complete."""

    done: frozenset[str]

    def completed(self, source_ids: list[str]) -> set[str]:
        return set(source_ids) & self.done


@dataclass
class RecordWorker(ProcessingStage[NumberTask, NumberTask]):
    """1:1 pass-through that records ``(label, pid, time)`` in the task's metadata."""

    label: str = "worker"
    sleep_s: float = 0.0
    name: str = "record_worker"
    resources: Resources = field(default_factory=lambda: SMALL)

    def process(self, task: NumberTask) -> NumberTask:
        if self.sleep_s:
            time.sleep(self.sleep_s)
        task._metadata.setdefault("workers", []).append((self.label, os.getpid(), time.time()))
        return task


@dataclass
class AwaitsDriver(ProcessingStage[NumberTask, NumberTask]):
    """A last stage that handles number ``n`` only once the driver has received ``n - 1``.

    The driver's side writes ``<marker_dir>/<n>`` for every output it receives. A task waits
    up to ``timeout_s`` for its predecessor's marker and records in ``_metadata["waited_s"]``
    how long it waited (``None``: the marker never came).
    """

    marker_dir: str = ""
    timeout_s: float = 10.0
    name: str = "awaits_driver"
    resources: Resources = field(default_factory=lambda: SMALL)

    def process(self, task: NumberTask) -> NumberTask:
        began = time.monotonic()
        waited: float | None = 0.0
        if task.data > 0:
            marker = Path(self.marker_dir, str(task.data - 1))
            while not marker.exists():
                if time.monotonic() - began > self.timeout_s:
                    waited = None
                    break
                time.sleep(0.01)
            else:
                waited = time.monotonic() - began
        task._metadata["waited_s"] = waited
        return task


@dataclass
class MarkedSetup(ProcessingStage[NumberTask, NumberTask]):
    """Writes a marker file in ``setup_on_node``, ``setup`` and ``teardown``; process needs setup."""

    marker_dir: str = ""
    name: str = "marked_setup"
    resources: Resources = field(default_factory=lambda: SMALL)

    def __post_init__(self) -> None:
        self._ready_pid: int | None = None

    def _mark(self, what: str) -> None:
        Path(self.marker_dir, f"{what}-{os.getpid()}-{time.monotonic_ns()}").touch()

    def setup_on_node(self, node_info: object = None, worker_metadata: object = None) -> None:
        self._mark("node")

    def setup(self, worker_metadata: object = None) -> None:
        self._ready_pid = os.getpid()
        self._mark("setup")

    def process(self, task: NumberTask) -> NumberTask:
        if self._ready_pid != os.getpid():
            raise RuntimeError("process() ran in a worker whose setup() did not run")
        task._metadata.setdefault("workers", []).append(("actor", os.getpid(), time.time()))
        task.data += 1000
        return task

    def teardown(self) -> None:
        self._mark("teardown")


class FailingSetup(ProcessingStage[NumberTask, NumberTask]):
    """Its ``setup`` raises."""

    name = "failing_setup"
    resources = SMALL

    def setup(self, worker_metadata: object = None) -> None:
        raise OSError("model weights not found")

    def process(self, task: NumberTask) -> NumberTask:
        return task


class FailInActor(ProcessingStage[NumberTask, NumberTask]):
    """Has ``setup`` (so it runs on actors) and raises for the number 4."""

    name = "fail_in_actor"
    resources = SMALL

    def setup(self, worker_metadata: object = None) -> None:
        self.ready = True

    def process(self, task: NumberTask) -> NumberTask:
        if task.data == 4:
            raise KeyError("no entry for 4")
        return task


@dataclass
class HungryActor(ProcessingStage[NumberTask, NumberTask]):
    """An actor stage asking for more CPUs than a small cluster can give its pool."""

    cpus: float = 2.0
    name: str = "hungry_actor"

    def __post_init__(self) -> None:
        self.resources = Resources(cpus=self.cpus)

    def setup(self, worker_metadata: object = None) -> None:
        self.offset = 1

    def process(self, task: NumberTask) -> NumberTask:
        return NumberTask(task.dataset_name, task.data + self.offset)


class EmitDocuments(ProcessingStage[EmptyTask, DocumentBatch]):
    """Source: two document batches, one backed by pandas and one by pyarrow."""

    name = "emit_documents"
    resources = SMALL

    def process(self, task: EmptyTask) -> list[DocumentBatch]:
        frame = pd.DataFrame({"text": ["a b", "c d e"], "n": [2, 3]})
        table = pa.table({"text": ["x", "y z", "w"], "n": [1, 2, 1]})
        return [DocumentBatch("docs", frame), DocumentBatch("docs", table)]


class CountWords(ProcessingStage[DocumentBatch, DocumentBatch]):
    """Adds a word count column, keeping the payload's type (pandas stays pandas)."""

    name = "count_words"
    resources = SMALL

    def process(self, task: DocumentBatch) -> DocumentBatch:
        if isinstance(task.data, pd.DataFrame):
            frame = task.data.copy()
            frame["words"] = frame["text"].str.split().str.len()
            return DocumentBatch(task.dataset_name, frame)
        words = [len(t.split()) for t in task.data.column("text").to_pylist()]
        return DocumentBatch(task.dataset_name, task.data.append_column("words", pa.array(words)))


class RayletInfo(ProcessingStage[NumberTask, NumberTask]):
    """Records which raylet runs this worker (for the own-Ray subprocess test)."""

    name = "raylet_info"
    resources = SMALL

    def process(self, task: NumberTask) -> NumberTask:
        raylet = int(os.environ["RAY_RAYLET_PID"])
        task._metadata["raylet_pid"] = raylet
        task._metadata["raylet_cmdline"] = Path(f"/proc/{raylet}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        return task


class ReturnsText(ProcessingStage[NumberTask, NumberTask]):
    """Runs on actors (has ``setup``) and returns a string instead of a task."""

    name = "returns_text"
    resources = SMALL

    def setup(self, worker_metadata: object = None) -> None:
        self.ready = True

    def process(self, task: NumberTask) -> str:  # type: ignore[override]
        return f"number {task.data}"
