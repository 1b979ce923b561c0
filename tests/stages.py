"""The test stages: one importable module for the executor tests, the e2e job and the benchmarks.

Ray workers import stage classes by reference (``tests.stages.X``), and the pipeline
fingerprint names them so: keep them here, never in a test file or ``__main__``. Stages that
must leave evidence outside their worker process (setup calls, timestamps, crash markers)
write small files under a directory the test passes in. The dataclass stages take their
``name`` and other knobs as keywords, so a test gives a stage the name its assertions use; the
plain-class ones (upstream style, kept on purpose) can be renamed with ``with_(name=...)``.

Number stages default to half a CPU; they keep the task's class (``NumberTask`` or
``PositionalNumberTask``), so a source's kind of id survives every stage.
"""

from __future__ import annotations

import copy
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from nemo_curator.backends.base import ExecutionPlan
from nemo_curator.pipeline import Pipeline
from nemo_curator.stages.base import CompositeStage, ProcessingStage
from nemo_curator.stages.resources import Resources
from nemo_curator.stages.text.io.reader import JsonlReaderStage
from nemo_curator.tasks import DocumentBatch, EmptyTask, FailedTask, FileGroupTask, Task

SMALL = Resources(cpus=0.5)


def first_time(marker: str | os.PathLike) -> bool:
    """Create ``marker``; false if it exists already (atomic, so only one worker ever wins)."""
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    return True


# -- numbers ---------------------------------------------------------------------------------


@dataclass(repr=False)
class NumberTask(Task[int]):
    """One integer; its content id is the number, so a source keeps its id across runs."""

    @property
    def num_items(self) -> int:
        return 1

    def validate(self) -> bool:
        return isinstance(self.data, int)

    def get_deterministic_id(self) -> str | None:
        return f"number-{self.data}"


@dataclass(repr=False)
class PositionalNumberTask(NumberTask):
    """A number without a content id: as a source it is known by its position under its parent."""

    def get_deterministic_id(self) -> str | None:
        return None


@dataclass(kw_only=True)
class NumberStage(ProcessingStage[NumberTask, NumberTask]):
    """Base of the dataclass number stages: half a CPU unless ``resources`` says otherwise."""

    resources: Resources = field(default_factory=lambda: SMALL)


@dataclass(kw_only=True)
class EmitNumbers(ProcessingStage[EmptyTask, NumberTask]):
    """Source: turns the initial task into numbers ``0 .. count - 1`` (without content ids unless ``keyed``)."""

    count: int = 12
    keyed: bool = True
    dataset: str = "numbers"
    name: str = "emit_numbers"
    resources: Resources = field(default_factory=lambda: SMALL)

    def process(self, task: EmptyTask) -> list[NumberTask]:
        cls = NumberTask if self.keyed else PositionalNumberTask
        return [cls(self.dataset, i) for i in range(self.count)]


@dataclass(kw_only=True)
class AddOne(NumberStage):
    """1:1 map; ``in_place`` changes and returns the input task object itself, else a new task."""

    in_place: bool = False
    name: str = "add_one"

    def process(self, task: NumberTask) -> NumberTask:
        if not self.in_place:
            return type(task)(task.dataset_name, task.data + 1)
        task.data += 1
        return task


class Double(ProcessingStage[NumberTask, NumberTask]):
    """1:1 map in upstream style (plain class attributes): a new task that keeps the input's metadata."""

    name = "double"
    resources = SMALL

    def process(self, task: NumberTask) -> NumberTask:
        return type(task)(task.dataset_name, task.data * 2, _metadata=dict(task._metadata))


@dataclass(kw_only=True)
class FanOut(NumberStage):
    """1-to-n: ``x`` becomes ``x * factor + j`` for ``j < n``; slots from ``keep`` on are filtered (``None``)."""

    n: int = 3
    factor: int = 10
    keep: int | None = None
    name: str = "fan_out"

    def process(self, task: NumberTask) -> list[NumberTask | None]:
        kept = self.n if self.keep is None else self.keep
        make = type(task)
        return [make(task.dataset_name, task.data * self.factor + j) if j < kept else None for j in range(self.n)]


