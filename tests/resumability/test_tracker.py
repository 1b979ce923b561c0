"""The driver-side tracker on a real Ray and real LMDB: reports commit while the run goes on."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import ray

from nemo_curator.resumability.errors import LedgerUnavailableError
from nemo_curator.resumability.inspect import checkpoint_status
from nemo_curator.resumability.tracker import LedgerTracker
from nemo_curator.tasks import NoneTask, Task
from nemo_curator.tasks.credit import Credit
from tests.ray_helpers import wait_actor_dead
from tests.resumability.fingerprint_stages import PlainStage
from tests.resumability.trees import source_id

STAGES = [PlainStage(factor=2)]


def _terminal(sid: str, parts: int) -> list[Task]:
    """``parts`` terminal tasks (filtered-slot sentinels, the simplest terminal task) sharing ``sid``'s credit."""
    tasks: list[Task] = []
    for j, credit in enumerate(Credit.one().split(parts)):
        task = NoneTask(dataset_name="")
        task.task_id = f"{sid}_{j}"
        task._lineage = {sid: credit}
        tasks.append(task)
    return tasks


def _completed_on_disk(path: Path) -> set[str]:
    return set(checkpoint_status(path)["completed"])


def test_reports_commit_during_the_run_without_flush_or_close(ray_session: Any, tmp_path: Path) -> None:
    tracker = LedgerTracker.open(tmp_path, STAGES, show_progress_bar=False)
    try:
        ids = [source_id(i) for i in range(40)]
        tracker.handle.wait_ready()
        time.sleep(0.2)  # the sender is idle, waiting on an empty buffer
        # Fewer reports than a full batch, arriving slowly: the time bound sends them.
        for sid in ids[:20]:
            tracker.on_terminal(_terminal(sid, 3))
            time.sleep(0.01)
        # The sender commits on its own: nothing here waits for the ledger.
        deadline = time.monotonic() + 30
        while _completed_on_disk(tmp_path) != set(ids[:20]):
            assert time.monotonic() < deadline, "reports were not committed while the run was going"
            time.sleep(0.05)
        # Half a source: never complete, whatever the timing.
        tracker.on_terminal(_terminal(ids[20], 2)[:1])
        tracker.flush()
        assert _completed_on_disk(tmp_path) == set(ids[:20])
        for sid in ids[21:]:
            tracker.on_terminal(_terminal(sid, 1))
        calls_before_close = tracker.counts.ledger_calls
    finally:
        tracker.close(success=True)
    assert _completed_on_disk(tmp_path) == set(ids[:20]) | set(ids[21:])
    status = checkpoint_status(tmp_path)
    assert status["in_flight_sources"] == 1
    # Calls are batches of terminal outputs: never more than the on_terminal calls (40).
    assert 1 <= calls_before_close <= tracker.counts.ledger_calls <= 40
    assert tracker.counts.reports_sent == 20 * 3 + 1 + 19
    assert tracker.counts.completed_this_run == 39


def test_a_burst_of_terminal_tasks_is_sent_in_few_calls(ray_session: Any, tmp_path: Path) -> None:
    tracker = LedgerTracker.open(tmp_path, STAGES, show_progress_bar=False, min_interval_s=0.5)
    try:
        for i in range(500):
            tracker.on_terminal(_terminal(source_id(i), 2))
    finally:
        tracker.close(success=True)
    assert len(_completed_on_disk(tmp_path)) == 500
    # One call per min_interval_s at most while the burst lasts, plus the final one.
    assert tracker.counts.ledger_calls <= 10


