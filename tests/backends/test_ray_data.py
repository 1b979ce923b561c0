"""``RayDataExecutor`` on real Ray: stage shapes, actors, errors, resources, tracker channel, cleanup."""

from __future__ import annotations

import functools
import itertools
import json
import operator
import os
import re
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from nemo_curator.backends.ray_data import RayDataExecutor
from nemo_curator.backends.ray_data.adapter import decode_tasks, encode_tasks, pack_sizes
from nemo_curator.backends.ray_data.executor import place_stages
from nemo_curator.backends.stage_adapter import StageError, source_id_for
from nemo_curator.pipeline import Pipeline
from nemo_curator.stages.base import ProcessingStage
from nemo_curator.stages.resources import Resources
from nemo_curator.tasks import DocumentBatch, FailedTask, NoneTask, Task
from nemo_curator.tasks.credit import Credit
from tests.stages import (
    AddOne,
    AwaitsDriver,
    CountWords,
    DropByNone,
    EmitDocuments,
    EmitNumbers,
    FailInActor,
    FailingSetup,
    FailOn,
    FanOut,
    FixedSourceFilter,
    MultiplyInBatches,
    NumberTask,
    OffsetAfterSetup,
    ReturnsText,
    SlowStamp,
    expected_feature_values,
    feature_pipeline,
)
from tests.tracking import RecordingTracker, TrackedExecutor

REPO = Path(__file__).resolve().parents[2]


# -- helpers ------------------------------------------------------------------------------


def _ids_and_values(outputs: list[Task]) -> list[tuple[str, Any]]:
    return sorted((t.task_id, t.data) for t in outputs)


def _live_map_workers() -> list[Any]:
    """Alive Ray Data pool actors in the session's Ray (public state API)."""
    from ray.util.state import list_actors

    return [a for a in list_actors(filters=[("state", "=", "ALIVE")]) if a.class_name.startswith("MapWorker(")]


def _source(number: int) -> str:
    return source_id_for(NumberTask("numbers", number), "init0", number)


def _credit_sum(credits: list[Credit]) -> Credit | None:
    return functools.reduce(operator.add, credits) if credits else None


def _skipping(numbers: list[int]) -> RecordingTracker:
    """A tracker for which the sources of ``numbers`` are complete."""
    return RecordingTracker.skipping(_source(n) for n in numbers)


class TrackedRayDataExecutor(TrackedExecutor, RayDataExecutor):
    """Runs through the base class's ``execute`` with the test tracker as the checkpoint tracker."""


# -- pure parts (no Ray) ------------------------------------------------------------------


def test_task_column_round_trips_payloads_sentinels_and_lineage() -> None:
    frame = DocumentBatch("docs", pd.DataFrame({"text": ["a", "b c"]}))
    frame.task_id = "t1"
    frame._lineage = {"s1": Credit.make(3, 2)}
    frame._metadata["k"] = [1, 2]
    table = DocumentBatch("docs", pa.table({"text": ["x"]}))
    table.task_id = "t2"
    none = NoneTask()
    none.task_id = "t3_f"
    none._lineage = {"s1": Credit.make(1, 2)}
    failed = FailedTask(dataset_name="d", reason="ValueError: x", stage_name="st")
    failed._lineage = {"s2": Credit.one()}
    back = decode_tasks(encode_tasks([frame, table, none, failed]))
    assert [type(t) for t in back] == [DocumentBatch, DocumentBatch, NoneTask, FailedTask]
    assert back[0].data.equals(frame.data) and back[0]._lineage == frame._lineage and back[0]._metadata == {"k": [1, 2]}
    assert isinstance(back[1].data, pa.Table) and back[1].data.equals(table.data) and back[1].task_id == "t2"
    assert back[2].task_id == "t3_f" and back[2]._lineage == {"s1": Credit.make(1, 2)}
    assert (back[3].reason, back[3].stage_name, back[3]._lineage) == ("ValueError: x", "st", {"s2": Credit.one()})
    assert decode_tasks(encode_tasks([])) == []
    packed = encode_tasks([frame, none, failed], [2, 1])
    assert packed.num_rows == 2
    assert [(type(t), t.task_id, t._lineage) for t in decode_tasks(packed)] == [
        (DocumentBatch, "t1", frame._lineage),
        (NoneTask, "t3_f", none._lineage),
        (FailedTask, failed.task_id, failed._lineage),
    ]
    assert encode_tasks([], []).num_rows == 0


