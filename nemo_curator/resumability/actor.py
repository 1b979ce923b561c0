"""The shared ledger actor (one per checkpoint directory) and its driver-side handle.

``LedgerHandle.open(checkpoint, stages, shard=None)`` (a path, URL or ``CheckpointConfig``)
validates the location and the pipeline fingerprint *in the driver* (clear errors before any
work), refuses when another run holds a live lease on the location that it may not run beside
(``lease``: any Ray instance, any host), replaces a leftover actor of a dead run, and starts one
``LedgerActor`` named after the location and shard (``nemo_curator_ledger_<hash>`` in the
``nemo_curator`` namespace), pinned to the driver's node (its LMDB cache is local to it), owned
by the driver (not detached: it dies with the driver) and restartable (``max_restarts``). The
actor holds the run's lease (heartbeats) while it runs.

Guarantees:
- ``report(batch)`` is acknowledged: the actor makes the batch durable at the checkpoint
  location (``CheckpointStore.apply``) before it returns, so the driver may drop a batch only
  once it is durable;
- retried calls are safe. Each batch carries ``(sender, seq)``; the store commits ``seq`` in the
  same transaction as the batch and ignores a batch it has already committed. So Ray's own retry
  of an in-flight call after an actor restart (``max_task_retries=-1``) and the handle's resend
  after an error never count a report twice; report deduplication by task id is a second guard;
- a restarted actor (on any node, with any cache) reopens the same writer's durable record and
  reloads its in-flight state exactly;
- when the actor is gone for good, calls raise ``LedgerUnavailableError`` instead of running on
  without tracking;
- a live actor is never killed as a leftover unless its run is known to be dead: an actor that
  does not answer ``owner()`` in time (busy, slow, restarting) cannot be told apart from a live
  run, so the new run is refused instead;
- with a shard, the source stage keeps only the sources of its shard (``LedgerSourceFilter``
  reports the others as if complete: they are neither emitted nor recorded by this run).
"""

from __future__ import annotations

import functools
import gc
import hashlib
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from contextlib import suppress
from dataclasses import replace
from typing import Any

import ray
from loguru import logger
from ray.exceptions import ActorUnavailableError, GetTimeoutError, RayActorError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from nemo_curator.resumability.config import CheckpointConfig, coerce_checkpoint
from nemo_curator.resumability.errors import CheckpointError, LedgerUnavailableError
from nemo_curator.resumability.fingerprint import describe_fingerprint, fingerprint_of_description
from nemo_curator.resumability.heap import map_large_buffers
from nemo_curator.resumability.lease import LeaseSettings
from nemo_curator.resumability.liveness import recorded_process_alive, this_process
from nemo_curator.resumability.memberships import RecordedGroup, recorded_history, write_record
from nemo_curator.resumability.objects import new_writer_id
from nemo_curator.resumability.preflight import preflight
from nemo_curator.resumability.report import Report, ReportBatch
from nemo_curator.resumability.shard import Shard
from nemo_curator.resumability.source_filter import (
    NAMESPACE,
    UNAVAILABLE_TIMEOUT_S,
    LedgerSourceFilter,
    _call_with_retry,
)
from nemo_curator.resumability.status import LedgerAck, LedgerStatus

ACTOR_NAME_PREFIX = "nemo_curator_ledger_"
DEFAULT_MAX_RESTARTS = 4

#: How long a starting run waits for an existing actor's ``owner()`` before refusing (never killing).
OWNER_TIMEOUT_S = 30.0


def ledger_actor_name(checkpoint: str | os.PathLike | CheckpointConfig, shard: Shard | None = None) -> str:
    """The actor name for a checkpoint location (and shard): a short hash of its canonical name (``location_id``)."""
    location_id = coerce_checkpoint(checkpoint).location_id
    key = location_id if shard is None else f"{location_id}#shard-{shard.index}-of-{shard.count}"
    return ACTOR_NAME_PREFIX + hashlib.blake2b(key.encode(), digest_size=8).hexdigest()


def handle_open_here(writer_id: str) -> bool:
    """Whether a ``LedgerHandle`` of run ``writer_id`` is open in this process."""
    with _open_handles_lock:
        return writer_id in _open_handles.values()


