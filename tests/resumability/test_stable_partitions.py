"""Stable partitions end to end (real Ray, real checkpoint): files added and removed between runs.

Three files per group. A rerun after the input changed must write every record of the final
input exactly once, as a run on the final input alone does, and rewrite nothing complete; a file
removed from a complete group is announced loudly.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

from loguru import logger

from nemo_curator.backends.ray_actor_pool import RayActorPoolExecutor
from nemo_curator.backends.ray_data import RayDataExecutor
from nemo_curator.pipeline import Pipeline
from nemo_curator.resumability.actor import LedgerHandle
from nemo_curator.resumability.inspect import checkpoint_status
from nemo_curator.stages.file_partitioning import FilePartitioningStage
from nemo_curator.stages.text.io.writer import JsonlWriter
from nemo_curator.tasks import EmptyTask
from tests.stages import RecordingReader


def write_file(directory: Path, name: str, records: int = 2) -> None:
    with open(directory / name, "w") as fh:
        for r in range(records):
            fh.write(json.dumps({"id": f"{name}:{r}", "text": f"record {r} of {name}"}) + "\n")


def pipeline(input_dir: Path, output_dir: Path, log_dir: Path, fail_on: list[str] | None = None) -> Pipeline:
    return Pipeline(
        name="stable_partitions",
        stages=[
            FilePartitioningStage(file_paths=str(input_dir), files_per_partition=3, file_extensions=[".jsonl"]),
            RecordingReader(log_dir=str(log_dir), fail_on=fail_on or []),
            JsonlWriter(str(output_dir)),
        ],
    )


def output_records(output_dir: Path) -> Counter[str]:
    ids: Counter[str] = Counter()
    for path in output_dir.glob("*.jsonl"):
        ids.update(json.loads(line)["id"] for line in path.read_text().splitlines() if line)
    return ids


def dirs(tmp_path: Path) -> tuple[Path, Path, Path, Path]:
    made = [tmp_path / n for n in ("in", "out", "log", "ckpt")]
    for d in made[:3]:
        d.mkdir()
    return made[0], made[1], made[2], made[3]


def test_rerun_after_files_added_and_removed_writes_each_record_once(ray_session: Any, tmp_path: Path) -> None:
    input_dir, output_dir, log_dir, ckpt = dirs(tmp_path)
    for i in range(12):
        write_file(input_dir, f"part-{i:04d}.jsonl")
    # Run 1: groups {0,1,2} {3,4,5} {6,7,8} {9,10,11}; the second one fails.
    pipeline(input_dir, output_dir, log_dir, fail_on=["part-0004.jsonl"]).run(RayActorPoolExecutor(checkpoint=ckpt))
    first = set(output_dir.glob("*.jsonl"))
    assert len(first) == 3
    first_bytes = {p: p.read_bytes() for p in first}

    # Two files added, sorting before members of complete groups; one file of the failed group removed.
    write_file(input_dir, "part-0001-a.jsonl")
    write_file(input_dir, "part-0007-a.jsonl")
    os.remove(input_dir / "part-0005.jsonl")
    (log_dir / "heal").touch()
    pipeline(input_dir, output_dir, log_dir).run(RayActorPoolExecutor(checkpoint=ckpt))

    alone_out = tmp_path / "alone"
    alone_out.mkdir()
    pipeline(input_dir, alone_out, log_dir).run(RayActorPoolExecutor())
    expected = output_records(alone_out)
    assert set(expected.values()) == {1} and len(expected) == 2 * 13
    assert output_records(output_dir) == expected
    # The complete groups' outputs were not written again.
    assert {p: p.read_bytes() for p in first} == first_bytes


def test_file_removed_from_a_complete_group_is_announced(ray_session: Any, tmp_path: Path) -> None:
    input_dir, output_dir, log_dir, ckpt = dirs(tmp_path)
    for i in range(6):
        write_file(input_dir, f"part-{i:04d}.jsonl")
    make = lambda: pipeline(input_dir, output_dir, log_dir)  # noqa: E731
    make().run(RayActorPoolExecutor(checkpoint=ckpt))
    os.remove(input_dir / "part-0001.jsonl")

    # Plan in this process with the run's own ledger view, to see the source stage's warning.
    stages = make().build()
    warnings: list[str] = []
    sink = logger.add(lambda m: warnings.append(str(m)), level="WARNING")
    try:
        with LedgerHandle.open(ckpt, stages) as handle:
            tasks = stages[0].for_checkpoint(handle.source_filter()).process(EmptyTask())
    finally:
        logger.remove(sink)
    assert tasks == []  # both groups stay complete: nothing is redone
    (message,) = [w for w in warnings if "part-0001.jsonl" in w]
    assert "is no longer in the input; its records stay in that group's output" in message
    assert "source id " in message and "Fix:" in message and str(ckpt) in message


def test_file_partitioning_on_a_fresh_checkpoint_without_a_pool(ray_session: Any, tmp_path: Path) -> None:
    """The ledger of a fresh checkpoint starts late (issue 13) unless the source stage asks it itself:
    file partitioning records its memberships before the first report, on Ray Data as well."""
    input_dir, output_dir, log_dir, ckpt = dirs(tmp_path)
    for i in range(6):
        write_file(input_dir, f"part-{i:04d}.jsonl")
    pipeline(input_dir, output_dir, log_dir).run(RayDataExecutor(checkpoint=ckpt))
    assert set(output_records(output_dir).values()) == {1} and len(output_records(output_dir)) == 12
    assert checkpoint_status(ckpt)["completed_sources"] == 2
