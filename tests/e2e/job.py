"""A resumable curation job for the kill-and-resume tests, runnable in-process or as a subprocess.

``python -m tests.e2e.job '<json config>'`` runs it and prints one JSON line with the number of
outputs. Every source the reader starts on leaves a marker file in ``log_dir``
(``<source_id>.<pid>.<random>``), so a test can tell which sources a run (re)processed.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from nemo_curator.pipeline import Pipeline
from nemo_curator.stages.base import ProcessingStage
from nemo_curator.stages.file_partitioning import FilePartitioningStage
from nemo_curator.stages.resources import Resources
from nemo_curator.stages.text.io.reader import JsonlReaderStage
from nemo_curator.stages.text.io.writer import JsonlWriter
from nemo_curator.tasks import DocumentBatch, FailedTask, FileGroupTask

SMALL = Resources(cpus=0.5)


@dataclass
class RecordingReader(JsonlReaderStage):
    """Reads a file group and leaves a marker naming its source; can fail on chosen files.

    ``raise_on`` / ``fail_on`` name input file basenames for which the stage raises / returns a
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
class Slow(ProcessingStage[DocumentBatch, DocumentBatch]):
    """Sleeps per task, so that a kill lands mid-run; can inject one-off disasters.

    Each disaster happens once per ``log_dir`` (a marker file records it), on the first task
    whose source files include ``crash_on`` / ``kill_ledger_on``:
    - ``crash_on``: the worker process dies (``os._exit``), as if OOM-killed or preempted;
    - ``kill_ledger_on``: the checkpoint's ledger actor is killed (Ray may restart it).
    """

    seconds: float = 0.05
    log_dir: str = ""
    crash_on: str = ""
    kill_ledger_on: str = ""
    checkpoint: str = ""
    name: str = "slow"
    resources: Resources = field(default_factory=lambda: SMALL)
    fingerprint_ignore: tuple[str, ...] = ("seconds", "log_dir", "crash_on", "kill_ledger_on", "checkpoint")

    def process(self, task: DocumentBatch) -> DocumentBatch:
        names = {os.path.basename(p) for p in task._metadata.get("source_files", [])}
        if self.crash_on in names and self._first_time("crashed"):
            os._exit(1)
        if self.kill_ledger_on in names and self._first_time("ledger_killed"):
            import ray

            from nemo_curator.resumability.actor import NAMESPACE, ledger_actor_name

            ray.kill(ray.get_actor(ledger_actor_name(self.checkpoint), namespace=NAMESPACE), no_restart=False)
        time.sleep(self.seconds)
        return task

    def _first_time(self, what: str) -> bool:
        try:
            fd = os.open(os.path.join(self.log_dir, what), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return False
        os.close(fd)
        return True


def build_pipeline(cfg: dict[str, Any]) -> Pipeline:
    stages: list[ProcessingStage] = [
        FilePartitioningStage(file_paths=cfg["input_dir"], files_per_partition=1, file_extensions=[".jsonl"]),
        RecordingReader(log_dir=cfg["log_dir"], raise_on=cfg.get("raise_on", []), fail_on=cfg.get("fail_on", [])),
        SplitInThree(),
        Slow(
            seconds=cfg.get("slow_s", 0.05),
            log_dir=cfg["log_dir"],
            crash_on=cfg.get("crash_on", ""),
            kill_ledger_on=cfg.get("kill_ledger_on", ""),
            checkpoint=cfg.get("checkpoint") or "",
        ),
        JsonlWriter(cfg["output_dir"]),
    ]
    if cfg.get("extra_stage"):
        stages.insert(3, Slow(seconds=0.0, name="extra"))
    return Pipeline(name="e2e", stages=stages)


def make_executor(cfg: dict[str, Any]):
    from nemo_curator.demo import make_executor as demo_executor

    config = dict(cfg.get("executor_config") or {})
    return demo_executor(cfg["executor"], config=config, checkpoint=cfg.get("checkpoint"))


def write_inputs(input_dir: str, files: int, docs_per_file: int) -> list[str]:
    os.makedirs(input_dir, exist_ok=True)
    paths = []
    for f in range(files):
        path = os.path.join(input_dir, f"part-{f:04d}.jsonl")
        with open(path, "w") as fh:
            for d in range(docs_per_file):
                fh.write(json.dumps({"id": f"{f}-{d}", "text": f"document {d} of file {f}"}) + "\n")
        paths.append(path)
    return paths


def expected_records(input_dir: str) -> list[str]:
    """The record ids one uninterrupted run writes: rows whose position % 3 != 2."""
    ids = []
    for name in sorted(os.listdir(input_dir)):
        if not name.endswith(".jsonl"):
            continue
        with open(os.path.join(input_dir, name)) as fh:
            rows = [json.loads(line)["id"] for line in fh if line.strip()]
        ids.extend(r for i, r in enumerate(rows) if i % 3 != 2)
    return sorted(ids)


def written_records(output_dir: str) -> list[str]:
    ids = []
    for name in sorted(os.listdir(output_dir)) if os.path.isdir(output_dir) else []:
        if name.endswith(".jsonl") and not name.startswith("."):
            with open(os.path.join(output_dir, name)) as fh:
                ids.extend(json.loads(line)["id"] for line in fh if line.strip())
    return sorted(ids)


def processed_sources(log_dir: str) -> list[str]:
    """Source ids the reader started on, once per attempt."""
    return sorted(n.split(".")[0] for n in os.listdir(log_dir) if "." in n)


def run(cfg: dict[str, Any]) -> int:
    outputs = build_pipeline(cfg).run(make_executor(cfg))
    return len(outputs)


if __name__ == "__main__":
    # Run through the module's importable name, so stage classes are ``tests.e2e.job.X`` (as
    # in-process runs see them) and not ``__main__.X``: the pipeline fingerprint tells them apart.
    from tests.e2e import job as importable

    print(json.dumps({"outputs": importable.run(json.loads(sys.argv[1]))}), flush=True)
