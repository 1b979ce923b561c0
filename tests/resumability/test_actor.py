"""The ledger actor on a real Ray: acknowledged reports, worker queries, restarts, stale actors, errors."""

from __future__ import annotations

import random
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import ray
from ray.exceptions import RayActorError

from nemo_curator.resumability.actor import (
    NAMESPACE,
    LedgerHandle,
    LedgerSourceFilter,
    _start_actor,
    ledger_actor_name,
)
from nemo_curator.resumability.errors import CheckpointError, FingerprintMismatchError, LedgerUnavailableError
from nemo_curator.resumability.fingerprint import pipeline_fingerprint
from nemo_curator.resumability.inspect import checkpoint_status
from nemo_curator.resumability.liveness import process_start_time, this_process
from nemo_curator.resumability.report import Report, ReportBatch
from nemo_curator.resumability.status import LedgerStatus
from nemo_curator.tasks.credit import Credit
from tests.ray_helpers import wait_actor_dead
from tests.resumability.fingerprint_stages import PlainStage, ScoreFilter
from tests.resumability.trees import source_id


def _reports(n_sources: int, seed: int = 3, first: int = 0) -> dict[str, list[Report]]:
    rng = random.Random(seed)
    out = {}
    for i in range(first, first + n_sources):
        sid = source_id(i)
        out[sid] = [Report(sid, f"{sid}_{j}", c) for j, c in enumerate(Credit.one().split(rng.randint(1, 4)))]
    return out


def _restarted_status(handle: LedgerHandle, old_pid: int) -> LedgerStatus:
    """The status once the actor runs in a new process (``ray.kill`` acts asynchronously)."""
    deadline = time.monotonic() + 60
    while True:
        status = handle.status()
        if status.actor_pid != old_pid or time.monotonic() > deadline:
            return status
        time.sleep(0.05)


def _actor_exists(name: str) -> bool:
    try:
        ray.get_actor(name, namespace=NAMESPACE)
    except ValueError:
        return False
    return True


@ray.remote(num_cpus=0)
def ask_from_worker(source_filter: LedgerSourceFilter, ids: list[str]) -> list[str]:
    return sorted(source_filter.completed(ids))


def test_reports_are_acknowledged_after_commit_and_workers_can_query(ray_session: Any, tmp_path: Path) -> None:
    by_source = _reports(30)
    ids = sorted(by_source)
    with LedgerHandle.open(tmp_path, "fp-ack") as handle:
        assert handle.name == ledger_actor_name(tmp_path)
        half = [r for sid in ids[:15] for r in by_source[sid]] + [by_source[ids[15]][0]]
        ack = handle.report(half)
        assert ack.newly_completed == 15 and ack.duplicate_batch is False
        # Acknowledged means committed: a read-only look at the directory already shows it.
        on_disk = checkpoint_status(tmp_path)
        assert set(on_disk["completed"]) == set(ids[:15])
        # The source stage's question, asked from a Ray worker through the picklable filter. The
        # checkpoint was fresh when the run started: nothing is complete but what this run completes,
        # so the filter answers without asking (it only sends the count), see the next test.
        assert handle.fresh
        assert ray.get(ask_from_worker.remote(handle.source_filter(), ids)) == []
        assert handle.completed(ids) == set(ids[:15])
        status = _wait_for(handle.status, lambda s: s.sources_seen == 2 * len(ids))
        assert status.sources_seen == 2 * len(ids) and status.sources_skipped == 15
        assert status.in_flight_sources == (1 if len(by_source[ids[15]]) > 1 else 0)
        rest = [r for sid in ids[15:] for r in by_source[sid]]
        assert handle.report(ReportBatch.from_reports(rest)).completed_sources == 30
        final = handle.close()
    assert final is not None and final.completed_sources == 30 and final.anomalies == 0
    assert not _actor_exists(handle.name)
    assert handle.close() is None
    with pytest.raises(LedgerUnavailableError, match="closed"):
        handle.report(half)
    assert checkpoint_status(tmp_path)["completed_sources"] == 30
    with LedgerHandle.open(tmp_path, "fp-ack") as again:
        assert not again.fresh
        assert ray.get(ask_from_worker.remote(again.source_filter(), ids)) == ids
        assert again.status().sources_skipped == 30