# Actors this process opened and has not closed: name -> writer id.
_open_handles: dict[str, str] = {}
_open_handles_lock = threading.Lock()


def owner_alive(owner: dict[str, Any]) -> bool:
    """Whether the run recorded in ``owner`` is still running.

    On this host: its driver pid is alive (and is the same process, by start time); in this very
    process, only if a ``LedgerHandle`` of it is still open. On another host we cannot look: the
    actor is owned by its driver and dies with it, so a live actor there means a live run.
    """
    alive = recorded_process_alive(owner)
    if alive is None:
        return True
    if int(owner.get("pid", -1)) == os.getpid():
        with _open_handles_lock:
            return owner.get("writer_id") in _open_handles.values()
    return alive


class LedgerActor:
    """Owns the ``CheckpointStore`` (and its ``SourceLedger``) of one run; runs as a Ray actor.

    Methods run one at a time (no concurrency), in arrival order per caller. With
    ``in_driver`` it is a plain object of the driver process instead (``LedgerHandle`` then
    serialises the calls itself).
    """

    def __init__(
        self,
        checkpoint: CheckpointConfig | str,
        writer_id: str,
        fingerprint: str,
        description: list[dict[str, Any]] | None,
        owner: dict[str, Any],
        recent_limit: int | None = None,
        allow_fingerprint_change: bool = False,
        shard: Shard | None = None,
        lease: LeaseSettings | None = None,
        in_driver: bool = False,
    ) -> None:
        # The ledger's modules (LMDB, numpy) load here, not at import: a run on a fresh
        # checkpoint reaches its first work before its in-driver ledger starts.
        from nemo_curator.resumability.ledger import DEFAULT_RECENT_LIMIT
        from nemo_curator.resumability.store import CheckpointStore

        self._owner = dict(owner)
        self._reconstructed = False if in_driver else ray.get_runtime_context().was_current_actor_reconstructed
        if not in_driver:
            map_large_buffers()  # before the load: its freed buffers go back to the OS (``heap``)
        # The driver checked the fingerprint before starting us; checking again here records an
        # allowed override in the file. A restart reopens this run's own file and is not re-checked.
        self._store = CheckpointStore.open(
            checkpoint,
            fingerprint=fingerprint,
            description=description,
            writer_id=writer_id,
            verify_fingerprint=not self._reconstructed,
            allow_fingerprint_change=allow_fingerprint_change,
            owner=owner,
            recent_limit=DEFAULT_RECENT_LIMIT if recent_limit is None else recent_limit,
            lease=lease,
            shard=shard,
        )
        if not in_driver:
            # The loaded state (a set of up to millions of keys) lives as long as the actor: keep
            # the garbage collector from traversing it on every full collection.
            gc.collect()
            gc.freeze()
        meta = self._store.meta
        self._sources_seen = int(meta.get("sources_seen", 0) or 0)
        self._sources_skipped = int(meta.get("sources_skipped", 0) or 0)
        if self._reconstructed:
            logger.warning(
                "ledger actor for {} restarted; reloaded {} in-flight source(s) from its durable record",
                self._store.checkpoint,
                self._store.ledger.in_flight_count,
            )

    def owner(self) -> dict[str, Any]:
        return {**self._owner, "actor_pid": os.getpid()}

    def report(self, batch: ReportBatch, sender: str, seq: int) -> LedgerAck:
        """Apply one batch and make it durable; returns the acknowledgement (after the durable write)."""
        update = self._store.apply(batch, sender=sender, seq=seq, meta=self._counters())
        return LedgerAck.of(self.status(), seq=seq, update=update)

    def completed(self, source_ids: list[str]) -> list[str]:
        """The ids among ``source_ids`` that are complete (for the source stage)."""
        done = self._store.completed(source_ids)
        self._sources_seen += len(source_ids)
        self._sources_skipped += len(done)
        return done

    def count_sources(self, seen: int) -> None:
        """Count ``seen`` sources the source stage emitted without asking (a fresh checkpoint's filter)."""
        self._sources_seen += seen

    def partition_history(self, stage_name: str) -> list[RecordedGroup]:
        """The group memberships recorded for partitioning stage ``stage_name``, marked complete or not."""
        return recorded_history(self._store.location, stage_name, self._store.completed)

    def record_partitions(self, stage_name: str, generation: int, data: bytes) -> str:
        """Make one membership record (``memberships.encode_record``) durable; returns after the write."""
        return write_record(self._store.location, stage_name, generation, data)

    def status(self) -> LedgerStatus:
        """The store's status with this actor's counters."""
        return replace(
            self._store.status(),
            sources_seen=self._sources_seen,
            sources_skipped=self._sources_skipped,
            actor_restarted=self._reconstructed,
            actor_pid=os.getpid(),
        )

    def close(self) -> LedgerStatus:
        """Record the counters, close the store and return the final status."""
        from nemo_curator.resumability.ledger import LedgerUpdate

        status = self.status()
        self._store.commit(LedgerUpdate(), meta=self._counters())
        self._store.close()
        return status

    def _counters(self) -> dict[str, int]:
        """The actor's counters, recorded with the writer's segments and snapshots."""
        return {"sources_seen": self._sources_seen, "sources_skipped": self._sources_skipped}


