"""The stage adapter's stamping of ids, credit and sentinels (pure Python, no Ray)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nemo_curator.backends.base import ExecutionPlan
from nemo_curator.backends.stage_adapter import StageError
from nemo_curator.stages.base import ProcessingStage
from nemo_curator.tasks import EmptyTask, FailedTask, FileGroupTask, NoneTask, Task
from nemo_curator.tasks.credit import Credit, merge_lineages
from tests.stages import PositionalNumberTask as Item  # an int without a content id


class Emit(ProcessingStage[EmptyTask, Item]):
    name = "emit"

    def __init__(self, n: int) -> None:
        self.n = n

    def process(self, task: EmptyTask) -> list[Item]:
        return [Item("d", i) for i in range(self.n)]


class Scripted(ProcessingStage[Item, Item]):
    """Returns, for item ``v``, ``script[v % len(script)]`` interpreted as a list of slots."""

    name = "scripted"

    def __init__(self, script: list[list[bool]], fail_on: frozenset[int] = frozenset()) -> None:
        self.script = script
        self.fail_on = fail_on

    def process(self, task: Item) -> list[Item | None]:
        if task.data in self.fail_on:
            raise ValueError(f"boom {task.data}")
        slots = self.script[task.data % len(self.script)]
        return [Item("d", task.data * 7 + j + 1) if keep else None for j, keep in enumerate(slots)]


class Merge(ProcessingStage[Item, Item]):
    name = "merge"
    batch_size = 4

    def process_batch(self, tasks: list[Item]) -> list[Item]:
        return [Item("d", sum(t.data for t in tasks))]


class Done:
    def __init__(self, done: set[str]) -> None:
        self.done = done

    def completed(self, source_ids: list[str]) -> set[str]:
        return self.done & set(source_ids)


class Tracker:
    def __init__(self, done: set[str] | None = None) -> None:
        self.source_filter = Done(done or set())


def run(stages: list[ProcessingStage], tracker: Tracker | None = None) -> list[Task]:
    plan = ExecutionPlan.from_stages(stages)
    tasks = plan.initial_tasks(None)
    for i in range(len(stages)):
        tasks = plan.adapter(i, tracker).process_batch(tasks)
    return tasks


def credit_by_source(tasks: list[Task]) -> dict[str, Credit]:
    returned = [t._lineage for t in tasks if not isinstance(t, FailedTask)]
    return merge_lineages(returned)


def test_ids_are_deterministic_and_unique() -> None:
    stages = [Emit(3), Scripted([[True, True], [True], [False, True, True]])]
    a, b = run(stages), run(stages)
    assert [t.task_id for t in a] == [t.task_id for t in b]
    assert len({t.task_id for t in a}) == len(a)
    assert all(t._lineage is None for t in a)


def test_single_output_keeps_parent_id_and_fanout_appends_position() -> None:
    out = run([Emit(2), Scripted([[True], [True, False, True]])])
    roots = run([Emit(2)])
    assert out[0].task_id == roots[0].task_id
    assert [t.task_id for t in out[1:]] == [roots[1].task_id + "_0", roots[1].task_id + "_2"]


def test_filtered_slots_vanish_without_checkpoint_and_become_sentinels_with_it() -> None:
    stages = [Emit(2), Scripted([[False], [True]])]
    assert len(run(stages)) == 1
    tracked = run(stages, Tracker())
    sentinels = [t for t in tracked if isinstance(t, NoneTask)]
    assert len(sentinels) == 1 and sentinels[0].task_id.endswith("_f")
    assert all(c.is_one() for c in credit_by_source(tracked).values())


def test_source_filter_drops_completed_sources() -> None:
    everything = run([Emit(4)], Tracker())
    done = {everything[1].task_id, everything[3].task_id}
    rest = run([Emit(4)], Tracker(done))
    assert [t.task_id for t in rest] == [everything[0].task_id, everything[2].task_id]


def test_failure_raises_stage_error_without_checkpoint() -> None:
    with pytest.raises(StageError, match="scripted") as info:
        run([Emit(2), Scripted([[True]], fail_on=frozenset({1}))])
    assert isinstance(info.value.__cause__, ValueError)


def test_failure_keeps_credit_with_checkpoint() -> None:
    out = run([Emit(2), Scripted([[True]], fail_on=frozenset({1})), Scripted([[True, True]])], Tracker())
    failed = [t for t in out if isinstance(t, FailedTask)]
    assert len(failed) == 1 and "boom 1" in failed[0].reason and failed[0].stage_name == "scripted"
    credit = credit_by_source(out)
    assert failed[0]._lineage is not None and set(failed[0]._lineage).isdisjoint(credit)
    assert len(credit) == 1 and all(c.is_one() for c in credit.values())


def test_source_stage_failure_raises_even_with_checkpoint() -> None:
    class Broken(ProcessingStage[EmptyTask, Item]):
        name = "broken_source"

        def process(self, task: EmptyTask) -> list[Item]:
            raise OSError("cannot list inputs")

    with pytest.raises(StageError, match="broken_source"):
        run([Broken()], Tracker())


def test_merging_batch_sums_credit_per_source() -> None:
    plan = ExecutionPlan.from_stages([Emit(2), Scripted([[True, True, True]]), Merge()])
    tasks = plan.adapter(0, Tracker()).process_batch(plan.initial_tasks(None))
    tasks = plan.adapter(1, Tracker()).process_batch(tasks)
    merged: list[Task] = []
    adapter = plan.adapter(2, Tracker())
    for i in range(0, len(tasks), 4):
        merged.extend(adapter.process_batch(tasks[i : i + 4]))
    assert len(merged) == 2
    assert all(c.is_one() for c in credit_by_source(merged).values())


def test_non_task_output_is_a_clear_type_error() -> None:
    class Bad(ProcessingStage[Item, Item]):
        name = "bad"

        def process(self, task: Item) -> int:
            return 3

    with pytest.raises(TypeError, match="'bad' returned int"):
        run([Emit(1), Bad()])


def test_file_group_ids_are_content_derived() -> None:
    a = FileGroupTask("d", ["b.jsonl", "a.jsonl"])
    b = FileGroupTask("d", ["a.jsonl", "b.jsonl"])
    c = FileGroupTask("d", ["a.jsonl,b.jsonl"])
    assert a.get_deterministic_id() == b.get_deterministic_id() != c.get_deterministic_id()
    assert len(a.get_deterministic_id() or "") == 32


slot_lists = st.lists(st.lists(st.booleans(), min_size=0, max_size=4), min_size=1, max_size=4)


@given(st.integers(1, 6), st.lists(slot_lists, min_size=1, max_size=4))
def test_credit_is_conserved_through_any_chain(n_sources: int, scripts: list[list[list[bool]]]) -> None:
    """Every source's credit arrives at the end exactly, over outputs and sentinels together."""
    out = run([Emit(n_sources), *(Scripted(s) for s in scripts)], Tracker())
    credit = credit_by_source(out)
    assert len(credit) == n_sources
    assert all(c.is_one() for c in credit.values())
    assert len({t.task_id for t in out}) == len(out)