@dataclass(kw_only=True)
class DropByNone(NumberStage):
    """Filters the numbers ``x`` with ``x % mod == rest`` by returning ``None``."""

    mod: int = 7
    rest: int = 0
    name: str = "drop_by_none"

    def drops(self, task: NumberTask) -> bool:
        return task.data % self.mod == self.rest

    def process(self, task: NumberTask) -> NumberTask | None:
        return None if self.drops(task) else task


@dataclass(kw_only=True)
class DropByEmptyList(DropByNone):
    """The same filter by returning ``[]``; a kept number comes back as a one-element list."""

    mod: int = 10
    rest: int = 2
    name: str = "drop_by_empty_list"

    def process(self, task: NumberTask) -> list[NumberTask]:
        return [] if self.drops(task) else [task]


@dataclass(kw_only=True)
class MultiplyInBatches(NumberStage):
    """A vectorised 1:1 stage (``process_batch``, ``batch_size > 1``) multiplying by ``factor``.

    Every output records the length of its batch in ``_metadata["batch_len"]``; with
    ``log_dir`` each batch also appends its length to ``<log_dir>/batches-<pid>.log``.
    """

    factor: int = 2
    batch_size: int = 4
    log_dir: str = ""
    name: str = "double_in_batches"

    def process_batch(self, tasks: list[NumberTask]) -> list[NumberTask]:
        if self.log_dir:
            with open(Path(self.log_dir) / f"batches-{os.getpid()}.log", "a") as fh:
                fh.write(f"{len(tasks)}\n")
        return [type(t)(t.dataset_name, t.data * self.factor, _metadata={"batch_len": len(tasks)}) for t in tasks]


@dataclass(kw_only=True)
class OffsetAfterSetup(NumberStage):
    """Adds ``offset``, which only ``setup`` loads: fails loudly in a worker whose ``setup`` did not run.

    Each task records ``(label, pid, time)`` in ``_metadata["workers"]``. With ``marker_dir``,
    ``setup_on_node``, ``setup`` and ``teardown`` each leave a file ``<what>-<pid>-<token>``
    there holding the pid; a worker's setup and teardown files share the token.
    """

    offset: int = 1000
    marker_dir: str = ""
    label: str = "actor"
    name: str = "offset_after_setup"

    def __post_init__(self) -> None:
        self._ready_pid: int | None = None
        self._token = ""

    def setup_on_node(self, node_info: object = None, worker_metadata: object = None) -> None:
        self._mark("node", f"{os.getpid()}-{uuid.uuid4().hex}")

    def setup(self, worker_metadata: object = None) -> None:
        self._ready_pid = os.getpid()
        self._token = f"{os.getpid()}-{uuid.uuid4().hex}"
        self._mark("setup", self._token)

    def process(self, task: NumberTask) -> NumberTask:
        if self._ready_pid != os.getpid():
            raise RuntimeError("process() ran in a worker whose setup() did not run")
        task._metadata.setdefault("workers", []).append((self.label, os.getpid(), time.time()))
        task.data += self.offset
        return task

    def teardown(self) -> None:
        self._mark("teardown", self._token)

    def _mark(self, what: str, token: str) -> None:
        if self.marker_dir:
            Path(self.marker_dir, f"{what}-{token}").write_text(str(os.getpid()))


@dataclass(kw_only=True)
class Chain(CompositeStage[NumberTask, NumberTask]):
    """A composite stage standing for ``parts`` in order (every build gets fresh copies)."""

    parts: tuple[ProcessingStage, ...] = ()
    name: str = "chain"

    def decompose(self) -> list[ProcessingStage]:
        return [copy.deepcopy(part) for part in self.parts]


