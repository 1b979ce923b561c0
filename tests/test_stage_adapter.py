"""The stage adapter's stamping of ids, credit and sentinels (pure Python, no Ray)."""

from __future__ import annotations

import copy
import random
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from loguru import logger

from nemo_curator.backends.base import ExecutionPlan
from nemo_curator.backends.stage_adapter import (
    PARENT_TOKEN_KEY,
    PositionalSourceIdError,
    StageError,
    source_id_for,
)
from nemo_curator.stages.base import ProcessingStage
from nemo_curator.stages.file_partitioning import FilePartitioningStage
from nemo_curator.tasks import EmptyTask, FailedTask, FileGroupTask, NoneTask, Task
from nemo_curator.tasks.credit import Credit, merge_lineages
from tests.stages import NumberTask as Item  # an int; as a source its content id is the number
from tests.stages import PositionalNumberTask


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


def run(
    stages: list[ProcessingStage],
    tracker: Tracker | None = None,
    allow_positional_source_ids: bool = False,
) -> list[Task]:
    plan = ExecutionPlan.from_stages(stages, allow_positional_source_ids=allow_positional_source_ids)
    tasks = plan.initial_tasks(None)
    for i in range(len(stages)):
        tasks = plan.adapter(i, tracker).process_batch(tasks)
    return tasks


@contextmanager
def warnings_logged() -> Iterator[list[str]]:
    messages: list[str] = []
    handle = logger.add(lambda m: messages.append(str(m)), level="WARNING", format="{message}")
    try:
        yield messages
    finally:
        logger.remove(handle)


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


class BrokenSource(ProcessingStage[Item, Item]):
    """A source stage that cannot handle the initial task 13 (e.g. an unreadable input listing)."""

    name = "broken_source"

    def process(self, task: Item) -> list[Item]:
        if task.data == 13:
            raise OSError("cannot list inputs")
        return [Item("d", task.data * 10 + j) for j in range(2)]


def run_from(initial: list[Task], stages: list[ProcessingStage], tracker: Tracker | None) -> list[Task]:
    plan = ExecutionPlan.from_stages(stages)
    tasks = plan.initial_tasks(initial)
    for i in range(len(stages)):
        tasks = plan.adapter(i, tracker).process_batch(tasks)
    return tasks


def test_source_stage_failure_raises_without_checkpoint() -> None:
    with pytest.raises(StageError, match="broken_source"):
        run_from([Item("d", 13)], [BrokenSource()], None)


def test_source_stage_failure_fails_only_that_input_with_checkpoint() -> None:
    """A failing source-stage input becomes a FailedTask with no credit: no source is recorded
    for it (so the next run, which always runs the source stage, redoes it); the others go on."""
    out = run_from([Item("d", 13), Item("d", 2)], [BrokenSource(), Scripted([[True]])], Tracker())
    failed = [t for t in out if isinstance(t, FailedTask)]
    assert len(failed) == 1 and failed[0].stage_name == "broken_source" and "cannot list inputs" in failed[0].reason
    assert failed[0]._lineage == {}
    credit = credit_by_source(out)
    assert sorted(credit) == sorted(source_id_for(Item("d", v), "", 0) for v in (20, 21))
    assert all(c.is_one() for c in credit.values())


def test_a_stage_before_the_source_fails_only_that_input_with_checkpoint() -> None:
    class Marked(Scripted):
        is_source_stage = True

    out = run_from([Item("d", 13), Item("d", 2)], [BrokenSource(), Marked([[True]])], Tracker())
    assert [t._lineage for t in out if isinstance(t, FailedTask)] == [{}]
    assert len(credit_by_source(out)) == 2


def test_merging_batch_sums_credit_per_source() -> None:
    plan = ExecutionPlan.from_stages([Emit(2), Scripted([[True, True, True]]), Merge()])
    tasks = plan.adapter(0, Tracker()).process_batch(plan.initial_tasks(None))
    tasks = plan.adapter(1, Tracker()).process_batch(tasks)
    merged: list[Task] = []
    adapter = plan.adapter(2, Tracker())
    with warnings_logged() as warned:
        for i in range(0, len(tasks), 4):
            merged.extend(adapter.process_batch(tasks[i : i + 4]))
    assert len(merged) == 2
    assert all(c.is_one() for c in credit_by_source(merged).values())
    # The first batch holds 3 tasks of one source and 1 of the other: its one output carries both.
    assert len(merged[0]._lineage) == 2
    assert len(warned) == 1 and "'merge'" in warned[0] and "_metadata=task._metadata" in warned[0]


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


