"""Ray for one run: reuse a connected Ray, join ``RAY_ADDRESS``, or start (and stop) a local one.

A local Ray is always started with ``address="local"`` (a stale ``/tmp/ray/ray_current_cluster``
would otherwise make ``ray.init()`` try to join a dead cluster) and with the dashboard, which
cosmos-xenna's monitoring needs. ``RAY_ADDRESS`` is pointed at the new cluster for the run's
duration so that Ray's state API finds it, and restored afterwards. Whatever this module
started, it stops: after the run no Ray process of ours is left.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

#: Environment the Ray dashboard must see before it starts, or cosmos-xenna's state queries fail.
RAY_ENV_DEFAULTS = {
    "RAY_MAX_LIMIT_FROM_API_SERVER": "40000",
    "RAY_MAX_LIMIT_FROM_DATA_SOURCE": "40000",
    "RAY_DEDUP_LOGS": "0",
}


def prepare_ray_environment() -> None:
    """Set the environment Ray needs here (idempotent; keeps values the user set)."""
    for key, value in RAY_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)


def _worker_pythonpath() -> str:
    """Make the driver's import path visible to workers (stages defined in local modules)."""
    import sys

    entries = [p for p in sys.path if p and os.path.isdir(p)]
    cwd = os.getcwd()
    if cwd not in entries:
        entries.insert(0, cwd)
    existing = os.environ.get("PYTHONPATH", "")
    parts = [*entries, *existing.split(os.pathsep)] if existing else entries
    seen: list[str] = []
    for p in parts:
        if p and p not in seen:
            seen.append(p)
    return os.pathsep.join(seen)


def start_local_ray(num_cpus: int | None = None, dashboard: bool = True) -> None:
    """Start a local Ray instance for this process (used by executors and test sessions)."""
    import logging

    import ray

    prepare_ray_environment()
    os.environ["PYTHONPATH"] = _worker_pythonpath()
    ray.init(
        address="local",
        num_cpus=num_cpus,
        include_dashboard=dashboard,
        log_to_driver=False,
        logging_level=logging.WARNING,
        configure_logging=True,
    )
    os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address


@contextmanager
def ray_runtime(num_cpus: int | None = None, dashboard: bool = True) -> Iterator[None]:
    """Make Ray available for the body; stop only what this call started."""
    import ray

    if ray.is_initialized():
        yield
        return
    saved_address = os.environ.get("RAY_ADDRESS")
    saved_pythonpath = os.environ.get("PYTHONPATH")
    if saved_address:
        import logging

        prepare_ray_environment()
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        ray.init(address=saved_address, log_to_driver=False, logging_level=logging.WARNING)
    else:
        start_local_ray(num_cpus=num_cpus, dashboard=dashboard)
    try:
        yield
    finally:
        ray.shutdown()
        _restore("RAY_ADDRESS", saved_address)
        _restore("PYTHONPATH", saved_pythonpath)


def _restore(key: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(key, None)
    else:
        os.environ[key] = value
