"""``RayActorPoolExecutor`` on real Ray: semantics, streaming, retries, errors, tracker channel, cleanup."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from nemo_curator.backends.ray_actor_pool import RayActorPoolExecutor
from nemo_curator.backends.ray_actor_pool.executor import plan_resources
from nemo_curator.backends.stage_adapter import StageError, source_id_for
from nemo_curator.pipeline import Pipeline
from nemo_curator.stages.resources import Resources
from nemo_curator.tasks import FailedTask, NoneTask, Task
from nemo_curator.tasks.credit import Credit
from tests.ray_helpers import alive_after
from tests.stages import (
    AddOne,
    Chain,
    CrashOnce,
    DropByEmptyList,
    DropByNone,
    EmitNumbers,
    FailOn,
    FanOut,
    FixedSourceFilter,
    MultiplyInBatches,
    NumberTask,
    OffsetAfterSetup,
    SlowStamp,
)
from tests.tracking import RecordingTracker, TrackedExecutor

REPO = Path(__file__).resolve().parents[2]


# -- helpers ------------------------------------------------------------------------------


def _values_and_ids(outputs: list[Task]) -> list[tuple[Any, str]]:
    return sorted((t.data, t.task_id) for t in outputs)


def _live_stage_actors() -> list[Any]:
    from ray.util.state import list_actors

    return list_actors(filters=[("class_name", "=", "StageActor"), ("state", "=", "ALIVE")])


def _assert_no_live_actors(timeout: float = 15.0) -> None:
    """``ray.kill`` is asynchronous: wait (bounded) until no actor of the run is alive."""
    alive = alive_after(_live_stage_actors, timeout, poll_s=0.25)
    assert alive == [], f"actors left alive after the run: {alive}"


class TrackedActorPool(TrackedExecutor, RayActorPoolExecutor):
    """The executor with a test tracker in place of the checkpoint ledger."""


def _expected_mixed() -> list[int]:
    """What ``_mixed_pipeline`` computes, in plain Python."""
    values = [v + 1 for v in range(8)]
    values = [10 * (v + 1) + j for v in values for j in range(2)]
    values = [v for v in values if v % 3 != 0 and v % 4 != 0]
    return sorted(2 * v for v in values)


def _mixed_pipeline(log_dir: Path) -> Pipeline:
    return Pipeline(
        "mixed",
        stages=[
            EmitNumbers(count=8, keyed=False),
            AddOne(),
            Chain(name="add_then_explode", parts=(AddOne(name="composite_add"), FanOut(n=2, name="composite_explode"))),
            DropByNone(mod=3),
            DropByEmptyList(mod=4, rest=0),
            MultiplyInBatches(log_dir=str(log_dir), batch_size=3, name="batch_double"),
        ],
    )


# -- semantics ----------------------------------------------------------------------------


def test_map_fanout_filters_batches_composite_identical_across_runs(ray_session, tmp_path: Path) -> None:
    first_dir, second_dir = tmp_path / "a", tmp_path / "b"
    first_dir.mkdir()
    second_dir.mkdir()
    first = _mixed_pipeline(first_dir).run(RayActorPoolExecutor())
    _assert_no_live_actors()
    # Three stages with 2 actors: 10 actors x 0.5 CPU exceed the session's 4 CPUs, so requests are scaled.
    doubled = {"add_one": 2, "composite_explode": 2, "batch_double": 2}
    second = _mixed_pipeline(second_dir).run(RayActorPoolExecutor(config={"num_actors_per_stage": doubled}))
    _assert_no_live_actors()

    assert sorted(t.data for t in first) == _expected_mixed()
    assert _values_and_ids(first) == _values_and_ids(second)
    assert len({t.task_id for t in first}) == len(first)
    assert not any(isinstance(t, NoneTask | FailedTask) for t in first)
    for log_dir in (first_dir, second_dir):
        sizes = sorted(int(line) for f in log_dir.glob("batches-*.log") for line in f.read_text().split())
        assert sum(sizes) == len(_expected_mixed())
        # Batches are full except at most one partial batch sent once upstream has drained.
        assert all(s == 3 for s in sizes[1:]), sizes
        assert 1 <= sizes[0] <= 3


def test_setup_and_teardown_once_per_actor(ray_session, tmp_path: Path) -> None:
    recorder = OffsetAfterSetup(offset=0, marker_dir=str(tmp_path), name="setup_recorder")
    pipeline = Pipeline("setup", stages=[EmitNumbers(count=6, keyed=False), recorder, AddOne()])
    executor = RayActorPoolExecutor(config={"num_actors_per_stage": {"setup_recorder": 2}})
    outputs = pipeline.run(executor)
    assert sorted(t.data for t in outputs) == list(range(1, 7))
    setups = sorted(p.name.removeprefix("setup-") for p in tmp_path.glob("setup-*"))
    teardowns = sorted(p.name.removeprefix("teardown-") for p in tmp_path.glob("teardown-*"))
    assert len(setups) == 2
    assert teardowns == setups
    pids = {(tmp_path / f"setup-{token}").read_text() for token in setups}
    assert len(pids) == 2  # two actors, two processes
    _assert_no_live_actors()


def test_stage_error_names_stage_keeps_cause_and_kills_actors(ray_session) -> None:
    stages = [EmitNumbers(count=8, keyed=False), AddOne(), FailOn(value=5, name="boom"), AddOne(name="after")]
    pipeline = Pipeline("boom", stages=stages)
    with pytest.raises(StageError) as info:
        pipeline.run(RayActorPoolExecutor())
    err = info.value
    assert "'boom'" in str(err)
    assert err.stage_name == "boom"
    assert isinstance(err.__cause__, ValueError)
    assert "cannot handle 5" in str(err.__cause__)
    _assert_no_live_actors()


def test_killed_worker_is_restarted_and_output_is_exact(ray_session, tmp_path: Path) -> None:
    marker = tmp_path / "crashed"
    # AddOne's one-task outputs reach CrashOnce as object refs, so the retried call re-resolves them.
    stages = [
        EmitNumbers(count=8, keyed=False),
        AddOne(),
        CrashOnce(marker=str(marker), trigger=4),
        AddOne(name="after"),
    ]
    outputs = Pipeline("crash", stages=stages).run(RayActorPoolExecutor(config={"max_retries": 2}))
    assert marker.exists(), "the stage never killed its worker"
    assert sorted(t.data for t in outputs) == list(range(2, 10))
    assert len({t.task_id for t in outputs}) == 8
    _assert_no_live_actors()


def test_worker_dying_beyond_max_retries_fails_the_run_naming_the_stage(ray_session, tmp_path: Path) -> None:
    marker = tmp_path / "crashed"
    crash = CrashOnce(marker=str(marker), trigger=2, always=True, name="always_crash")
    pipeline = Pipeline("crash", stages=[EmitNumbers(count=4, keyed=False), crash, AddOne()])
    with pytest.raises(RuntimeError, match=r"'always_crash'.*max_retries"):
        pipeline.run(RayActorPoolExecutor(config={"max_retries": 1}))
    assert marker.exists()
    _assert_no_live_actors()


# -- streaming and the completion channel ------------------------------------------------


def test_streaming_first_terminal_batch_arrives_before_upstream_is_done(ray_session, tmp_path: Path) -> None:
    """A slow last stage: sink outputs reach the driver while stage 2 still has work, and
    backpressure keeps stage 2 from running far ahead of the sink."""
    tracker = RecordingTracker()
    count = 12
    pipeline = Pipeline(
        "stream",
        stages=[
            EmitNumbers(count=count),
            SlowStamp(log_dir=str(tmp_path), label="mid", seconds=0.02, name="mid"),
            SlowStamp(log_dir=str(tmp_path), label="last", seconds=0.2, name="last"),
        ],
    )
    outputs = pipeline.run(TrackedActorPool(tracker, checkpoint=tmp_path / "ckpt"))
    assert sorted(t.data for t in outputs) == list(range(count))

    mid_times = sorted(float(line.split()[0]) for line in (tmp_path / "mid.log").read_text().splitlines())
    assert len(mid_times) == count
    first_terminal = tracker.batches[0][0]
    assert first_terminal < mid_times[-1], "no terminal batch reached the driver before stage 2 finished"
    assert len(tracker.batches) == count  # batch_size 1: one terminal batch per task, each on arrival
    # Backpressure bound: tasks out of stage 2 exceed tasks received by the driver by at most
    # the last stage's in-flight calls (2) plus what its queue may hold once stage 2's own
    # in-flight calls land (1 + 2); one more for clock granularity.
    received = 0
    for t, batch in tracker.batches:
        received += len(batch)
        left_mid = sum(1 for m in mid_times if m <= t)
        assert left_mid <= received + 6, (left_mid, received)
    assert tracker.closed == [True]
    assert tracker.workers_started_calls == 1  # the ledger of a fresh checkpoint starts after the pools


def _tracked_pipeline() -> Pipeline:
    # Sources 0..5 (content ids) -> 10v+j (j<3) -> drop %3 (None) -> drop %4 ([]) -> fail on 22 -> +1.
    return Pipeline(
        "tracked",
        stages=[
            EmitNumbers(count=6),
            FanOut(n=3),
            DropByNone(mod=3),
            DropByEmptyList(mod=4, rest=0),
            FailOn(value=22, name="boom"),
            AddOne(),
        ],
    )


def _source_id(value: int) -> str:
    return source_id_for(NumberTask(dataset_name="numbers", data=value), "", 0)


def test_tracker_receives_credit_sentinels_failures_and_filter_skips(ray_session, tmp_path: Path) -> None:
    tracker = RecordingTracker()
    started = time.time()
    outputs = _tracked_pipeline().run(TrackedActorPool(tracker, checkpoint=tmp_path / "ckpt"))
    ended = time.time()

    assert sorted(t.data for t in outputs) == [2, 3, 11, 12, 32, 42, 51]
    assert tracker.closed == [True]
    assert len(tracker.batches) > 1
    assert started < tracker.batches[0][0] < tracker.batches[-1][0] <= ended
    terminal = tracker.tasks
    assert all(t._lineage for t in terminal)

    sentinels = [t for t in terminal if isinstance(t, NoneTask)]
    assert len(sentinels) == 10  # six multiples of 3, four of 4
    failed = [t for t in terminal if isinstance(t, FailedTask)]
    assert len(failed) == 1
    assert failed[0].stage_name == "boom"
    assert "cannot handle 22" in failed[0].reason
    assert set(failed[0]._lineage) == {_source_id(2)}

    sources = {_source_id(v) for v in range(6)}
    total: dict[str, Credit] = {}
    returned: dict[str, Credit] = {}
    for task in terminal:
        for source, credit in task._lineage.items():
            total[source] = total[source] + credit if source in total else credit
            if not isinstance(task, FailedTask):
                returned[source] = returned[source] + credit if source in returned else credit
    assert set(total) == sources
    assert all(c.is_one() for c in total.values()), total
    for source in sources - {_source_id(2)}:
        assert returned[source].is_one()
    assert not returned[_source_id(2)].is_one()  # the failed slot's credit is not returned

    skip = _source_id(1)
    skipping = RecordingTracker(source_filter=FixedSourceFilter(frozenset({skip})))
    outputs = _tracked_pipeline().run(TrackedActorPool(skipping, checkpoint=tmp_path / "ckpt"))
    assert sorted(t.data for t in outputs) == [2, 3, 32, 42, 51]
    assert all(skip not in t._lineage for t in skipping.tasks)
    assert {s for t in skipping.tasks for s in t._lineage} == sources - {skip}
    _assert_no_live_actors()


# -- resources and the run's own Ray ------------------------------------------------------


def test_plan_resources_scales_cpus_and_refuses_missing_gpus() -> None:
    stages = [
        EmitNumbers(keyed=False).with_(resources=Resources(cpus=1.0)),
        AddOne().with_(resources=Resources(cpus=2.0)),
        AddOne(name="free").with_(resources=Resources(cpus=0.0)),
    ]
    fits = plan_resources(stages, [1, 1, 3], cluster_cpus=4, cluster_gpus=0)
    assert [r.cpus for r in fits] == [1.0, 2.0, 0.0]
    scaled = plan_resources(stages, [2, 2, 1], cluster_cpus=4, cluster_gpus=0)
    assert [r.cpus for r in scaled] == [0.6666, 1.3333, 0.0]
    assert 2 * scaled[0].cpus + 2 * scaled[1].cpus <= 4
    gpu = [AddOne().with_(resources=Resources(cpus=1.0, gpus=1.0))]
    with pytest.raises(ValueError, match="GPU"):
        plan_resources(gpu, [1], cluster_cpus=4, cluster_gpus=0)


_OWN_RAY_SCRIPT = textwrap.dedent(
    """
    import json, os, sys, time

    from nemo_curator.backends.ray_actor_pool import RayActorPoolExecutor
    from nemo_curator.pipeline import Pipeline
    from tests.stages import AddOne, EmitNumbers, FanOut

    def descendants():
        children = {}
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(pid))
        found, todo = [], [os.getpid()]
        while todo:
            for child in children.get(todo.pop(), []):
                found.append(child)
                todo.append(child)
        return found

    def name(pid):
        try:
            return os.path.basename(open(f"/proc/{pid}/cmdline", "rb").read().split(b"\\0")[0].decode())
        except OSError:
            return None

    seen = {}

    class Probe(RayActorPoolExecutor):
        def _execute(self, plan, tasks, tracker):
            import ray
            seen["address"] = ray.get_runtime_context().gcs_address
            outputs = super()._execute(plan, tasks, tracker)
            seen["processes"] = {pid: name(pid) for pid in descendants()}
            return outputs

    import ray
    outputs = Pipeline("own", stages=[EmitNumbers(count=4, keyed=False), FanOut(n=2), AddOne()]).run(Probe())
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(name(p) for p in seen["processes"]):
        time.sleep(0.2)
    print(json.dumps({
        "outputs": sorted(t.data for t in outputs),
        "address": seen["address"],
        "processes": seen["processes"],
        "alive_after_run": {p: name(p) for p in seen["processes"] if name(p)},
        "ray_initialized": ray.is_initialized(),
        "ray_address_env": os.environ.get("RAY_ADDRESS"),
    }))
    """
)


def test_starts_and_stops_its_own_ray_without_ray_address(tmp_path: Path) -> None:
    script = tmp_path / "own_ray.py"
    script.write_text(_OWN_RAY_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(REPO), env.get("PYTHONPATH", "")] if p)
    proc = subprocess.run([sys.executable, str(script)], cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["outputs"] == sorted(10 * v + j + 1 for v in range(4) for j in range(2))
    names = set(report["processes"].values())
    assert {"raylet", "gcs_server"} <= names, names  # the run started a Ray of its own
    assert report["alive_after_run"] == {}
    assert report["ray_initialized"] is False
    assert report["ray_address_env"] is None
    for pid, name in report["processes"].items():
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
        except OSError:
            continue
        assert os.path.basename(cmd) != name, f"{name} (pid {pid}) of the run is still alive"
