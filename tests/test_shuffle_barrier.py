"""A barrier in a pipeline (``ShuffleStage``): split into segments, each resumable, on real Ray."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from nemo_curator.backends.ray_actor_pool import RayActorPoolExecutor
from nemo_curator.cli import cli
from nemo_curator.pipeline import Pipeline
from nemo_curator.pipeline.workflow import SegmentFailedError, split_at_barriers
from nemo_curator.resumability.workflow import WorkflowMismatchError, read_workflow_status
from nemo_curator.stages.base import ProcessingStage
from nemo_curator.stages.shuffle import ShuffleStage, ShuffleWriteStage
from nemo_curator.stages.text.io.reader import JsonlReader
from nemo_curator.stages.text.io.writer import JsonlWriter
from nemo_curator.tasks import DocumentBatch


@dataclass
class KeepFirstPerKey(ProcessingStage[DocumentBatch, DocumentBatch]):
    """Per partition: one row per ``key`` (the first). Fails once per partition listed in ``fail_flag``."""

    key: str = "text"
    fail_flag: str = ""
    name: str = "keep_first"

    def process(self, task: DocumentBatch) -> DocumentBatch:
        if self.fail_flag and os.path.exists(self.fail_flag):
            os.remove(self.fail_flag)
            raise RuntimeError("planned failure")
        frame = task.to_pandas().drop_duplicates(self.key, keep="first").reset_index(drop=True)
        return DocumentBatch(dataset_name=task.dataset_name, data=frame, _metadata=task._metadata)


def corpus(tmp_path: Path) -> set[str]:
    (tmp_path / "in").mkdir()
    texts = set()
    for f in range(5):
        with open(tmp_path / "in" / f"f{f}.jsonl", "w") as fh:
            for i in range(12):
                text = f"t{(f * 7 + i * 3) % 17}"
                texts.add(text)
                fh.write(json.dumps({"id": f"{f}-{i}", "text": text}) + "\n")
    return texts


def pipeline(tmp_path: Path, out: str, fail_flag: str = "", partitions: int = 3) -> Pipeline:
    return Pipeline(
        "barrier",
        stages=[
            JsonlReader(str(tmp_path / "in")),
            ShuffleStage(key="text", num_partitions=partitions, path=str(tmp_path / out / "shuffle")),
            KeepFirstPerKey(fail_flag=fail_flag),
            JsonlWriter(str(tmp_path / out / "kept")),
        ],
    )


def output(directory: Path) -> dict[str, list[dict]]:
    return {
        p.name: [json.loads(line) for line in p.read_text().splitlines()]
        for p in sorted(directory.iterdir())
        if not p.name.startswith(".")
    }


def test_split_at_barriers_names_segments_and_refuses_misplaced_barriers(tmp_path: Path) -> None:
    corpus(tmp_path)
    stages = pipeline(tmp_path, "o").build()
    parts = split_at_barriers(stages)
    assert [name for name, _ in parts] == ["start-to-shuffle", "shuffle-to-end"]
    assert isinstance(parts[0][1][-1], ShuffleWriteStage)
    assert [s.name for s in parts[1][1]] == ["shuffle_partitions", "shuffle_read", "keep_first", "jsonl_writer"]
    with pytest.raises(ValueError, match="is the last stage"):
        split_at_barriers([*stages[:2], stages[2]])
    with pytest.raises(TypeError, match="is a barrier"):
        stages[2].process(None)


def test_a_shuffle_barrier_resumes_segment_by_segment_with_the_same_output(ray_session, tmp_path: Path) -> None:
    texts = corpus(tmp_path)
    pipeline(tmp_path, "plain").run(RayActorPoolExecutor())
    expected = output(tmp_path / "plain" / "kept")
    assert sorted(r["text"] for rows in expected.values() for r in rows) == sorted(texts)

    ckpt = str(tmp_path / "ckpt")
    flag = tmp_path / "fail-once"
    flag.write_text("")
    with pytest.raises(SegmentFailedError, match="shuffle-to-end"):
        pipeline(tmp_path, "ck", fail_flag=str(flag)).run(RayActorPoolExecutor(checkpoint=ckpt))
    status = read_workflow_status(ckpt)
    assert status is not None
    assert [(s["complete"], s["failed_sources"]) for s in status["segments"]] == [(True, 0), (False, 1)]
    shown = CliRunner().invoke(cli, ["checkpoint", "status", ckpt])
    assert shown.exit_code == 0, shown.output
    assert "(1 of 2 segments complete)" in shown.output
    assert "0 start-to-shuffle: complete, 5 of ? sources complete" in shown.output
    assert "1 shuffle-to-end: in progress, 2 of ? sources complete, 1 failed (redone on the next run)" in shown.output
    shuffled = {p: p.stat().st_mtime_ns for p in (tmp_path / "ck" / "shuffle").rglob("*.parquet")}

    pipeline(tmp_path, "ck", fail_flag=str(flag)).run(RayActorPoolExecutor(checkpoint=ckpt))
    assert output(tmp_path / "ck" / "kept") == expected
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "ck" / "shuffle").rglob("*.parquet")} == shuffled
    status = read_workflow_status(ckpt)
    assert [s["complete"] for s in status["segments"]] == [True, True]

    with pytest.raises(WorkflowMismatchError, match="num_partitions"):
        pipeline(tmp_path, "ck", partitions=4).run(RayActorPoolExecutor(checkpoint=ckpt))


def test_a_barrier_never_reads_files_of_another_run(ray_session, tmp_path: Path) -> None:
    """Two runs without a checkpoint, other groupings, one shuffle path: each run's partitions hold its rows only."""
    corpus(tmp_path)
    shuffle = str(tmp_path / "shuffle")

    def run(files_per_partition: int, out: str) -> int:
        Pipeline(
            "pass-through",
            stages=[
                JsonlReader(str(tmp_path / "in"), files_per_partition=files_per_partition),
                ShuffleStage(key="text", num_partitions=2, path=shuffle),
                JsonlWriter(str(tmp_path / out)),
            ],
        ).run(RayActorPoolExecutor())
        return sum(len(rows) for rows in output(tmp_path / out).values())

    assert run(1, "first") == 60
    assert run(2, "second") == 60  # the first run's files have other names: they would have been read too
