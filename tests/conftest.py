"""Shared fixtures: one local Ray per test session (explicit CPUs, dashboard on for cosmos-xenna)."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=300,
    derandomize=True,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "local",
    max_examples=3000,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "local"))

#: Logical CPUs of the shared test Ray (oversubscribes the 2 real cores on purpose: Ray Data
#: actor pools need a CPU beside the read tasks, and xenna needs one per stage worker).
TEST_RAY_CPUS = 4


@pytest.fixture(scope="session")
def ray_session():
    """Start one local Ray for the whole session; executors reuse it and never stop it."""
    import ray

    from nemo_curator.backends.ray_runtime import start_local_ray

    saved = os.environ.get("RAY_ADDRESS")
    if not ray.is_initialized():
        start_local_ray(num_cpus=TEST_RAY_CPUS, dashboard=True)
    _RAY_PIDS.update(_ray_process_ids())
    yield ray
    ray.shutdown()
    if saved is None:
        os.environ.pop("RAY_ADDRESS", None)
    else:
        os.environ["RAY_ADDRESS"] = saved


_RAY_PIDS: set[int] = set()


def _ray_process_ids() -> set[int]:
    """Pids of the processes of the Ray node this test session started."""
    import ray

    node = getattr(ray._private.worker, "_global_node", None)
    if node is None:
        return set()
    pids: set[int] = set()
    for infos in node.all_processes.values():
        for info in infos:
            if info.process is not None:
                pids.add(info.process.pid)
    return pids


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the session if a Ray process started by the tests outlives it."""
    import time

    if not _RAY_PIDS:
        return
    deadline = time.monotonic() + 15
    alive = _RAY_PIDS
    while alive and time.monotonic() < deadline:
        alive = {pid for pid in alive if _alive(pid)}
        if alive:
            time.sleep(0.5)
    if alive:
        print(f"\nERROR: Ray processes started by the tests are still running: {sorted(alive)}")
        session.exitstatus = 1


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False
