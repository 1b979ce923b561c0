"""A resumable exact deduplication for the kill-and-resume tests, runnable in-process or as a subprocess.

``python -m tests.e2e.dedup_job '<json config>'`` runs it and prints one JSON line with the
number of duplicates. Config keys: ``executor``, ``input_dir``, ``output_dir``, ``checkpoint``,
``nparts`` (the hash partition count K) and ``slow_s`` (``{segment name: seconds per document}``,
so that a kill can land inside that segment).

The slowdown is a subclass of each product stage with a ``slow_s`` field that the fingerprint
ignores (it changes how long, not what, a stage computes): a killed slow run and a fast resume
have the same plan, so the resume is accepted. Nothing test-only lives in the product code.

The corpus (``write_corpus``) holds duplicates within and across files, and one file that is
all duplicates; ``expected_output`` computes, in plain Python, what one uninterrupted run
writes: the first occurrence of each text in input order (files sorted by path, then lines).
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import sys
import time
from dataclasses import dataclass
from typing import Any, ClassVar

from nemo_curator.backends.stage_adapter import source_id_for
from nemo_curator.stages.base import ProcessingStage
from nemo_curator.stages.deduplication.exact import (
    ExactDeduplicationResult,
    ExactDeduplicationWorkflow,
    ExactDuplicateHashStage,
    ExactDuplicateIdentificationStage,
    ExactDuplicateRemovalStage,
    ShufflePartitionTask,
)
from nemo_curator.stages.task_list import TaskListStage
from nemo_curator.tasks import DocumentBatch, FileGroupTask

SEGMENTS = ("hash", "identify", "remove")


@dataclass
class SlowHash(ExactDuplicateHashStage):
    """The hash stage, then ``slow_s`` seconds per document of the group (its files are written first)."""

    slow_s: float = 0.0
    fingerprint_ignore: ClassVar[tuple[str, ...]] = ("slow_s",)

    def process(self, task: FileGroupTask) -> FileGroupTask:
        out = super().process(task)
        time.sleep(self.slow_s * out._metadata["documents"])
        return out


@dataclass
class SlowIdentification(ExactDuplicateIdentificationStage):
    """The identification stage, then ``slow_s`` seconds per document of the partition."""

    slow_s: float = 0.0
    fingerprint_ignore: ClassVar[tuple[str, ...]] = ("slow_s",)

    def process(self, task: ShufflePartitionTask) -> FileGroupTask:
        out = super().process(task)
        time.sleep(self.slow_s * out._metadata["documents"])
        return out


@dataclass
class SlowRemoval(ExactDuplicateRemovalStage):
    """``slow_s`` seconds per document of the batch, then the removal stage (the writer comes after)."""

    slow_s: float = 0.0
    fingerprint_ignore: ClassVar[tuple[str, ...]] = ("slow_s",)

    def process(self, task: DocumentBatch) -> DocumentBatch | None:
        time.sleep(self.slow_s * task.num_items)
        return super().process(task)


#: Product stage class -> (its slow subclass, the segment it runs in).
SLOWED: dict[type, tuple[type, str]] = {
    ExactDuplicateHashStage: (SlowHash, "hash"),
    ExactDuplicateIdentificationStage: (SlowIdentification, "identify"),
    ExactDuplicateRemovalStage: (SlowRemoval, "remove"),
}


def slowed(stage: ProcessingStage, slow_s: dict[str, float]) -> ProcessingStage:
    """``stage`` as its slow subclass (same configuration), or unchanged if it has none."""
    entry = SLOWED.get(type(stage))
    if entry is None:
        return stage
    cls, segment = entry
    config = {f.name: getattr(stage, f.name) for f in dataclasses.fields(stage) if f.init}
    return cls(**config, slow_s=float(slow_s.get(segment, 0.0)))


class SlowExactDeduplication(ExactDeduplicationWorkflow):
    """``ExactDeduplicationWorkflow`` whose dedup stages sleep per document (``slow_s`` by segment)."""

    def __init__(self, slow_s: dict[str, float], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.slow_s = dict(slow_s)

    def segments(
        self, groups: list[FileGroupTask], num_partitions: int, files: list[list[Any]] | None = None
    ) -> list[Any]:
        segments = super().segments(groups, num_partitions, files)
        for segment in segments:
            segment.pipeline.stages = [slowed(s, self.slow_s) for s in segment.pipeline.stages]
        return segments


def build_workflow(cfg: dict[str, Any]) -> SlowExactDeduplication:
    return SlowExactDeduplication(
        slow_s=cfg.get("slow_s") or {},
        input_path=cfg["input_dir"],
        output_path=cfg["output_dir"],
        total_nparts=int(cfg["nparts"]),
        perform_removal=True,
    )


def run(cfg: dict[str, Any]) -> ExactDeduplicationResult:
    from nemo_curator.demo import make_executor

    return build_workflow(cfg).run(executor=make_executor(cfg["executor"], checkpoint=cfg["checkpoint"]))


# -- the corpus and what one uninterrupted run writes ------------------------------------------


def write_corpus(input_dir: str, files: int, docs_per_file: int, seed: int = 0) -> None:
    """``files`` JSONL files of ``docs_per_file`` documents (``id``, ``text``), duplicates within and across.

    Texts are drawn from a pool smaller than the corpus; the second document of each file
    repeats its first; the last file only repeats texts of the first one (it is removed whole).
    """
    rng = random.Random(seed)
    os.makedirs(input_dir, exist_ok=True)
    pool = max(1, files * docs_per_file)
    first_texts: list[str] = []
    for f in range(files):
        texts = [_text(rng.randrange(pool)) for _ in range(docs_per_file)]
        if docs_per_file > 1:
            texts[1] = texts[0]
        if f == 0:
            first_texts = texts
        elif f == files - 1:
            texts = [rng.choice(first_texts) for _ in range(docs_per_file)]
        with open(os.path.join(input_dir, f"part-{f:04d}.jsonl"), "w") as fh:
            for d, text in enumerate(texts):
                fh.write(json.dumps({"id": f"{f}-{d}", "text": text}) + "\n")


def _text(k: int) -> str:
    return f"text {k}: " + " ".join(f"w{(k * j) % 97}" for j in range(k % 13 + 1))


def kept_records(input_dir: str) -> dict[str, list[dict[str, Any]]]:
    """Input file path -> its records that an exact deduplication keeps (the first of each text)."""
    seen: set[str] = set()
    kept: dict[str, list[dict[str, Any]]] = {}
    for name in sorted(os.listdir(input_dir)):
        path = os.path.join(input_dir, name)
        with open(path) as fh:
            records = [json.loads(line) for line in fh if line.strip()]
        kept[path] = []
        for record in records:
            if record["text"] not in seen:
                seen.add(record["text"])
                kept[path].append(record)
    return kept


def input_groups(cfg: dict[str, Any]) -> list[FileGroupTask]:
    """The workflow's input groups, in order (one file each)."""
    workflow = build_workflow(cfg)
    return workflow.partitioning.group_tasks(workflow.input_files())


