"""The durable record's objects: their names, their framing, writers' headers and heartbeats (pure; no I/O).

A checkpoint location holds, per writer (one run of one driver), a prefix::

    ledger/<writer_id>/header-<nonce>.rec            who wrote (fingerprint, start stamp, host, pid)
    ledger/<writer_id>/seg-<number>-<nonce>.rec      one acknowledged report batch (a ``LedgerUpdate``)
    ledger/<writer_id>/snap-<upto>-<nonce>.rec       the writer's whole state up to segment ``upto``
    ledger/<writer_id>/beat-<number>-<nonce>.rec     a liveness heartbeat (its lease; see ``lease``)

``number``/``upto`` are 12 decimal digits; ``nonce`` is random per writing process, so two
incarnations of one writer (a restarted ledger actor and a zombie one) never write the same
name, and no object is ever overwritten. Every object is written once and never changed.

Object bytes::

    b"NCRL" | u8 format version | u8 kind (H, S, P, B) | u32 n | n bytes of JSON (the head)
    | sections: (u8 name length, name, u64 length, bytes)* | 32-byte BLAKE2b of all the above

A truncated, torn or altered object fails ``unframe`` with a ``CheckpointError`` naming the
object and the fix. Headers and heartbeats are only a head; segments and snapshots carry the
ledger's keys in sections (``records``).

This module imports nothing heavy (no numpy, no LMDB): the driver's checks before a run
(``preflight``) read headers and heartbeats with it before the first work starts.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import struct
import uuid
from dataclasses import dataclass, field
from typing import Any

from nemo_curator.resumability.errors import CheckpointError

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
U16 = struct.Struct(">H")
U32 = struct.Struct(">I")
U64 = struct.Struct(">Q")


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


def new_writer_id() -> str:
    """A fresh writer id: host, pid and a random suffix (safe as a file and object name)."""
    host = re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname())[:40] or "host"
    return f"{host}-{os.getpid()}-{uuid.uuid4().hex[:12]}"


# -- headers and heartbeats ------------------------------------------------------------


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


# -- framing ----------------------------------------------------------------------------


def frame(kind: int, head: dict[str, Any], sections: dict[str, bytes]) -> bytes:
    head_bytes = json.dumps(head, sort_keys=True, separators=(",", ":")).encode()
    parts = [MAGIC, bytes((RECORD_FORMAT, kind)), U32.pack(len(head_bytes)), head_bytes]
    for name, data in sections.items():
        raw = name.encode()
        parts.append(bytes((len(raw),)) + raw + U64.pack(len(data)))
        parts.append(data)
    body = b"".join(parts)
    return body + hashlib.blake2b(body, digest_size=DIGEST_SIZE).digest()


def corrupt(where: str, why: str) -> CheckpointError:
    return CheckpointError(
        f"checkpoint object {where} is corrupt or not a nemo_curator ledger record ({why}). Nothing was changed. "
        "Fix: if a copy or sync of the checkpoint was interrupted, copy it again; otherwise move this object "
        "out of the checkpoint location (the sources it recorded are then redone) or use a new checkpoint location"
    )


def unframe(data: bytes, where: str) -> tuple[int, dict[str, Any], dict[str, memoryview]]:
    """Check and split an object; its sections are views of ``data`` (no copies of large objects)."""
    if len(data) < len(MAGIC) + 6 + DIGEST_SIZE or not data.startswith(MAGIC):
        raise corrupt(where, f"{len(data)} bytes without the record header")
    view = memoryview(data)
    body, digest = view[:-DIGEST_SIZE], data[-DIGEST_SIZE:]
    if hashlib.blake2b(body, digest_size=DIGEST_SIZE).digest() != digest:
        raise corrupt(where, "checksum mismatch: torn or altered")
    version, kind = body[4], body[5]
    if version > RECORD_FORMAT:
        raise CheckpointError(
            f"checkpoint object {where} was written in record format {version}, newer than this version of "
            f"nemo_curator reads ({RECORD_FORMAT}). Fix: upgrade nemo_curator, or use a new checkpoint location"
        )
    (n,) = U32.unpack_from(body, 6)
    try:
        head = json.loads(bytes(body[10 : 10 + n]))
        sections: dict[str, memoryview] = {}
        i = 10 + n
        while i < len(body):
            length = body[i]
            name = bytes(body[i + 1 : i + 1 + length]).decode()
            (size,) = U64.unpack_from(body, i + 1 + length)
            start = i + 9 + length
            sections[name] = body[start : start + size]
            i = start + size
            if len(sections[name]) != size:
                raise ValueError(f"section {name!r} is cut short")
    except (ValueError, struct.error, IndexError) as exc:
        raise corrupt(where, f"unreadable framing: {exc}") from exc
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
    return frame(KIND_HEADER, head, {})


def encode_beat(beat: Beat) -> bytes:
    head = {
        "writer_id": beat.writer_id,
        "owner": beat.owner,
        "shard": beat.shard,
        "fingerprint": beat.fingerprint,
        "interval_s": beat.interval_s,
        "time": beat.time,
    }
    return frame(KIND_BEAT, head, {})


def decode_beat(data: bytes, where: str) -> Beat:
    kind, head, _ = unframe(data, where)
    expect_kind(kind, KIND_BEAT, where)
    shard = head.get("shard")
    return Beat(
        writer_id=str(head["writer_id"]),
        owner=dict(head.get("owner") or {}),
        shard=[int(x) for x in shard] if isinstance(shard, list) else None,
        fingerprint=str(head.get("fingerprint") or ""),
        interval_s=float(head.get("interval_s") or 0.0),
        time=float(head.get("time") or 0.0),
    )


def expect_kind(kind: int, wanted: int, where: str) -> None:
    if kind != wanted:
        raise corrupt(where, f"kind {chr(kind)!r} where {chr(wanted)!r} was expected")


def decode_header(data: bytes, where: str) -> WriterHeader:
    kind, head, _ = unframe(data, where)
    expect_kind(kind, KIND_HEADER, where)
    if head.get("app") != APP_MARKER:
        raise corrupt(where, "no nemo_curator ledger marker")
    return WriterHeader(
        writer_id=str(head["writer_id"]),
        fingerprint=str(head["fingerprint"]),
        start_stamp=int(head["start_stamp"]),
        description=head.get("fingerprint_description"),
        info=dict(head.get("info") or {}),
    )


def snapshot_head(data: bytes, where: str) -> dict[str, Any]:
    """The head of a snapshot (``upto``, ``closed``, ...): the object is checked, its sections not decoded."""
    kind, head, _ = unframe(data, where)
    expect_kind(kind, KIND_SNAPSHOT, where)
    return head