@dataclass(kw_only=True)
class SlowStamp(NumberStage):
    """Sleeps ``seconds`` per task, then records ``(label, pid, time)`` in ``_metadata["workers"]``.

    With ``log_dir`` it also appends ``<time> <value>`` to ``<log_dir>/<label>.log``.
    """

    seconds: float = 0.0
    label: str = "slow"
    log_dir: str = ""
    name: str = "slow_stamp"

    def process(self, task: NumberTask) -> NumberTask:
        if self.seconds:
            time.sleep(self.seconds)
        now = time.time()
        task._metadata.setdefault("workers", []).append((self.label, os.getpid(), now))
        if self.log_dir:
            with open(Path(self.log_dir) / f"{self.label}.log", "a") as fh:
                fh.write(f"{now} {task.data}\n")
        return task


@dataclass(kw_only=True)
class FailOn(NumberStage):
    """Raises ``ValueError("cannot handle <value>")`` on ``value``; filters (``None``) the numbers
    in ``drop``; stamps every other task's ``_metadata["sink_at"]`` with the time it passed."""

    value: int = 5
    drop: tuple[int, ...] = ()
    name: str = "fail_on"

    def process(self, task: NumberTask) -> NumberTask | None:
        if task.data == self.value:
            raise ValueError(f"cannot handle {task.data}")
        if task.data in self.drop:
            return None
        task._metadata["sink_at"] = time.time()
        return task


@dataclass(kw_only=True)
class CrashOnce(NumberStage):
    """Kills its own worker process (``os._exit``) the first time it sees ``trigger``, creating
    ``marker``; with ``always``, every time."""

    marker: str = ""
    trigger: int = 3
    always: bool = False
    name: str = "crash_once"

    def process(self, task: NumberTask) -> NumberTask:
        if task.data == self.trigger and (first_time(self.marker) or self.always):
            os._exit(1)
        return task


@dataclass(kw_only=True)
class AwaitsDriver(NumberStage):
    """A last stage that handles number ``n`` only once the driver has received ``n - 1``.

    The driver's side writes ``<marker_dir>/<n>`` for every output it receives. A task waits
    up to ``timeout_s`` for its predecessor's marker and records in ``_metadata["waited_s"]``
    how long it waited (``None``: the marker never came).
    """

    marker_dir: str = ""
    timeout_s: float = 10.0
    name: str = "awaits_driver"

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


class OnActors:
    """Mixin: having ``setup`` puts a stage on actors (long-lived workers) in every executor."""

    def setup(self, worker_metadata: object = None) -> None:
        self.ready = True


class FailInActor(OnActors, ProcessingStage[NumberTask, NumberTask]):
    """Runs on actors and raises ``KeyError`` for the number 4."""

    name = "fail_in_actor"
    resources = SMALL

    def process(self, task: NumberTask) -> NumberTask:
        if task.data == 4:
            raise KeyError("no entry for 4")
        return task


class ReturnsText(OnActors, ProcessingStage[NumberTask, NumberTask]):
    """Runs on actors and returns a string instead of a task."""

    name = "returns_text"
    resources = SMALL

    def process(self, task: NumberTask) -> str:  # type: ignore[override]
        return f"number {task.data}"


class FailingSetup(ProcessingStage[NumberTask, NumberTask]):
    """Its ``setup`` raises ``OSError``."""

    name = "failing_setup"
    resources = SMALL

    def setup(self, worker_metadata: object = None) -> None:
        raise OSError("model weights not found")

    def process(self, task: NumberTask) -> NumberTask:
        return task


