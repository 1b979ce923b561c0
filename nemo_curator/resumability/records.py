"""The durable record's objects: names and the byte codec (pure; no I/O).

A checkpoint location holds, per writer (one run of one driver), a prefix::

    ledger/<writer_id>/header-<nonce>.rec            who wrote (fingerprint, start stamp, host, pid)
    ledger/<writer_id>/seg-<number>-<nonce>.rec      one acknowledged report batch (a ``LedgerUpdate``)
    ledger/<writer_id>/snap-<upto>-<nonce>.rec       the writer's whole state up to segment ``upto``
    ledger/<writer_id>/beat-<number>-<nonce>.rec     a liveness heartbeat (its lease; see ``lease``)

``number``/``upto`` are 12 decimal digits; ``nonce`` is random per writing process, so two
incarnations of one writer (a restarted ledger actor and a zombie one) never write the same
name, and no object is ever overwritten. Every object is written once and never changed.

Object bytes::

    b"NCRL" | u8 format version | u8 kind (H, S, P) | u32 n | n bytes of JSON (the head)
    | sections: (u8 name length, name, u64 length, bytes)* | 32-byte BLAKE2b of all the above

A truncated, torn or altered object fails ``decode_object`` with a ``CheckpointError`` naming the
object and the fix. Source keys are ``keys.source_key`` bytes; stamps are Lamport stamps (see
``scan``); wall-clock times in heads are information for humans only.

A key list section is ``F`` + 16-byte keys back to back when all keys are 16 bytes long (always
for the framework's source ids), else ``V`` + (u16 length, key)*. Completed keys in ``F`` form
are decoded without a Python object per key (``keyset.PackedKeys`` / ``keyset.KeyStamps``), so
10,000,000 of them load in about a second. Digests of recent completions (``recent``) are decoded
only for the writers that need them (``recent=False`` skips them).
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nemo_curator.resumability.digests import floor_cost
from nemo_curator.resumability.errors import CheckpointError
from nemo_curator.resumability.keys import decode_recent_record, encode_recent_record
from nemo_curator.resumability.keyset import KEY_BYTES, KeyStamps, PackedKeys

MAGIC = b"NCRL"
RECORD_FORMAT = 1
APP_MARKER = "nemo_curator.resumability.ledger"
KIND_HEADER = ord("H")
KIND_SEGMENT = ord("S")
KIND_SNAPSHOT = ord("P")
KIND_BEAT = ord("B")
LEDGER_PREFIX = "ledger"
SUFFIX = ".rec"
DIGEST_SIZE = 32

_NAME = re.compile(r"^(header|seg|snap|beat)-(?:(\d{12})-)?([0-9a-f]{8,64})\.rec$")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")


# -- names -----------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class ObjectName:
    """A parsed object name: ``kind`` is ``header``, ``seg``, ``snap`` or ``beat``; ``number`` -1 for a header."""

    writer_id: str
    kind: str
    number: int
    nonce: str

    @property
    def path(self) -> str:
        """The object's path relative to the checkpoint location."""
        return object_path(self.writer_id, self.kind, self.number, self.nonce)


def object_path(writer_id: str, kind: str, number: int, nonce: str) -> str:
    if kind == "header":
        return f"{LEDGER_PREFIX}/{writer_id}/header-{nonce}{SUFFIX}"
    return f"{LEDGER_PREFIX}/{writer_id}/{kind}-{number:012d}-{nonce}{SUFFIX}"


def parse_object_path(path: str) -> ObjectName | None:
    """The ``ObjectName`` of a relative path ``ledger/<writer>/<name>``; ``None`` for anything else."""
    parts = path.split("/")
    if len(parts) != 3 or parts[0] != LEDGER_PREFIX:
        return None
    match = _NAME.match(parts[2])
    if match is None:
        return None
    kind, number, nonce = match.groups()
    if (kind == "header") != (number is None):
        return None
    return ObjectName(parts[1], kind, -1 if number is None else int(number), nonce)


# -- the typed contents ------------------------------------------------------------------


@dataclass
class WriterHeader:
    """A writer's immutable header: its pipeline fingerprint and its logical start stamp."""

    writer_id: str
    fingerprint: str
    start_stamp: int
    description: list[dict[str, Any]] | None = None
    #: host, pid, owner, created (epoch s), overrode_fingerprint ... (information only).
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def created(self) -> float:
        return float(self.info.get("created", 0.0) or 0.0)