# -- batch attribution -------------------------------------------------------------------------


def source_of(value: int) -> str:
    return source_id_for(Item("d", value), "", 0)


def origin(task: Task) -> int:
    """The source value an output of ``Batch`` came from (see ``Batch``)."""
    value = task.data
    return value if value < 1000 else value // 1000 - 1


class Batch(ProcessingStage[Item, Item]):
    """A batch stage scripted per input value: ``script[v] = (how, n)`` makes ``n`` outputs of
    input ``v`` (value ``(v + 1) * 1000 + j``, or the input itself for ``"same"``), built as:
    ``"same"`` the input object, ``"shared"`` new tasks sharing the input's ``_metadata`` dict,
    ``"copy"`` / ``"deepcopy"`` new tasks with a copy of it, ``"fresh"`` new tasks without it.
    ``order`` reorders the flat list of outputs (a permutation of its length, or a callable)."""

    name = "batch"

    def __init__(self, script: dict[int, tuple[str, int]], order: object = None, nones: int = 0) -> None:
        self.script = script
        self.order = order
        self.nones = nones

    def outputs_of(self, task: Item) -> list[Item]:
        how, n = self.script.get(task.data, ("shared", 1))
        if how == "same":
            return [task] * n
        meta = {
            "shared": lambda: task._metadata,
            "copy": lambda: dict(task._metadata),
            "deepcopy": lambda: copy.deepcopy(task._metadata),
            "fresh": lambda: {"note": "new"},
        }[how]
        return [Item("d", (task.data + 1) * 1000 + j, _metadata=meta()) for j in range(n)]

    def process_batch(self, tasks: list[Item]) -> list[Item | None]:
        flat: list[Item | None] = [out for task in tasks for out in self.outputs_of(task)]
        if callable(self.order):
            flat = self.order(flat)
        elif self.order is not None:
            flat = [flat[i] for i in self.order]  # type: ignore[attr-defined]
        return flat + [None] * self.nones


def run_batch(script: dict[int, tuple[str, int]], sources: int = 4, **kwargs: object) -> list[Task]:
    return run([Emit(sources), Batch(script, **kwargs)], Tracker())


def assert_exact(out: list[Task], sources: int) -> None:
    """Every output carries exactly its own source's credit; every source's credit is whole."""
    for task in out:
        if isinstance(task, NoneTask):
            assert len(task._lineage) == 1
        else:
            assert set(task._lineage) == {source_of(origin(task))}, (task, task._lineage)
            assert task.task_id.startswith(source_of(origin(task)))
        assert PARENT_TOKEN_KEY not in task._metadata
    credit = credit_by_source(out)
    assert len(credit) == sources and all(c.is_one() for c in credit.values())
    assert len({t.task_id for t in out}) == len(out)


@pytest.mark.parametrize("how", ["same", "shared", "copy", "deepcopy"])
def test_reversed_outputs_are_credited_to_their_own_inputs(how: str) -> None:
    with warnings_logged() as warned:
        out = run_batch({v: (how, 1) for v in range(4)}, order=lambda flat: flat[::-1])
    assert [origin(t) for t in out] == [3, 2, 1, 0]
    assert_exact(out, 4)
    assert warned == []


def test_outputs_in_completion_order_of_a_thread_pool_are_credited_exactly() -> None:
    class Pooled(ProcessingStage[Item, Item]):
        name = "pooled"

        def process_batch(self, tasks: list[Item]) -> list[Item]:
            def work(task: Item) -> Item:
                return Item("d", (task.data + 1) * 1000, _metadata=task._metadata)

            with ThreadPoolExecutor(4) as pool:
                return [f.result() for f in as_completed([pool.submit(work, t) for t in tasks])]

    assert_exact(run([Emit(8), Pooled()], Tracker()), 8)


def test_a_batch_filter_returning_a_subset_of_its_inputs_lets_the_others_ride_on_them() -> None:
    """A filter returning a subset cannot be told from an in-place merge into a returned input:
    the inputs without outputs complete with the returned ones, never before."""
    out = run_batch({0: ("same", 0), 1: ("same", 1), 2: ("same", 0), 3: ("same", 1)}, order=lambda f: f[::-1])
    assert [origin(t) for t in out] == [3, 1]
    for task in out:
        assert {source_of(0), source_of(2)} <= set(task._lineage)
    assert all(c.is_one() for c in credit_by_source(out).values()) and len(credit_by_source(out)) == 4


