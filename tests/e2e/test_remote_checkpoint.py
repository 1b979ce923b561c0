"""Checkpoints on object storage, end to end: a node move, and a store that is down, vanishes or lacks its bucket.

The checkpoint lives on a real S3-protocol server (moto's standalone server, a subprocess; see
``tests.s3_server``) reached through s3fs, as a user reaches S3. Jobs that get killed or must fail
run in a subprocess with their own Ray (``tests.e2e.job``); resumes run in this process.

- Node move (the fastest executor; all with NEMO_CURATOR_E2E_ALL=1): run with cache dir A, SIGKILL
  the whole process tree once some sources are durably complete, delete A, resume with cache dir B.
  Only the sources not complete at the kill are redone and the output equals an uninterrupted run's.
- The endpoint down at start, a missing bucket: a clear error naming the URL before any work.
- The endpoint unreachable mid-run (the server is frozen with SIGSTOP, so it keeps its data): the
  run fails loudly within a bounded time, and nothing it had acknowledged is lost.
Each is followed by a resume that completes exactly.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from nemo_curator.resumability.errors import CheckpointError
from nemo_curator.resumability.inspect import checkpoint_status, read_durable
from nemo_curator.resumability.writers import current_writer
from tests.e2e import job, matrix
from tests.e2e.test_kill_resume import _new_attempts, kill_tree, output_files, start_job
from tests.s3_server import S3Checkpoint, S3Server

#: The fastest executor, for the failure cases (they test the store, not the backend).
FAST_EXECUTOR = "ray_actor_pool"
FILES = 8
DOCS = 30
OUTPUTS_PER_SOURCE = 2
#: Kill or freeze once this many sources are durably complete (so a resume has something to skip).
DURABLE_BEFORE_DISASTER = 3
#: Short S3 timeouts (a user setting), so that a frozen endpoint fails the run in seconds.
SHORT_TIMEOUTS = {"config_kwargs": {"connect_timeout": 1, "read_timeout": 2, "retries": {"max_attempts": 1}}}
#: How long a run may take to fail once its endpoint stopped answering (with ``SHORT_TIMEOUTS``).
FAIL_WITHIN_S = 90.0


def remote_cfg(
    tmp_path: Path,
    executor: str,
    ckpt: S3Checkpoint,
    cache_dir: Path,
    *,
    files: int = FILES,
    slow_s: float = 0.3,
    bucket: str | None = None,
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A job config with its checkpoint at ``s3://<bucket>/ckpt`` and its LMDB cache in ``cache_dir``."""
    url = f"s3://{bucket}/ckpt" if bucket else ckpt.url()
    cfg: dict[str, Any] = {
        "executor": executor,
        "input_dir": str(tmp_path / "in"),
        "output_dir": str(tmp_path / "out"),
        "log_dir": str(tmp_path / "log"),
        "checkpoint": {
            "path": url,
            "storage_options": {**ckpt.storage_options, **(options or {})},
            "cache_dir": str(cache_dir),
        },
        "slow_s": slow_s,
    }
    os.makedirs(cfg["log_dir"], exist_ok=True)
    if not os.path.isdir(cfg["input_dir"]):
        job.write_inputs(cfg["input_dir"], files, DOCS)
    return cfg


def with_cache(cfg: dict[str, Any], cache_dir: Path) -> dict[str, Any]:
    return {**cfg, "checkpoint": {**cfg["checkpoint"], "cache_dir": str(cache_dir)}}


def durable_completed(cfg: dict[str, Any]) -> set[str]:
    return set(checkpoint_status(job.checkpoint_of(cfg))["completed"])


def durable_completed_so_far(cfg: dict[str, Any]) -> set[str]:
    """``durable_completed`` while a run starts (its prefix does not exist before its first object)."""
    try:
        return durable_completed(cfg)
    except CheckpointError:
        return set()


def start_and_wait(cfg: dict[str, Any], condition: Callable[[], bool], timeout_s: float = 240) -> subprocess.Popen:
    """Start the job in a subprocess and return it, still running, once ``condition()`` holds."""
    proc = start_job(cfg)
    deadline = time.monotonic() + timeout_s
    try:
        while not condition():
            if proc.poll() is not None:
                out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
                pytest.fail(f"job ended (rc={proc.returncode}) before the disaster point:\n{out[-4000:]}")
            if time.monotonic() > deadline:
                pytest.fail("job did not reach the disaster point in time")
            time.sleep(0.2)
    except BaseException:
        kill_tree(proc.pid)
        proc.wait(timeout=30)
        raise
    return proc


def assert_complete_and_exact(cfg: dict[str, Any], files: int) -> None:
    status = checkpoint_status(job.checkpoint_of(cfg))
    assert status["completed_sources"] == files, status
    assert status["failed_sources"] == 0, status
    assert job.written_records(cfg["output_dir"]) == job.expected_records(cfg["input_dir"])
    assert len(output_files(cfg)) == files * OUTPUTS_PER_SOURCE
    assert sorted(os.listdir(cfg["output_dir"])) == output_files(cfg), "temp files of interrupted writes remain"


def resume_writer_meta(cfg: dict[str, Any]) -> dict[str, Any]:
    """The counters the latest run recorded in its durable record (``sources_seen`` / ``sources_skipped``)."""
    read = read_durable(job.checkpoint_of(cfg))
    latest = current_writer(read.headers.values())
    assert latest is not None
    return read.states[latest.writer_id].meta