def test_packs_are_cut_at_max_bytes_and_keep_order() -> None:
    small = [NumberTask("d", i) for i in range(6)]
    big = DocumentBatch("docs", pa.table({"text": ["x" * 50_000]}))
    tasks = [*small[:3], big, *small[3:]]
    one_pack = encode_tasks(tasks, [len(tasks)])
    assert one_pack.num_rows == 1
    cut = encode_tasks(tasks, [len(tasks)], max_bytes=10_000)
    rows = cut.column("tasks").to_pylist()
    # The large task travels alone; the small ones around it keep their packs, in order.
    assert [len(r) for r in rows] == [3, 1, 3]
    assert [t.data if isinstance(t, NumberTask) else "big" for t in decode_tasks(cut)] == [0, 1, 2, "big", 3, 4, 5]
    assert encode_tasks(small, [3, 3], max_bytes=1).num_rows == 6  # every task alone below its own size


@given(
    n=st.integers(0, 500),
    inputs=st.integers(1, 50),
    spread=st.integers(1, 64),
    max_tasks=st.integers(1, 100),
)
def test_pack_sizes_bound_packs_keep_order_and_spread_what_a_call_multiplied(
    n: int, inputs: int, spread: int, max_tasks: int
) -> None:
    sizes = pack_sizes(n, inputs, spread, max_tasks)
    assert sum(sizes) == n
    assert all(1 <= size <= max_tasks for size in sizes)
    assert not sizes or max(sizes) - min(sizes) <= 1
    # What a call multiplied spreads over the next stage's workers (up to ``spread`` packs) ...
    assert len(sizes) >= min(n, spread, -(-n // inputs))
    # ... and no call splits its tasks finer than that or than ``max_tasks`` forces.
    assert len(sizes) == min(n, max(-(-n // max_tasks), min(spread, -(-n // inputs))))


def test_batch_stages_get_batches_of_their_size_from_packs(ray_session) -> None:
    """Several packs per call still reach ``process_batch`` in batches of at most ``batch_size``, mostly full."""
    stages = [EmitNumbers(count=37), FanOut(n=3, factor=3, keep=2), MultiplyInBatches(batch_size=5)]
    outputs = Pipeline(name="batches", stages=stages).run(RayDataExecutor(config={"max_tasks_per_block": 3}))
    assert sorted(t.data for t in outputs) == sorted(2 * v for v in range(37 * 3) if v % 3 != 2)
    lengths = [t._metadata["batch_len"] for t in outputs]
    assert max(lengths) == 5, lengths
    assert sum(1 for n in lengths if n == 5) >= len(lengths) // 2, lengths


class _TaskStage(ProcessingStage[Task, Task]):
    def __init__(self, cpus: float) -> None:
        self.resources = Resources(cpus=cpus)
        self.name = f"task_{cpus}"


class _ActorStage(_TaskStage):
    def __init__(self, cpus: float, workers: int | None = None) -> None:
        super().__init__(cpus)
        self._workers = workers

    def setup(self, worker_metadata: object = None) -> None:
        pass

    def num_workers(self) -> int | None:
        return self._workers


def _peak_cpus(placements: list[Any]) -> float:
    """Actors at their maximum pool size plus the largest single task."""
    actors = sum(p.num_cpus * p.actors[1] for p in placements if p.actors is not None)
    return actors + max((p.num_cpus for p in placements if p.actors is None), default=0.0)


def test_place_stages_keeps_requests_that_fit_and_keeps_stages_apart() -> None:
    stages = [_TaskStage(0.5), _ActorStage(0.5), _ActorStage(1.0, workers=3), _TaskStage(1.0), _TaskStage(1.0)]
    placements, scale = place_stages(stages, (1, 2), cluster_cpus=8, cluster_gpus=0)
    assert scale == 1.0
    # A task stage never asks for exactly what the next stage asks for (Ray Data would fuse them).
    assert [(p.actors, p.num_cpus) for p in placements] == [
        (None, 0.5),
        ((1, 2), 0.4999),
        ((3, 3), 1.0),
        (None, 1.0),
        (None, 0.9999),
    ]


def test_place_stages_scales_every_request_when_actors_would_starve_tasks() -> None:
    # The 2-CPU trap: a pool of two 1-CPU actors leaves no CPU for the tasks feeding it.
    stages = [_TaskStage(1.0), _ActorStage(1.0), _TaskStage(1.0)]
    placements, scale = place_stages(stages, (2, 2), cluster_cpus=2, cluster_gpus=0)
    assert scale == pytest.approx(2 / 3)
    assert [p.num_cpus for p in placements] == [0.6666, 0.6665, 0.6666]
    assert _peak_cpus(placements) <= 2


def test_place_stages_rejects_impossible_gpu_requests() -> None:
    gpu_stage = _TaskStage(1.0)
    gpu_stage.resources = Resources(cpus=1.0, gpus=1.0)
    with pytest.raises(ValueError, match=r"task_1.0.*GPU"):
        place_stages([gpu_stage], (1, 1), cluster_cpus=4, cluster_gpus=0)


@given(
    specs=st.lists(
        st.tuples(st.booleans(), st.sampled_from([0.0, 0.0001, 0.1, 0.5, 1.0, 2.0, 3.5]), st.integers(1, 4)),
        min_size=1,
        max_size=7,
    ),
    cluster=st.sampled_from([0.5, 1.0, 2.0, 3.0, 4.0, 16.0]),
)
def test_place_stages_leaves_room_for_a_task_beside_all_actors_and_never_fuses(
    specs: list[tuple[bool, float, int]], cluster: float
) -> None:
    stages: list[ProcessingStage] = [_ActorStage(c, workers=w) if actor else _TaskStage(c) for actor, c, w in specs]
    placements, scale = place_stages(stages, (1, 1), cluster_cpus=cluster, cluster_gpus=0)
    assert 0 < scale <= 1.0
    # Exact up to Ray's resource step per worker (a request is never below one step, and one of
    # two equal minimal requests is raised by one step).
    workers = sum(p.actors[1] if p.actors else 1 for p in placements)
    assert _peak_cpus(placements) <= cluster + 1e-4 * workers + 1e-9
    for before, after in itertools.pairwise(placements):
        if before.actors is None:
            assert before.num_cpus != after.num_cpus
    for stage, placement in zip(stages, placements, strict=True):
        wanted = stage.resources.cpus
        assert placement.num_cpus <= max(wanted, 2e-4) + 1e-12
        assert placement.num_cpus >= min(wanted * scale, 1e-4) - 1e-4 - 1e-12


def test_unknown_config_keys_are_rejected() -> None:
    with pytest.raises(ValueError, match="actor_pool_sise"):
        RayDataExecutor(config={"actor_pool_sise": 2})
    with pytest.raises(ValueError, match="actor_pool_size"):
        RayDataExecutor(config={"actor_pool_size": (3, 1)})
    with pytest.raises(ValueError, match="actor_exit_timeout_s"):
        RayDataExecutor(config={"actor_exit_timeout_s": -1})
    with pytest.raises(ValueError, match="target_max_block_size"):
        RayDataExecutor(config={"target_max_block_size": 0})
    with pytest.raises(ValueError, match="max_tasks_per_block"):
        RayDataExecutor(config={"max_tasks_per_block": 0})
    with pytest.raises(ValueError, match="max_bytes_per_block"):
        RayDataExecutor(config={"max_bytes_per_block": 0})


def test_runs_are_quiet_by_default_and_leave_the_users_data_context_alone() -> None:
    import logging

    from ray.data import DataContext

    user = DataContext.get_current()
    user_bars = user.enable_progress_bars
    for config, shown in (({}, False), ({"show_progress": True, "preserve_order": True}, True)):
        with RayDataExecutor(config=config)._data_context():
            ctx = DataContext.get_current()
            assert ctx is not user
            assert ctx.enable_progress_bars is shown and ctx.print_on_execution_start is shown
            assert ctx.execution_options.preserve_order is bool(config.get("preserve_order"))
            assert ctx.raise_original_map_exception and ctx.max_errored_blocks == 0
            if not shown:
                assert logging.getLogger("ray.data").getEffectiveLevel() >= logging.WARNING
        assert DataContext.get_current() is user and user.enable_progress_bars == user_bars


# -- runs on the shared Ray -----------------------------------------------------------------


def test_every_stage_shape_gives_the_same_outputs_and_ids_on_every_run(ray_session) -> None:
    """1:1, fan-out, filter by None and by [], batch_size 4, setup/teardown, a composite stage."""
    first = feature_pipeline().run(RayDataExecutor())
    ordered = feature_pipeline().run(RayDataExecutor(config={"preserve_order": True}))
    again = feature_pipeline().run(RayDataExecutor(config={"preserve_order": True}))
    assert sorted(t.data for t in first) == expected_feature_values()
    assert len({t.task_id for t in first}) == len(first)
    assert _ids_and_values(first) == _ids_and_values(ordered)
    assert [(t.task_id, t.data) for t in ordered] == [(t.task_id, t.data) for t in again]
    # Large blocks change only how tasks are grouped in transit, never the outputs or their ids.
    blocks = feature_pipeline().run(RayDataExecutor(config={"target_max_block_size": 128 * 1024**2}))
    assert _ids_and_values(blocks) == _ids_and_values(first)


def test_setup_runs_once_per_actor_teardown_on_release_and_stages_stay_apart(ray_session, tmp_path: Path) -> None:
    stages = [
        EmitNumbers(count=8),
        SlowStamp(label="task", seconds=0.3),
        OffsetAfterSetup(marker_dir=str(tmp_path)),
    ]
    outputs = Pipeline(name="actors", stages=stages).run(RayDataExecutor(config={"actor_pool_size": 2}))
    assert sorted(t.data for t in outputs) == [1000 + i for i in range(8)]
    task_pids = {pid for t in outputs for label, pid, _ in t._metadata["workers"] if label == "task"}
    actor_pids = {pid for t in outputs for label, pid, _ in t._metadata["workers"] if label == "actor"}
    # The fan-out's children ran in parallel tasks, and never inside the next stage's actors.
    assert len(task_pids) > 1
    assert task_pids.isdisjoint(actor_pids)
    assert os.getpid() not in task_pids | actor_pids
    markers = [p.name.split("-") for p in tmp_path.iterdir()]
    setups = [int(pid) for what, pid, _ in markers if what == "setup"]
    teardowns = [int(pid) for what, pid, _ in markers if what == "teardown"]
    assert len(setups) == len(set(setups)) and 1 <= len(setups) <= 2
    assert actor_pids <= set(setups)
    # The run waits for its actors to exit, so every teardown has happened when it returns.
    assert sorted(teardowns) == sorted(setups)
    assert len([m for m in markers if m[0] == "node"]) == 1
    assert _live_map_workers() == []


def test_pandas_and_pyarrow_payloads_travel_unchanged(ray_session) -> None:
    outputs = Pipeline(name="docs", stages=[EmitDocuments(), CountWords()]).run(RayDataExecutor())
    by_type = {type(t.data): t.data for t in outputs}
    assert set(by_type) == {pd.DataFrame, pa.Table}
    assert by_type[pd.DataFrame]["words"].tolist() == [2, 3]
    assert by_type[pa.Table].column("words").to_pylist() == [1, 2, 1]


@pytest.mark.parametrize(
    ("stages", "stage_name", "cause", "message"),
    [
        ([EmitNumbers(count=8), AddOne(), FailOn(value=5)], "fail_on", ValueError, "cannot handle 5"),
        ([EmitNumbers(count=6), FailInActor()], "fail_in_actor", KeyError, "no entry for 4"),
        ([EmitNumbers(count=3), FailingSetup()], "failing_setup", OSError, "model weights not found"),
    ],
    ids=["task_stage", "actor_stage", "actor_setup"],
)
def test_a_stage_that_raises_fails_the_run_naming_the_stage(
    ray_session, stages: list[ProcessingStage], stage_name: str, cause: type[Exception], message: str
) -> None:
    with pytest.raises(StageError) as info:
        Pipeline(name="failing", stages=stages).run(RayDataExecutor())
    err = info.value
    assert type(err) is StageError and err.stage_name == stage_name
    assert stage_name in str(err) and message in str(err)
    assert isinstance(err.__cause__, cause) and message in str(err.__cause__)
    assert _live_map_workers() == []


def test_a_stage_returning_a_non_task_fails_the_run_and_releases_its_actors(ray_session) -> None:
    start = time.monotonic()
    with pytest.raises(TypeError, match=r"returns_text.*returned str"):
        Pipeline(name="bad_return", stages=[EmitNumbers(count=3), ReturnsText()]).run(RayDataExecutor())
    # Released promptly: the run did not sit out its 30 s wait for actors that cannot exit.
    assert time.monotonic() - start < 25
    assert _live_map_workers() == []


def test_cpu_requests_beyond_the_cluster_are_scaled_instead_of_hanging(ray_session) -> None:
    # Two pools of two 2-CPU actors want 8 CPUs of the session's 4.
    def hungry(name: str) -> OffsetAfterSetup:  # an actor stage (it has setup) wanting 2 CPUs
        return OffsetAfterSetup(offset=1, name=name, resources=Resources(cpus=2.0))

    stages = [EmitNumbers(count=6), hungry("hungry_actor"), hungry("hungry_actor_2")]
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["outputs"] = Pipeline(name="hungry", stages=stages).run(
                RayDataExecutor(config={"actor_pool_size": 2})
            )
        except BaseException as exc:
            result["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout=240)
    assert not thread.is_alive(), "the run did not finish: actor pools starved the cluster"
    assert "error" not in result, result.get("error")
    assert sorted(t.data for t in result["outputs"]) == [i + 2 for i in range(6)]


# -- the completion-report channel --------------------------------------------------------------


def test_terminal_batches_stream_to_the_tracker_with_exact_credit(ray_session, tmp_path: Path) -> None:
    tracker = _skipping([3])
    stages = [
        EmitNumbers(count=12),
        FanOut(n=3),
        DropByNone(),  # drops 0, 21, 42, 70, 91, 112
        FailOn(value=51),  # source 5 fails
        SlowStamp(label="sink", seconds=0.1),
    ]
    outputs = Pipeline(name="tracked", stages=stages).run(TrackedRayDataExecutor(tracker, tmp_path))
    assert tracker.closed == [True]
    terminal = tracker.tasks
    real = [t for t in terminal if not isinstance(t, NoneTask | FailedTask)]
    assert _ids_and_values(outputs) == _ids_and_values(real)

    # Streaming: the driver got a batch before the sink had processed its last task.
    assert len(tracker.batches) > 1
    last_sink_work = max(ts for t in real for label, _, ts in t._metadata["workers"] if label == "sink")
    assert tracker.batches[0][0] < last_sink_work

    # The listed source was dropped at the source stage: nothing of it anywhere.
    assert all(_source(3) not in (t._lineage or {}) for t in terminal)
    assert not {30, 31, 32} & {t.data for t in real}

    # Filtered tasks arrive as sentinels carrying their credit.
    sentinels = [t for t in terminal if isinstance(t, NoneTask)]
    assert sorted(s for t in sentinels for s in t._lineage) == sorted(_source(n) for n in (0, 2, 4, 7, 9, 11))

    # The failed task arrives as a FailedTask; its credit is not returned, so source 5 stays incomplete.
    failed = [t for t in terminal if isinstance(t, FailedTask)]
    assert len(failed) == 1 and failed[0].stage_name == "fail_on" and "cannot handle 51" in failed[0].reason
    assert set(failed[0]._lineage) == {_source(5)}

    returned: dict[str, list[Credit]] = {}
    for task in terminal:
        if not isinstance(task, FailedTask):
            for source, credit in task._lineage.items():
                returned.setdefault(source, []).append(credit)
    expected_sources = {_source(n) for n in range(12) if n != 3}
    assert set(returned) == expected_sources
    for source in expected_sources - {_source(5)}:
        assert _credit_sum(returned[source]) == Credit.one(), source
    partial = _credit_sum(returned[_source(5)])
    assert partial is not None and partial.compare(Credit.one()) < 0
    assert _credit_sum([partial, failed[0]._lineage[_source(5)]]) == Credit.one()


def test_each_finished_block_reaches_the_driver_before_the_next_is_made(ray_session, tmp_path: Path) -> None:
    """Streaming granularity of the report channel: nothing holds a finished block back.

    The last stage handles number ``n`` only after the driver has received ``n - 1``, so the
    run is a relay between workers and driver. If the driver's iterator held one block back
    (Ray's default prefetch of one batch), every step would wait out the stage's timeout.
    """
    markers = tmp_path / "received"
    markers.mkdir()

    class MarkingTracker(RecordingTracker):
        def on_terminal(self, tasks: list[Task]) -> None:
            super().on_terminal(tasks)
            for task in tasks:
                if not isinstance(task, NoneTask | FailedTask):
                    (markers / str(task.data)).touch()

    tracker = MarkingTracker(FixedSourceFilter(frozenset()), [], [])
    stages = [EmitNumbers(count=6), AwaitsDriver(marker_dir=str(markers), timeout_s=10.0)]
    outputs = Pipeline(name="relay", stages=stages).run(TrackedRayDataExecutor(tracker, tmp_path / "ckpt"))
    waited = {t.data: t._metadata["waited_s"] for t in outputs}
    assert sorted(waited) == list(range(6))
    assert None not in waited.values(), f"a finished block was held back from the driver: {waited}"


def test_a_run_whose_sources_are_all_complete_returns_nothing(ray_session, tmp_path: Path) -> None:
    tracker = _skipping(list(range(5)))
    outputs = Pipeline(name="done", stages=[EmitNumbers(count=5), AddOne()]).run(
        TrackedRayDataExecutor(tracker, tmp_path)
    )
    assert outputs == []
    assert tracker.tasks == []
    assert tracker.closed == [True]


# -- a run without the shared Ray --------------------------------------------------------------

_OWN_RAY_SCRIPT = """
import json, os, re, sys, time
sys.path.insert(0, {repo!r})
from nemo_curator.backends.ray_data import RayDataExecutor
from nemo_curator.pipeline import Pipeline
from tests.stages import EmitNumbers, OffsetAfterSetup, RayletInfo

import ray

outputs = Pipeline(name="own", stages=[EmitNumbers(count=3), OffsetAfterSetup(), RayletInfo()]).run(RayDataExecutor())
raylet_cmdline = outputs[0]._metadata["raylet_cmdline"]
session = re.search(r"session_[0-9_-]+[0-9]", raylet_cmdline).group(0)

def ray_processes():
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                cmdline = open(f"/proc/{{entry}}/cmdline", "rb").read().decode(errors="replace")
            except OSError:
                continue
            if session in cmdline:
                found.append(int(entry))
    return found

deadline = time.monotonic() + 30
left = ray_processes()
while left and time.monotonic() < deadline:
    time.sleep(0.25)
    left = ray_processes()
print(json.dumps({{
    "values": sorted(t.data for t in outputs),
    "raylet_pid": outputs[0]._metadata["raylet_pid"],
    "session": session,
    "initialized_after": ray.is_initialized(),
    "ray_address_after": os.environ.get("RAY_ADDRESS"),
    "left_after_run": left,
}}))
"""


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(int(entry))
    return found


def test_without_a_cluster_the_run_starts_and_stops_its_own_ray(tmp_path: Path) -> None:
    script = tmp_path / "own_ray.py"
    script.write_text(textwrap.dedent(_OWN_RAY_SCRIPT.format(repo=str(REPO))))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen(
        [sys.executable, str(script)], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr[-4000:]
    report = json.loads(stdout.strip().splitlines()[-1])
    assert report["values"] == [1000, 1001, 1002]
    # The raylet that ran the stages belongs to a Ray session started by the subprocess's
    # driver (Ray ends a session's name with the starting driver's pid) ...
    assert re.fullmatch(r"session_\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2}_\d+_\d+", report["session"])
    assert report["session"].endswith(f"_{proc.pid}")
    assert report["raylet_pid"] != proc.pid
    # ... and was gone before the driver exited, leaving the environment as it was.
    assert report["initialized_after"] is False
    assert report["ray_address_after"] is None
    assert report["left_after_run"] == []
    assert _processes_mentioning(report["session"]) == []
