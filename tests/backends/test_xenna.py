"""XennaExecutor on real Ray and real cosmos-xenna.

Every xenna run costs about 7 s of fixed overhead, so each run checks several things.
Expected outputs come from two independent sources: values worked out by hand, and a
reference run that calls the same ``StageAdapter`` per stage in this process (so ids must
match what every other executor produces).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from nemo_curator.backends.base import ExecutionPlan
from nemo_curator.backends.stage_adapter import StageError, source_id_for
from nemo_curator.backends.xenna import XennaExecutor
from nemo_curator.backends.xenna.executor import XennaSettings, find_stage_error, fit_cpu_requests
from nemo_curator.pipeline import Pipeline
from nemo_curator.stages.base import ProcessingStage
from nemo_curator.stages.resources import Resources
from nemo_curator.tasks import FailedTask, NoneTask, Task, is_sentinel
from nemo_curator.tasks.credit import Credit
from tests.ray_helpers import alive_after
from tests.stages import (
    AddOne,
    Chain,
    Double,
    DropByEmptyList,
    DropByNone,
    EmitNumbers,
    FailingSetup,
    FailOn,
    FanOut,
    MultiplyInBatches,
    NumberTask,
    OffsetAfterSetup,
    SlowStamp,
    id_value_pairs,
    reference_run,
)
from tests.tracking import RecordingTracker, TrackedExecutor

REPO = Path(__file__).resolve().parents[2]


# -- helpers ---------------------------------------------------------------------------------


def alive_stage_workers() -> list[Any]:
    from ray.util.state import list_actors

    return [a for a in list_actors(filters=[("state", "=", "ALIVE")]) if a.class_name == "StageWorker"]


def assert_no_stage_workers_left(timeout_s: float = 20.0) -> None:
    alive = alive_after(alive_stage_workers, timeout_s, poll_s=0.5)
    assert alive == [], f"xenna left {len(alive)} StageWorker actor(s) alive"


def full_pipeline(marker_dir: Path) -> Pipeline:
    """1:1 maps, fan-out, both filters, a batch_size 3 stage, setup/teardown and a composite."""
    return Pipeline(
        name="xenna_full",
        stages=[
            EmitNumbers(count=12),
            FanOut(n=2),
            AddOne(in_place=True),  # returns the task object it got
            DropByNone(mod=3),
            DropByEmptyList(mod=5, rest=0),
            MultiplyInBatches(factor=-1, batch_size=3, name="batch_negate"),
            OffsetAfterSetup(marker_dir=str(marker_dir)),
            Chain(name="add_then_double", parts=(AddOne(in_place=True), Double())),
        ],
    )


def assert_setup_and_teardown_paired(marker_dir: Path) -> None:
    names = [p.name for p in marker_dir.iterdir()]
    setups = {n.removeprefix("setup-") for n in names if n.startswith("setup-")}
    teardowns = {n.removeprefix("teardown-") for n in names if n.startswith("teardown-")}
    assert setups, "no worker ran setup"
    assert teardowns == setups


def expected_full_values() -> list[int]:
    values = []
    for i in range(12):
        for j in range(2):
            v = i * 10 + j + 1
            if v % 3 and v % 5:
                values.append(2 * (-v + 1000 + 1))
    return sorted(values)


# -- configuration (no Ray) ------------------------------------------------------------------


def test_config_keys_are_validated() -> None:
    with pytest.raises(ValueError, match="unknown config key"):
        XennaExecutor(config={"num_cpu": 2})
    with pytest.raises(ValueError, match="execution_mode"):
        XennaExecutor(config={"execution_mode": "served"})
    with pytest.raises(ValueError, match="cpu_allocation_percentage"):
        XennaExecutor(config={"cpu_allocation_percentage": 0})
    with pytest.raises(ValueError, match="report_interval_s"):
        XennaExecutor(config={"report_interval_s": -1})
    settings = XennaExecutor(config={"num_cpus": 3, "max_retries": 2}).settings
    assert settings == XennaSettings(max_retries=2)
    assert settings.cpu_allocation_percentage == 1.0


def test_cpu_requests_are_scaled_only_when_they_do_not_fit() -> None:
    assert fit_cpu_requests([1.0, 0.5], [1, 2], 4.0) == ([1.0, 0.5], 1.0)
    scaled, factor = fit_cpu_requests([1.0, 1.0, 1.0, 2.0, 0.0], [1, 1, 1, 1, 1], 4.0)
    assert factor == pytest.approx(0.8)
    assert scaled == [0.8, 0.8, 0.8, 1.6, 0.0]
    assert sum(scaled) <= 4.0
    tiny, _ = fit_cpu_requests([1e-6, 10.0], [1, 1], 1.0)
    assert tiny[0] > 0 and sum(tiny) <= 1.0 + 1e-3


def test_stage_error_is_found_through_wrappers() -> None:
    original = ValueError("bad")
    error = StageError("s", "t1", original)
    try:
        try:
            raise error
        except StageError as inner:
            raise RuntimeError("Actor failed during setup") from inner
    except RuntimeError as outer:
        assert find_stage_error(outer) is error
    assert find_stage_error(KeyError("x")) is None


# -- runs on the shared test Ray ---------------------------------------------------------------


def test_stage_specs_fit_the_shared_cluster(ray_session: Any) -> None:
    from nemo_curator.backends.xenna.executor import build_stage_specs

    class Idle(ProcessingStage[NumberTask, NumberTask]):
        name = "idle stage"
        resources = Resources(cpus=0.0)

    stages = [
        EmitNumbers(count=1, name="emit", resources=Resources(cpus=3.0)),
        FanOut(resources=Resources(cpus=3.0)),
        Idle(),
    ]
    plan = ExecutionPlan.from_stages(stages)
    specs = build_stage_specs(plan, None, XennaSettings())
    cpus = [spec.stage.required_resources.cpus for spec in specs]
    # The session Ray has 4 CPUs: 6.01 requested, so every request shrinks by one factor.
    assert sum(cpus) <= 4.0
    assert cpus[0] == cpus[1] == pytest.approx(3.0 * 4.0 / 6.01, abs=1e-3)
    assert 0 < cpus[2] < 0.01
    assert [type(spec.stage).__name__ for spec in specs] == ["emit", "fan_out", "idle_stage"]
    assert [spec.stage.stage_batch_size for spec in specs] == [1, 1, 1]
    assert all(spec.num_workers is None for spec in specs)
    fixed = build_stage_specs(plan, None, XennaSettings(num_workers_per_stage=2))
    assert [spec.num_workers for spec in fixed] == [2, 2, 2]


def test_outputs_and_ids_match_reference_and_repeat(ray_session: Any, tmp_path: Path) -> None:
    for name in ("reference", "first"):
        (tmp_path / name).mkdir()
    reference = reference_run(full_pipeline(tmp_path / "reference").build())
    assert sorted(t.data for t in reference) == expected_full_values()

    first = full_pipeline(tmp_path / "first").run(XennaExecutor())
    assert sorted(t.data for t in first) == expected_full_values()
    assert id_value_pairs(first) == id_value_pairs(reference)
    assert all(isinstance(t, NumberTask) and not is_sentinel(t) and t._lineage is None for t in first)
    assert len({t.task_id for t in first}) == len(first)
    # The batch stage really got batches of 3 (only a remainder may be smaller).
    assert max(t._metadata["batch_len"] for t in first) == 3
    # Every worker of the setup stage ran setup, and teardown when xenna stopped it.
    assert_setup_and_teardown_paired(tmp_path / "first")

    assert_no_stage_workers_left()


@pytest.mark.parametrize("mode", ["batch", "serving"])
def test_other_modes_with_fixed_workers_give_the_same_ids(ray_session: Any, mode: str) -> None:
    def stages() -> list[ProcessingStage]:
        return [EmitNumbers(count=5), FanOut(n=3), AddOne(in_place=True), DropByNone(mod=3)]

    config = {"execution_mode": mode, "num_workers_per_stage": 1}
    outputs = XennaExecutor(config=config).execute(stages())
    assert id_value_pairs(outputs) == id_value_pairs(reference_run(stages()))
    assert sorted(t.data for t in outputs) == sorted(v for i in range(5) for j in range(3) if (v := i * 10 + j + 1) % 3)
    assert_no_stage_workers_left()


def test_stage_exception_names_stage_and_keeps_cause(ray_session: Any) -> None:
    with pytest.raises(StageError, match=r"stage 'fail_on' failed") as info:
        XennaExecutor().execute([EmitNumbers(count=6), FailOn(value=3)])
    assert isinstance(info.value.__cause__, ValueError)
    assert str(info.value.__cause__) == "cannot handle 3"
    assert info.value.stage_name == "fail_on"
    assert_no_stage_workers_left()


class TrackedXenna(TrackedExecutor, XennaExecutor):
    """XennaExecutor wired to a given tracker (the real ledger lives elsewhere)."""


def source_of(i: int) -> str:
    return source_id_for(NumberTask(dataset_name="numbers", data=i), "", 0)


def test_tracked_run_reports_terminal_tasks_while_running(ray_session: Any) -> None:
    skipped = {4, 9}
    dropped = {11, 52, 70}
    bad = 31
    tracker = RecordingTracker.skipping(source_of(i) for i in skipped)
    stages = [
        EmitNumbers(count=24),
        FanOut(n=3),
        SlowStamp(seconds=0.1),
        FailOn(drop=tuple(sorted(dropped)), value=bad, name="filter_fail_or_pass"),
    ]
    outputs = TrackedXenna(tracker, config={"report_interval_s": 0.2, "report_batch_size": 16}).execute(stages)

    live = [i for i in range(24) if i not in skipped]
    all_values = {i * 10 + j for i in live for j in range(3)}
    assert sorted(t.data for t in outputs) == sorted(all_values - dropped - {bad})
    assert tracker.closed == [True]

    terminal = tracker.tasks
    # Every task that reached the last stage ended exactly once, and only there.
    assert len(terminal) == len(all_values)
    assert len({t.task_id for t in terminal}) == len(terminal)
    real = [t for t in terminal if not is_sentinel(t)]
    assert id_value_pairs(real) == id_value_pairs(outputs)

    # Filtered tasks arrive as NoneTask sentinels; the failure as a FailedTask, not returned.
    none_tasks = [t for t in terminal if isinstance(t, NoneTask)]
    failed = [t for t in terminal if isinstance(t, FailedTask)]
    assert len(none_tasks) == len(dropped)
    assert {next(iter(t._lineage)) for t in none_tasks} == {source_of(v // 10) for v in dropped}
    assert len(failed) == 1
    assert failed[0].stage_name == "filter_fail_or_pass"
    assert "cannot handle 31" in failed[0].reason
    assert set(failed[0]._lineage) == {source_of(bad // 10)}
    assert not any(isinstance(t, FailedTask | NoneTask) for t in outputs)

    # Credit: per source, real outputs + sentinels return exactly one.
    credit: dict[str, Credit] = {}
    for task in terminal:
        for source, part in task._lineage.items():
            credit[source] = credit[source] + part if source in credit else part
    assert set(credit) == {source_of(i) for i in live}
    assert all(value == Credit.one() for value in credit.values())

    # Skipped sources never left the source stage.
    assert not {v // 10 for v in (t.data for t in real)} & skipped

    # Streaming: several batches, the first one on the driver before the last output was made.
    assert len(tracker.batches) > 1
    first_arrival = tracker.batches[0][0]
    last_made = max(t._metadata["sink_at"] for t in real)
    assert first_arrival < last_made
    assert_no_stage_workers_left()


def test_tracked_run_surfaces_setup_failure(ray_session: Any) -> None:
    tracker = RecordingTracker()
    with pytest.raises(StageError, match=r"stage 'failing_setup' failed") as info:
        TrackedXenna(tracker).execute([EmitNumbers(count=3), FailingSetup()])
    assert isinstance(info.value.__cause__, OSError)
    assert tracker.closed == [False]
    assert_no_stage_workers_left()


class FailingTracker(RecordingTracker):
    """Its first report fails, like a ledger that is gone for good."""

    def on_terminal(self, tasks: list[Task]) -> None:
        super().on_terminal(tasks)
        raise ConnectionError("ledger unreachable")


def test_tracked_run_stops_when_reporting_fails(ray_session: Any) -> None:
    tracker = FailingTracker()
    stages = [EmitNumbers(count=40), SlowStamp(seconds=0.1), FailOn(value=-1, name="filter_fail_or_pass")]
    with pytest.raises(ConnectionError, match="ledger unreachable"):
        TrackedXenna(tracker, config={"report_batch_size": 1}).execute(stages)
    assert len(tracker.batches) == 1
    assert tracker.closed == [False]
    assert_no_stage_workers_left()


# -- without the session Ray ---------------------------------------------------------------------

_OWN_RAY_SCRIPT = """
import json, sys
import ray
from loguru import logger
from nemo_curator.backends.xenna import XennaExecutor
from tests.stages import EmitNumbers, FanOut, AddOne

