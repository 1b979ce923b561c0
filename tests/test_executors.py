"""The same pipelines on all three executors: identical outputs and ids, clear errors."""

from __future__ import annotations

import pytest

from nemo_curator.backends.registry import EXECUTORS, make_executor
from nemo_curator.backends.stage_adapter import StageError
from nemo_curator.pipeline import Pipeline
from nemo_curator.stages.base import CompositeStage
from tests.stages import (
    AddOne,
    EmitNumbers,
    FailOn,
    FanOut,
    NumberTask,
    expected_feature_values,
    feature_pipeline,
    id_value_pairs,
    reference_run,
)


@pytest.mark.parametrize("executor", list(EXECUTORS))
def test_feature_pipeline_outputs_and_ids(ray_session, executor: str) -> None:
    """Every executor gives the in-process reference run's values and ids (so the same on every run)."""
    got = id_value_pairs(feature_pipeline().run(make_executor(executor)))
    assert sorted(value for _, value in got) == expected_feature_values()
    assert got == id_value_pairs(reference_run(feature_pipeline().build())), "ids or values differ from the reference"
    assert len({tid for tid, _ in got}) == len(got)


@pytest.mark.parametrize("executor", list(EXECUTORS))
def test_many_initial_tasks_with_a_checkpoint(ray_session, tmp_path, executor: str) -> None:
    """Initial tasks passed to ``run`` feed the source stage; a rerun with more of them does only the new ones.

    xenna's checkpointed runs use its SERVING mode, whose source queue is read one item per
    loop iteration; initial tasks must not go through it (see ``run_serving``).
    """

    def pipeline() -> Pipeline:
        fan_out = FanOut(n=2)
        fan_out.batch_size = 25
        return Pipeline("initial_tasks", stages=[AddOne(), fan_out])

    def numbers(count: int) -> list[NumberTask]:
        return [NumberTask("numbers", i) for i in range(count)]

    def expected(first: int, last: int) -> list[int]:
        return sorted((i + 1) * 10 + j for i in range(first, last) for j in range(2))

    checkpoint = str(tmp_path / "ckpt")
    first = pipeline().run(make_executor(executor, checkpoint=checkpoint), initial_tasks=numbers(120))
    assert sorted(t.data for t in first) == expected(0, 120)
    second = pipeline().run(make_executor(executor, checkpoint=checkpoint), initial_tasks=numbers(160))
    assert sorted(t.data for t in second) == expected(120, 160), "completed sources were not skipped"


# xenna's case, with its workers' teardown: test_xenna.py::test_stage_exception_names_stage_and_keeps_cause.
@pytest.mark.parametrize("executor", [name for name in EXECUTORS if name != "xenna"])
def test_stage_error_names_the_stage_and_keeps_the_cause(ray_session, executor: str) -> None:
    pipeline = Pipeline(name="failing", stages=[EmitNumbers(count=8), AddOne(), FailOn(value=5)])
    with pytest.raises(Exception, match="fail_on") as info:
        pipeline.run(make_executor(executor))
    err = info.value
    chain = []
    while err is not None and len(chain) < 10:
        chain.append(err)
        err = err.__cause__
    assert any(isinstance(e, StageError) for e in chain) or "StageError" in str(info.value)
    assert "cannot handle 5" in str(info.value) or any(isinstance(e, ValueError) for e in chain)


def test_empty_pipeline_is_refused() -> None:
    with pytest.raises(ValueError, match="has no stages"):
        Pipeline(name="empty").run(make_executor("ray_actor_pool"))


def test_non_stage_object_is_refused() -> None:
    with pytest.raises(TypeError, match="not a ProcessingStage"):
        Pipeline(name="bad", stages=[EmitNumbers(), "not a stage"])  # type: ignore[list-item]


def test_composite_that_decomposes_into_nothing_is_refused() -> None:
    class Nothing(CompositeStage):
        name = "nothing"

        def decompose(self) -> list:
            return []

    with pytest.raises(ValueError, match="no stages"):
        Pipeline(name="hollow", stages=[Nothing()]).build()


def test_missing_input_path_is_a_clear_error(tmp_path) -> None:
    from nemo_curator.stages.text.io.reader import JsonlReader

    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="nope"):
        Pipeline(name="missing", stages=[JsonlReader(str(missing))]).run(make_executor("ray_actor_pool"))