def test_filtering_one_input_while_fanning_out_another() -> None:
    """Fan-out outputs keep their own source exactly. An input without outputs in such a batch
    may have been merged into them (a token cannot tell), so its credit rides on them: it
    completes when they do, never before."""
    script = {0: ("shared", 0), 1: ("shared", 3), 2: ("same", 1), 3: ("copy", 0)}
    out = run_batch(script, order=[2, 0, 3, 1], nones=2)
    assert sorted(origin(t) for t in out) == [1, 1, 1, 2]
    filtered = {source_of(0), source_of(3)}
    for task in out:
        assert set(task._lineage) == {source_of(origin(task))} | filtered
        assert task.task_id.startswith(source_of(origin(task)))
    assert all(c.is_one() for c in credit_by_source(out).values()) and len(credit_by_source(out)) == 4


def test_a_merge_that_carries_one_inputs_metadata_does_not_complete_the_others() -> None:
    """The token of input 0 copied onto an output holding the data of every input."""

    class MergeKeepingFirst(ProcessingStage[Item, Item]):
        name = "merge_keeping_first"

        def process_batch(self, tasks: list[Item]) -> list[Item]:
            return [Item("d", sum(t.data for t in tasks), _metadata=tasks[0]._metadata)]

    out = run([Emit(4), MergeKeepingFirst()], Tracker())
    assert len(out) == 1 and set(out[0]._lineage) == {source_of(v) for v in range(4)}
    assert all(c.is_one() for c in credit_by_source(out).values())


def test_mixed_kinds_of_outputs_in_one_shuffled_batch() -> None:
    script = {0: ("same", 2), 1: ("deepcopy", 2), 2: ("copy", 1), 3: ("shared", 2), 4: ("same", 1)}
    out = run_batch(script, sources=5, order=lambda flat: random.Random(7).sample(flat, len(flat)))
    assert_exact(out, 5)


def test_an_output_that_names_no_input_puts_the_whole_batch_on_every_output() -> None:
    """Never a positional guess: one fresh output makes every output carry every input's credit."""
    with warnings_logged() as warned:
        out = run_batch({0: ("fresh", 1), 1: ("same", 1), 2: ("copy", 1), 3: ("fresh", 1)}, order=lambda f: f[::-1])
    everything = {source_of(v) for v in range(4)}
    assert all(set(t._lineage) == everything for t in out)
    assert all(c.is_one() for c in credit_by_source(out).values())
    # One result per input: names stay those of the inputs (so a redone batch rewrites the same names).
    assert sorted(t.task_id for t in out) == sorted(everything)
    assert len(warned) == 1 and "'batch'" in warned[0]