def test_a_fresh_checkpoints_ledger_starts_late_but_surely(ray_session: Any, tmp_path: Path) -> None:
    """Deferred (issue 13's fixed cost), the ledger of a fresh checkpoint still starts: at the first
    report, or ``defer_ledger_s`` after the open when no report and no ``workers_started`` come."""
    by_report = LedgerTracker.open(tmp_path / "a", STAGES, show_progress_bar=False, defer_ledger_s=3600.0)
    assert not by_report.handle.started
    by_report.on_terminal(_terminal(source_id(0), 1))
    _wait_until(lambda: by_report.handle.started)
    by_report.flush()
    by_report.close(success=True)
    assert checkpoint_status(tmp_path / "a")["completed"] == [source_id(0)]

    by_clock = LedgerTracker.open(tmp_path / "b", STAGES, show_progress_bar=False, defer_ledger_s=0.2)
    _wait_until(lambda: by_clock.handle.started)
    by_clock.close(success=True)

    by_executor = LedgerTracker.open(tmp_path / "c", STAGES, show_progress_bar=False, defer_ledger_s=3600.0)
    by_executor.workers_started()
    assert by_executor.handle.started
    by_executor.close(success=True)

    # Closed (or preempted) before anything was reported: no actor, no record, no error.
    unused = LedgerTracker.open(tmp_path / "d", STAGES, show_progress_bar=False, defer_ledger_s=3600.0)
    unused.close(success=False, timeout_s=5.0)
    assert not unused.handle.started


