"""Checkpointed runs on real Ray and LMDB: batch outputs credited to the right sources, sources
without content ids refused, a failing source stage failing only its input."""

from __future__ import annotations

from pathlib import Path

import pytest

from nemo_curator.backends.base import ExecutionPlan
from nemo_curator.backends.registry import EXECUTORS, make_executor
from nemo_curator.backends.stage_adapter import StageError, source_id_for
from nemo_curator.pipeline import Pipeline
from nemo_curator.resumability.inspect import checkpoint_status
from nemo_curator.tasks import Task
from tests.stages import EmitNumbers, ExpandOrRaiseOnce, NumberTask, ReverseInBatches, WriteValue


def written(out_dir: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in out_dir.glob("*.txt")}


def reversing_pipeline(out_dir: Path, fail_value: int | None = None, marker: Path | None = None) -> Pipeline:
    out_dir.mkdir(exist_ok=True)
    return Pipeline(
        "reverse",
        stages=[
            EmitNumbers(count=8),
            ReverseInBatches(batch_size=8),
            WriteValue(out_dir=str(out_dir), fail_value=fail_value, marker=str(marker or "")),
        ],
    )


@pytest.mark.parametrize("executor", list(EXECUTORS))
def test_a_reordering_batch_stage_and_a_failed_write_resume_to_exact_output(
    ray_session, tmp_path: Path, executor: str
) -> None:
    """The issue's reproduction: a batch stage of 8 returns new tasks in reverse order (no
    ``_metadata`` carried), the sink's write of one output fails once. No source may be
    recorded complete unless its output was written, and the resumed output must equal an
    uninterrupted run's (positional credit lost one output and wrote another twice)."""
    reference = reversing_pipeline(tmp_path / "reference").build()
    plan = ExecutionPlan.from_stages(reference)
    tasks: list[Task] = plan.initial_tasks(None)
    for i in range(len(reference)):  # an uninterrupted run, in process
        tasks = plan.adapter(i).process_batch(tasks)
    expected = written(tmp_path / "reference")
    assert sorted(expected.values()) == sorted(str(v * 10) for v in range(8))

    out, ckpt = tmp_path / "out", str(tmp_path / "ckpt")
    pipeline = reversing_pipeline(out, fail_value=30, marker=tmp_path / "failed-once")
    pipeline.run(make_executor(executor, checkpoint=ckpt))
    assert (tmp_path / "failed-once").exists() and "30" not in written(out).values()
    values = set(written(out).values())
    for v in range(8):
        if source_id_for(NumberTask("numbers", v), "", 0) in checkpoint_status(ckpt)["completed"]:
            assert str(v * 10) in values, f"source {v} recorded complete but its output was never written"

    pipeline.run(make_executor(executor, checkpoint=ckpt))
    assert written(out) == expected


def test_a_source_without_content_id_is_refused_before_it_goes_downstream(ray_session, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    pipeline = Pipeline("positional", stages=[EmitNumbers(count=4, keyed=False), WriteValue(out_dir=str(out))])
    with pytest.raises(StageError, match=r"PositionalNumberTask\.get_deterministic_id\(\)"):
        pipeline.run(make_executor("ray_actor_pool", checkpoint=tmp_path / "ckpt"))
    assert written(out) == {}
    allowed = make_executor("ray_actor_pool", config={"allow_positional_source_ids": True}, checkpoint=tmp_path / "c2")
    assert len(pipeline.run(allowed)) == 4


def test_a_failing_source_stage_fails_only_its_input_and_the_rerun_redoes_it(ray_session, tmp_path: Path) -> None:
    def pipeline() -> Pipeline:
        return Pipeline("source_fails", stages=[ExpandOrRaiseOnce(value=1, marker=str(tmp_path / "raised"))])

    ckpt = str(tmp_path / "ckpt")
    initial = [NumberTask("numbers", v) for v in (1, 2)]
    first = pipeline().run(make_executor("ray_actor_pool", checkpoint=ckpt), initial_tasks=initial)
    assert sorted(t.data for t in first) == [20, 21]
    status = checkpoint_status(ckpt)
    assert status["completed_sources"] == 2 and status["failed_sources"] == 0
    again = pipeline().run(make_executor("ray_actor_pool", checkpoint=ckpt), initial_tasks=initial)
    assert sorted(t.data for t in again) == [10, 11]