class RayletInfo(ProcessingStage[NumberTask, NumberTask]):
    """Records which raylet runs this worker (for the own-Ray subprocess test)."""

    name = "raylet_info"
    resources = SMALL

    def process(self, task: NumberTask) -> NumberTask:
        raylet = int(os.environ["RAY_RAYLET_PID"])
        task._metadata["raylet_pid"] = raylet
        task._metadata["raylet_cmdline"] = Path(f"/proc/{raylet}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        return task


@dataclass(frozen=True)
class FixedSourceFilter:
    """A picklable source filter: the sources in ``done`` count as already complete."""

    done: frozenset[str] = frozenset()

    def completed(self, source_ids: list[str]) -> set[str]:
        return {s for s in source_ids if s in self.done}


# -- a reference run: the stages one after the other, in this process ------------------------


def reference_run(stages: list[ProcessingStage], initial_tasks: list[Task] | None = None) -> list[Task]:
    """Run the stages one after the other in this process through the shared adapter."""
    plan = ExecutionPlan.from_stages(stages)
    tasks = plan.initial_tasks(initial_tasks)
    for i, stage in enumerate(plan.stages):
        adapter = plan.adapter(i, None)
        adapter.setup()
        size = max(1, stage.batch_size)
        out: list[Task] = []
        for j in range(0, len(tasks), size):
            out.extend(adapter.process_batch(tasks[j : j + size]))
        adapter.teardown()
        tasks = out
    return tasks


def id_value_pairs(tasks: list[Task]) -> list[tuple[str, Any]]:
    return sorted((t.task_id, t.data) for t in tasks)


# -- the feature pipeline: every stage shape at once ------------------------------------------


def add_and_fan() -> Chain:
    """A composite: ``AddOne`` then ``FanOut(n=3)``."""
    return Chain(name="add_and_fan", parts=(AddOne(), FanOut(n=3)))


def feature_pipeline(count: int = 12) -> Pipeline:
    """Every stage shape in one pipeline: composite, 1:1, fan-out, both filters, batches, setup."""
    return Pipeline(
        name="features",
        stages=[
            EmitNumbers(count=count),
            add_and_fan(),
            DropByNone(),
            DropByEmptyList(),
            MultiplyInBatches(),
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


# -- documents -------------------------------------------------------------------------------


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


@dataclass
class RecordingReader(JsonlReaderStage):
    """Reads a file group and leaves a marker naming its source; can fail on chosen files.

    Every source it starts on leaves ``<log_dir>/<source_id>.<pid>.<random>``. ``raise_on`` /
    ``fail_on`` name input file basenames for which the stage raises / returns a
    ``FailedTask`` while the file ``<log_dir>/heal`` does not exist.
    """

    log_dir: str = ""
    raise_on: list[str] = field(default_factory=list)
    fail_on: list[str] = field(default_factory=list)
    fingerprint_ignore: tuple[str, ...] = ("log_dir", "raise_on", "fail_on")

    def process(self, task: FileGroupTask) -> DocumentBatch | FailedTask | None:
        marker = os.path.join(self.log_dir, f"{task.task_id}.{os.getpid()}.{uuid.uuid4().hex[:8]}")
        with open(marker, "w") as fh:
            fh.write(" ".join(task.data))
        healed = os.path.exists(os.path.join(self.log_dir, "heal"))
        names = {os.path.basename(p) for p in task.data}
        if not healed and names & set(self.raise_on):
            raise RuntimeError(f"injected failure reading {sorted(names)}")
        if not healed and names & set(self.fail_on):
            return FailedTask(dataset_name=task.dataset_name, reason="injected FailedTask")
        return super().process(task)


class SplitInThree(ProcessingStage[DocumentBatch, DocumentBatch]):
    """Fan-out 1:3 by row position; the third slot is filtered (``None``)."""

    name = "split_in_three"
    resources = SMALL

    def process(self, task: DocumentBatch) -> list[DocumentBatch | None]:
        frame = task.to_pandas().reset_index(drop=True)
        out: list[DocumentBatch | None] = []
        for k in range(2):
            part = frame.iloc[k::3].reset_index(drop=True)
            out.append(DocumentBatch(task.dataset_name, part, _metadata=dict(task._metadata)) if len(part) else None)
        out.append(None)
        return out


@dataclass
class SlowDocuments(ProcessingStage[DocumentBatch, DocumentBatch]):
    """Sleeps per task, so that a kill lands mid-run; can inject one-off disasters.

    Each disaster happens once per ``log_dir`` (a marker file records it), on the first task
    whose source files include ``crash_on`` / ``kill_ledger_on``:
    - ``crash_on``: the worker process dies (``os._exit``), as if OOM-killed or preempted;
    - ``kill_ledger_on``: the checkpoint's ledger actor is killed (Ray may restart it).

    While the file ``<log_dir>/stall`` exists, a task waits before it starts (tasks already
    sleeping finish): a test can bring the pipeline to a standstill at a moment it chooses.
    With ``wait_for`` (a path) every task waits until that file exists, so a test can hold a
    run mid-way for as long as it needs.
    """

    seconds: float = 0.05
    log_dir: str = ""
    crash_on: str = ""
    kill_ledger_on: str = ""
    checkpoint: str = ""
    wait_for: str = ""
    name: str = "slow"
    resources: Resources = field(default_factory=lambda: SMALL)
    fingerprint_ignore: tuple[str, ...] = ("seconds", "log_dir", "crash_on", "kill_ledger_on", "checkpoint", "wait_for")

    def process(self, task: DocumentBatch) -> DocumentBatch:
        while self.log_dir and os.path.exists(os.path.join(self.log_dir, "stall")):
            time.sleep(0.05)
        deadline = time.monotonic() + 600
        while self.wait_for and not os.path.exists(self.wait_for) and time.monotonic() < deadline:
            time.sleep(0.1)
        names = {os.path.basename(p) for p in task._metadata.get("source_files", [])}
        if self.crash_on in names and first_time(os.path.join(self.log_dir, "crashed")):
            os._exit(1)
        if self.kill_ledger_on in names and first_time(os.path.join(self.log_dir, "ledger_killed")):
            import ray

            from nemo_curator.resumability.actor import NAMESPACE, ledger_actor_name

            # A fresh checkpoint's actor starts at the first report (or defer_ledger_s after the open).
            deadline = time.monotonic() + 120
            while True:
                try:
                    actor = ray.get_actor(ledger_actor_name(self.checkpoint), namespace=NAMESPACE)
                    break
                except ValueError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            ray.kill(actor, no_restart=False)
        time.sleep(self.seconds)
        return task


# -- attribution and source failures (tests/test_checkpoint_attribution.py) --------------------


@dataclass(kw_only=True)
class ReverseInBatches(NumberStage):
    """A batch stage returning NEW tasks (``value * 10``) in reverse order, without the inputs' ``_metadata``."""

    batch_size: int = 8
    name: str = "reverse_in_batches"

    def process_batch(self, tasks: list[NumberTask]) -> list[NumberTask]:
        return [type(t)(t.dataset_name, t.data * 10) for t in reversed(tasks)]


@dataclass(kw_only=True)
class WriteValue(NumberStage):
    """Sink: writes ``<out_dir>/<task_id>.txt`` holding the value, atomically. The first time it
    sees ``fail_value`` (while ``marker`` does not exist) its write raises ``OSError`` instead."""

    out_dir: str = ""
    fail_value: int | None = None
    marker: str = ""
    name: str = "write_value"
    fingerprint_ignore: tuple[str, ...] = ("out_dir", "fail_value", "marker")

    def process(self, task: NumberTask) -> NumberTask:
        if task.data == self.fail_value and first_time(self.marker):
            raise OSError(f"injected write failure for {task.data}")
        path = Path(self.out_dir, f"{task.task_id}.txt")
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(str(task.data))
        os.replace(tmp, path)
        return task


@dataclass(kw_only=True)
class ExpandOrRaiseOnce(NumberStage):
    """Source stage over initial number tasks: ``v`` becomes ``10 v`` and ``10 v + 1``; on
    ``value`` it raises ``OSError`` the first time (while ``marker`` does not exist)."""

    value: int = 1
    marker: str = ""
    name: str = "expand_or_raise_once"
    is_source_stage: bool = True
    fingerprint_ignore: tuple[str, ...] = ("marker",)

    def process(self, task: NumberTask) -> list[NumberTask]:
        if task.data == self.value and first_time(self.marker):
            raise OSError(f"cannot list the inputs of {task.data}")
        return [NumberTask(task.dataset_name, task.data * 10 + j) for j in range(2)]
