"""Worker deaths, a killed ledger actor, and no checkpoint (joining a cluster: test_clusters.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from nemo_curator.resumability.inspect import checkpoint_status
from tests.e2e import job
from tests.e2e.test_kill_resume import EXECUTORS, FILES, make_cfg


@pytest.mark.parametrize("executor", EXECUTORS)
def test_worker_killed_mid_run_is_retried_exactly(ray_session, tmp_path: Path, executor: str) -> None:
    cfg = make_cfg(tmp_path, executor, slow_s=0.0, crash_on="part-0004.jsonl")
    cfg["executor_config"] = {"max_retries": 3} if executor != "ray_data" else {}
    job.run(cfg)
    assert Path(cfg["log_dir"], "crashed").exists(), "the injected crash did not happen"
    status = checkpoint_status(cfg["checkpoint"])
    assert status["completed_sources"] == FILES and status["failed_sources"] == 0, status
    assert job.written_records(cfg["output_dir"]) == job.expected_records(cfg["input_dir"])


@pytest.mark.parametrize("executor", EXECUTORS)
def test_ledger_actor_killed_mid_run_never_skips_wrongly(ray_session, tmp_path: Path, executor: str) -> None:
    from nemo_curator.resumability.errors import LedgerUnavailableError

    cfg = make_cfg(
        tmp_path,
        executor,
        slow_s=0.05,
        kill_ledger_on="part-0006.jsonl",
        executor_config={"ledger_in_driver": False},  # a ledger actor to kill (not one in the driver)
    )
    try:
        job.run(cfg)
        finished = True
    except LedgerUnavailableError:
        finished = False  # failing loudly is allowed; a wrong skip is not
    assert Path(cfg["log_dir"], "ledger_killed").exists(), "the ledger actor was not killed"
    status = checkpoint_status(cfg["checkpoint"])
    if finished:
        assert status["completed_sources"] == FILES, status
    # Whatever happened, a rerun finishes the job exactly.
    job.run(cfg)
    assert checkpoint_status(cfg["checkpoint"])["completed_sources"] == FILES
    assert job.written_records(cfg["output_dir"]) == job.expected_records(cfg["input_dir"])


@pytest.mark.parametrize("executor", EXECUTORS)
def test_checkpoint_off_starts_no_ledger(ray_session, tmp_path: Path, executor: str) -> None:
    from ray.util.state import list_actors

    def ledger_actors() -> int:
        return len(list_actors(filters=[("class_name", "=", "LedgerActor")], limit=10_000))

    before = ledger_actors()
    cfg = make_cfg(tmp_path, executor, slow_s=0.0, checkpoint=None)
    job.run(cfg)
    assert ledger_actors() == before
    assert job.written_records(cfg["output_dir"]) == job.expected_records(cfg["input_dir"])
