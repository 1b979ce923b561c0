"""Pipeline construction, description and roles."""

from __future__ import annotations

from pathlib import Path

import pytest

from nemo_curator.backends.base import ExecutionPlan
from nemo_curator.pipeline import Pipeline
from tests.stages import AddOne, EmitNumbers, MultiplyInBatches, add_and_fan, feature_pipeline


def test_add_stage_chains_and_build_expands_composites() -> None:
    pipeline = Pipeline(name="p").add_stage(EmitNumbers(count=2)).add_stage(add_and_fan()).add_stage(AddOne())
    assert [s.name for s in pipeline.build()] == ["emit_numbers", "add_one", "fan_out", "add_one"]


def test_describe_lists_stages_with_resources() -> None:
    text = feature_pipeline().describe()
    assert "Pipeline: features" in text
    assert "double_in_batches" in text and "batch_size=4" in text and "cpus=0.5" in text


def test_roles_default_to_first_source_and_last_sink() -> None:
    plan = ExecutionPlan.from_stages(feature_pipeline().build())
    assert plan.roles[0].is_source and not plan.roles[0].is_sink
    assert plan.roles[-1].is_sink
    assert all(r.tracked for r in plan.roles)


def test_marked_source_stage_leaves_earlier_stages_untracked() -> None:
    class MarkedSource(AddOne):
        is_source_stage = True

    plan = ExecutionPlan.from_stages([EmitNumbers(), MarkedSource(), MultiplyInBatches()])
    assert [r.tracked for r in plan.roles] == [False, True, True]
    assert plan.source_index == 1


def test_sink_mark_on_a_middle_stage_is_refused() -> None:
    class EarlySink(AddOne):
        is_sink_stage = True

    with pytest.raises(ValueError, match="is_sink_stage"):
        ExecutionPlan.from_stages([EmitNumbers(), EarlySink(), AddOne()])


def test_describe_shows_the_checkpoint_state(ray_session, tmp_path: Path) -> None:
    from nemo_curator.backends.ray_actor_pool import RayActorPoolExecutor

    pipeline = Pipeline(name="p", stages=[EmitNumbers(count=5), AddOne()])
    ckpt = tmp_path / "ckpt"
    assert len(pipeline.run(RayActorPoolExecutor(checkpoint=ckpt))) == 5
    text = pipeline.describe(checkpoint=str(ckpt))
    assert str(ckpt) in text and "5" in text
    assert pipeline.run(RayActorPoolExecutor(checkpoint=ckpt)) == []
