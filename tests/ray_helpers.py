"""Helpers for tests that kill Ray actors."""

from __future__ import annotations

import time
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
