"""The node-local LMDB cache of one writer, and read-only access to it.

::

    <cache_dir>/<writer_id>.lmdb        this writer's working copy (a cache of its durable record)
    <cache_dir>/<writer_id>.lmdb-lock   LMDB's lock file for it

The truth of a checkpoint is its durable record at the checkpoint location (``objects``,
``durable``); this file mirrors one writer's part of it and is rebuilt from it at every open, so
it may be lost at any time. It holds named sub-databases:

``meta``       ``app`` marker, ``writer_id``, ``fingerprint``, host/pid/owner, ``durable_upto``
               (the last segment mirrored) (JSON values)
``completed``  append-only completion log: record number -> Lamport stamp + source keys
               (see ``keys.encode_completion_records``)
``failed``     source key -> stamp + reason (UTF-8)
``inflight``   row key (source key + task dedup key) -> returned credit (exact wire text)
``revoked``    source key -> stamp of the withdrawal of a completion after an anomaly
``senders``    sender id -> last applied batch sequence number
``recent``     the most recently completed sources' task ids (``keys.encode_recent_record``)

The cache is opened without fsync (``acquire_env(..., durable=False)``): durability comes from the
checkpoint location, not from it. LMDB forbids opening one file twice in a process, so
environments are shared through a small process-wide registry (``acquire_env`` / ``release_env``).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lmdb

from nemo_curator.resumability.errors import CheckpointError
from nemo_curator.resumability.keys import (
    completion_record_size,
    decode_completion_record,
    decode_credit,
    decode_recent_record,
    recent_record_size,
    split_row_key,
    unpack_u64,
)

FORMAT_VERSION = 1
APP_MARKER = "nemo_curator.resumability.ledger"
LEDGER_DIRNAME = "ledger"
WRITER_SUFFIX = ".lmdb"
LOCK_SUFFIX = "-lock"

DB_META = b"meta"
DB_COMPLETED = b"completed"
DB_FAILED = b"failed"
DB_INFLIGHT = b"inflight"
DB_REVOKED = b"revoked"
DB_SENDERS = b"senders"
DB_RECENT = b"recent"
ALL_DBS = (DB_META, DB_COMPLETED, DB_FAILED, DB_INFLIGHT, DB_REVOKED, DB_SENDERS, DB_RECENT)
MAX_DBS = 8
#: Size of a lock file's reader table (fixed by whoever creates it): every run sharing the
#: directory reads every file at start-up, so allow many more than LMDB's default of 126.
MAX_READERS = 2048

#: Initial map size of a writer file (virtual; the file grows only as pages are written).
INITIAL_MAP_SIZE = 64 << 20


# -- process-wide environment registry ---------------------------------------------------


@dataclass
class _EnvEntry:
    env: lmdb.Environment
    readonly: bool
    refs: int


_registry_lock = threading.Lock()
_registry: dict[str, _EnvEntry] = {}


def acquire_env(
    path: Path, *, readonly: bool, map_size: int = INITIAL_MAP_SIZE, durable: bool = True
) -> lmdb.Environment:
    """Open (or share) the LMDB environment of ``path``; pair with ``release_env``.

    Read-only opens use LMDB's lock file, so they see consistent snapshots of a file another
    process is writing; when the lock file cannot be created (a read-only directory) they fall
    back to lock-free reads. Raises ``lmdb.Error`` subclasses for unreadable files.
    """
    key = os.path.realpath(path)
    with _registry_lock:
        entry = _registry.get(key)
        if entry is not None:
            if entry.readonly and not readonly:
                raise CheckpointError(
                    f"{path} is open read-only in this process (a status query?) and cannot be opened for writing "
                    "at the same time; close the other user first"
                )
            entry.refs += 1
            return entry.env
        if readonly:
            try:
                env = lmdb.open(
                    key, subdir=False, readonly=True, lock=True, max_dbs=MAX_DBS, max_readers=MAX_READERS, create=False
                )
            except lmdb.Error as exc:
                cannot_lock = isinstance(exc, lmdb.ReadonlyError) or any(
                    text in str(exc) for text in ("Permission denied", "Read-only file system")
                )
                if not cannot_lock:
                    raise
                env = lmdb.open(key, subdir=False, readonly=True, lock=False, max_dbs=MAX_DBS, create=False)
        else:
            env = lmdb.open(
                key,
                subdir=False,
                map_size=map_size,
                max_dbs=MAX_DBS,
                max_readers=MAX_READERS,
                sync=durable,
                metasync=False,
                meminit=False,
            )
        _registry[key] = _EnvEntry(env=env, readonly=readonly, refs=1)
        return env


def release_env(path: Path, env: lmdb.Environment) -> None:
    key = os.path.realpath(path)
    with _registry_lock:
        entry = _registry.get(key)
        if entry is None or entry.env is not env:
            env.close()
            return
        entry.refs -= 1
        if entry.refs <= 0:
            del _registry[key]
            env.close()


def begin_read(env: lmdb.Environment) -> lmdb.Transaction:
    """A read transaction; adopts a map grown by the writing process if needed."""
    try:
        return env.begin(buffers=False)
    except lmdb.MapResizedError:
        env.set_mapsize(0)
        return env.begin(buffers=False)


def encode_meta(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True).encode()


# -- read-only view of one writer file ----------------------------------------------------


class WriterFile:
    """A consistent read-only snapshot of one writer's LMDB file.

    ``WriterFile.open(path)`` returns ``None`` for a file that holds nothing yet (zero length, or
    an LMDB with no databases: a writer killed while creating it), and raises ``CheckpointError``
    for a file that is not an LMDB file or an LMDB file without our metadata.
    """

    def __init__(self, path: Path, env: lmdb.Environment, txn: lmdb.Transaction, meta: dict[str, Any]) -> None:
        self.path = path
        self._env = env
        self._txn = txn
        self.meta = meta
        self._dbs: dict[bytes, Any] = {}

    @classmethod
    def open(cls, path: Path) -> WriterFile | None:
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise CheckpointError(f"cannot read checkpoint ledger file {path}: {exc}") from exc
        if size == 0:
            return None
        lock = Path(str(path) + LOCK_SUFFIX)
        had_lock = lock.exists()
        try:
            env = acquire_env(path, readonly=True)
        except lmdb.Error as exc:
            if not had_lock:
                with suppress(OSError):
                    lock.unlink()
            raise CheckpointError(
                f"checkpoint ledger file {path} is corrupt or not an LMDB file ({exc}). Nothing was changed. "
                f"Fix: move it out of {path.parent} (keep it if it may hold progress you need) or use a new "
                "checkpoint directory"
            ) from exc
        try:
            txn = begin_read(env)
            try:
                if not txn.cursor().first():
                    txn.abort()
                    release_env(path, env)
                    return None
                meta = _read_meta(env, txn, path)
            except BaseException:
                txn.abort()
                raise
        except BaseException:
            release_env(path, env)
            raise
        return cls(path, env, txn, meta)

    def close(self) -> None:
        if self._txn is not None:
            self._txn.abort()
            self._txn = None
            release_env(self.path, self._env)

    def __enter__(self) -> WriterFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- contents ---------------------------------------------------------------------

    def _db(self, name: bytes) -> Any | None:
        if name not in self._dbs:
            try:
                self._dbs[name] = self._env.open_db(name, txn=self._txn, create=False)
            except lmdb.NotFoundError:
                self._dbs[name] = None
        return self._dbs[name]

    def count(self, name: bytes) -> int:
        db = self._db(name)
        return 0 if db is None else int(self._txn.stat(db)["entries"])

    def completed_records(self) -> Iterator[tuple[int, list[bytes]]]:
        """``(time ns, source keys)`` of every completion record, oldest first."""
        db = self._db(DB_COMPLETED)
        if db is None:
            return
        for value in self._txn.cursor(db).iternext(keys=False, values=True):
            yield decode_completion_record(value)

    def add_completed_to(self, keys: set[bytes]) -> int:
        """Add the key of every source this file records complete to ``keys``; returns how many it records."""
        count = 0
        for _, record in self.completed_records():
            keys.update(record)
            count += len(record)
        return count

    def completed_count(self) -> int:
        db = self._db(DB_COMPLETED)
        if db is None:
            return 0
        return sum(completion_record_size(v) for v in self._txn.cursor(db).iternext(keys=False, values=True))

    def last_completion_record(self) -> int:
        """Number of the last completion record (-1 when there is none)."""
        db = self._db(DB_COMPLETED)
        if db is None:
            return -1
        cursor = self._txn.cursor(db)
        return unpack_u64(cursor.key()) if cursor.last() else -1

    def failed(self) -> dict[bytes, tuple[int, str]]:
        """Source key -> (time ns, reason)."""
        db = self._db(DB_FAILED)
        if db is None:
            return {}
        return {
            bytes(k): (unpack_u64(v), bytes(v[8:]).decode(errors="replace")) for k, v in self._txn.cursor(db).iternext()
        }

    def revoked(self) -> dict[bytes, int]:
        db = self._db(DB_REVOKED)
        if db is None:
            return {}
        return {bytes(k): unpack_u64(v) for k, v in self._txn.cursor(db).iternext()}

    def inflight_rows(self) -> Iterator[tuple[bytes, str, int, int]]:
        """``(source key, task dedup key, num, exp)`` of every persisted in-flight row."""
        db = self._db(DB_INFLIGHT)
        if db is None:
            return
        for k, v in self._txn.cursor(db).iternext():
            skey, tkey = split_row_key(k)
            num, exp = decode_credit(v)
            yield skey, tkey, num, exp

    def recent_records(self) -> Iterator[tuple[int, int, list[tuple[bytes, list[str]]]]]:
        """``(record number, sources, [(source key, task keys)])`` of the recent-completion log."""
        db = self._db(DB_RECENT)
        if db is None:
            return
        for k, v in self._txn.cursor(db).iternext():
            yield unpack_u64(k), recent_record_size(v), decode_recent_record(v)

    def senders(self) -> dict[str, int]:
        """Sender id -> last committed batch sequence number."""
        db = self._db(DB_SENDERS)
        if db is None:
            return {}
        return {bytes(k).decode(): unpack_u64(v) for k, v in self._txn.cursor(db).iternext()}

    def inflight_source_keys(self) -> set[bytes]:
        db = self._db(DB_INFLIGHT)
        if db is None:
            return set()
        return {split_row_key(k)[0] for k in self._txn.cursor(db).iternext(keys=True, values=False)}


def _read_meta(env: lmdb.Environment, txn: lmdb.Transaction, path: Path) -> dict[str, Any]:
    foreign = (
        f"{path} is an LMDB file without nemo_curator ledger metadata (a foreign file). Nothing was changed. "
        f"Fix: move it out of {path.parent}, or use a new checkpoint directory"
    )
    try:
        db = env.open_db(DB_META, txn=txn, create=False)
    except lmdb.NotFoundError as exc:
        raise CheckpointError(foreign) from exc
    except lmdb.Error as exc:
        raise CheckpointError(
            f"checkpoint ledger file {path} is corrupt ({exc}). Nothing was changed. Fix: move it out of "
            f"{path.parent} or use a new checkpoint directory"
        ) from exc
    meta: dict[str, Any] = {}
    try:
        for k, v in txn.cursor(db).iternext():
            meta[bytes(k).decode()] = json.loads(bytes(v))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(foreign) from exc
    if meta.get("app") != APP_MARKER:
        raise CheckpointError(foreign)
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} was written with ledger format version {version!r}, newer than this version of "
            f"nemo_curator reads ({FORMAT_VERSION}). Fix: upgrade nemo_curator, or use a new checkpoint directory"
        )
    return meta