def _wait_until(done: Any, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_dead_ledger_fails_the_run_loudly_and_records_nothing_false(ray_session: Any, tmp_path: Path) -> None:
    tracker = LedgerTracker.open(tmp_path, STAGES, show_progress_bar=False)
    tracker.on_terminal(_terminal(source_id(0), 1))
    tracker.flush()
    ray.kill(tracker.handle.actor, no_restart=True)
    wait_actor_dead(tracker.handle.actor)
    tracker.on_terminal(_terminal(source_id(1), 2)[:1])
    with pytest.raises(LedgerUnavailableError):
        tracker.flush()
    with pytest.raises(LedgerUnavailableError):
        tracker.on_terminal(_terminal(source_id(2), 1))
    with pytest.raises(LedgerUnavailableError):
        tracker.close(success=False)
    status = checkpoint_status(tmp_path)
    assert status["completed"] == [source_id(0)]


def test_close_with_a_deadline_returns_in_time_from_a_stuck_ledger(ray_session: Any, tmp_path: Path) -> None:
    """A preempted run's close: the ledger process is frozen (SIGSTOP), so nothing is acknowledged."""
    tracker = LedgerTracker.open(tmp_path, STAGES, show_progress_bar=False)
    tracker.on_terminal(_terminal(source_id(0), 1))
    tracker.flush()
    pid = tracker.handle.status().actor_pid
    os.kill(pid, signal.SIGSTOP)
    try:
        tracker.on_terminal(_terminal(source_id(1), 1))
        start = time.monotonic()
        tracker.close(success=False, timeout_s=1.0)
        took = time.monotonic() - start
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    assert took < 1.0 + 2.0 + 2.0, f"close took {took:.1f} s"
    wait_actor_dead(tracker.handle.actor)
    # What was acknowledged is kept. The unacknowledged report may still have been applied: the
    # SIGCONT above can let the actor run it before Ray's kill lands. That is a true completion (the
    # source's task did reach the end), so either outcome keeps the contract; nothing else may appear.
    done = _completed_on_disk(tmp_path)
    assert source_id(0) in done and done <= {source_id(0), source_id(1)}


def _ledger_actors() -> int:
    from ray.util.state import list_actors

    return len(list_actors(filters=[("class_name", "=", "LedgerActor"), ("state", "=", "ALIVE")], limit=10_000))


def test_a_fresh_checkpoints_ledger_can_live_in_the_driver(ray_session: Any, tmp_path: Path) -> None:
    """``ledger_in_driver``: a fresh checkpoint's ledger is an object of the driver, not a Ray actor; the
    record it writes is the same, and a resume (no longer fresh) gets an actor again."""
    from nemo_curator.resumability.actor import LedgerActor

    before = _ledger_actors()
    tracker = LedgerTracker.open(tmp_path, STAGES, show_progress_bar=False, ledger_in_driver=True)
    assert tracker.handle.in_driver and not tracker.source_filter.count
    tracker.workers_started()  # not made on the executor's thread: the first report makes it
    assert not tracker.handle.started
    tracker.on_terminal(_terminal(source_id(0), 1) + _terminal(source_id(1), 3)[:2])
    tracker.flush()
    assert isinstance(tracker.handle.actor, LedgerActor)
    assert _ledger_actors() == before
    assert tracker.handle.status().completed_sources == 1
    tracker.close(success=True)
    status = checkpoint_status(tmp_path)
    assert status["completed"] == [source_id(0)] and status["in_flight_sources"] == 1

    resumed = LedgerTracker.open(tmp_path, STAGES, show_progress_bar=False, ledger_in_driver=True)
    assert not resumed.handle.in_driver and not resumed.handle.fresh
    assert resumed.source_filter.completed([source_id(0), source_id(1)]) == {source_id(0)}
    resumed.on_terminal(_terminal(source_id(1), 3))  # an incomplete source is redone whole
    resumed.close(success=True)
    assert checkpoint_status(tmp_path)["completed"] == sorted([source_id(0), source_id(1)])


#: Run in a fresh interpreter joined to the session's Ray: what a driver imports up to its first work.
_FRESH_DRIVER = """
import sys
import ray

ray.init(address=sys.argv[1], log_to_driver=False)
before = set(sys.modules)
from nemo_curator.resumability.tracker import LedgerTracker
from nemo_curator.tasks import NoneTask
from nemo_curator.tasks.credit import Credit
from tests.resumability.fingerprint_stages import PlainStage

tracker = LedgerTracker.open(sys.argv[2], [PlainStage(factor=2)], show_progress_bar=False, ledger_in_driver=True)
tracker.workers_started()
heavy = [m for m in ("lmdb", "numpy", "nemo_curator.resumability.store", "nemo_curator.resumability.ledger",
                     "nemo_curator.resumability.keyset", "nemo_curator.resumability.durable")
         if m in sys.modules and m not in before]
assert not heavy, f"loaded before the first report: {heavy}"
task = NoneTask(dataset_name="")
task.task_id = "t0"
task._lineage = {f"{7:032x}": Credit.one()}
tracker.on_terminal([task])
tracker.flush()
assert "nemo_curator.resumability.store" in sys.modules
tracker.close(success=True)
print("ok")
"""


def test_a_fresh_checkpoints_driver_loads_no_ledger_module_before_the_first_report(
    ray_session: Any, tmp_path: Path
) -> None:
    """The path to the first work on a fresh checkpoint imports neither LMDB, numpy nor the ledger's
    modules (a quarter of a second of CPU on 2 cores): the in-driver ledger loads them in the
    sender thread at the first report, and what it records is then the same."""
    address = ray_session.get_runtime_context().gcs_address
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", _FRESH_DRIVER, address, str(tmp_path / "ckpt")],
        cwd=root,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stdout + done.stderr
    assert checkpoint_status(tmp_path / "ckpt")["completed"] == [f"{7:032x}"]


def test_an_executor_runs_a_fresh_checkpoint_without_a_ledger_actor(ray_session: Any, tmp_path: Path) -> None:
    from loguru import logger

    from nemo_curator.backends.ray_actor_pool import RayActorPoolExecutor
    from tests.stages import expected_feature_values, feature_pipeline

    messages: list[str] = []
    sink = logger.add(lambda m: messages.append(str(m)), level="INFO")
    try:
        outputs = feature_pipeline().run(RayActorPoolExecutor(checkpoint=str(tmp_path)))
    finally:
        logger.remove(sink)
    assert sorted(t.data for t in outputs) == expected_feature_values()
    assert any("(ledger in the driver)" in m for m in messages), messages
    assert checkpoint_status(tmp_path)["completed_sources"] == 12
    assert feature_pipeline().run(RayActorPoolExecutor(checkpoint=str(tmp_path))) == []
