"""Workload B1 of the benchmark suite: source -> 1:1 map (~1 ms CPU) -> 1-to-3 fan-out (one filtered) -> sink.

``b1_pipeline(cfg)`` builds it from a ``B1Config``. For ``n`` sources one run writes exactly
``2 * n`` files, named ``<task_id>.out`` (task ids are deterministic, so a rerun or a resumed run
writes the same names). The source and the fan-out are the test suite's stages (``tests.stages``,
importable from the repository root like this package); the map and the sink live here. Both
modules are importable, so Ray workers (and the kill-and-resume subprocess) see the stages as
``tests.stages.X`` / ``benchmarks.workloads.X``: the pipeline fingerprint, which includes the
stage classes' qualified names, is then the same in every process.

Invariants:
- the sink's file appears whole or not at all (temp file, optional fsync, ``os.replace``);
- with ``attempts_dir`` set, the sink appends one line ``<task_id>`` to
  ``<attempts_dir>/<pid>.log`` *before* every write attempt, so that after a kill and a resume
  the attempts of each output can be counted (a line is one ``write`` on an ``O_APPEND`` file,
  which survives SIGKILL of the writer);
- the output directory and the attempts directory are left out of the pipeline fingerprint, so
  a resume may point them elsewhere (the benchmark does not).
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from nemo_curator.backends.registry import make_executor
from nemo_curator.pipeline import Pipeline
from nemo_curator.stages.base import ProcessingStage
from nemo_curator.stages.resources import Resources
from nemo_curator.tasks import FileGroupTask, Task
from tests.stages import SMALL, EmitNumbers, FanOut, NumberStage, NumberTask

#: Files written per source: the fan-out makes three children and filters one.
OUTPUTS_PER_SOURCE = 2
#: Stages of B1 (source, map, fan-out, sink).
NUM_STAGES = 4
OUTPUT_SUFFIX = ".out"


def burn_cpu(seconds: float) -> int:
    """Hash in a loop until this thread has used ``seconds`` of CPU time; returns the rounds."""
    start = time.thread_time()
    digest = b"b1"
    rounds = 0
    while time.thread_time() - start < seconds:
        for _ in range(16):
            digest = hashlib.blake2b(digest).digest()
        rounds += 1
    return rounds


@dataclass(kw_only=True)
class BusyMap(NumberStage):
    """1:1 map that spends ``work_ms`` of CPU time per task (thread CPU time, not wall time)."""

    work_ms: float = 1.0
    name: str = "b1_map"

    def process(self, task: NumberTask) -> NumberTask:
        burn_cpu(self.work_ms / 1000.0)
        return NumberTask(task.dataset_name, task.data * 7 + 1)


@dataclass(kw_only=True)
class AtomicFileSink(ProcessingStage[NumberTask, FileGroupTask]):
    """Writes one small file per task, ``<out_dir>/<task_id>.out``, atomically; records attempts."""

    out_dir: str = ""
    attempts_dir: str | None = None
    fsync: bool = True
    name: str = "b1_sink"
    resources: Resources = field(default_factory=lambda: SMALL)
    fingerprint_ignore: tuple[str, ...] = ("out_dir", "attempts_dir", "fsync")

    def process(self, task: NumberTask) -> FileGroupTask:
        name = task.task_id + OUTPUT_SUFFIX
        if self.attempts_dir:
            record_attempt(self.attempts_dir, task.task_id)
        final = os.path.join(self.out_dir, name)
        tmp = os.path.join(self.out_dir, f".{name}.tmp-{uuid.uuid4().hex}")
        with open(tmp, "wb") as fh:
            fh.write(f"{task.task_id}\t{task.data}\n".encode())
            if self.fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, final)
        return FileGroupTask(task.dataset_name, [final])


def record_attempt(attempts_dir: str, task_id: str) -> None:
    """Append ``task_id`` to this process's attempt log (one ``write`` call on an ``O_APPEND`` file)."""
    path = os.path.join(attempts_dir, f"{os.getpid()}.log")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, (task_id + "\n").encode())
    finally:
        os.close(fd)


def read_attempts(attempts_dir: str) -> Counter[str]:
    """How many write attempts each task id had, over all attempt logs (a torn last line is ignored)."""
    counts: Counter[str] = Counter()
    if not os.path.isdir(attempts_dir):
        return counts
    for name in os.listdir(attempts_dir):
        if not name.endswith(".log"):
            continue
        with open(os.path.join(attempts_dir, name), "rb") as fh:
            data = fh.read()
        lines = data.split(b"\n")
        if lines and lines[-1] != b"":  # a write cut by the kill
            lines = lines[:-1]
        counts.update(line.decode() for line in lines if line)
    return counts


def written_outputs(out_dir: str) -> set[str]:
    """Task ids whose output file exists (temp files are hidden and skipped)."""
    if not os.path.isdir(out_dir):
        return set()
    return {n[: -len(OUTPUT_SUFFIX)] for n in os.listdir(out_dir) if n.endswith(OUTPUT_SUFFIX) and n[0] != "."}


@dataclass
class B1Config:
    """Everything a B1 run needs; JSON-serialisable (the resume benchmark passes it to a subprocess)."""

    sources: int
    out_dir: str
    attempts_dir: str | None = None
    work_ms: float = 1.0
    fsync: bool = True
    batch_size: int = 1
    #: Hand the sources to ``pipeline.run`` as initial tasks instead of emitting them from a source stage.
    initial_tasks: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(data: dict[str, Any]) -> B1Config:
        return B1Config(**data)


def b1_pipeline(cfg: B1Config) -> Pipeline:
    """The B1 pipeline; creates the output (and attempts) directory."""
    os.makedirs(cfg.out_dir, exist_ok=True)
    if cfg.attempts_dir:
        os.makedirs(cfg.attempts_dir, exist_ok=True)
    stages: list[ProcessingStage] = [
        *([] if cfg.initial_tasks else [EmitNumbers(count=cfg.sources, dataset="b1", name="b1_source")]),
        BusyMap(work_ms=cfg.work_ms),
        # 1-to-3 fan-out whose third child is filtered (a ``None`` slot): two survivors per input.
        FanOut(n=3, factor=3, keep=OUTPUTS_PER_SOURCE, name="b1_fan_out"),
        AtomicFileSink(out_dir=cfg.out_dir, attempts_dir=cfg.attempts_dir, fsync=cfg.fsync),
    ]
    if cfg.batch_size > 1:
        for stage in stages:
            if not isinstance(stage, EmitNumbers):
                stage.batch_size = cfg.batch_size
    return Pipeline(name="b1", stages=stages)


def b1_initial_tasks(cfg: B1Config) -> list[Task] | None:
    """The tasks ``pipeline.run`` gets: the sources themselves with ``initial_tasks``, else ``None``."""
    return [NumberTask("b1", i) for i in range(cfg.sources)] if cfg.initial_tasks else None


def b1_task_stage_visits(sources: int) -> int:
    """Tasks processed summed over stages: 1 initial task, n maps, n fan-outs, 2n sink writes."""
    return 1 + sources + sources + OUTPUTS_PER_SOURCE * sources


def run_b1(executor_name: str, cfg: B1Config, checkpoint: str | None = None) -> tuple[float, int]:
    """Run B1 once; returns (wall seconds of ``pipeline.run``, number of outputs)."""
    pipeline = b1_pipeline(cfg)
    executor = make_executor(executor_name, checkpoint=checkpoint)
    start = time.perf_counter()
    outputs = pipeline.run(executor, initial_tasks=b1_initial_tasks(cfg))
    return time.perf_counter() - start, len(outputs)
