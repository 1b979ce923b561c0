"""Exact deduplication: the stages on their own (any order, retries), and the workflow on real Ray.

The kill-and-resume tests of the workflow are in ``tests/e2e/test_dedup_kill_resume.py``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nemo_curator.backends.ray_actor_pool import RayActorPoolExecutor
from nemo_curator.pipeline import Pipeline
from nemo_curator.resumability.errors import CheckpointError
from nemo_curator.resumability.workflow import (
    WorkflowMismatchError,
    WorkflowOutputsMissingError,
    read_workflow_status,
)
from nemo_curator.stages.deduplication.exact import (
    ExactDeduplicationWorkflow,
    ExactDuplicateHashStage,
    ExactDuplicateIdentificationStage,
    ExactDuplicateRemovalStage,
)
from nemo_curator.stages.deduplication.exact.identification import partition_dir
from nemo_curator.stages.text.io.reader import JsonlReader, JsonlReaderStage
from nemo_curator.stages.text.io.writer import JsonlWriter


def write_corpus(directory: Path, files: list[list[str]]) -> list[tuple[str, str]]:
    """One JSONL file per list of texts; returns ``(doc id, text)`` in input order (files sorted)."""
    directory.mkdir(parents=True, exist_ok=True)
    docs = []
    for f, texts in enumerate(files):
        with open(directory / f"f{f:04d}.jsonl", "w") as fh:
            for i, text in enumerate(texts):
                fh.write(json.dumps({"id": f"{f}-{i}", "text": text}) + "\n")
                docs.append((f"{f}-{i}", text))
    return docs


def first_occurrences(docs: list[tuple[str, str]]) -> list[str]:
    seen: set[str] = set()
    kept = []
    for doc_id, text in docs:
        if text not in seen:
            seen.add(text)
            kept.append(doc_id)
    return kept


def records(directory: str) -> list[str]:
    """Every ``id`` in the JSONL files of ``directory`` (hidden files would fail the test)."""
    ids = []
    for name in sorted(os.listdir(directory)):
        assert not name.startswith("."), f"leftover temp file {name}"
        with open(os.path.join(directory, name)) as fh:
            ids.extend(json.loads(line)["id"] for line in fh)
    return ids


def random_corpus(rng: random.Random, files: int, docs: int, distinct: int) -> list[list[str]]:
    return [[f"text {rng.randrange(distinct)}" for _ in range(rng.randrange(docs + 1))] for _ in range(files)]


@settings(max_examples=max(20, settings.default.max_examples // 5))  # each example writes many small files
@given(
    seed=st.integers(0, 2**32 - 1),
    files=st.integers(1, 6),
    per_group=st.integers(1, 3),
    num_partitions=st.integers(1, 5),
)
def test_stages_keep_the_first_of_each_text_whatever_the_order_and_retries(
    seed: int, files: int, per_group: int, num_partitions: int
) -> None:
    """Groups hashed, partitions identified and groups cleaned in any order, some twice, give one result."""
    rng = random.Random(seed)
    work = Path(tempfile.mkdtemp(prefix="dedup-prop-"))
    try:
        corpus = random_corpus(rng, files, 8, distinct=6)
        docs = write_corpus(work / "in", corpus)
        workflow = ExactDeduplicationWorkflow(
            input_path=str(work / "in"),
            output_path=str(work / "out"),
            input_files_per_partition=per_group,
            total_nparts=num_partitions,
        )
        groups = workflow.partitioning.group_tasks(workflow.partitioning.list_files())
        segments = workflow.segments(groups, num_partitions)
        hash_stage = segments[0].pipeline.stages[1]
        identify = segments[1].pipeline.stages[1]
        partitions = segments[1].pipeline.stages[0].tasks
        assert isinstance(hash_stage, ExactDuplicateHashStage)
        assert isinstance(identify, ExactDuplicateIdentificationStage)

        order = rng.sample(groups, len(groups)) + rng.sample(groups, rng.randrange(len(groups) + 1))
        for group in order:  # retried groups rewrite the same files
            hash_stage.process(group)
        assert segments[0].missing_outputs() == []
        for part in rng.sample(partitions, len(partitions)) + partitions[:1]:
            identify.process(part)
        assert segments[1].missing_outputs() == []

        remove = ExactDuplicateRemovalStage(ids_path=workflow.ids_path, num_partitions=num_partitions)
        reader = JsonlReaderStage()
        kept: list[str] = []
        for group in groups:
            batch = reader.process(group)
            cleaned = None if batch is None else remove.process(batch)
            if cleaned is not None:
                kept.extend(cleaned.to_pandas()["id"].tolist())
        assert kept == first_occurrences(docs)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_equal_texts_always_meet_in_one_partition(tmp_path: Path) -> None:
    docs = write_corpus(tmp_path / "in", [["a", "b", "a"], ["b", "c"], ["a"]])
    workflow = ExactDeduplicationWorkflow(input_path=str(tmp_path / "in"), output_path=str(tmp_path / "out"))
    groups = workflow.partitioning.group_tasks(workflow.partitioning.list_files())
    stage = ExactDuplicateHashStage(shuffle_path=workflow.cache_path, num_partitions=7)
    for group in groups:
        assert len(stage.process(group).data) == 7  # one file per partition, empty ones included
    import pyarrow.parquet as pq

    where: dict[bytes, set[int]] = {}
    for p in range(7):
        for name in os.listdir(partition_dir(workflow.cache_path, p)):
            for h in (
                pq.read_table(os.path.join(partition_dir(workflow.cache_path, p), name)).column("hash").to_pylist()
            ):
                where.setdefault(h, set()).add(p)
    assert len(where) == len({t for _, t in docs})
    assert all(len(parts) == 1 for parts in where.values())


def test_a_non_string_text_fails_its_group_loudly(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jsonl").write_text('{"text": "x"}\n{"text": 5}\n')
    workflow = ExactDeduplicationWorkflow(input_path=str(tmp_path / "in"), output_path=str(tmp_path / "out"))
    (group,) = workflow.partitioning.group_tasks(workflow.partitioning.list_files())
    with pytest.raises(ValueError, match="not a string"):
        ExactDuplicateHashStage(shuffle_path=workflow.cache_path, num_partitions=2).process(group)


def test_partition_sources_change_with_the_partition_count_and_the_input(tmp_path: Path) -> None:
    write_corpus(tmp_path / "in", [["a"], ["b"]])
    workflow = ExactDeduplicationWorkflow(input_path=str(tmp_path / "in"), output_path=str(tmp_path / "out"))
    groups = workflow.partitioning.group_tasks(workflow.partitioning.list_files())

    def ids(groups_: list, k: int) -> list[str | None]:
        return [t.get_deterministic_id() for t in workflow.segments(groups_, k)[1].pipeline.stages[0].tasks]

    four, five, fewer = ids(groups, 4), ids(groups, 5), ids(groups[:1], 4)
    assert len(set(four)) == 4
    assert not set(four) & set(five)
    assert not set(four) & set(fewer)
    assert ids(groups, 4) == four


# -- the workflow on real Ray (the session's shared instance) -------------------------------------------


def small_corpus(tmp_path: Path) -> list[tuple[str, str]]:
    rng = random.Random(7)
    return write_corpus(tmp_path / "in", random_corpus(rng, 6, 20, distinct=40))


def make_workflow(tmp_path: Path, **kwargs) -> ExactDeduplicationWorkflow:
    return ExactDeduplicationWorkflow(
        input_path=str(tmp_path / "in"),
        output_path=str(tmp_path / "out"),
        total_nparts=3,
        **{"perform_removal": True, **kwargs},
    )


def test_checkpointed_workflow_resumes_skips_and_refuses_what_does_not_fit(ray_session, tmp_path: Path) -> None:
    docs = small_corpus(tmp_path)
    ckpt = str(tmp_path / "ckpt")
    result = make_workflow(tmp_path).run(RayActorPoolExecutor(checkpoint=ckpt))
    assert sorted(records(result.output_path)) == sorted(first_occurrences(docs))
    status = read_workflow_status(ckpt)
    assert status is not None
    assert [(s["name"], s["complete"], s["completed_sources"], s["sources"]) for s in status["segments"]] == [
        ("hash", True, 6, 6),
        ("identify", True, 3, 3),
        ("remove", True, 6, 6),
    ]
    out = Path(result.output_path)
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}

    again = make_workflow(tmp_path).run(RayActorPoolExecutor(checkpoint=ckpt))
    assert [s.skipped for s in again.segments] == [True, True, True]
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps

    with pytest.raises(WorkflowMismatchError, match="num_partitions"):
        ExactDeduplicationWorkflow(
            input_path=str(tmp_path / "in"), output_path=str(tmp_path / "out"), total_nparts=4, perform_removal=True
        ).run(RayActorPoolExecutor(checkpoint=ckpt))
    with pytest.raises(WorkflowMismatchError, match="text_field"):
        make_workflow(tmp_path, text_field="id").run(RayActorPoolExecutor(checkpoint=ckpt))
    changed = tmp_path / "in" / "f0001.jsonl"
    changed.write_text(changed.read_text() + json.dumps({"id": "new", "text": "text 1"}) + "\n")
    with pytest.raises(WorkflowMismatchError, match=r"f0001\.jsonl changed"):
        make_workflow(tmp_path).run(RayActorPoolExecutor(checkpoint=ckpt))

    # A pipeline run on the workflow's checkpoint is refused before any work.
    pipeline = Pipeline("p", stages=[JsonlReader(str(tmp_path / "in")), JsonlWriter(str(tmp_path / "p-out"))])
    with pytest.raises(CheckpointError, match="belongs to a workflow"):
        pipeline.run(RayActorPoolExecutor(checkpoint=ckpt))
    assert not (tmp_path / "p-out").exists()


def test_a_workflow_refuses_a_pipelines_checkpoint_and_lost_intermediate_outputs(ray_session, tmp_path: Path) -> None:
    small_corpus(tmp_path)
    pipeline_ckpt = str(tmp_path / "pipeline-ckpt")
    Pipeline("p", stages=[JsonlReader(str(tmp_path / "in")), JsonlWriter(str(tmp_path / "p-out"))]).run(
        RayActorPoolExecutor(checkpoint=pipeline_ckpt)
    )
    with pytest.raises(CheckpointError, match="ledger of a pipeline run"):
        make_workflow(tmp_path).run(RayActorPoolExecutor(checkpoint=pipeline_ckpt))

    # Segment 0 recorded complete, then its shuffle files lost before segment 1 ran: loud, not a wrong result.
    ckpt = str(tmp_path / "ckpt")
    workflow = make_workflow(tmp_path, perform_removal=False)
    workflow.run(RayActorPoolExecutor(checkpoint=ckpt))
    os.remove(Path(ckpt) / "workflow" / "done-1-identify.json")
    os.remove(Path(partition_dir(workflow.cache_path, 2)) / "group-00000003.parquet")
    with pytest.raises(WorkflowOutputsMissingError, match=r"group-00000003\.parquet"):
        make_workflow(tmp_path, perform_removal=False).run(RayActorPoolExecutor(checkpoint=ckpt))


def test_a_sharded_executor_is_refused_before_any_work(ray_session, tmp_path: Path) -> None:
    """Shards would each record a segment complete with only their own sources done (documents lost)."""
    small_corpus(tmp_path)
    ckpt = str(tmp_path / "ckpt")
    with pytest.raises(
        ValueError, match=r"shard=\(1, 2\) cannot run a workflow \(checkpoint .*ckpt\).*Fix: drop shard"
    ):
        make_workflow(tmp_path).run(RayActorPoolExecutor(config={"shard": (1, 2)}, checkpoint=ckpt))
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "ckpt").exists()


def test_credentials_stay_out_of_the_plan_and_a_rotated_one_still_resumes(tmp_path: Path) -> None:
    from nemo_curator.resumability.fingerprint import describe_fingerprint

    write_corpus(tmp_path / "in", [["a"], ["a", "b"]])

    def descriptions(secret: str) -> str:
        workflow = make_workflow(tmp_path, storage_options={"key": "AKIA", "secret": secret})
        groups = workflow.partitioning.group_tasks(workflow.partitioning.list_files())
        return json.dumps([describe_fingerprint(s.pipeline.build()) for s in workflow.segments(groups, 3)])

    first = descriptions("s3cr3t-before-rotation")
    assert "s3cr3t" not in first
    assert descriptions("s3cr3t-after-rotation") == first


def test_outputs_lost_before_the_done_record_are_refused_with_the_fix(ray_session, tmp_path: Path) -> None:
    """Killed between segment 0's last report and its done record, then a shuffle file lost: no endless 'Run again'."""
    small_corpus(tmp_path)
    ckpt = str(tmp_path / "ckpt")
    workflow = make_workflow(tmp_path, perform_removal=False)
    workflow.run(RayActorPoolExecutor(checkpoint=ckpt))
    for done in ("done-0-hash.json", "done-1-identify.json"):
        os.remove(Path(ckpt) / "workflow" / done)
    os.remove(Path(partition_dir(workflow.cache_path, 1)) / "group-00000002.parquet")
    with pytest.raises(
        WorkflowOutputsMissingError, match=r"(?s)group-00000002\.parquet.*segments/0-hash.*Fix: restore"
    ):
        make_workflow(tmp_path, perform_removal=False).run(RayActorPoolExecutor(checkpoint=ckpt))