@dataclass
class Segment:
    """One acknowledged batch of one writer: the ``LedgerUpdate`` it committed, stamped ``stamp``.

    ``recent`` holds the digests (``digests.digest_of``) of the sources completed in the batch
    (aligned with ``completed``), for recognising late duplicates after a restart. A decoded
    ``completed`` is a ``keyset.PackedKeys`` when all its keys are 16 bytes long (equal to the list).
    """

    writer_id: str
    number: int
    stamp: int
    completed: Sequence[bytes] = field(default_factory=list)
    recent: list[tuple[bytes, bytes | None]] = field(default_factory=list)
    failed: dict[bytes, str] = field(default_factory=dict)
    revoked: list[bytes] = field(default_factory=list)
    added: list[tuple[bytes, str, int, int]] = field(default_factory=list)
    cleared: list[bytes] = field(default_factory=list)
    sender: str | None = None
    seq: int | None = None
    time: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Beat:
    """A writer's heartbeat: who runs it, on which shard. Its liveness is its object's store mtime.

    ``owner`` is the driver's ``liveness.this_process()`` record (the run lives while it does);
    ``shard`` is ``[index, count]`` or ``None``; ``time`` (the writer host's clock) is for humans only.
    """

    writer_id: str
    owner: dict[str, Any] = field(default_factory=dict)
    shard: list[int] | None = None
    fingerprint: str = ""
    interval_s: float = 0.0
    time: float = 0.0


@dataclass
class WriterState:
    """A writer's whole state after its segments up to ``upto`` (the content of a snapshot).

    ``completed`` / ``revoked``: source key -> the stamp of its latest completion / revocation by
    this writer (``completed`` is a compact ``keyset.KeyStamps``; a dict given is converted);
    ``failed``: key -> (stamp, reason); ``inflight``: key -> task dedup key ->
    (num, exp); ``senders``: sender -> last applied batch seq; ``recent``: the most recently
    completed sources' digests, oldest first, within a byte budget (``recent_weight`` is their
    cost, ``digests.floor_cost``; derived, not stored); ``stamp``: the largest stamp seen.
    """

    writer_id: str
    upto: int = -1
    stamp: int = 0
    completed: KeyStamps = field(default_factory=KeyStamps)
    revoked: dict[bytes, int] = field(default_factory=dict)
    failed: dict[bytes, tuple[int, str]] = field(default_factory=dict)
    inflight: dict[bytes, dict[str, tuple[int, int]]] = field(default_factory=dict)
    senders: dict[str, int] = field(default_factory=dict)
    recent: OrderedDict[bytes, bytes | None] = field(default_factory=OrderedDict)
    recent_weight: int = field(default=0, compare=False)
    meta: dict[str, Any] = field(default_factory=dict)
    updated: float = 0.0
    closed: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.completed, KeyStamps):
            self.completed = KeyStamps(self.completed if isinstance(self.completed, Mapping) else dict(self.completed))