def test_a_fresh_checkpoint_defers_the_actor_and_its_filter_asks_nothing(ray_session: Any, tmp_path: Path) -> None:
    """The fixed cost of a checkpoint (issue 13): on a fresh checkpoint the ledger actor can start
    after the executor's workers, and the source stage's filter never waits for it."""
    by_source = _reports(6)
    ids = sorted(by_source)
    handle = LedgerHandle.open(tmp_path, "fp-defer", wait=False, defer_start=True)
    try:
        assert handle.fresh and not handle.started
        assert not _actor_exists(handle.name)
        # No actor yet: the filter answers (nothing is complete); its count waits for the actor.
        assert ray.get(ask_from_worker.remote(handle.source_filter(), ids)) == []
        assert not _actor_exists(handle.name)
        handle.start()
        assert handle.started and _actor_exists(handle.name)
        assert handle.report([r for sid in ids for r in by_source[sid]]).completed_sources == 6
        assert _wait_for(handle.status, lambda s: s.sources_seen == 6).sources_seen == 6
    finally:
        handle.close()
    assert checkpoint_status(tmp_path)["completed_sources"] == 6
    # Not fresh any more: the actor starts at once whatever the caller asked, and the filter asks it.
    with LedgerHandle.open(tmp_path, "fp-defer", wait=False, defer_start=True) as again:
        assert not again.fresh and again.started
        assert ray.get(ask_from_worker.remote(again.source_filter(), ids)) == ids


def test_a_deferred_actor_that_was_never_needed_is_never_started(ray_session: Any, tmp_path: Path) -> None:
    handle = LedgerHandle.open(tmp_path, "fp-unused", wait=False, defer_start=True)
    assert not handle.started
    assert handle.close() is None
    handle.start()  # after close: still nothing
    assert not handle.started and not _actor_exists(handle.name)
    with LedgerHandle.open(tmp_path, "fp-unused") as again:
        assert again.fresh, "a run that reported nothing should leave the checkpoint fresh"


