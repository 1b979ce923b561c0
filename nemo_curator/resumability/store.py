"""The checkpoint store: the durable record at the checkpoint location, a node-local LMDB cache, the ledger.

``CheckpointStore.open(checkpoint, fingerprint=...)`` (``checkpoint``: a path, URL or
``CheckpointConfig``) checks the location (``location.open_location``), reads the whole durable
record (``durable.read_checkpoint``: every writer's header, newest snapshot and later segments,
in parallel), checks the pipeline fingerprint against the current writer (the one with the
largest logical start stamp), writes this writer's header (or, for a restarted ledger actor of
the same run, finds it), and builds the ledger: the union of every writer's completions, plus
this writer's failures, in-flight rows, batch tags and recent completions, exactly as its
objects record them. A new run (a new writer id) does not inherit other writers' in-flight
state: those sources are redone.

``apply(batch, sender=, seq=)`` runs, in this order: apply to the in-memory ledger -> write one
durable segment holding the whole ``LedgerUpdate`` and the batch tag (only when the batch changed
something) -> commit the LMDB cache -> return (the actor then acknowledges).

Invariants:
- acknowledged means durable at the checkpoint location: ``apply`` returns only after its segment
  is fsynced and renamed into place (filesystems) or PUT (object stores);
- only this writer writes under ``ledger/<writer_id>/``; every object is written once under a
  unique name, so concurrent drivers sharing a location never contend or overwrite;
- a batch tagged ``(sender, seq)`` is applied at most once (the tag is in its segment);
- if writing the segment (or the cache) fails, the in-memory ledger is rebuilt from the durable
  record and the error is raised: memory never runs ahead of what is durable, and nothing
  unacknowledged is taken as durable;
- with a ``lease`` (the ledger actor passes one), the writer holds a liveness lease at the location
  while it is open (``lease``: a heartbeat written first, then the other writers judged; a live
  writer it may not run beside refuses the open before its header is written); ``close`` marks
  it closed and deletes its heartbeats;
- the LMDB cache (``<cache_dir>/<writer_id>.lmdb``) is rebuilt from the durable record at every
  open; it is never read to decide anything, so a cache that is behind, ahead or different never
  wins, and losing it (a new node, a wiped ``cache_dir``) loses nothing.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import lmdb
from loguru import logger

from nemo_curator.resumability.config import CheckpointConfig, coerce_checkpoint
from nemo_curator.resumability.digests import DEFAULT_DIGEST_BUDGET
from nemo_curator.resumability.durable import CheckpointRead, WriterLog, read_checkpoint
from nemo_curator.resumability.errors import CheckpointError, FingerprintMismatchError
from nemo_curator.resumability.keys import (
    encode_completion_records,
    encode_recent_record,
    pack_u64,
    row_prefix,
    source_id_from_key,
    source_key,
)
from nemo_curator.resumability.layout import (
    ALL_DBS,
    APP_MARKER,
    DB_COMPLETED,
    DB_FAILED,
    DB_INFLIGHT,
    DB_META,
    DB_RECENT,
    DB_REVOKED,
    DB_SENDERS,
    FORMAT_VERSION,
    INITIAL_MAP_SIZE,
    LOCK_SUFFIX,
    acquire_env,
    encode_meta,
    release_env,
)
from nemo_curator.resumability.lease import Heartbeat, LeaseSettings, check_no_conflict
from nemo_curator.resumability.ledger import DEFAULT_RECENT_LIMIT, LedgerUpdate, SourceLedger
from nemo_curator.resumability.liveness import this_process
from nemo_curator.resumability.location import Location, describe_access_error, open_location
from nemo_curator.resumability.objects import Beat, WriterHeader, new_writer_id
from nemo_curator.resumability.preflight import check_fingerprint
from nemo_curator.resumability.records import Segment, WriterState
from nemo_curator.resumability.report import Report, ReportBatch
from nemo_curator.resumability.shard import Shard
from nemo_curator.resumability.status import LedgerStatus

#: Longest failure reason stored (characters).
MAX_REASON_CHARS = 4000
#: A writer writes a snapshot (and deletes the segments it covers) after this many segments.
COMPACT_EVERY = 256


def _read(location: Location, config: CheckpointConfig, recent_limit: int, writer_id: str) -> CheckpointRead:
    """The whole durable record, with the digests of recent completions of ``writer_id`` only."""
    try:
        return read_checkpoint(location, recent_limit=recent_limit, recent_for={writer_id})
    except CheckpointError:
        raise
    except Exception as exc:
        raise describe_access_error(config, exc, "reading the checkpoint") from exc


class CheckpointStore:
    """This writer's durable log and LMDB cache, and the ledger loaded from the whole checkpoint.

    Use ``CheckpointStore.open``; ``apply(reports, sender=..., seq=...)`` applies one batch to
    ``self.ledger`` and makes it durable before returning.
    """

    def __init__(
        self,
        config: CheckpointConfig,
        location: Location,
        writer_id: str,
        fingerprint: str,
        cache_path: Path,
        recent_limit: int,
        map_size: int,
        compact_every: int,
        digest_budget: int = DEFAULT_DIGEST_BUDGET,
    ) -> None:
        self.config = config
        self.location = location
        #: The location as shown in messages (a path or a URL).
        self.checkpoint = config.display
        self.writer_id = writer_id
        self.fingerprint = fingerprint
        #: The node-local LMDB cache file.
        self.path = cache_path
        self._map_size = map_size
        self._env: lmdb.Environment | None = None
        self._recent_limit = recent_limit
        self._compact_every = compact_every
        self._digest_budget = digest_budget
        self._dbs: dict[bytes, Any] = {}
        self._seqs: dict[str, int] = {}
        self._failed_open: set[bytes] = set()
        self.meta: dict[str, Any] = {}
        self.header: WriterHeader | None = None
        self._log: WriterLog | None = None
        self._clock = 0
        self._own_completed_at_load = 0
        self._next_record = 0
        self.ledger = SourceLedger(recent_limit=recent_limit, digest_budget=digest_budget)
        self.commits = 0
        self.load_seconds = 0.0
        self.other_writers = 0
        self._broken: BaseException | None = None
        self._heartbeat: Heartbeat | None = None
        self.shard: Shard | None = None

    # -- opening ----------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        checkpoint: str | os.PathLike | CheckpointConfig,
        *,
        fingerprint: str,
        description: list[dict[str, Any]] | None = None,
        writer_id: str | None = None,
        allow_fingerprint_change: bool = False,
        verify_fingerprint: bool = True,
        owner: dict[str, Any] | None = None,
        map_size: int = INITIAL_MAP_SIZE,
        recent_limit: int = DEFAULT_RECENT_LIMIT,
        compact_every: int = COMPACT_EVERY,
        digest_budget: int = DEFAULT_DIGEST_BUDGET,
        lease: LeaseSettings | None = None,
        shard: Shard | None = None,
    ) -> CheckpointStore:
        """Open (create or reopen) ``writer_id``'s record at ``checkpoint`` and load the ledger.

        ``verify_fingerprint=False`` skips the fingerprint comparison with other writers (the
        driver already did it in ``preflight``); a reopened own record must still match. With
        ``lease`` the writer takes a liveness lease first and refuses (``CheckpointError``) to
        run beside a live writer whose shard is not compatible with ``shard`` (see ``lease``).
        """
        from nemo_curator.resumability.checkpoint import validate_cache_dir

        config = coerce_checkpoint(checkpoint)
        start = time.perf_counter()
        location = open_location(config, writable=True)
        cache_dir = validate_cache_dir(config.resolved_cache_dir(), config)
        writer_id = writer_id or new_writer_id()
        store = cls(
            config,
            location,
            writer_id,
            fingerprint,
            cache_dir / f"{writer_id}.lmdb",
            recent_limit,
            map_size,
            compact_every,
            digest_budget,
        )
        read = _read(location, config, recent_limit, writer_id)
        overridden = None
        if verify_fingerprint:
            others = [h for w, h in read.headers.items() if w != writer_id]
            overridden = check_fingerprint(config.display, others, fingerprint, description, allow_fingerprint_change)
        store.shard = shard
        if lease is not None:
            store._take_lease(read, lease, owner)
        try:
            store._init_header(read, description, owner or {}, overridden)
            store._load(read)
        except BaseException:
            store._release()
            if store._heartbeat is not None:
                store._heartbeat.stop(delete=True)
            raise
        store.load_seconds = time.perf_counter() - start
        return store

    def _take_lease(self, read: CheckpointRead, settings: LeaseSettings, owner: dict[str, Any] | None) -> None:
        """Write the first heartbeat, then refuse if a live writer may not run beside this one."""
        beat = Beat(
            writer_id=self.writer_id,
            owner=dict(owner) if owner else {**this_process(), "writer_id": self.writer_id},
            shard=self.shard.to_list() if self.shard is not None else None,
            fingerprint=self.fingerprint,
            interval_s=settings.interval_s,
        )
        heartbeat = Heartbeat(self.location, beat, settings)
        try:
            now = heartbeat.beat_now()
        except Exception as exc:
            raise describe_access_error(self.config, exc, "writing this run's heartbeat object") from exc
        closed = {w: state.closed is not None for w, state in read.states.items()}
        try:
            check_no_conflict(
                self.location,
                closed,
                shard=self.shard,
                lease_s=settings.lease_s,
                open_here=lambda _writer: True,
                me=self.writer_id,
                now=now,
            )
        except BaseException:
            heartbeat.stop(delete=True)
            raise
        heartbeat.start()
        self._heartbeat = heartbeat

    def _init_header(
        self,
        read: CheckpointRead,
        description: list[dict[str, Any]] | None,
        owner: dict[str, Any],
        overridden: str | None,
    ) -> None:
        existing = read.headers.get(self.writer_id)
        if existing is not None:
            if existing.fingerprint != self.fingerprint:
                raise FingerprintMismatchError(
                    f"run {self.writer_id} in checkpoint {self.checkpoint} was written with pipeline fingerprint "
                    f"{existing.fingerprint}, but it was reopened with {self.fingerprint}; a run's pipeline cannot "
                    "change while it runs. Start a new run (a new writer) instead",
                    directory=self.checkpoint,
                    stored=existing.fingerprint,
                    current=self.fingerprint,
                )
            self.header = existing
            return
        info: dict[str, Any] = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "process": this_process(),
            "owner": owner,
            "created": time.time(),
            "format_version": FORMAT_VERSION,
        }
        if overridden is not None:
            info["overrode_fingerprint"] = overridden
        if self.shard is not None:
            info["shard"] = self.shard.to_list()
        header = WriterHeader(
            writer_id=self.writer_id,
            fingerprint=self.fingerprint,
            start_stamp=read.union.max_stamp + 1,
            description=description,
            info=info,
        )
        log = WriterLog(
            self.location,
            self.writer_id,
            state=None,
            objects=None,
            recent_limit=self._recent_limit,
            compact_every=self._compact_every,
        )
        try:
            log.write_header(header)
        except Exception as exc:
            raise describe_access_error(self.config, exc, "writing this run's header object") from exc
        read.headers[self.writer_id] = header
        self.header = header

    def _load(self, read: CheckpointRead) -> None:
        """Build the ledger: the union of every writer's completions, this writer's own state."""
        assert self.header is not None
        own = read.states.get(self.writer_id) or WriterState(self.writer_id)
        self._log = WriterLog(
            self.location,
            self.writer_id,
            state=own,
            objects=read.objects.get(self.writer_id),
            recent_limit=self._recent_limit,
            compact_every=self._compact_every,
        )
        self._log.state.closed = None  # reopened: running again
        self._clock = max(read.union.max_stamp, self.header.start_stamp, own.stamp)
        self.other_writers = sum(1 for w in read.headers if w != self.writer_id)
        self._own_completed_at_load = len(own.completed)
        self._failed_open = set(read.union.failed)
        self._seqs = dict(own.senders)
        self.meta = {
            **self.header.info,
            "writer_id": self.writer_id,
            "fingerprint": self.fingerprint,
            "start_stamp": self.header.start_stamp,
            **own.meta,
        }
        failed_run = [source_id_from_key(k) for k in own.failed]
        # The ledger takes the union's compact completed set over (``read`` is not used after this).
        self.ledger = SourceLedger(
            read.union.completed, failed_run, recent_limit=self._recent_limit, digest_budget=self._digest_budget
        )
        self.ledger.restore_recent(own.recent.items(), own.completed)
        rows = [(key, tkey, num, exp) for key, tasks in own.inflight.items() for tkey, (num, exp) in tasks.items()]
        fix = self.ledger.restore(rows)
        self._rebuild_cache(own)
        if fix.needs_commit():
            logger.warning(
                "checkpoint {}: run {} held in-flight state that was already settled ({} completed, {} failed); fixed",
                self.checkpoint,
                self.writer_id,
                len(fix.completed),
                len(fix.failed),
            )
            self.commit(fix)

    # -- the LMDB cache -----------------------------------------------------------------

    def _rebuild_cache(self, own: WriterState) -> None:
        """Replace the LMDB cache with exactly this writer's durable state."""
        self._release()
        for path in (self.path, Path(str(self.path) + LOCK_SUFFIX)):
            path.unlink(missing_ok=True)
        env = acquire_env(self.path, readonly=False, map_size=self._map_size, durable=False)
        self._env = env
        self._next_record = 0
        with env.begin(write=True) as txn:
            for name in ALL_DBS:
                self._dbs[name] = env.open_db(name, txn=txn, create=True)
            meta_db = self._dbs[DB_META]
            for key, value in {**self.meta, "app": APP_MARKER, "durable_upto": own.upto}.items():
                txn.put(key.encode(), encode_meta(value), db=meta_db)
            for stamp, keys in own.completed.by_stamp():
                for value in encode_completion_records(stamp, keys):
                    txn.put(pack_u64(self._next_record), value, db=self._dbs[DB_COMPLETED], append=True)
                    self._next_record += 1
            for key, (stamp, reason) in own.failed.items():
                txn.put(key, pack_u64(stamp) + reason.encode(errors="replace"), db=self._dbs[DB_FAILED])
            for key, stamp in own.revoked.items():
                txn.put(key, pack_u64(stamp), db=self._dbs[DB_REVOKED])
            for key, tasks in own.inflight.items():
                for tkey, (num, exp) in tasks.items():
                    txn.put(row_prefix(key) + tkey.encode(), b"%d/2^%d" % (num, exp), db=self._dbs[DB_INFLIGHT])
            for sender, seq in own.senders.items():
                txn.put(sender.encode(), pack_u64(seq), db=self._dbs[DB_SENDERS])
            if own.recent:
                txn.put(pack_u64(0), encode_recent_record(list(own.recent.items())), db=self._dbs[DB_RECENT])

    def _commit_cache(self, update: LedgerUpdate, stamp: int, sender: str | None, seq: int | None) -> None:
        env = self._require_env()
        for _ in range(64):
            try:
                with env.begin(write=True) as txn:
                    record = self._write(txn, update, stamp, sender, seq)
            except lmdb.MapFullError:
                new_size = env.info()["map_size"] * 2
                logger.debug("ledger cache {}: growing the LMDB map to {} bytes", self.path, new_size)
                env.set_mapsize(new_size)
                continue
            self._next_record = record
            return
        raise CheckpointError(f"ledger cache {self.path}: the LMDB map could not be grown enough for one batch")

    def _write(
        self, txn: lmdb.Transaction, update: LedgerUpdate, stamp: int, sender: str | None, seq: int | None
    ) -> int:
        """Write ``update`` to the cache; returns the next completion record number."""
        dbs = self._dbs
        packed = pack_u64(stamp)
        record = self._next_record
        if update.completed_keys:
            for value in encode_completion_records(stamp, update.completed_keys):
                txn.put(pack_u64(record), value, db=dbs[DB_COMPLETED], append=True)
                record += 1
        for sid, reason in update.failed.items():
            txn.put(source_key(sid), packed + reason[:MAX_REASON_CHARS].encode(errors="replace"), db=dbs[DB_FAILED])
        for sid in update.revoked:
            txn.put(source_key(sid), packed, db=dbs[DB_REVOKED])
        if update.inflight_cleared:
            cursor = txn.cursor(db=dbs[DB_INFLIGHT])
            for key in update.inflight_cleared:
                prefix = row_prefix(key)
                if cursor.set_range(prefix):
                    while cursor.key().startswith(prefix):
                        if not cursor.delete():
                            break
        if update.inflight_added:
            items = sorted(
                (row_prefix(key) + tkey.encode(), b"%d/2^%d" % (num, exp))
                for key, tkey, num, exp in update.inflight_added
            )
            txn.cursor(db=dbs[DB_INFLIGHT]).putmulti(items)
        if update.completed_keys:
            entries = list(zip(update.completed_keys, update.completed_digests, strict=True))
            txn.put(pack_u64(record), encode_recent_record(entries), db=dbs[DB_RECENT])
        if sender is not None and seq is not None:
            txn.put(sender.encode(), pack_u64(seq), db=dbs[DB_SENDERS])
        assert self._log is not None
        txn.put(b"durable_upto", encode_meta(self._log.state.upto), db=dbs[DB_META])
        return record

    # -- writing ----------------------------------------------------------------------

    def _require_env(self) -> lmdb.Environment:
        if self._env is None:
            raise CheckpointError(f"checkpoint store for {self.checkpoint} (cache {self.path}) is closed")
        return self._env

    def last_seq(self, sender: str) -> int:
        """The last batch sequence number applied for ``sender`` (-1 if none)."""
        return self._seqs.get(sender, -1)

    def apply(
        self,
        reports: Iterable[Report] | ReportBatch,
        *,
        sender: str | None = None,
        seq: int | None = None,
        meta: dict[str, Any] | None = None,
    ) -> LedgerUpdate | None:
        """Apply one batch and make it durable; ``None`` when ``(sender, seq)`` was already applied."""
        if self._broken is not None:
            raise CheckpointError(
                f"checkpoint store for {self.checkpoint} failed earlier and could not reload its durable record "
                f"({self._broken}); this run cannot record progress. Rerun to resume from what was acknowledged"
            ) from self._broken
        if sender is not None and seq is not None and seq <= self._seqs.get(sender, -1):
            return None
        batch = reports if isinstance(reports, ReportBatch) else ReportBatch.from_reports(reports)
        update = self.ledger.apply_batch(batch)
        try:
            self.commit(update, sender=sender, seq=seq, meta=meta)
        except BaseException as exc:
            logger.error(
                "checkpoint {}: recording a ledger batch failed ({}); reloading the ledger from the durable record",
                self.checkpoint,
                exc,
            )
            self._reload_after_failure()
            if isinstance(exc, Exception) and not isinstance(exc, CheckpointError):
                raise describe_access_error(self.config, exc, "writing a ledger segment") from exc
            raise
        return update

    def _reload_after_failure(self) -> None:
        try:
            self.reload()
        except BaseException as exc:
            self._broken = exc
            logger.error("checkpoint {}: reloading the durable record failed too ({})", self.checkpoint, exc)

    def reload(self) -> None:
        """Rebuild the in-memory ledger (and the cache) from the durable record."""
        read = _read(self.location, self.config, self._recent_limit, self.writer_id)
        if self.writer_id not in read.headers:
            raise CheckpointError(
                f"checkpoint {self.checkpoint}: this run's header object (ledger/{self.writer_id}/header-*.rec) has "
                "disappeared. Fix: check that nothing else deletes objects in the checkpoint location"
            )
        self.header = read.headers[self.writer_id]
        self._load(read)

    def commit(
        self,
        update: LedgerUpdate,
        *,
        sender: str | None = None,
        seq: int | None = None,
        meta: dict[str, Any] | None = None,
    ) -> None:
        """Make ``update`` and its batch tag durable (one segment), then commit the cache.

        A batch that changed nothing writes nothing (resending it is harmless); ``meta`` is
        recorded with the next segment or snapshot.
        """
        if meta:
            self.meta.update(meta)
        if sender is not None and seq is not None:
            self._seqs[sender] = max(seq, self._seqs.get(sender, -1))
        if not update.needs_commit():
            return
        log = self._log
        assert log is not None
        stamp = self._clock + 1
        seg = Segment(
            writer_id=self.writer_id,
            number=log.next_number,
            stamp=stamp,
            completed=list(update.completed_keys),
            recent=list(zip(update.completed_keys, update.completed_digests, strict=True)),
            failed={source_key(sid): reason[:MAX_REASON_CHARS] for sid, reason in update.failed.items()},
            revoked=[source_key(sid) for sid in update.revoked],
            added=list(update.inflight_added),
            cleared=list(update.inflight_cleared),
            sender=sender,
            seq=seq,
            time=time.time(),
            meta=dict(meta or {}),
        )
        log.append(seg)
        self._clock = stamp
        self.commits += 1
        failed_open = self._failed_open
        for key in seg.failed:
            failed_open.add(key)
        if failed_open:
            failed_open.difference_update(update.completed_keys)
        self._commit_cache(update, stamp, sender, seq)
        if log.compaction_due():
            log.compact(meta=self.meta_counters())

    def meta_counters(self) -> dict[str, Any]:
        """The counters recorded in snapshots (``sources_seen`` / ``sources_skipped`` when the actor set them)."""
        return {k: v for k, v in self.meta.items() if k in ("sources_seen", "sources_skipped")}

    # -- queries ----------------------------------------------------------------------

    def completed(self, source_ids: Iterable[str]) -> list[str]:
        return self.ledger.completed_among(source_ids)

    @property
    def segments_written(self) -> int:
        return 0 if self._log is None else self._log.appended

    def status(self) -> LedgerStatus:
        """Counters of this writer and its ledger (``to_dict()`` for JSON)."""
        ledger = self.ledger
        stats = ledger.stats
        return LedgerStatus(
            checkpoint=self.checkpoint,
            writer_id=self.writer_id,
            fingerprint=self.fingerprint,
            completed_sources=ledger.completed_count,
            completed_this_run=self._own_completed_at_load + stats.completed,
            failed_sources=len(self._failed_open),
            failed_this_run=ledger.failed_this_run_count,
            in_flight_sources=ledger.in_flight_count,
            reports=stats.reports,
            applied=stats.applied,
            duplicates=stats.duplicates,
            ignored=stats.ignored,
            anomalies=stats.anomalies,
            commits=self.commits,
            load_seconds=self.load_seconds,
            other_writers=self.other_writers,
        )

    def compact(self) -> bool:
        """Write a snapshot of this writer's record now (see ``WriterLog.compact``)."""
        return False if self._log is None else self._log.compact(meta=self.meta_counters())

    def close(self, *, remove_cache: bool = True) -> None:
        """Write a final snapshot (marked closed), end the lease, release and remove the cache.

        What was durable stays. A failed snapshot is only logged: the segments it would replace
        stay valid (and, its heartbeats deleted, the writer is no longer live either way).
        """
        heartbeat, self._heartbeat = self._heartbeat, None
        if heartbeat is not None:
            heartbeat.stop(delete=False)
        if self._env is None and self._log is None:
            if heartbeat is not None:
                heartbeat.stop(delete=True)
            return
        log, self._log = self._log, None
        try:
            if log is not None and self._broken is None:
                log.compact(closed=time.time(), meta=self.meta_counters())
        finally:
            if heartbeat is not None:
                heartbeat.stop(delete=True)
            self._release()
            if remove_cache:
                for path in (self.path, Path(str(self.path) + LOCK_SUFFIX)):
                    path.unlink(missing_ok=True)
                with_parent = self.path.parent
                if with_parent.is_dir() and not any(with_parent.iterdir()):
                    shutil.rmtree(with_parent, ignore_errors=True)

    def _release(self) -> None:
        env = self._env
        if env is not None:
            self._env = None
            release_env(self.path, env)

    def __enter__(self) -> CheckpointStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