@functools.cache
def _remote_class() -> Any:
    return ray.remote(LedgerActor)


class LedgerHandle:
    """Driver-side handle of the run's ledger actor. Use ``LedgerHandle.open``.

    ``report`` blocks until the batch is committed and is safe to call again with the same
    batch after any error (each batch is tagged with this handle's sender id and a sequence
    number, and the store applies each tag at most once). Thread-safe.
    """

    def __init__(
        self,
        actor: Any,
        name: str,
        checkpoint: str,
        writer_id: str,
        fingerprint: str,
        timeout_s: float = UNAVAILABLE_TIMEOUT_S,
        shard: Shard | None = None,
        fresh: bool = False,
        in_driver: bool = False,
    ) -> None:
        self._actor = actor
        self.in_driver = in_driver
        #: The location (set by ``open``; the source filter reads a fresh one's memberships there).
        self.config: CheckpointConfig | None = None
        self.shard = shard
        self.fresh = fresh
        self.name = name
        self.checkpoint = checkpoint
        self.writer_id = writer_id
        self.fingerprint = fingerprint
        self.timeout_s = timeout_s
        self._sender = f"driver-{uuid.uuid4().hex[:12]}"
        self._seq = 0
        self._lock = threading.Lock()
        self._closed = False
        self._startup: Any = None
        self._ready: LedgerStatus | None = None
        self._start_actor: Callable[[], Any] | None = None
        self._start_lock = threading.Lock()

    @classmethod
    def open(
        cls,
        checkpoint: str | os.PathLike | CheckpointConfig,
        stages_or_fingerprint: Sequence[Any] | str,
        *,
        allow_fingerprint_change: bool = False,
        max_restarts: int = DEFAULT_MAX_RESTARTS,
        recent_limit: int | None = None,
        timeout_s: float = UNAVAILABLE_TIMEOUT_S,
        wait: bool = True,
        shard: Shard | None = None,
        lease: LeaseSettings | None = None,
        defer_start: bool = False,
        in_driver: bool = False,
    ) -> LedgerHandle:
        """Validate the ``checkpoint`` location and the pipeline, then start the ledger actor.

        ``stages_or_fingerprint`` is the built stage list (or a fingerprint from
        ``pipeline_fingerprint``). Raises ``CheckpointError`` (bad directory, a live run it may
        not run beside: ``lease``) or ``FingerprintMismatchError`` in the driver, before any work
        starts. ``shard`` restricts this run to one shard of the sources (``shard``). Ray must be
        initialized.

        With ``wait=False`` this returns as soon as the actor is submitted (its process starts
        in the background, while the executor starts its workers); ``wait_ready`` then blocks
        until it has loaded the checkpoint. Calls made before that simply queue at the actor.

        With ``defer_start`` and a fresh checkpoint (no record yet: nothing to look up, see
        ``LedgerSourceFilter``), the actor is not even submitted until ``start`` or the first
        call that needs it (``wait_ready``, ``report``, ``status``, ``close``...): an executor
        lets its own workers start first, and the ledger's process start stays off the path to
        the first work. The checks above have run either way.

        With ``in_driver`` and a fresh checkpoint, the ledger is not a Ray actor at all but an
        object of this process (made at ``start``), whose calls run in the caller's thread: no
        worker asks a fresh checkpoint anything, so nothing needs to reach it from elsewhere, and
        the run saves a Ray worker process (its start and imports, about a second of CPU). It
        holds the lease and writes the same durable record; it cannot be killed apart from the
        driver, and the source stage's count of sources is not sent (the progress shows no total).

        ``recent_limit`` (default ``ledger.DEFAULT_RECENT_LIMIT``) bounds the digests of recent
        completions the ledger keeps. This module imports neither LMDB, numpy nor the ledger: they
        load when the ledger starts (``LedgerActor``), off a fresh checkpoint's path to its first work.
        """
        if isinstance(stages_or_fingerprint, str):
            fingerprint, description = stages_or_fingerprint, None
        else:
            description = describe_fingerprint(list(stages_or_fingerprint))
            fingerprint = fingerprint_of_description(description)
        lease = lease or LeaseSettings()
        checked = preflight(
            checkpoint,
            fingerprint,
            description,
            allow_fingerprint_change=allow_fingerprint_change,
            lease=lease,
            shard=shard,
            open_here=handle_open_here,
        )
        config = checked.config
        if not ray.is_initialized():
            raise RuntimeError("LedgerHandle.open needs an initialized Ray (the executor starts it)")
        name = ledger_actor_name(config, shard)
        writer_id = new_writer_id()
        ctx = ray.get_runtime_context()
        owner = {
            **this_process(),
            "writer_id": writer_id,
            "job_id": ctx.get_job_id(),
            "checkpoint": config.display,
        }
        node_id = ctx.get_node_id()

        in_driver = in_driver and checked.fresh

        def start() -> Any:
            if in_driver:
                return LedgerActor(
                    config,
                    writer_id,
                    fingerprint,
                    description,
                    owner,
                    recent_limit,
                    allow_fingerprint_change,
                    shard=shard,
                    lease=lease,
                    in_driver=True,
                )
            return _start_actor(
                name,
                config.display,
                args=(config, writer_id, fingerprint, description, owner, recent_limit, allow_fingerprint_change),
                kwargs={"shard": shard, "lease": lease},
                max_restarts=max_restarts,
                node_id=node_id,
            )

        handle = cls(
            None,
            name,
            config.display,
            writer_id,
            fingerprint,
            timeout_s,
            shard,
            fresh=checked.fresh,
            in_driver=in_driver,
        )
        handle._start_actor = start
        handle.config = config
        with _open_handles_lock:
            _open_handles[name] = writer_id
        if not (defer_start and checked.fresh):
            handle.start()
        if wait:
            handle.wait_ready()
        return handle

    @property
    def started(self) -> bool:
        """Whether the actor has been submitted (see ``open``'s ``defer_start``)."""
        return self._actor is not None

    def start(self) -> None:
        """Submit the actor unless it is already submitted (or the handle closed). Idempotent, thread-safe."""
        if self._actor is not None:
            return
        with self._start_lock:
            if self._actor is not None or self._closed:
                return
            assert self._start_actor is not None, "a LedgerHandle made outside open() starts with its actor"
            actor = self._start_actor()
            if self.in_driver:
                self._ready = actor.status()
                logger.info(
                    "ledger for checkpoint {}: a new checkpoint; run {} (ledger in the driver)",
                    self.checkpoint,
                    self.writer_id,
                )
            else:
                self._startup = actor.status.remote()
            self._actor = actor

    def wait_ready(self) -> LedgerStatus:
        """Block until the actor has loaded the checkpoint; its status then. Idempotent.

        Raises ``CheckpointError`` (and stops the actor) when it could not start.
        """
        if self.in_driver:
            self._require_open()
            assert self._ready is not None
            return self._ready
        with self._lock:
            if self._ready is not None:
                return self._ready
            actor = self._require_open()
            try:
                status = ray.get(self._startup, timeout=self.timeout_s)
            except (RayActorError, GetTimeoutError) as exc:
                self._closed = True
                self._forget()
                with suppress(RayActorError, ValueError):
                    ray.kill(actor, no_restart=True)
                raise CheckpointError(
                    f"the ledger for checkpoint {self.checkpoint} could not be started: {exc}. "
                    "Nothing was recorded by this run"
                ) from exc
            self._ready = status
            self._startup = None
        logger.info(
            "ledger for checkpoint {}: {} source(s) complete, {} failed; run {} (actor {}, loaded in {:.2f} s)",
            self.checkpoint,
            status.completed_sources,
            status.failed_sources,
            self.writer_id,
            self.name,
            status.load_seconds,
        )
        return status

    # -- calls --------------------------------------------------------------------------

    def _require_open(self) -> Any:
        """The actor (submitted now if it was deferred); raises once the handle is closed."""
        if self._closed:
            raise LedgerUnavailableError(f"the ledger handle for checkpoint {self.checkpoint} is closed")
        self.start()
        return self._actor

    def report(self, reports: Iterable[Report] | ReportBatch) -> LedgerAck:
        """Send one batch and block until it is committed; returns the actor's acknowledgement.

        The acknowledgement holds the ledger's status plus ``seq``, ``duplicate_batch``,
        ``newly_completed``, ``newly_failed`` and ``batch_anomalies`` (see ``LedgerAck``).
        """
        batch = reports if isinstance(reports, ReportBatch) else ReportBatch.from_reports(reports)
        with self._lock:
            actor = self._require_open()
            self._seq += 1
            seq = self._seq
            if self.in_driver:
                return actor.report(batch, self._sender, seq)
            # By value: Ray inlines a small batch in the call (a ray.put first doubled the
            # cost of a call, about 4.4 ms of CPU against 2.2 ms) and stores a large one itself.
            return _call_with_retry(
                lambda: actor.report.remote(batch, self._sender, seq),
                what="report",
                checkpoint=str(self.checkpoint),
                timeout_s=self.timeout_s,
            )

    def completed(self, source_ids: Iterable[str]) -> set[str]:
        """The subset of ``source_ids`` already complete."""
        actor = self._require_open()
        ids = list(source_ids)
        if self.in_driver:
            with self._lock:
                return set(actor.completed(ids))
        return set(
            _call_with_retry(
                lambda: actor.completed.remote(ids),
                what="completed",
                checkpoint=str(self.checkpoint),
                timeout_s=self.timeout_s,
            )
        )

    def status(self) -> LedgerStatus:
        """The ledger's counters, see ``LedgerStatus``."""
        actor = self._require_open()
        if self.in_driver:
            with self._lock:
                return actor.status()
        return _call_with_retry(
            lambda: actor.status.remote(), what="status", checkpoint=str(self.checkpoint), timeout_s=self.timeout_s
        )

    def source_filter(self) -> LedgerSourceFilter:
        """A picklable object for the source stage's workers (``completed(ids) -> set[str]``)."""
        return LedgerSourceFilter(
            self.name,
            NAMESPACE,
            str(self.checkpoint),
            self.timeout_s,
            self.shard,
            self.fresh,
            count=not self.in_driver,
            config=self.config,
        )

    @property
    def actor(self) -> Any:
        """The Ray actor handle (for tests and diagnostics)."""
        return self._actor

    def close(self) -> LedgerStatus | None:
        """Close the store, stop the actor and return its final status; the durable record stays.

        Idempotent. When the actor is already gone this returns ``None`` (what it acknowledged is
        recorded), and also when it was never started (a deferred start, see ``open``): nothing
        was reported, so the checkpoint gets no record of this run and stays fresh.
        """
        with self._lock:
            if self._closed:
                return None
            self._closed = True
            self._forget()
            status = None
            with self._start_lock:  # a start racing with this close finds the handle closed
                if self._actor is None:
                    return None
            if self.in_driver:
                try:
                    return self._actor.close()
                except Exception as exc:  # what was acknowledged is durable; only the final snapshot is missing
                    logger.warning("ledger for {} was not closed cleanly: {!r}", self.checkpoint, exc)
                    return None
            try:
                status = ray.get(self._actor.close.remote(), timeout=self.timeout_s)
            except (RayActorError, GetTimeoutError) as exc:
                logger.warning("ledger actor for {} was not closed cleanly: {}", self.checkpoint, exc)
            with suppress(RayActorError, ValueError):
                ray.kill(self._actor, no_restart=True)
            # ray.kill is asynchronous; wait for the name to be released so that a run opened
            # right after this one finds no actor under it (and does not take it for a leftover).
            if not _wait_until_released(self.name, timeout_s=10.0):
                logger.warning("ledger actor {!r} is still registered 10 s after it was closed", self.name)
            return status

    def _forget(self) -> None:
        with _open_handles_lock:
            if _open_handles.get(self.name) == self.writer_id:
                del _open_handles[self.name]

    def __enter__(self) -> LedgerHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _start_actor(
    name: str,
    checkpoint: str,
    *,
    args: tuple[Any, ...],
    max_restarts: int,
    node_id: str,
    kwargs: dict[str, Any] | None = None,
) -> Any:
    """Create the named actor, replacing a leftover one whose run is known to be dead."""
    remote_cls = _remote_class()
    for _ in range(50):
        _replace_stale_actor(name, checkpoint)
        try:
            return remote_cls.options(
                name=name,
                namespace=NAMESPACE,
                max_restarts=max_restarts,
                max_task_retries=-1,
                max_concurrency=1,
                num_cpus=0,
                scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node_id, soft=False),
            ).remote(*args, **(kwargs or {}))
        except ValueError as exc:  # the name is still registered (a killed actor not yet cleaned up)
            if "already taken" not in str(exc) and "already exists" not in str(exc):
                raise
            time.sleep(0.2)
    raise CheckpointError(
        f"could not start the ledger actor {name!r} for checkpoint {checkpoint}: the name stays taken. "
        "Another run may be starting on the same checkpoint directory"
    )