def _wait_for(get: Any, done: Any, timeout_s: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while not done(value := get()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return value


def test_a_resent_batch_is_applied_once(ray_session: Any, tmp_path: Path) -> None:
    by_source = _reports(5)
    batch = ReportBatch.from_reports([r for rs in by_source.values() for r in rs])
    with LedgerHandle.open(tmp_path, "fp-resend") as handle:
        first = ray.get(handle.actor.report.remote(batch, "sender-x", 1))
        again = ray.get(handle.actor.report.remote(batch, "sender-x", 1))
        assert first.duplicate_batch is False and first.completed_sources == 5
        assert again.duplicate_batch is True and again.anomalies == 0 and again.reports == len(batch)


def test_actor_killed_mid_stream_restarts_from_the_durable_record_nothing_lost_or_double_counted(
    ray_session: Any, tmp_path: Path
) -> None:
    by_source = _reports(300, seed=9)
    reports = [r for rs in by_source.values() for r in rs]
    random.Random(4).shuffle(reports)
    batches = [reports[i : i + 25] for i in range(0, len(reports), 25)]
    with LedgerHandle.open(tmp_path, "fp-kill") as handle:
        third = len(batches) // 3
        for batch in batches[:third]:
            handle.report(batch)
        before = handle.status()
        assert before.in_flight_sources > 0
        ray.kill(handle.actor, no_restart=False)
        after = _restarted_status(handle, before.actor_pid)
        assert after.actor_restarted is True and after.actor_pid != before.actor_pid
        assert after.in_flight_sources == before.in_flight_sources
        assert after.completed_sources == before.completed_sources
        # Kill it again while reports are streaming: in-flight calls are retried and deduplicated.
        killer = threading.Thread(target=lambda: (time.sleep(0.3), ray.kill(handle.actor, no_restart=False)))
        killer.start()
        for batch in batches[third:]:
            ack = handle.report(batch)
            time.sleep(0.005)
        killer.join()
        # Resending an already acknowledged batch is harmless too.
        handle.report(batches[-1])
        final = handle.status()
        assert final.actor_restarted is True and final.actor_pid != after.actor_pid
    assert ack.completed_sources == 300
    assert final.completed_sources == 300 and final.in_flight_sources == 0
    assert final.anomalies == 0 and final.failed_sources == 0
    status = checkpoint_status(tmp_path)
    assert set(status["completed"]) == set(by_source) and status["failed"] == {}


def test_actor_gone_for_good_is_a_loud_error(ray_session: Any, tmp_path: Path) -> None:
    LedgerHandle.open(tmp_path, "fp-gone").close()  # not fresh: the source filter asks the actor
    handle = LedgerHandle.open(tmp_path, "fp-gone", timeout_s=20)
    source_filter = handle.source_filter()
    handle.report(_reports(1)[source_id(0)])
    ray.kill(handle.actor, no_restart=True)
    wait_actor_dead(handle.actor)  # ray.kill acts asynchronously: a call right after may still run
    with pytest.raises(LedgerUnavailableError, match="rerun"):
        handle.report(_reports(1, first=1)[source_id(1)])
    with pytest.raises(LedgerUnavailableError):
        source_filter.completed([source_id(0)])
    handle.close()
    assert checkpoint_status(tmp_path)["completed"] == [source_id(0)]


def _fake_leftover(tmp_path: Path, owner: dict[str, Any]) -> Any:
    """A live ledger actor for ``tmp_path`` that claims to belong to ``owner``'s run."""
    resolved = tmp_path.resolve()
    (resolved / "ledger").mkdir(parents=True, exist_ok=True)
    args = (str(resolved), owner["writer_id"], "fp-stale", None, owner)
    actor = _start_actor(
        ledger_actor_name(resolved),
        resolved,
        args=args,
        max_restarts=0,
        node_id=ray.get_runtime_context().get_node_id(),
    )
    ray.get(actor.status.remote())
    return actor


def test_a_leftover_actor_of_a_dead_run_is_replaced(ray_session: Any, tmp_path: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    owner = {**this_process(), "pid": dead.pid, "pid_start": None, "writer_id": "dead-run"}
    leftover = _fake_leftover(tmp_path, owner)
    with LedgerHandle.open(tmp_path, "fp-stale") as handle:
        assert handle.status().writer_id != "dead-run"
        with pytest.raises(RayActorError):
            ray.get(leftover.status.remote(), timeout=30)


def test_a_live_run_on_the_same_checkpoint_is_refused(ray_session: Any, tmp_path: Path) -> None:
    other = subprocess.Popen(["sleep", "120"])
    try:
        owner = {**this_process(), "pid": other.pid, "pid_start": process_start_time(other.pid), "writer_id": "live"}
        leftover = _fake_leftover(tmp_path, owner)
        with pytest.raises(CheckpointError, match=rf"is in use by another run \(pid {other.pid}"):
            LedgerHandle.open(tmp_path, "fp-stale")
        assert ray.get(leftover.status.remote()).writer_id == "live"  # untouched
        ray.kill(leftover, no_restart=True)
    finally:
        other.kill()
        other.wait()


def test_the_same_checkpoint_twice_in_one_process_is_refused(ray_session: Any, tmp_path: Path) -> None:
    with LedgerHandle.open(tmp_path, "fp-twice"), pytest.raises(CheckpointError, match="in use by another run"):
        LedgerHandle.open(tmp_path, "fp-twice")
    LedgerHandle.open(tmp_path, "fp-twice").close()  # free again once closed


def test_pipeline_change_is_refused_in_the_driver_unless_allowed(ray_session: Any, tmp_path: Path) -> None:
    old = [ScoreFilter(min_score=0.5), PlainStage(factor=2)]
    new = [ScoreFilter(min_score=0.7), PlainStage(factor=2)]
    with LedgerHandle.open(tmp_path, old) as handle:
        handle.report([Report(source_id(1), source_id(1), Credit.one())])
    with pytest.raises(FingerprintMismatchError) as err:
        LedgerHandle.open(tmp_path, new)
    message = str(err.value)
    assert pipeline_fingerprint(old) in message and pipeline_fingerprint(new) in message
    assert "min_score" in message and "allow_fingerprint_change=True" in message
    assert not _actor_exists(ledger_actor_name(tmp_path))  # refused before any actor started
    with LedgerHandle.open(tmp_path, new, allow_fingerprint_change=True) as handle:
        assert handle.completed([source_id(1)]) == {source_id(1)}
    # The override is recorded, and the checkpoint now belongs to the new pipeline.
    writers = checkpoint_status(tmp_path)["writers"]
    assert writers[-1]["fingerprint"] == pipeline_fingerprint(new)
    assert writers[-1]["overrode_fingerprint"] == pipeline_fingerprint(old)
    LedgerHandle.open(tmp_path, new).close()


def test_bad_checkpoint_paths_fail_in_the_driver_before_any_actor(ray_session: Any, tmp_path: Path) -> None:
    target = tmp_path / "ckpt"
    target.write_text("not a directory")
    with pytest.raises(CheckpointError, match="is a file"):
        LedgerHandle.open(target, "fp-bad")
    assert not _actor_exists(ledger_actor_name(target))
    (tmp_path / "ok" / "ledger").mkdir(parents=True)
    (tmp_path / "ok" / "ledger" / "w.lmdb").write_bytes(b"garbage" * 100)
    with pytest.raises(CheckpointError, match="older version"):
        LedgerHandle.open(tmp_path / "ok", "fp-bad")
    assert not _actor_exists(ledger_actor_name(tmp_path / "ok"))
