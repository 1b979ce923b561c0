"""Kill a checkpointed run's whole process tree, resume it, and compare with an uninterrupted run.

Real Ray, real cosmos-xenna, real LMDB, on each of the three executors.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from nemo_curator.backends import registry
from nemo_curator.resumability.inspect import checkpoint_status
from nemo_curator.stages.text.io.temp_files import writer_identity
from nemo_curator.utils.processes import kill_process_tree
from tests.e2e import job, matrix

REPO = Path(__file__).resolve().parents[2]
EXECUTORS = list(registry.EXECUTORS)
FILES = 12
DOCS = 30
OUTPUTS_PER_SOURCE = 2


def make_cfg(tmp_path: Path, executor: str, **extra: Any) -> dict[str, Any]:
    cfg = {
        "executor": executor,
        "input_dir": str(tmp_path / "in"),
        "output_dir": str(tmp_path / "out"),
        "log_dir": str(tmp_path / "log"),
        "checkpoint": str(tmp_path / "ckpt"),
        "slow_s": 0.3,
    }
    cfg.update(extra)
    os.makedirs(cfg["log_dir"], exist_ok=True)
    if not os.path.isdir(cfg["input_dir"]):
        job.write_inputs(cfg["input_dir"], FILES, DOCS)
    return cfg


def output_files(cfg: dict[str, Any]) -> list[str]:
    out = cfg["output_dir"]
    if not os.path.isdir(out):
        return []
    return sorted(n for n in os.listdir(out) if n.endswith(".jsonl") and not n.startswith("."))


def kill_tree(pid: int) -> None:
    kill_process_tree(pid)


def start_job(cfg: dict[str, Any], module: str = "tests.e2e.job") -> subprocess.Popen:
    """Run ``python -m <module> <cfg as JSON>`` in a new session (so its whole tree can be killed)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.Popen(
        [sys.executable, "-m", module, json.dumps(cfg)],
        cwd=REPO,
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def kill_when(proc: subprocess.Popen, reached: Callable[[], bool], timeout_s: float = 240, poll_s: float = 0.05) -> int:
    """SIGKILL ``proc``'s process tree once ``reached()`` is true (polled every ``poll_s``); return its PID.

    Fails the test if the job ends or the time runs out first; the tree is killed either way.
    """
    deadline = time.monotonic() + timeout_s
    try:
        while not reached():
            if proc.poll() is not None:
                out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
                pytest.fail(f"job ended (rc={proc.returncode}) before the kill point:\n{out[-4000:]}")
            if time.monotonic() > deadline:
                pytest.fail("job did not reach the kill point in time")
            time.sleep(poll_s)
    finally:
        kill_tree(proc.pid)
        proc.wait(timeout=30)
    return proc.pid


def run_and_kill(cfg: dict[str, Any], kill_at_outputs: int, timeout_s: float = 240) -> int:
    """Start the job, SIGKILL its process tree once ``kill_at_outputs`` outputs exist; return its PID."""
    return kill_when(start_job(cfg), lambda: len(output_files(cfg)) >= kill_at_outputs, timeout_s)


#: Midway on every executor. The early kill (nothing complete yet: all is redone) and the late one
#: (all but a few sources complete) vary only what the shared ledger holds at the kill, and the dedup
#: kill tests kill early (in ``hash``) and late (in ``remove``) by default: both run here with
#: NEMO_CURATOR_E2E_ALL=1 (tests/e2e/matrix.py).
KILL_CASES = [pytest.param(e, "midway", id=f"midway-{e}") for e in EXECUTORS] + [
    pytest.param(e, point, id=f"{point}-{e}", marks=pytest.mark.skipif(not matrix.FULL_MATRIX, reason=matrix.FULL_ONLY))
    for point in ("early", "late")
    for e in EXECUTORS
]


@pytest.mark.slow
@pytest.mark.parametrize(("executor", "point"), KILL_CASES)
def test_sigkill_then_resume_gives_exact_output(ray_session, tmp_path: Path, executor: str, point: str) -> None:
    cfg = make_cfg(tmp_path, executor)
    total_outputs = FILES * OUTPUTS_PER_SOURCE
    kill_at = {"early": 1, "midway": total_outputs // 2, "late": total_outputs - 3}[point]
    killed_pid = run_and_kill(cfg, kill_at)
    # What a writer killed between its temp write and its rename leaves. A kill rarely hits that
    # window, so one is planted: named as a writer process of the killed job on this host would.
    os.makedirs(cfg["output_dir"], exist_ok=True)
    interrupted = Path(cfg["output_dir"], f".x.jsonl.tmp-{writer_identity()}-{killed_pid}-{'0' * 16}")
    interrupted.write_text('{"half a rec')

    before = checkpoint_status(cfg["checkpoint"])
    done_before = set(before["completed"])
    attempts_before = job.processed_sources(cfg["log_dir"])

    assert job.run(cfg) >= 0
    after = checkpoint_status(cfg["checkpoint"])
    assert after["completed_sources"] == FILES, after
    assert after["failed_sources"] == 0
    assert job.written_records(cfg["output_dir"]) == job.expected_records(cfg["input_dir"])
    assert len(output_files(cfg)) == total_outputs
    assert sorted(os.listdir(cfg["output_dir"])) == output_files(cfg), "temp files of interrupted writes remain"

    attempts_resume = job.processed_sources(cfg["log_dir"])
    redone = _new_attempts(attempts_before, attempts_resume)
    assert not (redone & done_before), f"sources complete before the kill were redone: {redone & done_before}"

    # A third run on the complete checkpoint reads nothing and returns [].
    assert job.build_pipeline(cfg).run(job.make_executor(cfg)) == []
    assert job.processed_sources(cfg["log_dir"]) == attempts_resume


def _new_attempts(before: list[str], after: list[str]) -> set[str]:
    counts: dict[str, int] = {}
    for s in before:
        counts[s] = counts.get(s, 0) + 1
    new: set[str] = set()
    for s in after:
        if counts.get(s, 0) > 0:
            counts[s] -= 1
        else:
            new.add(s)
    return new


@pytest.mark.parametrize("executor", EXECUTORS)
def test_failed_sources_are_redone_next_run(ray_session, tmp_path: Path, executor: str) -> None:
    cfg = make_cfg(tmp_path, executor, slow_s=0.0, raise_on=["part-0003.jsonl"], fail_on=["part-0005.jsonl"])
    job.run(cfg)
    status = checkpoint_status(cfg["checkpoint"])
    assert status["completed_sources"] == FILES - 2
    assert status["failed_sources"] == 2
    reasons = " ".join(status["failed"].values())
    assert "injected failure" in reasons and "injected FailedTask" in reasons

    before = job.processed_sources(cfg["log_dir"])
    Path(cfg["log_dir"], "heal").touch()
    job.run(cfg)
    redone = _new_attempts(before, job.processed_sources(cfg["log_dir"]))
    assert redone == set(status["failed"])
    status = checkpoint_status(cfg["checkpoint"])
    assert status["completed_sources"] == FILES and status["failed_sources"] == 0
    assert job.written_records(cfg["output_dir"]) == job.expected_records(cfg["input_dir"])


@pytest.mark.parametrize("executor", matrix.executors_beyond_fastest())  # the source stage's planning: shared
def test_inputs_changed_between_runs(ray_session, tmp_path: Path, executor: str) -> None:
    cfg = make_cfg(tmp_path, executor, slow_s=0.0)
    job.run(cfg)
    first = job.processed_sources(cfg["log_dir"])
    assert len(first) == FILES

    os.remove(os.path.join(cfg["input_dir"], "part-0000.jsonl"))
    with open(os.path.join(cfg["input_dir"], "part-9999.jsonl"), "w") as fh:
        fh.write(json.dumps({"id": "new-0", "text": "a new file"}) + "\n")
    job.run(cfg)
    new = _new_attempts(first, job.processed_sources(cfg["log_dir"]))
    assert len(new) == 1, "only the new file's source should be processed"
    status = checkpoint_status(cfg["checkpoint"])
    assert status["completed_sources"] == FILES + 1  # the removed file's source stays recorded, unused
    assert "new-0" in job.written_records(cfg["output_dir"])


@pytest.mark.parametrize("executor", matrix.executors_beyond_fastest())  # refused before any backend runs
def test_changed_pipeline_is_refused(ray_session, tmp_path: Path, executor: str) -> None:
    from nemo_curator.resumability.checkpoint import FingerprintMismatchError

    cfg = make_cfg(tmp_path, executor, slow_s=0.0)
    job.run(cfg)
    changed = {**cfg, "extra_stage": True}
    with pytest.raises(FingerprintMismatchError, match="ckpt"):
        job.run(changed)
    # The explicit override reuses it: every source is already complete.
    overridden = {**changed, "executor_config": {"allow_pipeline_change": True}}
    assert job.run(overridden) == 0