def _replace_stale_actor(name: str, checkpoint: str) -> None:
    """Kill an actor of ``name`` whose run is dead; raise ``CheckpointError`` if it is alive or cannot be told.

    Only two answers make an actor stale: it is dead (``ActorDiedError``), or it names a run
    whose driver is gone. An actor that does not answer within ``OWNER_TIMEOUT_S`` (busy with a
    long batch, its node slow, restarting) is never killed: the new run is refused.
    """
    try:
        existing = ray.get_actor(name, namespace=NAMESPACE)
    except ValueError:
        return
    try:
        owner: dict[str, Any] | None = ray.get(existing.owner.remote(), timeout=OWNER_TIMEOUT_S)
    except (GetTimeoutError, ActorUnavailableError) as exc:
        raise CheckpointError(
            f"checkpoint {checkpoint} may be in use by another run: its ledger actor {name!r} in this Ray cluster "
            f"did not say which run it belongs to within {OWNER_TIMEOUT_S:.0f} s ({type(exc).__name__}); it may be "
            "busy or restarting, so it is left alone. Fix: wait for that run to finish (or stop it) and retry, or "
            "use another checkpoint location"
        ) from exc
    except RayActorError:
        owner = None  # dead: only its name is left to release
    if owner is not None and owner_alive(owner):
        raise CheckpointError(
            f"checkpoint {checkpoint} is in use by another run (pid {owner.get('pid')} on {owner.get('host')}, "
            f"run {owner.get('writer_id')}). Fix: wait for that run to finish (or stop it), or use another "
            "checkpoint directory"
        )
    logger.warning(
        "replacing a leftover ledger actor {!r} for checkpoint {} from a run that is no longer alive ({})",
        name,
        checkpoint,
        owner,
    )
    with suppress(RayActorError, ValueError):
        ray.kill(existing, no_restart=True)
    _wait_until_released(name, timeout_s=30.0)


def _wait_until_released(name: str, *, timeout_s: float) -> bool:
    """Poll until no actor is registered under ``name``; whether that happened in time."""
    deadline = time.monotonic() + timeout_s
    while ray.is_initialized():
        try:
            ray.get_actor(name, namespace=NAMESPACE)
        except ValueError:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True