def test_an_output_inside_the_input_folder_is_no_input_of_the_rerun(ray_session, tmp_path: Path) -> None:
    docs = small_corpus(tmp_path)

    def workflow() -> ExactDeduplicationWorkflow:
        return ExactDeduplicationWorkflow(
            input_path=str(tmp_path / "in"),
            output_path=str(tmp_path / "in" / "dedup"),
            total_nparts=2,
            perform_removal=True,
        )

    ckpt = str(tmp_path / "ckpt")
    first = workflow().run(RayActorPoolExecutor(checkpoint=ckpt))
    again = workflow().run(RayActorPoolExecutor(checkpoint=ckpt))  # was: refused, its outputs "added to the input"
    assert [s.skipped for s in again.segments] == [True, True, True]
    assert sorted(records(first.output_path)) == sorted(first_occurrences(docs))


def test_the_removal_refuses_an_input_edited_since_the_workflow_started(tmp_path: Path) -> None:
    write_corpus(tmp_path / "in", [["a", "b"], ["a"]])
    workflow = make_workflow(tmp_path)
    files = workflow.input_files()
    segments = workflow.segments(workflow.partitioning.group_tasks(files), 3, [list(f) for f in files])
    remove = segments[2]
    assert remove.name == "remove" and remove.input_changes is not None
    assert remove.input_changes() == []
    edited = tmp_path / "in" / "f0000.jsonl"
    edited.write_text(edited.read_text().replace('"b"', '"c"'))
    os.utime(edited, ns=(1, 1))
    assert remove.input_changes() == [f"file {edited} changed (size or mtime)"]