def recent_entry_weight(digest: bytes | None) -> int:
    """What one recent-window digest costs the ledger at its narrowest width (``digests.floor_cost``)."""
    return 0 if digest is None else floor_cost(len(digest) // 8)


# -- section encodings -------------------------------------------------------------------


def _encode_keys(keys: Sequence[bytes]) -> bytes:
    if isinstance(keys, PackedKeys):
        return b"F" + keys.raw
    if all(len(k) == KEY_BYTES for k in keys):
        return b"F" + b"".join(keys)
    return b"V" + b"".join(_U16.pack(len(k)) + k for k in keys)


def _decode_keys(data: bytes | memoryview) -> list[bytes]:
    if not data:
        return []
    data = bytes(data)
    if data[0] == ord("F"):
        return [data[i : i + 16] for i in range(1, len(data), 16)]
    keys, i, n = [], 1, len(data)
    while i < n:
        (length,) = _U16.unpack_from(data, i)
        keys.append(data[i + 2 : i + 2 + length])
        i += 2 + length
    return keys


def _encode_strings(items: list[str]) -> bytes:
    encoded = [s.encode("utf-8", errors="replace") for s in items]
    return _U32.pack(len(encoded)) + struct.pack(f">{len(encoded)}I", *map(len, encoded)) + b"".join(encoded)


def _decode_packed_keys(data: bytes | memoryview) -> Sequence[bytes]:
    """A key list section as ``PackedKeys`` (``F`` form: no object per key) or a list (``V`` form)."""
    if data and data[0] == ord("F"):
        return PackedKeys(data[1:])
    return _decode_keys(data)


def _decode_completed(keys: bytes | memoryview, stamps: bytes | memoryview) -> KeyStamps:
    """A snapshot's completions: keys in ``F`` form are read with ``np.frombuffer``."""
    if keys and keys[0] == ord("F"):
        if len(keys) - 1 != 2 * len(stamps):
            raise ValueError(f"{(len(keys) - 1) // KEY_BYTES} completed keys but {len(stamps) // 8} stamps")
        return KeyStamps.from_packed(keys[1:], np.frombuffer(stamps, dtype=">u8").astype(np.uint64))
    return KeyStamps(dict(zip(_decode_keys(keys), _decode_u64s(stamps), strict=True)))


def _encode_completed(completed: KeyStamps) -> dict[str, bytes]:
    if not completed.other():
        keys, stamps = completed.packed()
        return {"completed": b"F" + keys, "completed_stamps": stamps}
    keys = list(completed)
    return {"completed": _encode_keys(keys), "completed_stamps": _encode_u64s([completed[k] for k in keys])}


def _decode_strings(data: bytes | memoryview) -> list[str]:
    if not data:
        return []
    data = bytes(data)
    (n,) = _U32.unpack_from(data)
    lengths = struct.unpack_from(f">{n}I", data, 4)
    out, i = [], 4 + 4 * n
    for length in lengths:
        out.append(data[i : i + length].decode("utf-8", errors="replace"))
        i += length
    return out


def _encode_u64s(values: list[int]) -> bytes:
    return struct.pack(f">{len(values)}Q", *values)


def _decode_u64s(data: bytes | memoryview) -> list[int]:
    return list(struct.unpack(f">{len(data) // 8}Q", data))


def _encode_rows(rows: list[tuple[bytes, str, int, int]]) -> dict[str, bytes]:
    return {
        "row_keys": _encode_keys([r[0] for r in rows]),
        "row_tasks": _encode_strings([r[1] for r in rows]),
        "row_credits": _encode_strings([f"{r[2]}/2^{r[3]}" for r in rows]),
    }


def _decode_rows(sections: dict[str, memoryview]) -> list[tuple[bytes, str, int, int]]:
    keys = _decode_keys(sections.get("row_keys", b""))
    tasks = _decode_strings(sections.get("row_tasks", b""))
    credits = _decode_strings(sections.get("row_credits", b""))
    rows = []
    for key, task, credit in zip(keys, tasks, credits, strict=True):
        num, _, exp = credit.partition("/2^")
        rows.append((key, task, int(num), int(exp or 0)))
    return rows


# -- objects -----------------------------------------------------------------------------


def _frame(kind: int, head: dict[str, Any], sections: dict[str, bytes]) -> bytes:
    head_bytes = json.dumps(head, sort_keys=True, separators=(",", ":")).encode()
    parts = [MAGIC, bytes((RECORD_FORMAT, kind)), _U32.pack(len(head_bytes)), head_bytes]
    for name, data in sections.items():
        raw = name.encode()
        parts.append(bytes((len(raw),)) + raw + _U64.pack(len(data)))
        parts.append(data)
    body = b"".join(parts)
    return body + hashlib.blake2b(body, digest_size=DIGEST_SIZE).digest()


def _corrupt(where: str, why: str) -> CheckpointError:
    return CheckpointError(
        f"checkpoint object {where} is corrupt or not a nemo_curator ledger record ({why}). Nothing was changed. "
        "Fix: if a copy or sync of the checkpoint was interrupted, copy it again; otherwise move this object "
        "out of the checkpoint location (the sources it recorded are then redone) or use a new checkpoint location"
    )


def _unframe(data: bytes, where: str) -> tuple[int, dict[str, Any], dict[str, memoryview]]:
    """Check and split an object; its sections are views of ``data`` (no copies of large objects)."""
    if len(data) < len(MAGIC) + 6 + DIGEST_SIZE or not data.startswith(MAGIC):
        raise _corrupt(where, f"{len(data)} bytes without the record header")
    view = memoryview(data)
    body, digest = view[:-DIGEST_SIZE], data[-DIGEST_SIZE:]
    if hashlib.blake2b(body, digest_size=DIGEST_SIZE).digest() != digest:
        raise _corrupt(where, "checksum mismatch: torn or altered")
    version, kind = body[4], body[5]
    if version > RECORD_FORMAT:
        raise CheckpointError(
            f"checkpoint object {where} was written in record format {version}, newer than this version of "
            f"nemo_curator reads ({RECORD_FORMAT}). Fix: upgrade nemo_curator, or use a new checkpoint location"
        )
    (n,) = _U32.unpack_from(body, 6)
    try:
        head = json.loads(bytes(body[10 : 10 + n]))
        sections: dict[str, memoryview] = {}
        i = 10 + n
        while i < len(body):
            length = body[i]
            name = bytes(body[i + 1 : i + 1 + length]).decode()
            (size,) = _U64.unpack_from(body, i + 1 + length)
            start = i + 9 + length
            sections[name] = body[start : start + size]
            i = start + size
            if len(sections[name]) != size:
                raise ValueError(f"section {name!r} is cut short")
    except (ValueError, struct.error, IndexError) as exc:
        raise _corrupt(where, f"unreadable framing: {exc}") from exc
    return kind, head, sections


def encode_header(header: WriterHeader) -> bytes:
    head = {
        "app": APP_MARKER,
        "writer_id": header.writer_id,
        "fingerprint": header.fingerprint,
        "start_stamp": header.start_stamp,
        "fingerprint_description": header.description,
        "info": header.info,
    }
    return _frame(KIND_HEADER, head, {})


def encode_segment(seg: Segment) -> bytes:
    head = {
        "writer_id": seg.writer_id,
        "number": seg.number,
        "stamp": seg.stamp,
        "sender": seg.sender,
        "seq": seg.seq,
        "time": seg.time,
        "meta": seg.meta,
    }
    failed_keys = list(seg.failed)
    sections = {
        "completed": _encode_keys(seg.completed),
        "recent": encode_recent_record([(k, d) for k, d in seg.recent if d is not None]),
        "failed_keys": _encode_keys(failed_keys),
        "failed_reasons": _encode_strings([seg.failed[k] for k in failed_keys]),
        "revoked": _encode_keys(seg.revoked),
        "cleared": _encode_keys(seg.cleared),
        **_encode_rows(seg.added),
    }
    return _frame(KIND_SEGMENT, head, sections)


def encode_snapshot(state: WriterState) -> bytes:
    head = {
        "writer_id": state.writer_id,
        "upto": state.upto,
        "stamp": state.stamp,
        "senders": state.senders,
        "meta": state.meta,
        "updated": state.updated,
        "closed": state.closed,
    }
    revoked = list(state.revoked)
    failed = list(state.failed)
    rows = [(key, tkey, num, exp) for key, tasks in state.inflight.items() for tkey, (num, exp) in tasks.items()]
    sections = {
        **_encode_completed(state.completed),
        "revoked": _encode_keys(revoked),
        "revoked_stamps": _encode_u64s([state.revoked[k] for k in revoked]),
        "failed_keys": _encode_keys(failed),
        "failed_stamps": _encode_u64s([state.failed[k][0] for k in failed]),
        "failed_reasons": _encode_strings([state.failed[k][1] for k in failed]),
        "recent": encode_recent_record([(k, d) for k, d in state.recent.items() if d is not None]),
        **_encode_rows(rows),
    }
    return _frame(KIND_SNAPSHOT, head, sections)


def encode_beat(beat: Beat) -> bytes:
    head = {
        "writer_id": beat.writer_id,
        "owner": beat.owner,
        "shard": beat.shard,
        "fingerprint": beat.fingerprint,
        "interval_s": beat.interval_s,
        "time": beat.time,
    }
    return _frame(KIND_BEAT, head, {})


def decode_beat(data: bytes, where: str) -> Beat:
    kind, head, _ = _unframe(data, where)
    _expect(kind, KIND_BEAT, where)
    shard = head.get("shard")
    return Beat(
        writer_id=str(head["writer_id"]),
        owner=dict(head.get("owner") or {}),
        shard=[int(x) for x in shard] if isinstance(shard, list) else None,
        fingerprint=str(head.get("fingerprint") or ""),
        interval_s=float(head.get("interval_s") or 0.0),
        time=float(head.get("time") or 0.0),
    )


def _expect(kind: int, wanted: int, where: str) -> None:
    if kind != wanted:
        raise _corrupt(where, f"kind {chr(kind)!r} where {chr(wanted)!r} was expected")


def decode_header(data: bytes, where: str) -> WriterHeader:
    kind, head, _ = _unframe(data, where)
    _expect(kind, KIND_HEADER, where)
    if head.get("app") != APP_MARKER:
        raise _corrupt(where, "no nemo_curator ledger marker")
    return WriterHeader(
        writer_id=str(head["writer_id"]),
        fingerprint=str(head["fingerprint"]),
        start_stamp=int(head["start_stamp"]),
        description=head.get("fingerprint_description"),
        info=dict(head.get("info") or {}),
    )


def snapshot_head(data: bytes, where: str) -> dict[str, Any]:
    """The head of a snapshot (``upto``, ``closed``, ...): the object is checked, its sections not decoded."""
    kind, head, _ = _unframe(data, where)
    _expect(kind, KIND_SNAPSHOT, where)
    return head


def decode_segment(data: bytes, where: str, *, recent: bool = True) -> Segment:
    """The segment in ``data``; without its digests (``recent=[]``) unless ``recent``."""
    kind, head, s = _unframe(data, where)
    _expect(kind, KIND_SEGMENT, where)
    recent_raw = s.get("recent", b"") if recent else b""
    return Segment(
        writer_id=str(head["writer_id"]),
        number=int(head["number"]),
        stamp=int(head["stamp"]),
        completed=_decode_packed_keys(s.get("completed", b"")),
        recent=decode_recent_record(recent_raw) if recent_raw else [],
        failed=dict(
            zip(_decode_keys(s.get("failed_keys", b"")), _decode_strings(s.get("failed_reasons", b"")), strict=True)
        ),
        revoked=_decode_keys(s.get("revoked", b"")),
        added=_decode_rows(s),
        cleared=_decode_keys(s.get("cleared", b"")),
        sender=head.get("sender"),
        seq=head.get("seq"),
        time=float(head.get("time") or 0.0),
        meta=dict(head.get("meta") or {}),
    )


def decode_snapshot(data: bytes, where: str, *, recent: bool = True) -> WriterState:
    """The writer state in ``data``; without its digests (an empty ``recent``) unless ``recent``."""
    kind, head, s = _unframe(data, where)
    _expect(kind, KIND_SNAPSHOT, where)
    failed_keys = _decode_keys(s.get("failed_keys", b""))
    failed = {
        k: (stamp, reason)
        for k, stamp, reason in zip(
            failed_keys,
            _decode_u64s(s.get("failed_stamps", b"")),
            _decode_strings(s.get("failed_reasons", b"")),
            strict=True,
        )
    }
    inflight: dict[bytes, dict[str, tuple[int, int]]] = {}
    for key, tkey, num, exp in _decode_rows(s):
        inflight.setdefault(key, {})[tkey] = (num, exp)
    recent_raw = s.get("recent", b"") if recent else b""
    return WriterState(
        writer_id=str(head["writer_id"]),
        upto=int(head["upto"]),
        stamp=int(head["stamp"]),
        completed=_decode_completed(s.get("completed", b""), s.get("completed_stamps", b"")),
        revoked=dict(zip(_decode_keys(s.get("revoked", b"")), _decode_u64s(s.get("revoked_stamps", b"")), strict=True)),
        failed=failed,
        inflight=inflight,
        senders={str(k): int(v) for k, v in (head.get("senders") or {}).items()},
        recent=(window := OrderedDict(decode_recent_record(recent_raw) if recent_raw else [])),
        recent_weight=sum(recent_entry_weight(d) for d in window.values()),
        meta=dict(head.get("meta") or {}),
        updated=float(head.get("updated") or 0.0),
        closed=head.get("closed"),
    )