logger.add(sys.argv[1], level="INFO", format="{name}|{message}")  # the user's own log file
logger.info("before the run")
seen = {}

class Probe(XennaExecutor):
    def _execute(self, plan, initial_tasks, tracker):
        node = ray._private.worker.global_worker.node
        seen["session_dir"] = node.get_session_dir_path()
        seen["started_here"] = bool(node.head)
        return super()._execute(plan, initial_tasks, tracker)

out = Probe().execute([EmitNumbers(count=4), FanOut(n=2), AddOne()])
logger.info("after the run")
print(json.dumps({
    "values": sorted(t.data for t in out),
    "session_dir": seen["session_dir"],
    "started_here": seen["started_here"],
    "ray_initialized_after": ray.is_initialized(),
    "resumability_imported": [m for m in sys.modules if m.startswith("nemo_curator") and "resumability" in m],
}))
"""


def _processes_of_session(session_dir: str) -> list[str]:
    import psutil

    name = os.path.basename(session_dir.rstrip("/"))
    found = []
    for proc in psutil.process_iter(["pid", "name", "cmdline"]):
        try:
            cmdline = " ".join(proc.info["cmdline"] or [])
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if name in cmdline:
            found.append(f"{proc.info['pid']} {proc.info['name']}")
    return found


def test_starts_and_stops_its_own_ray_without_ray_address(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    user_log = tmp_path / "user.log"
    result = subprocess.run(
        [sys.executable, "-c", _OWN_RAY_SCRIPT, str(user_log)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["values"] == sorted(i * 10 + j + 1 for i in range(4) for j in range(2))
    assert report["started_here"] is True
    assert report["ray_initialized_after"] is False
    # checkpoint=None never touches resumability code.
    assert report["resumability_imported"] == []
    # Importing cosmos-xenna during the run did not remove the user's loguru sink.
    assert [line for line in user_log.read_text().splitlines() if line.startswith("__main__|")] == [
        "__main__|before the run",
        "__main__|after the run",
    ]
    deadline = time.monotonic() + 15
    left = _processes_of_session(report["session_dir"])
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = _processes_of_session(report["session_dir"])
    assert left == [], f"processes of the run's Ray still alive: {left}"