@pytest.mark.slow
# Where the checkpoint lives is the store's concern, the same for every backend; each backend's
# kill and resume is proven in test_kill_resume.py.
@pytest.mark.parametrize("executor", matrix.executors_beyond_fastest())
def test_node_move_resumes_from_object_storage(
    ray_session, s3_checkpoint: S3Checkpoint, tmp_path: Path, executor: str
) -> None:
    cache_a, cache_b = tmp_path / "node-a-cache", tmp_path / "node-b-cache"
    cfg = remote_cfg(tmp_path, executor, s3_checkpoint, cache_a)
    proc = start_and_wait(cfg, lambda: len(durable_completed_so_far(cfg)) >= DURABLE_BEFORE_DISASTER)
    kill_tree(proc.pid)
    proc.wait(timeout=30)

    done_before = durable_completed(cfg)
    assert DURABLE_BEFORE_DISASTER <= len(done_before) < FILES, "the kill should land mid-run"
    assert s3_checkpoint.keys("ckpt/ledger/"), "the durable record should be in the bucket"
    assert cache_a.is_dir(), "the first node's cache should exist (it is what the move loses)"
    shutil.rmtree(cache_a)  # the first node is gone, with its local disk
    attempts_before = job.processed_sources(cfg["log_dir"])

    moved = with_cache(cfg, cache_b)
    job.run(moved)
    assert not cache_a.exists(), "the resume must not use the lost node's cache"
    assert_complete_and_exact(moved, FILES)
    redone = _new_attempts(attempts_before, job.processed_sources(cfg["log_dir"]))
    all_sources = set(checkpoint_status(job.checkpoint_of(moved))["completed"])
    assert not (redone & done_before), f"sources complete before the kill were redone: {redone & done_before}"
    assert redone == all_sources - done_before
    meta = resume_writer_meta(moved)
    # Complete file groups are planned away by the partitioning stage (they keep their membership)
    # or dropped by the source filter: either way the resume never looks at them again.
    assert meta.get("sources_seen", 0) - meta.get("sources_skipped", 0) == FILES - len(done_before), meta


def test_endpoint_down_at_start_is_a_clear_error_then_resume(
    ray_session, s3_server: S3Server, s3_checkpoint: S3Checkpoint, tmp_path: Path
) -> None:
    cfg = remote_cfg(tmp_path, FAST_EXECUTOR, s3_checkpoint, tmp_path / "cache", files=4, slow_s=0.0)
    s3_server.stop()
    try:
        began = time.monotonic()
        with pytest.raises(CheckpointError) as err:
            job.run(cfg)
        elapsed = time.monotonic() - began
    finally:
        s3_server.start()
    message = str(err.value)
    assert s3_checkpoint.url() in message and s3_server.endpoint_url in message, message
    assert "Fix:" in message and "endpoint" in message, message
    assert elapsed < 60, f"the error took {elapsed:.0f} s"
    assert job.processed_sources(cfg["log_dir"]) == [], "no work may start on an unusable checkpoint"
    assert output_files(cfg) == []

    s3_server.make_bucket(s3_checkpoint.bucket)  # moto keeps its data in memory: the restart lost the bucket
    job.run(cfg)
    assert_complete_and_exact(cfg, 4)


def test_missing_bucket_is_a_clear_error_then_resume(
    ray_session, s3_server: S3Server, s3_checkpoint: S3Checkpoint, tmp_path: Path
) -> None:
    bucket = f"missing-{s3_checkpoint.bucket}"
    cfg = remote_cfg(tmp_path, FAST_EXECUTOR, s3_checkpoint, tmp_path / "cache", files=4, slow_s=0.0, bucket=bucket)
    with pytest.raises(CheckpointError) as err:
        job.run(cfg)
    message = str(err.value)
    assert f"s3://{bucket}/ckpt" in message and "bucket" in message and "Fix:" in message, message
    assert job.processed_sources(cfg["log_dir"]) == [], "no work may start on an unusable checkpoint"
    assert s3_checkpoint.keys() == [], "nothing may be written elsewhere"

    s3_server.make_bucket(bucket)
    job.run(cfg)
    assert_complete_and_exact(cfg, 4)


def test_endpoint_unreachable_mid_run_fails_loudly_then_resume(
    ray_session, s3_server: S3Server, s3_checkpoint: S3Checkpoint, tmp_path: Path
) -> None:
    cfg = remote_cfg(tmp_path, FAST_EXECUTOR, s3_checkpoint, tmp_path / "cache", options=SHORT_TIMEOUTS)
    acknowledged: set[str] = set()

    def some_durable() -> bool:
        acknowledged.update(durable_completed_so_far(cfg))
        return len(acknowledged) >= DURABLE_BEFORE_DISASTER

    proc = start_and_wait(cfg, some_durable)
    s3_server.freeze()
    began = time.monotonic()
    try:
        out, _ = proc.communicate(timeout=FAIL_WITHIN_S)
        elapsed = time.monotonic() - began
    except subprocess.TimeoutExpired:
        kill_tree(proc.pid)
        proc.wait(timeout=30)
        pytest.fail(f"the run did not fail within {FAIL_WITHIN_S:.0f} s of its checkpoint endpoint freezing")
    finally:
        s3_server.thaw()
    text = out.decode(errors="replace")
    assert proc.returncode != 0, f"the run must fail when its checkpoint cannot be written:\n{text[-4000:]}"
    assert s3_checkpoint.url() in text and "CheckpointError" in text, text[-4000:]
    print(f"failed {elapsed:.1f} s after the endpoint froze")

    after_failure = durable_completed(cfg)
    assert acknowledged <= after_failure, f"acknowledged completions were lost: {acknowledged - after_failure}"
    attempts_before = job.processed_sources(cfg["log_dir"])
    job.run(cfg)
    assert_complete_and_exact(cfg, FILES)
    redone = _new_attempts(attempts_before, job.processed_sources(cfg["log_dir"]))
    assert not (redone & after_failure), f"sources durable before the failure were redone: {redone & after_failure}"