def test_inputs_sharing_one_metadata_dict_are_still_told_apart() -> None:
    """Siblings of a fan-out built with one ``_metadata`` dict reach a batch stage together."""

    class FanShared(ProcessingStage[Item, Item]):
        name = "fan_shared"

        def process(self, task: Item) -> list[Item]:
            return [Item("d", task.data * 10 + j, _metadata=task._metadata) for j in range(2)]

    out = run([Emit(2), FanShared(), Batch({}, order=lambda f: f[::-1])], Tracker())
    for task in out:
        assert set(task._lineage) == {source_of(origin(task) // 10)}
    assert all(c.is_one() for c in credit_by_source(out).values())


def test_a_token_kept_from_an_earlier_batch_is_not_trusted() -> None:
    """A stage that caches a copy of metadata (token included) and reuses it in a later batch."""

    class Stale(ProcessingStage[Item, Item]):
        name = "stale"

        def __init__(self) -> None:
            self.kept: dict | None = None

        def process_batch(self, tasks: list[Item]) -> list[Item]:
            if self.kept is None:
                self.kept = copy.deepcopy(tasks[0]._metadata)
            return [Item("d", (t.data + 1) * 1000, _metadata=copy.deepcopy(self.kept)) for t in tasks]

    plan = ExecutionPlan.from_stages([Emit(4), Stale()])
    tasks = plan.adapter(0, Tracker()).process_batch(plan.initial_tasks(None))
    adapter = plan.adapter(1, Tracker())
    first = adapter.process_batch(tasks[:1])
    later = adapter.process_batch(tasks[1:])
    assert set(first[0]._lineage) == {source_of(0)}
    # Not credited to input 0 of the later batch by its stale token: the whole batch instead.
    assert all(set(t._lineage) == {source_of(v) for v in (1, 2, 3)} for t in later)


kinds = st.sampled_from(["same", "shared", "copy", "deepcopy", "fresh"])


@given(
    sources=st.integers(1, 6),
    script=st.lists(st.tuples(kinds, st.integers(0, 3)), min_size=6, max_size=6),
    seed=st.integers(0, 2**16),
    batch_size=st.integers(1, 6),
    nones=st.integers(0, 2),
)
def test_every_output_carries_its_own_source_and_credit_is_conserved(
    sources: int, script: list[tuple[str, int]], seed: int, batch_size: int, nones: int
) -> None:
    """Attribution invariant: whatever a batch stage returns, in whatever order, each output
    carries the credit of the source it came from (so it cannot complete early); when no output
    of a batch is fresh, exactly that credit."""
    shuffle = random.Random(seed)
    stage = Batch(dict(enumerate(script)), order=lambda flat: shuffle.sample(flat, len(flat)), nones=nones)
    plan = ExecutionPlan.from_stages([Emit(sources), stage])
    tasks = plan.adapter(0, Tracker()).process_batch(plan.initial_tasks(None))
    adapter = plan.adapter(1, Tracker())
    out: list[Task] = []
    for i in range(0, len(tasks), batch_size):
        batch_values = range(i, min(i + batch_size, len(tasks)))
        got = adapter.process_batch(tasks[i : i + batch_size])
        # Exact when no output is fresh and every input has an output (else an input without
        # outputs may have been merged into the others, and its credit rides on them).
        exact = all(script[v][0] != "fresh" and script[v][1] > 0 for v in batch_values)
        for task in got:
            if not isinstance(task, NoneTask):
                assert source_of(origin(task)) in task._lineage
                if exact:
                    assert set(task._lineage) == {source_of(origin(task))}
            assert PARENT_TOKEN_KEY not in task._metadata
        out.extend(got)
    credit = credit_by_source(out)
    assert len(credit) == sources and all(c.is_one() for c in credit.values())
    assert len({t.task_id for t in out}) == len(out)


# -- one object returned for two inputs --------------------------------------------------------


def test_an_object_returned_for_two_inputs_is_copied() -> None:
    """A cached result returned for two inputs: each return is its own output, own id and credit."""

    class Cached(ProcessingStage[Item, Item]):
        name = "cached"

        def __init__(self) -> None:
            self.cache = Item("d", 999)

        def process(self, task: Item) -> Item:
            return self.cache

    out = run([Emit(2), Cached()], Tracker())
    assert len(out) == 2 and out[0] is not out[1]
    assert [t.task_id for t in out] == [source_of(0), source_of(1)]
    assert [set(t._lineage) for t in out] == [{source_of(0)}, {source_of(1)}]
    assert all(c.is_one() for c in credit_by_source(out).values())


# -- source ids from content -------------------------------------------------------------------


class EmitPositional(Emit):
    name = "emit_positional"

    def process(self, task: EmptyTask) -> list[PositionalNumberTask]:
        return [PositionalNumberTask("d", i) for i in range(self.n)]


def test_a_source_without_content_id_is_refused_with_a_checkpoint() -> None:
    with pytest.raises(StageError, match="emit_positional") as info:
        run([EmitPositional(3), Scripted([[True]])], Tracker())
    cause = info.value.__cause__
    assert isinstance(cause, PositionalSourceIdError)
    assert "PositionalNumberTask.get_deterministic_id()" in str(cause)
    assert "allow_positional_source_ids" in str(cause)


def test_positional_source_ids_only_by_explicit_opt_in_and_with_a_warning() -> None:
    with warnings_logged() as warned:
        out = run([EmitPositional(3)], Tracker(), allow_positional_source_ids=True)
    assert len(out) == 3 and len(warned) == 1 and "emit_positional" in warned[0]
    assert len(run([EmitPositional(3)])) == 3  # without a checkpoint nothing changes


def test_file_groups_as_sources_have_content_ids(tmp_path: Path) -> None:
    for name in ("a", "b", "c"):
        (tmp_path / f"{name}.jsonl").write_text("{}\n")
    out = run([FilePartitioningStage(str(tmp_path), files_per_partition=2)], Tracker())
    assert len(out) == 2 and all(isinstance(t, FileGroupTask) for t in out)


def test_the_positional_id_error_survives_pickling() -> None:
    import pickle

    error = StageError("emit", "init0", PositionalSourceIdError("emit", "PositionalNumberTask"))
    again = pickle.loads(pickle.dumps(error))
    assert str(again) == str(error) and isinstance(again.__cause__, PositionalSourceIdError)
