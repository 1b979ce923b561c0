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
    yield ray
    ray.shutdown()
    if saved is None:
        os.environ.pop("RAY_ADDRESS", None)
    else:
        os.environ["RAY_ADDRESS"] = saved
