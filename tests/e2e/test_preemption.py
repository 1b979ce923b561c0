"""A preemption signal mid-run, then a resume: nothing written is redone, the driver exits in time.

Real Ray, real executors, real LMDB; the job runs as a subprocess that starts its own Ray, and
the signal goes to its driver process only (as SLURM's ``--signal=B:...`` or ``kill PID`` do).
Each executor gets another signal, so that the three handled ones are all exercised.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from nemo_curator.resumability.inspect import checkpoint_status
from tests.e2e import job
from tests.e2e.test_kill_resume import DOCS, EXECUTORS, _new_attempts, kill_tree, make_cfg, output_files, start_job

FILES = 8
GRACE_S = 4.0
FLUSH_S = 5.0
#: What a stop costs beyond the grace period and the flush: the executor releasing its workers
#: and the job's own Ray shutting down (measured: 3-8 s on 2 busy cores).
SHUTDOWN_ALLOWANCE_S = 20.0
SIGNALS = {"xenna": signal.SIGTERM, "ray_data": signal.SIGINT, "ray_actor_pool": signal.SIGUSR1}


def source_files(log_dir: str) -> dict[str, list[str]]:
    """Source id -> the input files of its file group, from the reader's markers."""
    files: dict[str, list[str]] = {}
    for name in os.listdir(log_dir):
        if name.count(".") >= 2:
            files[name.split(".")[0]] = Path(log_dir, name).read_text().split()
    return files


def fully_written(cfg: dict[str, Any]) -> set[str]:
    """Sources all of whose records are in final output files."""
    written = set(job.written_records(cfg["output_dir"]))
    done = set()
    for sid, paths in source_files(cfg["log_dir"]).items():
        rows = [json.loads(line)["id"] for p in paths for line in Path(p).read_text().splitlines() if line.strip()]
        if all(r in written for i, r in enumerate(rows) if i % 3 != 2):
            done.add(sid)
    return done


@pytest.mark.slow
@pytest.mark.parametrize("executor", EXECUTORS)
def test_signal_mid_run_then_resume_redoes_only_unfinished_sources(
    ray_session: Any, tmp_path: Path, executor: str
) -> None:
    signum = SIGNALS[executor]
    job.write_inputs(str(tmp_path / "in"), FILES, DOCS)
    cfg = make_cfg(
        tmp_path,
        executor,
        executor_config={
            "preemption_grace_s": GRACE_S,
            "preemption_flush_s": FLUSH_S,
            "preemption_signals": ["SIGTERM", "SIGINT", "SIGUSR1"],
        },
    )
    stall = Path(cfg["log_dir"], "stall")
    proc = start_job(cfg)
    try:
        deadline = time.monotonic() + 240
        # An odd number of outputs: a source has one of its two written, the other one in flight.
        while (n := len(output_files(cfg))) < 3 or n % 2 == 0:
            assert proc.poll() is None, proc.stdout.read().decode(errors="replace")[-4000:] if proc.stdout else ""
            assert time.monotonic() < deadline, "the job did not reach the signal point in time"
            time.sleep(0.01)
        # From now on no task starts the slow stage: what is in it finishes during the grace
        # period, and when the grace period ends nothing is being written.
        stall.touch()
        written_at_signal = fully_written(cfg)
        os.kill(proc.pid, signum)
        signalled = time.monotonic()
        out, _ = proc.communicate(timeout=GRACE_S + FLUSH_S + SHUTDOWN_ALLOWANCE_S + 60)
        exited_after = time.monotonic() - signalled
    finally:
        kill_tree(proc.pid)
        proc.wait(timeout=30)
    log = out.decode(errors="replace")
    assert proc.returncode == 128 + signum, log[-4000:]
    assert exited_after < GRACE_S + FLUSH_S + SHUTDOWN_ALLOWANCE_S, f"exited {exited_after:.1f} s after the signal"
    assert exited_after > GRACE_S - 0.5, "the run did not go on for the grace period"

    written = fully_written(cfg)
    completed = set(checkpoint_status(cfg["checkpoint"])["completed"])
    assert written <= completed, f"written but not recorded complete: {sorted(written - completed)}"
    assert completed <= written, f"recorded complete but not written: {sorted(completed - written)}"
    print(
        f"{executor}: {len(written_at_signal)} sources written at the signal, {len(written)} at exit, "
        f"exit {exited_after:.1f} s after the signal"
    )

    stall.unlink()
    attempts_before = job.processed_sources(cfg["log_dir"])
    job.run({**cfg, "executor_config": {}})
    redone = _new_attempts(attempts_before, job.processed_sources(cfg["log_dir"]))
    assert not (redone & written), f"sources written before the exit were redone: {sorted(redone & written)}"
    assert job.written_records(cfg["output_dir"]) == job.expected_records(cfg["input_dir"])
