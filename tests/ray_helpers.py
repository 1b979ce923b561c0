"""Helpers for tests that kill Ray actors or check that a run left none alive."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import ray
from ray.exceptions import ActorDiedError


def wait_actor_dead(actor: Any, timeout_s: float = 60.0) -> None:
    """Block until the ledger ``actor`` (killed with ``no_restart=True``) no longer answers.

    ``ray.kill`` acts asynchronously: a call made right after it may still run and commit.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            ray.get(actor.owner.remote(), timeout=10)  # any cheap method of the ledger actor
        except ActorDiedError:
            return
        time.sleep(0.05)
    raise AssertionError(f"the killed actor still answers after {timeout_s:.0f} s")


def alive_after(list_alive: Callable[[], list[Any]], timeout_s: float, poll_s: float) -> list[Any]:
    """What ``list_alive()`` still lists once it is empty or ``timeout_s`` has passed.

    ``ray.kill`` and an executor's shutdown act asynchronously: actors of a finished run may
    take a moment to go.
    """
    deadline = time.monotonic() + timeout_s
    alive = list_alive()
    while alive and time.monotonic() < deadline:
        time.sleep(poll_s)
        alive = list_alive()
    return alive
