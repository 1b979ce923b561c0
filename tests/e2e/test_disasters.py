"""Worker deaths, a killed ledger actor, no checkpoint, and an existing cluster via RAY_ADDRESS."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nemo_curator.resumability.inspect import checkpoint_status
from tests.e2e import job
from tests.e2e.test_kill_resume import EXECUTORS, FILES, REPO, kill_tree, make_cfg


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


CLUSTER = """
import os, sys, time
import ray
from nemo_curator.backends.ray_runtime import start_local_ray
start_local_ray(num_cpus=4, dashboard=True)
print(ray.get_runtime_context().gcs_address, flush=True)
while True:
    time.sleep(1)
"""


@pytest.mark.slow
def test_joins_an_existing_cluster_via_ray_address(tmp_path: Path) -> None:
    """A cluster started beforehand: the job joins it, is killed, and resumes on it."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = str(REPO)
    # A new local Ray enables token authentication unless told otherwise (Ray 2.60); the job
    # joins without a token unless RAY_AUTH_MODE=token. Both sides the same:
    env["RAY_AUTH_MODE"] = "disabled"
    cluster = subprocess.Popen(
        [sys.executable, "-c", CLUSTER], cwd=REPO, env=env, stdout=subprocess.PIPE, start_new_session=True
    )
    try:
        assert cluster.stdout is not None
        address = cluster.stdout.readline().decode().strip()
        assert ":" in address, address
        cfg = make_cfg(tmp_path, "ray_actor_pool", slow_s=0.0)
        run_env = {**env, "RAY_ADDRESS": address}
        for _ in range(2):  # the second run finds everything complete
            out = subprocess.run(
                [sys.executable, "-m", "tests.e2e.job", json.dumps(cfg)],
                cwd=REPO,
                env=run_env,
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        assert json.loads(out.stdout.strip().splitlines()[-1]) == {"outputs": 0}
        assert checkpoint_status(cfg["checkpoint"])["completed_sources"] == FILES
        assert job.written_records(cfg["output_dir"]) == job.expected_records(cfg["input_dir"])
        assert cluster.poll() is None, "joining must not stop the cluster"
    finally:
        kill_tree(cluster.pid)
        cluster.wait(timeout=30)
        time.sleep(0.5)
