"""The checkpoint store: one LMDB file per writer, a union of all writers at start-up.

``CheckpointStore.open(dir, fingerprint=...)`` validates the directory, reads every other
writer's file read-only and builds the union of what they completed (a source completed in any
file is complete; failure records of such sources are ignored), checks the pipeline
fingerprint, then creates this writer's own file (or reopens it: a restarted ledger actor of
the same run passes the same ``writer_id`` and reloads its in-flight state exactly). A new run
(a new writer id) does not inherit other writers' in-flight state: those sources are redone.

Invariants:
- only this process writes ``<dir>/ledger/<writer_id>.lmdb``; other writers' files are only read,
  so concurrent drivers sharing a directory never contend for a write lock or corrupt each other;
- each ``commit`` (one applied batch) is exactly one LMDB write transaction; when ``commit``
  returns the batch is durable (synced), so an acknowledged report is never lost;
- a batch tagged ``(sender, seq)`` is applied at most once: the sequence number is committed in
  the same transaction, so a batch resent after a crash or a lost acknowledgement is a no-op;
- if a commit fails, the in-memory ledger is rebuilt from the file, so memory never runs ahead
  of what is recorded.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import lmdb
from loguru import logger

from nemo_curator.resumability.checkpoint import validate_checkpoint_dir
from nemo_curator.resumability.digests import DEFAULT_DIGEST_BUDGET, floor_cost
from nemo_curator.resumability.errors import CheckpointError, FingerprintMismatchError
from nemo_curator.resumability.fingerprint import diff_descriptions
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
    WriterFile,
    acquire_env,
    encode_meta,
    new_writer_id,
    release_env,
    writer_path,
)
from nemo_curator.resumability.ledger import DEFAULT_RECENT_LIMIT, LedgerUpdate, SourceLedger
from nemo_curator.resumability.liveness import this_process
from nemo_curator.resumability.report import Report, ReportBatch
from nemo_curator.resumability.scan import WriterInfo, current_writer, iso_time, scan_checkpoint, writer_infos
from nemo_curator.resumability.status import LedgerStatus

#: Longest failure reason stored (characters).
MAX_REASON_CHARS = 4000


def check_fingerprint(
    checkpoint: Path,
    infos: Iterable[WriterInfo],
    fingerprint: str,
    description: list[dict[str, Any]] | None,
    allow_fingerprint_change: bool,
) -> str | None:
    """Raise ``FingerprintMismatchError`` if the checkpoint was written by another pipeline.

    Returns the overridden fingerprint when ``allow_fingerprint_change`` accepted a mismatch
    (after logging a loud warning), else ``None``.
    """
    latest = current_writer(infos)
    if latest is None or latest.fingerprint == fingerprint:
        return None
    stored = latest.fingerprint
    diffs = diff_descriptions(latest.meta.get("fingerprint_description"), description or [])
    lines = [
        f"checkpoint {checkpoint} was written by a different pipeline.",
        f"  stored fingerprint:  {stored} (run {latest.writer_id}, started {iso_time(latest.created)})",
        f"  current fingerprint: {fingerprint}",
    ]
    if diffs:
        lines.append("  what differs:")
        lines.extend(f"    - {d}" for d in diffs)
    if allow_fingerprint_change:
        lines.append(
            "  the pipeline change is allowed (executor config allow_pipeline_change=True): reusing it anyway. "
            "Sources it records as complete are SKIPPED even though the pipeline changed; their outputs are those "
            "of the old pipeline."
        )
        logger.warning("\n".join(lines))
        return stored
    lines.append(
        "Resuming would skip sources as complete that the changed pipeline never processed. Ways out:\n"
        "  - use a new (empty) checkpoint directory for the changed pipeline, or\n"
        '  - or reuse this checkpoint anyway: pass config={"allow_pipeline_change": True} to the executor '
        "(LedgerHandle.open(..., allow_fingerprint_change=True) directly); a warning is logged and the sources it "
        "records as complete are skipped."
    )
    raise FingerprintMismatchError("\n".join(lines), directory=str(checkpoint), stored=stored, current=fingerprint)


def preflight(
    checkpoint_dir: str | os.PathLike,
    fingerprint: str,
    description: list[dict[str, Any]] | None = None,
    *,
    allow_fingerprint_change: bool = False,
) -> Path:
    """Validate a checkpoint directory and its pipeline fingerprint without writing any record.

    Returns the resolved directory. Raises ``CheckpointError`` / ``FingerprintMismatchError``.
    """
    checkpoint = validate_checkpoint_dir(checkpoint_dir, check_ledger_files=False)
    check_fingerprint(checkpoint, writer_infos(checkpoint), fingerprint, description, allow_fingerprint_change)
    return checkpoint


class CheckpointStore:
    """This writer's LMDB file and the ledger loaded from the whole checkpoint directory.

    Use ``CheckpointStore.open``; ``apply(reports, sender=..., seq=...)`` applies one batch to
    ``self.ledger`` and commits it in one transaction before returning.
    """

    def __init__(
        self,
        checkpoint: Path,
        writer_id: str,
        fingerprint: str,
        env: lmdb.Environment,
        path: Path,
        recent_limit: int,
        digest_budget: int = DEFAULT_DIGEST_BUDGET,
    ) -> None:
        self.checkpoint = checkpoint
        self.writer_id = writer_id
        self.fingerprint = fingerprint
        self.path = path
        self._env: lmdb.Environment | None = env
        self._recent_limit = recent_limit
        self._digest_budget = digest_budget
        self._dbs: dict[bytes, Any] = {}
        self._seqs: dict[str, int] = {}
        self._failed_open: set[bytes] = set()
        self.meta: dict[str, Any] = {}
        self._own_completed_at_load = 0
        self._next_record = 0
        # The recent-completion log: (record number, sources in it), oldest first.
        self._recent_log: deque[tuple[int, int]] = deque()
        self._recent_total = 0
        self.ledger = SourceLedger(recent_limit=recent_limit, digest_budget=digest_budget)
        self.commits = 0
        self.load_seconds = 0.0
        self.other_writers = 0

    # -- opening ----------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        checkpoint_dir: str | os.PathLike,
        *,
        fingerprint: str,
        description: list[dict[str, Any]] | None = None,
        writer_id: str | None = None,
        allow_fingerprint_change: bool = False,
        verify_fingerprint: bool = True,
        owner: dict[str, Any] | None = None,
        map_size: int = INITIAL_MAP_SIZE,
        recent_limit: int = DEFAULT_RECENT_LIMIT,
        digest_budget: int = DEFAULT_DIGEST_BUDGET,
    ) -> CheckpointStore:
        """Open (create or reopen) ``writer_id``'s file in ``checkpoint_dir`` and load the ledger.

        ``verify_fingerprint=False`` skips the fingerprint comparison with other writers (the
        driver already did it in ``preflight``); a reopened own file must still match.
        """
        # Every ledger file is opened (and so checked) below; validation need not open them first.
        checkpoint = validate_checkpoint_dir(checkpoint_dir, check_ledger_files=False)
        writer_id = writer_id or new_writer_id()
        path = writer_path(checkpoint, writer_id)
        start = time.perf_counter()
        overridden = None
        if verify_fingerprint:
            others = writer_infos(checkpoint, exclude=path)
            overridden = check_fingerprint(checkpoint, others, fingerprint, description, allow_fingerprint_change)
        env = acquire_env(path, readonly=False, map_size=map_size)
        store = cls(checkpoint, writer_id, fingerprint, env, path, recent_limit, digest_budget)
        try:
            store._init_file(description, owner or {}, overridden)
            store._load()
        except BaseException:
            store._release()  # without marking the file closed: it may not be ours to write
            raise
        store.load_seconds = time.perf_counter() - start
        return store

    def _init_file(
        self, description: list[dict[str, Any]] | None, owner: dict[str, Any], overridden: str | None
    ) -> None:
        env = self._require_env()
        with env.begin(write=True) as txn:
            for name in ALL_DBS:
                self._dbs[name] = env.open_db(name, txn=txn, create=True)
            meta_db = self._dbs[DB_META]
            existing = {bytes(k).decode(): bytes(v) for k, v in txn.cursor(meta_db).iternext()}
            now = time.time()
            info = {
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "process": this_process(),
                "owner": owner,
                "updated": now,
                "opened": now,
            }
            if existing:
                app = _json(existing.get("app"))
                if app != APP_MARKER or _json(existing.get("writer_id")) != self.writer_id:
                    raise CheckpointError(
                        f"{self.path} is not this run's ledger file (app {app!r}, writer "
                        f"{_json(existing.get('writer_id'))!r}); use a new checkpoint directory"
                    )
                stored = _json(existing.get("fingerprint"))
                if stored != self.fingerprint:
                    raise FingerprintMismatchError(
                        f"ledger file {self.path} of run {self.writer_id} was written with pipeline fingerprint "
                        f"{stored}, but it was reopened with {self.fingerprint}; a run's pipeline cannot change "
                        "while it runs. Start a new run (a new writer) instead",
                        directory=str(self.checkpoint),
                        stored=str(stored),
                        current=self.fingerprint,
                    )
                info["reopened"] = int(_json(existing.get("reopened")) or 0) + 1
            else:
                info.update(
                    {
                        "app": APP_MARKER,
                        "format_version": FORMAT_VERSION,
                        "fingerprint": self.fingerprint,
                        "fingerprint_description": description,
                        "created": now,
                        "writer_id": self.writer_id,
                        "reopened": 0,
                    }
                )
                if overridden is not None:
                    info["overrode_fingerprint"] = overridden
            for key, value in info.items():
                txn.put(key.encode(), encode_meta(value), db=meta_db)
            txn.delete(b"closed", db=meta_db)

    def _load(self) -> None:
        """Build the ledger: the union of every file's completions, this writer's failed and in-flight state."""
        scan = scan_checkpoint(self.checkpoint)
        self.other_writers = sum(1 for w in scan.writers if w.info.path.name != self.path.name)
        self._own_completed_at_load = sum(w.completed for w in scan.writers if w.info.path.name == self.path.name)
        self._failed_open = set(scan.failed)
        own = WriterFile.open(self.path)
        if own is None:  # cannot happen: _init_file wrote metadata
            raise CheckpointError(f"ledger file {self.path} could not be read back after creation")
        with own:
            failed_run = [source_id_from_key(k) for k in own.failed()]
            self.ledger = SourceLedger(
                scan.completed, failed_run, recent_limit=self._recent_limit, digest_budget=self._digest_budget
            )
            self.meta = dict(own.meta)
            self._next_record = own.last_completion_record() + 1
            rows = list(own.inflight_rows())
            self._seqs = own.senders()
            self._recent_log.clear()
            self._recent_total = 0
            recent: list[tuple[bytes, bytes | None]] = []
            for number, _, entries in own.recent_records():
                weight = _recent_weight(entries)
                self._recent_log.append((number, weight))
                self._recent_total += weight
                recent.extend(entries)
            completed_now: set[bytes] = set()
            own.add_completed_to(completed_now)
            self.ledger.restore_recent(recent, completed_now)
        fix = self.ledger.restore(rows)
        if fix.needs_commit():
            logger.warning(
                "ledger file {} held in-flight state that was already settled ({} completed, {} failed); fixed",
                self.path,
                len(fix.completed),
                len(fix.failed),
            )
            self.commit(fix)

    # -- writing ----------------------------------------------------------------------

    def _require_env(self) -> lmdb.Environment:
        if self._env is None:
            raise CheckpointError(f"checkpoint store {self.path} is closed")
        return self._env

    def last_seq(self, sender: str) -> int:
        """The last batch sequence number committed for ``sender`` (-1 if none)."""
        return self._seqs.get(sender, -1)

    def apply(
        self,
        reports: Iterable[Report] | ReportBatch,
        *,
        sender: str | None = None,
        seq: int | None = None,
        meta: dict[str, Any] | None = None,
    ) -> LedgerUpdate | None:
        """Apply one batch and commit it; ``None`` when ``(sender, seq)`` was already committed."""
        if sender is not None and seq is not None and seq <= self._seqs.get(sender, -1):
            return None
        batch = reports if isinstance(reports, ReportBatch) else ReportBatch.from_reports(reports)
        update = self.ledger.apply_batch(batch)
        try:
            self.commit(update, sender=sender, seq=seq, meta=meta)
        except BaseException:
            logger.error("committing a ledger batch to {} failed; reloading the ledger from the file", self.path)
            self.reload()
            raise
        return update

    def reload(self) -> None:
        """Rebuild the in-memory ledger from the files (after a failed commit)."""
        self._load()

    def commit(
        self,
        update: LedgerUpdate,
        *,
        sender: str | None = None,
        seq: int | None = None,
        meta: dict[str, Any] | None = None,
    ) -> None:
        """Persist ``update``, the batch tag and ``meta`` entries in one write transaction.

        Grows the LMDB map and retries when it is full.
        """
        if not update.needs_commit() and sender is None and not meta:
            return
        env = self._require_env()
        for _ in range(64):
            try:
                with env.begin(write=True) as txn:
                    next_record, appended, pruned = self._write(txn, update, sender, seq)
                    if meta:
                        meta_db = self._dbs[DB_META]
                        for key, value in meta.items():
                            txn.put(key.encode(), encode_meta(value), db=meta_db)
            except lmdb.MapFullError:
                new_size = env.info()["map_size"] * 2
                logger.debug("ledger file {}: growing the LMDB map to {} bytes", self.path, new_size)
                env.set_mapsize(new_size)
                continue
            self.commits += 1
            self._next_record = next_record
            for _ in range(pruned):
                self._recent_total -= self._recent_log.popleft()[1]
            if appended is not None:
                self._recent_log.append(appended)
                self._recent_total += appended[1]
            if sender is not None and seq is not None:
                self._seqs[sender] = seq
            if meta:
                self.meta.update(meta)
            failed_open = self._failed_open
            for sid in update.failed:
                failed_open.add(source_key(sid))
            if failed_open:
                failed_open.difference_update(update.completed_keys)
            return
        raise CheckpointError(f"ledger file {self.path}: the LMDB map could not be grown enough for one batch")

    def _write(
        self, txn: lmdb.Transaction, update: LedgerUpdate, sender: str | None, seq: int | None
    ) -> tuple[int, tuple[int, int] | None, int]:
        """Write ``update``.

        Returns the next completion record number, the ``(number, sources)`` of the appended
        recent-completion record (or ``None``) and how many old records were pruned; the
        caller applies them to its bookkeeping once the transaction committed.
        """
        dbs = self._dbs
        now_ns = time.time_ns()
        now = pack_u64(now_ns)
        record = self._next_record
        if update.completed_keys:
            completed_db = dbs[DB_COMPLETED]
            for value in encode_completion_records(now_ns, update.completed_keys):
                txn.put(pack_u64(record), value, db=completed_db, append=True)
                record += 1
        if update.failed:
            items = sorted(
                (source_key(sid), now + reason[:MAX_REASON_CHARS].encode(errors="replace"))
                for sid, reason in update.failed.items()
            )
            txn.cursor(db=dbs[DB_FAILED]).putmulti(items)
        if update.revoked:
            revoked_db = dbs[DB_REVOKED]
            for sid in update.revoked:
                txn.put(source_key(sid), now, db=revoked_db)
        if update.inflight_cleared:
            cursor = txn.cursor(db=dbs[DB_INFLIGHT])
            for key in update.inflight_cleared:
                prefix = row_prefix(key)
                if cursor.set_range(prefix):
                    while cursor.key().startswith(prefix):
                        if not cursor.delete():
                            break
        if update.inflight_added:
            prefixes: dict[bytes, bytes] = {}
            items = []
            # Row key = prefix + task key; value = ``keys.encode_credit`` inlined (one row per in-flight report).
            for key, tkey, num, exp in update.inflight_added:
                prefix = prefixes.get(key)
                if prefix is None:
                    prefix = prefixes[key] = row_prefix(key)
                items.append((prefix + tkey.encode(), b"%d/2^%d" % (num, exp)))
            items.sort()
            txn.cursor(db=dbs[DB_INFLIGHT]).putmulti(items)
        appended, pruned = self._write_recent(txn, update)
        if sender is not None and seq is not None:
            txn.put(sender.encode(), pack_u64(seq), db=dbs[DB_SENDERS])
        txn.put(b"updated", encode_meta(time.time()), db=dbs[DB_META])
        return record, appended, pruned

    def _write_recent(self, txn: lmdb.Transaction, update: LedgerUpdate) -> tuple[tuple[int, int] | None, int]:
        """Append the digests of the sources completed in ``update``; prune beyond the budget.

        The log's entries are ``(record number, weight)``: what the record's digests cost the
        ledger at their narrowest width (``digests.floor_cost``). The newest records whose weight
        stays within the ledger's digest budget are kept, a superset of the digests it holds.
        """
        if not update.completed_keys:
            return None, 0
        entries = list(zip(update.completed_keys, update.completed_digests, strict=True))
        db = self._dbs[DB_RECENT]
        number = self._recent_log[-1][0] + 1 if self._recent_log else 0
        txn.put(pack_u64(number), encode_recent_record(entries), db=db, append=True)
        weight = _recent_weight(entries)
        pruned = 0
        total = self._recent_total + weight
        budget = self.ledger.digests.budget
        for old_number, size in self._recent_log:
            if total <= budget:
                break
            txn.delete(pack_u64(old_number), db=db)
            total -= size
            pruned += 1
        return (number, weight), pruned

    # -- queries ----------------------------------------------------------------------

    def completed(self, source_ids: Iterable[str]) -> list[str]:
        return self.ledger.completed_among(source_ids)

    def status(self) -> LedgerStatus:
        """Counters of this writer and its ledger (``to_dict()`` for JSON)."""
        ledger = self.ledger
        stats = ledger.stats
        return LedgerStatus(
            checkpoint=str(self.checkpoint),
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

    def close(self) -> None:
        """Mark the file closed and release it; what was committed stays."""
        env = self._env
        if env is None:
            return
        try:
            if self._dbs:
                with env.begin(write=True) as txn:
                    txn.put(b"closed", encode_meta(time.time()), db=self._dbs[DB_META])
        except lmdb.Error as exc:
            logger.warning("could not mark ledger file {} closed: {}", self.path, exc)
        finally:
            self._release()

    def _release(self) -> None:
        env = self._env
        if env is not None:
            self._env = None
            release_env(self.path, env)

    def __enter__(self) -> CheckpointStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _recent_weight(entries: list[tuple[bytes, bytes | None]]) -> int:
    """What the digests of a recent-log record cost the ledger at their narrowest width."""
    return sum(floor_cost(len(data) // 8) for _, data in entries if data is not None)


def _json(value: bytes | None) -> Any:
    return None if value is None else json.loads(value)