def test_run_segments_checks_a_segments_input_before_it_runs(ray_session, tmp_path: Path) -> None:
    from nemo_curator.pipeline.workflow import InputChangedError, Segment, run_segments
    from nemo_curator.stages.task_list import TaskListStage
    from tests.stages import AddOne, NumberTask

    ran: list[str] = []

    def segment(name: str, changes: list[str]) -> Segment:
        tasks = [NumberTask(dataset_name="n", data=i) for i in range(2)]
        pipeline = Pipeline(name, stages=[TaskListStage(tasks), AddOne()])
        return Segment(name, pipeline, lambda: ran.append(name) or [], input_changes=lambda: changes)

    with pytest.raises(InputChangedError, match=r"(?s)before segment 1 \(second\).*file x changed"):
        run_segments("t", [segment("first", []), segment("second", ["file x changed"])], RayActorPoolExecutor(), {})
    assert ran == ["first"]


def test_upstream_call_shape_run_initial_tasks_then_executor(ray_session, tmp_path: Path) -> None:
    docs = small_corpus(tmp_path)
    workflow = make_workflow(tmp_path)
    groups = workflow.partitioning.group_tasks(workflow.partitioning.list_files())
    for group in groups:
        group._metadata.pop("file_stats")  # as a user would build them: stats are read by the workflow
    result = workflow.run(groups, RayActorPoolExecutor())  # and without a checkpoint
    assert sorted(records(result.output_path)) == sorted(first_occurrences(docs))
    assert result.duplicates == len(docs) - len(first_occurrences(docs))
    assert not (tmp_path / "ckpt").exists()
