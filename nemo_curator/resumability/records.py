"""Segments and snapshots of the durable record: their typed contents and byte codec (pure; no I/O).

Object names and framing are in ``objects``. Source keys are ``keys.source_key`` bytes; stamps
are Lamport stamps (see ``scan``); wall-clock times in heads are information for humans only.

A key list section is ``F`` + 16-byte keys back to back when all keys are 16 bytes long (always
for the framework's source ids), else ``V`` + (u16 length, key)*. Completed keys in ``F`` form
are decoded without a Python object per key (``keyset.PackedKeys`` / ``keyset.KeyStamps``), so
10,000,000 of them load in about a second. Digests of recent completions (``recent``) are decoded
only for the writers that need them (``recent=False`` skips them).
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nemo_curator.resumability.digests import floor_cost
from nemo_curator.resumability.keys import decode_recent_record, encode_recent_record
from nemo_curator.resumability.keyset import KEY_BYTES, KeyStamps, PackedKeys
from nemo_curator.resumability.objects import KIND_SEGMENT, KIND_SNAPSHOT, U16, U32, expect_kind, frame, unframe

# -- the typed contents ------------------------------------------------------------------


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
    return b"V" + b"".join(U16.pack(len(k)) + k for k in keys)


def _decode_keys(data: bytes | memoryview) -> list[bytes]:
    if not data:
        return []
    data = bytes(data)
    if data[0] == ord("F"):
        return [data[i : i + 16] for i in range(1, len(data), 16)]
    keys, i, n = [], 1, len(data)
    while i < n:
        (length,) = U16.unpack_from(data, i)
        keys.append(data[i + 2 : i + 2 + length])
        i += 2 + length
    return keys


def _encode_strings(items: list[str]) -> bytes:
    encoded = [s.encode("utf-8", errors="replace") for s in items]
    return U32.pack(len(encoded)) + struct.pack(f">{len(encoded)}I", *map(len, encoded)) + b"".join(encoded)


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
    (n,) = U32.unpack_from(data)
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
    return frame(KIND_SEGMENT, head, sections)


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
    return frame(KIND_SNAPSHOT, head, sections)


def decode_segment(data: bytes, where: str, *, recent: bool = True) -> Segment:
    """The segment in ``data``; without its digests (``recent=[]``) unless ``recent``."""
    kind, head, s = unframe(data, where)
    expect_kind(kind, KIND_SEGMENT, where)
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
    kind, head, s = unframe(data, where)
    expect_kind(kind, KIND_SNAPSHOT, where)
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