def group_source_ids(cfg: dict[str, Any]) -> list[str]:
    """The source id of each input group (the ``hash`` and ``remove`` segments' sources), in order."""
    return [source_id_for(g, "", 0) for g in input_groups(cfg)]


def partition_source_ids(cfg: dict[str, Any]) -> list[str]:
    """The source id of each hash partition (the ``identify`` segment's sources), by partition number."""
    workflow = build_workflow(cfg)
    groups = input_groups(cfg)
    task_list = workflow.segments(groups, int(cfg["nparts"]))[1].pipeline.stages[0]
    assert isinstance(task_list, TaskListStage)
    return [source_id_for(p, "", 0) for p in task_list.tasks]


def expected_output(cfg: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Output file name -> records, of one uninterrupted run (a group that keeps nothing has no file)."""
    kept = kept_records(cfg["input_dir"])
    out: dict[str, list[dict[str, Any]]] = {}
    for group, sid in zip(input_groups(cfg), group_source_ids(cfg), strict=True):
        (path,) = group.data
        if kept[path]:
            out[f"{sid}.jsonl"] = kept[path]
    return out


def written_output(output_dir: str) -> dict[str, list[dict[str, Any]]]:
    """Output file name -> records, of the visible files of ``<output_dir>/deduplicated``."""
    directory = os.path.join(output_dir, "deduplicated")
    out: dict[str, list[dict[str, Any]]] = {}
    for name in sorted(os.listdir(directory)):
        if not name.startswith("."):
            with open(os.path.join(directory, name)) as fh:
                out[name] = [json.loads(line) for line in fh if line.strip()]
    return out


if __name__ == "__main__":
    # Run through the module's importable name, so that the stage classes are
    # ``tests.e2e.dedup_job.X`` (as in-process runs see them), never ``__main__.X``.
    from tests.e2e import dedup_job as importable

    result = importable.run(json.loads(sys.argv[1]))
    print(json.dumps({"duplicates": result.duplicates}), flush=True)
