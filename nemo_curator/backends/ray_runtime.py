"""Ray for one run: reuse a connected Ray, join ``RAY_ADDRESS``, or start (and stop) a local one.

A local Ray is always started with ``address="local"`` (a stale ``/tmp/ray/ray_current_cluster``
would otherwise make ``ray.init()`` try to join a dead cluster) and with the dashboard, which
cosmos-xenna's monitoring needs. ``RAY_ADDRESS`` is pointed at the new cluster for the run's
duration so that Ray's state API finds it, and restored afterwards. Joining ``RAY_ADDRESS``
uses ``RAY_AUTH_MODE=disabled`` unless the user set it; when the cluster wants a token, the
error says what to set. Whatever this module started, it stops: after the run no Ray process
of ours is left.
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
        auth_mode_set = "RAY_AUTH_MODE" in os.environ
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        try:
            ray.init(address=saved_address, log_to_driver=False, logging_level=logging.WARNING)
        except ConnectionError as exc:
            hint = _auth_hint(exc, auth_mode_set)
            if hint is None:
                raise
            raise ConnectionError(f"could not join the Ray cluster at RAY_ADDRESS={saved_address}: {hint}") from exc
    else:
        start_local_ray(num_cpus=num_cpus, dashboard=dashboard)
    try:
        yield
    finally:
        ray.shutdown()
        _restore("RAY_ADDRESS", saved_address)
        _restore("PYTHONPATH", saved_pythonpath)


def _auth_hint(exc: BaseException, auth_mode_set: bool) -> str | None:
    """What to set when joining failed for authentication (``None`` for any other failure).

    Ray 2.60's ``ray start --head`` enables token authentication whenever a token exists
    (``~/.ray/auth_token``), while a driver joining by address uses it only with
    ``RAY_AUTH_MODE=token``.
    """
    from ray.exceptions import AuthenticationError

    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    # Ray reports the GCS's refusal as text inside a RuntimeError, or as the exception itself.
    if not any(isinstance(e, AuthenticationError) or "InvalidAuthToken" in str(e) for e in chain):
        return None
    if auth_mode_set:
        return f"the cluster refused this driver's authentication (RAY_AUTH_MODE={os.environ['RAY_AUTH_MODE']})"
    return (
        "the cluster uses token authentication; set RAY_AUTH_MODE=token (and RAY_AUTH_TOKEN or "
        "RAY_AUTH_TOKEN_PATH if the token is not in ~/.ray/auth_token)"
    )


def _restore(key: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(key, None)
    else:
        os.environ[key] = value
