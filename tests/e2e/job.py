"""A resumable curation job for the kill-and-resume tests, runnable in-process or as a subprocess.

``python -m tests.e2e.job '<json config>'`` runs it and prints one JSON line with the number of
outputs. Every source the reader starts on leaves a marker file in ``log_dir``
(``<source_id>.<pid>.<random>``), so a test can tell which sources a run (re)processed.

``cfg["checkpoint"]`` is a path or URL, or a dict of ``CheckpointConfig`` arguments (``path``,
``storage_options``, ``cache_dir``), which is what a JSON config can carry to a subprocess.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from nemo_curator.pipeline import Pipeline
from nemo_curator.stages.base import ProcessingStage
from nemo_curator.stages.file_partitioning import FilePartitioningStage
from nemo_curator.stages.text.io.writer import JsonlWriter
from tests.stages import RecordingReader, SlowDocuments, SplitInThree


def build_pipeline(cfg: dict[str, Any]) -> Pipeline:
    stages: list[ProcessingStage] = [
        FilePartitioningStage(file_paths=cfg["input_dir"], files_per_partition=1, file_extensions=[".jsonl"]),
        RecordingReader(log_dir=cfg["log_dir"], raise_on=cfg.get("raise_on", []), fail_on=cfg.get("fail_on", [])),
        SplitInThree(),
        SlowDocuments(
            seconds=cfg.get("slow_s", 0.05),
            log_dir=cfg["log_dir"],
            crash_on=cfg.get("crash_on", ""),
            kill_ledger_on=cfg.get("kill_ledger_on", ""),
            checkpoint=checkpoint_path(cfg),
            wait_for=cfg.get("wait_for", ""),
        ),
        JsonlWriter(cfg["output_dir"]),
    ]
    if cfg.get("extra_stage"):
        stages.insert(3, SlowDocuments(seconds=0.0, name="extra"))
    return Pipeline(name="e2e", stages=stages)


def checkpoint_path(cfg: dict[str, Any]) -> str:
    """The checkpoint's path or URL ("" without a checkpoint)."""
    ckpt = cfg.get("checkpoint")
    if isinstance(ckpt, dict):
        return str(ckpt["path"])
    return str(ckpt or "")


def checkpoint_of(cfg: dict[str, Any]) -> Any:
    """What the executor gets as ``checkpoint=``: ``None``, a path or URL, or a ``CheckpointConfig``."""
    ckpt = cfg.get("checkpoint")
    if isinstance(ckpt, dict):
        from nemo_curator.resumability import CheckpointConfig

        return CheckpointConfig(**ckpt)
    return ckpt


def make_executor(cfg: dict[str, Any]):
    from nemo_curator.demo import make_executor as demo_executor

    config = dict(cfg.get("executor_config") or {})
    return demo_executor(cfg["executor"], config=config, checkpoint=checkpoint_of(cfg))


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
    # Run through the module's importable name, so that everything this module defines is
    # ``tests.e2e.job.X`` (as in-process runs see it), never ``__main__.X``.
    from tests.e2e import job as importable

    print(json.dumps({"outputs": importable.run(json.loads(sys.argv[1]))}), flush=True)
