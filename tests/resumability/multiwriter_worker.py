"""A writer process for the multi-writer test: one run of one driver sharing a checkpoint directory."""

from __future__ import annotations

import random
import time
from typing import Any

from nemo_curator.resumability.report import Report
from nemo_curator.resumability.store import CheckpointStore
from nemo_curator.tasks.credit import Credit


def writer_sources(index: int, n_own: int, n_shared: int) -> list[str]:
    """Sources a writer processes: its own ones plus some every writer processes (like overlapping array tasks)."""
    own = [f"{index:08x}{i:024x}" for i in range(n_own)]
    shared = [f"ffffffff{i:024x}" for i in range(n_shared)]
    return own + shared


def run_writer(checkpoint: str, index: int, n_own: int, n_shared: int, seed: int, barrier: Any, results: Any) -> None:
    """Process entry point: wait for every writer, write, put the counters (or the error) on ``results``."""
    try:
        barrier.wait(timeout=60)
        results.put((index, write(checkpoint, index, n_own, n_shared, seed)))
    except BaseException as exc:  # the parent must see any failure, not a hang
        results.put((index, {"error": f"{type(exc).__name__}: {exc}"}))
        raise


def write(checkpoint: str, index: int, n_own: int, n_shared: int, seed: int) -> dict[str, Any]:
    """Report every source's leaves in shuffled batches with small pauses; returns counters.

    Like the source stage, the writer skips sources that are already complete when it starts
    (another writer may have finished a shared one).
    """
    rng = random.Random(seed)
    completed = 0
    start = time.time()
    with CheckpointStore.open(checkpoint, fingerprint="multi", writer_id=f"writer-{index}") as store:
        sources = writer_sources(index, n_own, n_shared)
        skipped = set(store.completed(sources))
        reports: list[Report] = []
        for sid in sources:
            parts = Credit.one().split(rng.randint(1, 5))
            if sid not in skipped:
                reports.extend(Report(sid, f"{sid}_{j}", c) for j, c in enumerate(parts))
        rng.shuffle(reports)
        for seq, first in enumerate(range(0, len(reports), 37)):
            update = store.apply(reports[first : first + 37], sender="main", seq=seq)
            assert update is not None and not update.anomalies
            completed += len(update.completed)
            time.sleep(rng.random() * 0.004)
        status = store.status()
    return {
        "completed": completed,
        "skipped": len(skipped),
        "in_flight": status.in_flight_sources,
        "start": start,
        "end": time.time(),
    }
