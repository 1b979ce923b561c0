"""What the three executors share, tested without a Ray cluster: CPU scaling, failure
unwrapping, the liveness probe, settings validation and the ledger's status on the wire."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nemo_curator.backends.errors import error_to_raise
from nemo_curator.backends.registry import EXECUTORS, make_executor
from nemo_curator.backends.resources import RAY_RESOURCE_STEP, scale_cpu_requests
from nemo_curator.backends.stage_adapter import StageError
from nemo_curator.resumability.status import LedgerAck, LedgerStatus
from nemo_curator.utils.processes import pid_alive, process_start_time

# -- CPU scaling -----------------------------------------------------------------------------

requests_st = st.lists(st.sampled_from([0.0, 0.01, 0.25, 0.5, 1.0, 2.0, 3.5]), min_size=1, max_size=6)


@given(requests=requests_st, data=st.data())
def test_scaled_requests_keep_proportions_fit_and_never_vanish(requests: list[float], data: st.DataObject) -> None:
    counts = data.draw(st.lists(st.integers(1, 4), min_size=len(requests), max_size=len(requests)))
    capacity = data.draw(st.sampled_from([0.0, 0.5, 1.0, 2.0, 4.0, 64.0]))
    scaled, factor = scale_cpu_requests(requests, counts, capacity)
    demand = sum(r * n for r, n in zip(requests, counts, strict=True))
    if demand <= capacity:
        assert (scaled, factor) == (requests, 1.0)
        return
    assert 0.0 <= factor < 1.0
    for original, new in zip(requests, scaled, strict=True):
        if original == 0:
            assert new == 0
        else:
            # A positive request stays schedulable (one step at least, even with no CPU at all)
            # and never grows.
            assert RAY_RESOURCE_STEP - 1e-12 <= new <= max(original, RAY_RESOURCE_STEP)
    floor_demand = sum(RAY_RESOURCE_STEP * n for r, n in zip(requests, counts, strict=True) if r > 0)
    if capacity >= floor_demand:
        used = sum(c * n for c, n in zip(scaled, counts, strict=True))
        assert used <= capacity + floor_demand


def test_a_cluster_without_cpus_still_gets_non_empty_requests() -> None:
    scaled, factor = scale_cpu_requests([0.5, 2.0, 0.0], [1, 1, 1], 0.0)
    assert factor == 0.0
    assert scaled == [RAY_RESOURCE_STEP, RAY_RESOURCE_STEP, 0.0]


# -- failure unwrapping ----------------------------------------------------------------------


def _remote(cause: Exception) -> BaseException:
    """What Ray raises on the driver for ``cause`` raised in a worker."""
    from ray.exceptions import RayTaskError

    report = "Traceback (most recent call last):\n  worker frames"
    return RayTaskError("process_batch", report, cause).as_instanceof_cause()


def test_a_stage_error_inside_ray_wrappers_is_raised_itself_with_the_worker_report() -> None:
    user = ValueError("bad record")
    stage_error = StageError("reader", "t1", user)
    wrapped = RuntimeError("pipeline failed")
    wrapped.__cause__ = _remote(stage_error)
    raised = error_to_raise(wrapped, where="a Ray worker")
    assert raised is stage_error and raised.__cause__ is user
    assert any("worker frames" in note for note in raised.__notes__)


def test_a_plain_remote_failure_is_named_after_its_stage() -> None:
    raised = error_to_raise(_remote(KeyError("k")), where="a Ray worker of stage 's'", stage_name="s")
    assert isinstance(raised, StageError) and raised.stage_name == "s"
    assert isinstance(raised.__cause__, KeyError)


def test_a_driver_side_failure_is_raised_unchanged() -> None:
    exc = OSError("disk full")
    assert error_to_raise(exc, where="the driver", stage_name="s") is exc


# -- liveness ---------------------------------------------------------------------------------


def test_pid_alive_tells_running_reaped_zombie_and_reused_processes_apart() -> None:
    assert pid_alive(os.getpid()) and pid_alive(os.getpid(), process_start_time(os.getpid()))
    assert not pid_alive(0) and not pid_alive(-5) and not pid_alive(2**62)
    started = process_start_time(os.getpid())
    assert started is not None and not pid_alive(os.getpid(), started + 1)  # the pid, reused
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    while pid_alive(child.pid) and time.monotonic() < deadline:  # exited, not yet reaped: a zombie
        time.sleep(0.02)
    assert not pid_alive(child.pid)
    child.wait()
    assert not pid_alive(child.pid)


# -- settings ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(EXECUTORS))
def test_unknown_config_keys_are_refused_when_the_executor_is_made(name: str) -> None:
    with pytest.raises(ValueError, match=r"unknown config key.*'bogus'"):
        make_executor(name, config={"bogus": 1})


@pytest.mark.parametrize(
    "config",
    [{"max_inflight_per_actor": 0}, {"max_retries": -1}, {"num_actors_per_stage": {"reader": 0}}],
)
def test_actor_pool_values_are_checked_when_the_executor_is_made(config: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="RayActorPoolExecutor"):
        make_executor("ray_actor_pool", config=config)


# -- the ledger's status on the wire ----------------------------------------------------------


def test_ledger_status_and_ack_cross_the_actor_boundary_unchanged() -> None:
    from ray import cloudpickle

    status = LedgerStatus(
        checkpoint="/c", writer_id="w", fingerprint="f", completed_sources=3, completed_this_run=1,
        failed_sources=0, failed_this_run=0, in_flight_sources=2, reports=9, applied=9, duplicates=0,
        ignored=0, anomalies=0, commits=4, load_seconds=0.5, other_writers=1, sources_seen=5,
    )  # fmt: skip
    ack = LedgerAck.of(status, seq=7, update=None)
    for value in (status, ack):
        assert pickle.loads(cloudpickle.dumps(value)) == value
    assert ack.duplicate_batch and ack.sources_seen == 5 and ack.completed_sources == 3
    assert set(status.to_dict()) == set(LedgerStatus.__dataclass_fields__)
