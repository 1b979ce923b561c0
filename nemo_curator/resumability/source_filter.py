"""The source stage's view of the run's ledger (``LedgerSourceFilter``), and the retried call.

Kept apart from ``actor`` so that a worker that runs the source stage imports Ray and nothing
of the store (no LMDB, no numpy): unpickling the filter is on the path to the first work.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import ray
from loguru import logger
from ray.exceptions import ActorDiedError, ActorUnavailableError, GetTimeoutError, RayActorError

from nemo_curator.resumability.errors import LedgerUnavailableError
from nemo_curator.resumability.shard import Shard

if TYPE_CHECKING:
    from nemo_curator.resumability.config import CheckpointConfig
    from nemo_curator.resumability.memberships import RecordedGroup

#: The Ray namespace of the ledger actors.
NAMESPACE = "nemo_curator"
#: How long a caller waits for a restarting actor before giving up.
UNAVAILABLE_TIMEOUT_S = 180.0
#: Guards the source filters' counts of sources not yet sent (``LedgerSourceFilter._count``).
_COUNT_LOCK = threading.Lock()


@dataclass
class LedgerSourceFilter:
    """Picklable worker-side view of the ledger for the source stage.

    ``completed(ids)`` looks the actor up by name (once per process) and asks it which ids are
    complete. With a ``shard``, ids outside it are answered as complete without asking (the
    source stage then drops them: this run neither emits nor records them), and the actor
    counts only the run's own sources. Implements ``nemo_curator.backends.stage_adapter.SourceFilter``.

    ``fresh``: the checkpoint held no record when the run started (``preflight.Preflight``). Then no
    source was complete before this run, so the filter answers "none of them" without waiting
    for the actor, whose start and load stay off the path to the first work; it only sends the
    actor the count, unanswered. The one source this can let through that the actor would have
    dropped is one this run completed and emits again (a retried source call): it is redone, its
    sink files are rewritten with the same names and content, and its reports are exact
    duplicates of those that completed it (``ledger``, invariant 5), so nothing changes.
    """

    actor_name: str
    namespace: str
    checkpoint: str
    timeout_s: float = UNAVAILABLE_TIMEOUT_S
    shard: Shard | None = None
    fresh: bool = False
    #: Send a fresh checkpoint's counts to the actor (``False``: the ledger is in the driver, no actor).
    count: bool = True
    #: The location, for a fresh checkpoint's membership records (read and written here, not by the actor).
    config: CheckpointConfig | None = None
    _actor: Any = field(default=None, init=False, repr=False, compare=False)
    _uncounted: int = field(default=0, init=False, repr=False, compare=False)
    _counting: bool = field(default=False, init=False, repr=False, compare=False)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_actor"] = None
        state["_uncounted"] = 0
        state["_counting"] = False
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def _lookup(self) -> Any:
        if self._actor is None:
            try:
                self._actor = ray.get_actor(self.actor_name, namespace=self.namespace)
            except ValueError as exc:
                raise LedgerUnavailableError(
                    f"the ledger actor {self.actor_name!r} for checkpoint {self.checkpoint} does not exist (the run "
                    "that owns it ended or its ledger died); this task cannot tell which sources are complete"
                ) from exc
        return self._actor

    def completed(self, source_ids: list[str]) -> set[str]:
        """The subset of ``source_ids`` already complete in the checkpoint."""
        if not source_ids:
            return set()
        shard = self.shard
        ids = list(source_ids) if shard is None else [i for i in source_ids if shard.owns(i)]
        others = set() if shard is None else {i for i in source_ids if not shard.owns(i)}
        if not ids:
            return others
        if self.fresh:
            if self.count:
                self._count(len(ids))
            return others
        done = _call_with_retry(
            lambda: self._lookup().completed.remote(ids),
            what="completed",
            checkpoint=self.checkpoint,
            timeout_s=self.timeout_s,
            on_retry=self._forget,
        )
        return set(done) | others

    def _count(self, seen: int) -> None:
        """Add ``seen`` to the sources this process tells the actor about, unanswered (progress counters only).

        One thread per process sends what has accumulated, off the source stage's path: the
        actor of a fresh checkpoint may not exist yet (``LedgerTracker`` defers its start), and
        looking it up by name is a GCS round trip. The thread waits for the actor as long as a
        call would, then gives the count up.
        """
        with _COUNT_LOCK:
            self._uncounted += seen
            if self._counting:
                return
            self._counting = True
        threading.Thread(target=self._send_counts, name="count-sources", daemon=True).start()

    def _send_counts(self) -> None:
        deadline = time.monotonic() + self.timeout_s
        while True:
            with _COUNT_LOCK:
                seen = self._uncounted
                if seen == 0:
                    self._counting = False
                    return
            try:
                self._lookup().count_sources.remote(seen)
            except LedgerUnavailableError as exc:
                if time.monotonic() < deadline:
                    time.sleep(0.25)
                    continue
                logger.debug("{} source(s) emitted but not counted: {}", seen, exc)
            with _COUNT_LOCK:
                self._uncounted -= seen

    def _forget(self) -> None:
        self._actor = None

    def _fresh_location(self) -> Any:
        """The location itself, when the checkpoint is fresh (``None``: ask the actor).

        On a fresh checkpoint no source is complete, so the memberships need no ledger state:
        they are read and written at the location directly, and the actor (deferred, or absent
        when the ledger lives in the driver) is not waited for.
        """
        if not self.fresh or self.config is None:
            return None
        from nemo_curator.resumability.location import open_location

        return open_location(self.config, writable=True)

    def partition_history(self, stage_name: str) -> list[RecordedGroup]:
        """The memberships recorded for partitioning stage ``stage_name`` (see ``memberships``)."""
        location = self._fresh_location()
        if location is not None:
            from nemo_curator.resumability.memberships import recorded_history

            return recorded_history(location, stage_name, lambda _ids: [])
        return _call_with_retry(
            lambda: self._lookup().partition_history.remote(stage_name),
            what="partition_history",
            checkpoint=self.checkpoint,
            timeout_s=self.timeout_s,
            on_retry=self._forget,
        )

    def record_partitions(self, stage_name: str, generation: int, data: bytes) -> None:
        """Record memberships durably before their groups are emitted (a resend writes an identical copy)."""
        location = self._fresh_location()
        if location is not None:
            from nemo_curator.resumability.memberships import write_record

            write_record(location, stage_name, generation, data)
            return
        _call_with_retry(
            lambda: self._lookup().record_partitions.remote(stage_name, generation, data),
            what="record_partitions",
            checkpoint=self.checkpoint,
            timeout_s=self.timeout_s,
            on_retry=self._forget,
        )


def _call_with_retry(make_ref: Any, *, what: str, checkpoint: str, timeout_s: float, on_retry: Any = None) -> Any:
    """``ray.get`` a call, waiting out actor restarts; ``LedgerUnavailableError`` once it is gone."""
    deadline = time.monotonic() + timeout_s
    delay = 0.05
    while True:
        try:
            return ray.get(make_ref(), timeout=max(1.0, deadline - time.monotonic()))
        except ActorDiedError as exc:
            raise LedgerUnavailableError(
                f"the ledger actor for checkpoint {checkpoint} died for good during {what}() ({exc}). What it had "
                "acknowledged is recorded; rerun the same pipeline with the same checkpoint to resume"
            ) from exc
        except (ActorUnavailableError, RayActorError, GetTimeoutError) as exc:
            if time.monotonic() >= deadline:
                raise LedgerUnavailableError(
                    f"the ledger actor for checkpoint {checkpoint} did not answer {what}() within {timeout_s:.0f} s "
                    f"({type(exc).__name__}: {exc}). What it had acknowledged is recorded; rerun to resume"
                ) from exc
            logger.warning("ledger actor unavailable during {}() ({}); retrying", what, type(exc).__name__)
            if on_retry is not None:
                on_retry()
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
