"""Byte encodings shared by the ledger and its LMDB store (pure; no LMDB import).

Source keys
    The framework's source ids are 32 lowercase hex digits (128 bits); they are stored as their
    16 raw bytes. Any other id is stored as ``0xff`` + its UTF-8 bytes (``0xff 0xff`` + bytes when
    that would be 16 bytes long, so that only hex ids ever have length 16). Ids longer than
    ``MAX_SOURCE_ID_BYTES`` are stored as ``0xfe`` + a 128-bit hash of them; such a key comes
    back as the name ``"~" + 32 hex digits`` of that hash, and that name maps to the same key
    again. UTF-8 (with lone surrogates passed through) never contains the bytes ``0xfe``/``0xff``,
    so the encoding is injective up to hash collisions, ``source_id_from_key(source_key(s)) == s``
    for every id that is not hashed, and ``source_key(source_id_from_key(k)) == k`` for every key.

Task dedup keys
    A report's task id is its deduplication key within its source. Ids longer than
    ``MAX_TASK_ID_BYTES`` are replaced by ``"#"`` + a 128-bit hash, both in memory and on disk,
    so an in-flight row key always fits LMDB's 511-byte key limit.

In-flight row keys
    ``len(source_key)`` (2 bytes, big-endian) + source key + task dedup key (UTF-8). All rows of
    one source share the prefix ``len + source key``.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence

from nemo_curator.resumability.keyset import PackedKeys

MAX_SOURCE_ID_BYTES = 100
MAX_TASK_ID_BYTES = 256

_HASHED = 0xFE
_TEXT = 0xFF
_U64 = struct.Struct(">Q")
_U32 = struct.Struct(">I")


def _hash16(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()


def source_key(source_id: str) -> bytes:
    """The stored key of ``source_id`` (16 raw bytes for a 32-hex id)."""
    if len(source_id) == 32:
        try:
            raw = bytes.fromhex(source_id)
        except ValueError:
            raw = b""
        # 32 characters giving 16 bytes are 32 hex digits (no spaces); only the lower-case
        # (canonical) spelling maps to raw bytes, so the key decodes back to the same id.
        if len(raw) == 16 and (source_id.islower() or source_id.isdigit()):
            return raw
    elif len(source_id) == 33 and source_id[0] == "~":
        hashed = _hashed_name_key(source_id)
        if hashed is not None:
            return hashed
    data = source_id.encode("utf-8", "surrogatepass")
    if len(data) > MAX_SOURCE_ID_BYTES:
        return bytes((_HASHED,)) + _hash16(data)
    if len(data) == 15:
        return bytes((_TEXT, _TEXT)) + data
    return bytes((_TEXT,)) + data


def _hashed_name_key(name: str) -> bytes | None:
    """The hashed key named by ``"~" + 32 lowercase hex digits``, else ``None``."""
    digits = name[1:]
    if not (digits.isascii() and digits.isalnum() and (digits.islower() or digits.isdigit())):
        return None
    try:
        return bytes((_HASHED,)) + bytes.fromhex(digits)
    except ValueError:
        return None


def is_hashed_key(key: bytes) -> bool:
    """Whether ``key`` holds a hash of a long id (its id cannot be read back from it)."""
    return len(key) == 17 and key[0] == _HASHED


def source_id_from_key(key: bytes) -> str:
    """Inverse of ``source_key`` (a hashed long id comes back as ``"~"`` + its hash)."""
    if len(key) == 16:
        return key.hex()
    if key[0] == _HASHED:
        return "~" + key[1:].hex()
    start = 2 if len(key) > 1 and key[1] == _TEXT else 1
    return bytes(key[start:]).decode("utf-8", "surrogatepass")


def packed_source_keys(source_ids: Sequence[str]) -> bytes | None:
    """The keys of ``source_ids`` back to back when each is a canonical framework id, else ``None``.

    A canonical id is 32 hex digits without upper-case letters, whose ``source_key`` is its 16 raw
    bytes; any other id (``None`` then) needs ``source_key`` one by one. One join and one
    ``bytes.fromhex`` for the whole batch: a space inside an id shortens the result, a non-hex
    character fails it, so neither passes for a canonical batch.
    """
    n = len(source_ids)
    if n and set(map(len, source_ids)) != {32}:
        return None
    text = "".join(source_ids)
    if not text.isascii() or any(c in text for c in "ABCDEF"):
        return None
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        return None
    return raw if len(raw) == 16 * n else None


def task_dedup_key(task_id: str) -> str:
    """The deduplication key of ``task_id`` (the id itself unless it is very long)."""
    if len(task_id) <= MAX_TASK_ID_BYTES // 4 or len(task_id.encode()) <= MAX_TASK_ID_BYTES:
        return task_id
    return "#" + _hash16(task_id.encode()).hex()


def row_prefix(skey: bytes) -> bytes:
    """The common prefix of all in-flight rows of the source whose key is ``skey``."""
    return len(skey).to_bytes(2, "big") + skey


def split_row_key(key: bytes) -> tuple[bytes, str]:
    """``(source key, task dedup key)`` of an in-flight row key."""
    n = int.from_bytes(key[:2], "big")
    return bytes(key[2 : 2 + n]), bytes(key[2 + n :]).decode()


def encode_credit(num: int, exp: int) -> bytes:
    """Exact text form of the credit ``num / 2**exp`` (the ``Credit.to_wire`` format)."""
    return f"{num}/2^{exp}".encode()


def decode_credit(value: bytes) -> tuple[int, int]:
    """``(num, exp)`` of an ``encode_credit`` value (not normalized)."""
    num, _, exp = bytes(value).partition(b"/2^")
    return int(num), int(exp or 0)


def pack_u64(value: int) -> bytes:
    """8-byte big-endian unsigned integer (times in ns, sequence numbers)."""
    return _U64.pack(value)


def unpack_u64(value: bytes) -> int:
    return _U64.unpack_from(value)[0]


# -- completion log records ---------------------------------------------------------------
#
# The ``completed`` sub-database is an append-only log: key = record number (8 bytes,
# big-endian), value = completion time (8 bytes, ns) + format byte + source keys. Format
# ``F``: 16-byte keys back to back; format ``V``: each key prefixed by its length (1 byte).
# Appending one record per commit keeps a commit to a few pages however large the table
# grows (random 16-byte keys in a B-tree would dirty about one page per completed source).

_FIXED = ord("F")
_VARIABLE = ord("V")


def encode_completion_records(time_ns: int, keys: Sequence[bytes]) -> list[bytes]:
    """One or two record values holding ``keys`` completed at ``time_ns``."""
    if isinstance(keys, PackedKeys):
        return [_U64.pack(time_ns) + bytes((_FIXED,)) + keys.raw] if keys else []
    fixed = [k for k in keys if len(k) == 16]
    other = [k for k in keys if len(k) != 16] if len(fixed) != len(keys) else []
    head = _U64.pack(time_ns)
    records = []
    if fixed:
        records.append(head + bytes((_FIXED,)) + b"".join(fixed))
    if other:
        records.append(head + bytes((_VARIABLE,)) + b"".join(bytes((len(k),)) + k for k in other))
    return records


def decode_completion_record(value: bytes) -> tuple[int, list[bytes]]:
    """``(time ns, source keys)`` of one completion record."""
    value = bytes(value)
    when = _U64.unpack_from(value)[0]
    if value[8] == _FIXED:
        return when, [value[i : i + 16] for i in range(9, len(value), 16)]
    keys = []
    i, n = 9, len(value)
    while i < n:
        length = value[i]
        keys.append(value[i + 1 : i + 1 + length])
        i += 1 + length
    return when, keys


def completion_record_size(value: bytes) -> int:
    """Number of keys in a completion record (cheap for the fixed format)."""
    if value[8] == _FIXED:
        return (len(value) - 9) // 16
    return len(decode_completion_record(value)[1])


# -- the recent-completion log -----------------------------------------------------------
#
# To recognise a late duplicate report for a source that already completed (also after the
# ledger restarted), the store keeps the digests of this run's recently completed sources
# (``digests``: sorted 64-bit fingerprints of their (task, credit) pairs) in an append-only
# log. One record per commit:
#   u32 number of sources, then per source: u8 key length, source key, u8 mode, u32 payload
#   length, payload. Mode ``D``: the digest, little-endian u64 values. Modes ``J`` and ``L`` (task
#   ids without credit, written before digests) are read back as ``None`` (no digest).

_DIGEST = ord("D")


def encode_recent_record(entries: list[tuple[bytes, bytes]]) -> bytes:
    """``[(source key, digest bytes)]`` -> one record value."""
    parts = [_U32.pack(len(entries))]
    for key, payload in entries:
        parts.append(bytes((len(key),)) + key + bytes((_DIGEST,)) + _U32.pack(len(payload)))
        parts.append(payload)
    return b"".join(parts)


def decode_recent_record(value: bytes) -> list[tuple[bytes, bytes | None]]:
    """``[(source key, digest bytes or None)]`` of one record value."""
    value = bytes(value)
    (count,) = _U32.unpack_from(value)
    entries: list[tuple[bytes, bytes | None]] = []
    i = 4
    for _ in range(count):
        klen = value[i]
        key = value[i + 1 : i + 1 + klen]
        mode = value[i + 1 + klen]
        (size,) = _U32.unpack_from(value, i + 2 + klen)
        i += 6 + klen
        entries.append((key, value[i : i + size] if mode == _DIGEST else None))
        i += size
    return entries


def recent_record_size(value: bytes) -> int:
    return _U32.unpack_from(value)[0]
