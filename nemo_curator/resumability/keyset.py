"""Compact, exact collections of source keys (pure: numpy, no I/O).

A Python ``set`` of 10,000,000 16-byte ``bytes`` keys takes about 900 MB and many seconds to
build. Here a 16-byte key (a framework source id's raw bytes, ``keys.source_key``) is a row of two
``uint64`` numbers in sorted numpy arrays: 16 bytes per key, built from a record's packed bytes with
``np.frombuffer`` and looked up in batches with ``np.searchsorted``. Keys of any other length (text
ids, hashed long ids; the framework's own ids are always 16 bytes) stay in Python containers beside
the arrays. Nothing is approximate: the filter in front of single lookups (``KeyTable.may_contain``)
only ever answers "certainly absent" or "look in the table".

Coordinates: a key with big-endian halves ``(hi, lo)`` is the row ``(h, lo)`` with ``h = hi ^ lo``,
and tables are sorted by ``(h, lo)``. ``(hi, lo) -> (hi ^ lo, lo)`` is a bijection, so a row names
exactly one key; ``h`` rather than ``hi`` because ids with structure (numbers written as 32 hex
digits) share their high half, and rows with equal ``h`` take a slower (still exact) path.

- ``KeyTable``: an immutable sorted table of distinct 16-byte keys, optionally with a stamp each.
- ``KeySet``: a mutable exact set of keys of any length (the ledger's completed sources).
- ``KeyStamps``: a map key -> stamp whose values only grow (a writer's completions, each with the
  Lamport stamp of its latest completion).
- ``PackedKeys``: a read-only sequence of 16-byte keys held back to back in one ``bytes`` (a
  decoded segment's completions), so decoding a record makes no Python object per key.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence, Set
from itertools import compress
from typing import Any, overload

import numpy as np

#: Length of the keys held in arrays.
KEY_BYTES = 16
#: A mutable collection merges its Python-held changes into a new table once they exceed
#: ``max(MERGE_MIN, rows of its table // MERGE_FRACTION)``: a merge copies the table, so merging
#: at a fraction of its size keeps the copying at a constant amount per added key.
MERGE_MIN = 1 << 17
MERGE_FRACTION = 16
#: A ``KeyStamps`` merges its pending rows once they outnumber its table this many times.
PENDING_FACTOR = 4
#: Filter bits per key of a table (single hash: about 1 in 9 absent keys passes it).
FILTER_BITS_PER_KEY = 8
#: A table builds its filter at its this many-th single lookup (a build costs about 0.1 s per
#: million keys; the first lookups after a load go to the table directly).
FILTER_AFTER = 4096
#: Below this many keys a batch is looked up one key at a time (numpy's per-call cost dominates).
BATCH_MIN = 64

_BE = np.dtype(">u8")
_U64 = np.dtype(np.uint64)
_M64 = (1 << 64) - 1
_FIB = 0x9E3779B97F4A7C15  # 2**64 / golden ratio: multiplicative hashing for the filter
_EMPTY = np.zeros(0, dtype=_U64)
_EMPTY.flags.writeable = False


def split_packed(raw: bytes | memoryview) -> tuple[np.ndarray, np.ndarray]:
    """The rows ``(h, lo)`` (new native ``uint64`` arrays) of 16-byte keys held back to back in ``raw``."""
    if len(raw) % KEY_BYTES:
        raise ValueError(f"packed keys must be a multiple of {KEY_BYTES} bytes long, got {len(raw)}")
    halves = np.frombuffer(raw, dtype=_BE).reshape(-1, 2)
    lo = halves[:, 1].astype(_U64)
    h = halves[:, 0].astype(_U64)
    h ^= lo
    return h, lo


def join_packed(h: np.ndarray, lo: np.ndarray) -> bytes:
    """Inverse of ``split_packed``: the keys of rows ``(h, lo)`` back to back, in row order."""
    out = np.empty((len(h), 2), dtype=_BE)
    out[:, 0] = h ^ lo
    out[:, 1] = lo
    return out.tobytes()


def key_row(key: bytes) -> tuple[int, int]:
    """The row ``(h, lo)`` of one 16-byte key, as Python ints."""
    lo = int.from_bytes(key[8:16])
    return int.from_bytes(key[:8]) ^ lo, lo


def _readonly(*arrays: np.ndarray) -> None:
    for a in arrays:
        a.flags.writeable = False


class KeyTable:
    """An immutable exact set of 16-byte keys, optionally with a ``uint64`` stamp per key.

    Invariants: ``h`` and ``lo`` have equal length and are sorted by ``(h, lo)`` with no row twice;
    ``stamps`` is ``None`` or aligned with them. The arrays are read-only: tables derived from one
    another may share them. Build one with ``KeyTable.build`` (rows in any order, duplicates
    allowed) unless the rows are known to satisfy the invariants.
    """

    __slots__ = ("_filter", "_probes", "_shift", "_unique_h", "h", "lo", "stamps")

    def __init__(
        self, h: np.ndarray, lo: np.ndarray, stamps: np.ndarray | None = None, *, unique_h: bool | None = None
    ) -> None:
        _readonly(h, lo, *(() if stamps is None else (stamps,)))
        self.h, self.lo, self.stamps = h, lo, stamps
        # Whether no two rows share ``h``: then a key is found at its first ``h`` or not at all.
        self._unique_h = (len(h) < 2 or not bool((h[1:] == h[:-1]).any())) if unique_h is None else unique_h
        self._filter: memoryview | None = None
        self._probes = 0
        self._shift = 64

    @classmethod
    def empty(cls, *, stamped: bool = False) -> KeyTable:
        return cls(_EMPTY, _EMPTY, _EMPTY if stamped else None, unique_h=True)

    @classmethod
    def build(cls, h: np.ndarray, lo: np.ndarray, stamps: np.ndarray | None = None) -> KeyTable:
        """The table of rows ``(h, lo)`` in any order; a key given twice keeps its largest stamp."""
        n = len(h)
        if n > 1 and not bool((h[1:] >= h[:-1]).all()):
            order = np.argsort(h)
            h, lo = h[order], lo[order]
            stamps = None if stamps is None else stamps[order]
        same = h[1:] == h[:-1] if n > 1 else np.zeros(0, dtype=bool)
        if not same.any():
            return cls(h, lo, stamps, unique_h=True)
        # Runs of equal ``h`` (rare): order each by ``lo``. Runs are contiguous and already in ``h``
        # order, so sorting all their positions together by ``(h, lo)`` keeps every run in place.
        in_run = np.zeros(n, dtype=bool)
        in_run[1:] |= same
        in_run[:-1] |= same
        where = np.flatnonzero(in_run)
        order = np.arange(n)
        order[where] = where[np.lexsort((lo[where], h[where]))]
        h, lo = h[order], lo[order]
        stamps = None if stamps is None else stamps[order]
        duplicate = (h[1:] == h[:-1]) & (lo[1:] == lo[:-1])
        if duplicate.any():
            first = np.flatnonzero(np.concatenate(([True], ~duplicate)))
            stamps = None if stamps is None else np.maximum.reduceat(stamps, first)
            h, lo = h[first], lo[first]
        return cls(h, lo, stamps)

    @classmethod
    def from_packed(cls, raw: bytes | memoryview, stamps: np.ndarray | None = None) -> KeyTable:
        """The table of the 16-byte keys back to back in ``raw`` (with ``stamps`` aligned to them)."""
        h, lo = split_packed(raw)
        return cls.build(h, lo, stamps)

    def __len__(self) -> int:
        return len(self.h)

    @property
    def stamped(self) -> bool:
        return self.stamps is not None

    def unstamped(self) -> KeyTable:
        """The same keys without stamps (sharing the arrays)."""
        if self.stamps is None:
            return self
        return KeyTable(self.h, self.lo, unique_h=self._unique_h)

    # -- lookups ----------------------------------------------------------------------

    def find(self, h: np.ndarray, lo: np.ndarray) -> np.ndarray:
        """The row index of each key ``(h[i], lo[i])``, or -1 where it is absent (``int64``)."""
        n = len(self.h)
        if n == 0 or len(h) == 0:
            return np.full(len(h), -1, dtype=np.int64)
        pos = np.searchsorted(self.h, h)
        at = np.minimum(pos, n - 1)
        same_h = self.h[at] == h
        hit = same_h & (self.lo[at] == lo)
        out = np.where(hit, pos, -1)
        if not self._unique_h:
            for i in np.flatnonzero(same_h & ~hit):
                out[i] = self._find_in_run(int(pos[i]), h[i], lo[i])
        return out

    def find_one(self, h: int, lo: int) -> int:
        """The row index of the key with row ``(h, lo)``, or -1."""
        n = len(self.h)
        if n == 0:
            return -1
        pos = int(self.h.searchsorted(np.uint64(h)))
        if pos == n or int(self.h[pos]) != h:
            return -1
        if int(self.lo[pos]) == lo:
            return pos
        return -1 if self._unique_h else self._find_in_run(pos, np.uint64(h), np.uint64(lo))

    def _find_in_run(self, start: int, h: Any, lo: Any) -> int:
        end = int(self.h.searchsorted(h, side="right"))
        at = start + int(self.lo[start:end].searchsorted(lo))
        return at if at < end and self.lo[at] == lo else -1

    def may_contain(self, lo: int) -> bool:
        """``False`` only if no key of the table has low half ``lo`` (a cheap test before ``find_one``)."""
        bits = self._filter
        if bits is None:
            self._probes += 1
            if self._probes < FILTER_AFTER:
                return True
            bits = self._build_filter()
        i = ((lo * _FIB) & _M64) >> self._shift
        return bool(bits[i >> 3] >> (i & 7) & 1)

    def _build_filter(self) -> memoryview:
        """One bit per (multiplicative) hash of ``lo`` over ``FILTER_BITS_PER_KEY`` bits per key.

        ``lo`` alone, so that a lookup reads one half of the key before anything else.
        """
        width = max(6, (FILTER_BITS_PER_KEY * max(len(self.h), 1) - 1).bit_length())
        self._shift = 64 - width
        with np.errstate(over="ignore"):
            slot = (self.lo * np.uint64(_FIB)) >> np.uint64(self._shift)
        table = np.zeros(1 << (width - 3), dtype=np.uint8)
        byte, bit = slot >> np.uint64(3), (slot & np.uint64(7)).astype(np.uint8)
        for j in range(8):
            # One bit position per pass: every write of a pass stores the same value into its byte,
            # so repeated bytes (which a fancy assignment writes only once) lose nothing.
            at = byte[bit == j]
            table[at] |= np.uint8(1 << j)
        self._filter = memoryview(table)
        return self._filter

    # -- derived tables and bytes -------------------------------------------------------

    def union(self, other: KeyTable) -> KeyTable:
        """The keys of both (a key in both keeps the larger stamp; stamps kept only if both have them)."""
        if not len(other):
            return self if self.stamped == other.stamped else self.unstamped()
        if not len(self):
            return other if self.stamped == other.stamped else other.unstamped()
        # The other's (sorted) rows go before this table's first row of larger or equal ``h``: the
        # result is sorted by ``h``, and ``build`` orders equal ``h`` by ``lo`` and merges duplicates,
        # in linear time (``np.insert`` does the same placement several times slower).
        n = len(self) + len(other)
        into_other = np.searchsorted(self.h, other.h) + np.arange(len(other))
        into_self = np.ones(n, dtype=bool)
        into_self[into_other] = False

        def merged(mine: np.ndarray, theirs: np.ndarray) -> np.ndarray:
            out = np.empty(n, dtype=mine.dtype)
            out[into_other] = theirs
            out[into_self] = mine
            return out

        stamps = None
        if self.stamps is not None and other.stamps is not None:
            stamps = merged(self.stamps, other.stamps)
        return KeyTable.build(merged(self.h, other.h), merged(self.lo, other.lo), stamps)

    def without(self, rows: np.ndarray) -> KeyTable:
        """The table without the given row indices."""
        if not len(rows):
            return self
        stamps = None if self.stamps is None else np.delete(self.stamps, rows)
        return KeyTable(np.delete(self.h, rows), np.delete(self.lo, rows), stamps)

    def select(self, keep: np.ndarray) -> KeyTable:
        """The rows where the boolean mask ``keep`` is true."""
        stamps = None if self.stamps is None else self.stamps[keep]
        return KeyTable(self.h[keep], self.lo[keep], stamps)

    def packed(self) -> bytes:
        """The keys back to back in table order (``join_packed``)."""
        return join_packed(self.h, self.lo)

    def iter_keys(self, chunk: int = 1 << 16) -> Iterator[bytes]:
        """The keys as ``bytes``, in table order."""
        for start in range(0, len(self.h), chunk):
            raw = join_packed(self.h[start : start + chunk], self.lo[start : start + chunk])
            for i in range(0, len(raw), KEY_BYTES):
                yield raw[i : i + KEY_BYTES]

    def same_keys(self, other: KeyTable) -> bool:
        return bool(np.array_equal(self.h, other.h) and np.array_equal(self.lo, other.lo))


def _delta_hits(delta: set[bytes], h: np.ndarray, lo: np.ndarray, raw: bytes | None) -> np.ndarray:
    """Which of the keys ``(h, lo)`` are in ``delta`` (16-byte keys), at cost ``O(min(|delta|, |keys|))``."""
    if raw is not None and len(delta) > len(h):
        return np.fromiter(
            (raw[i : i + KEY_BYTES] in delta for i in range(0, len(raw), KEY_BYTES)), dtype=bool, count=len(h)
        )
    return KeyTable.from_packed(b"".join(delta)).find(h, lo) >= 0


class KeySet(Set[bytes]):
    """A mutable exact set of source keys: 16-byte keys mostly in a ``KeyTable``, others in a Python set.

    Members are ``(table - removed) | added | other``. Invariants: ``added`` and ``removed`` hold
    only 16-byte keys; ``removed`` is a subset of the table's keys and ``added`` is disjoint from
    them; ``other`` holds every member of another length. So ``len`` is exact without a scan.
    ``add``/``discard`` change ``added``/``removed``; once those exceed ``MERGE_MIN`` keys and a
    ``MERGE_FRACTION``-th of the table they are merged into a new table (the old one is never
    changed, so a table may be shared with the ``KeyStamps`` it came from).
    """

    __slots__ = ("_added", "_merge_at", "_other", "_removed", "_rows", "_table")

    def __init__(self, keys: Iterable[bytes] = ()) -> None:
        self._set_table(KeyTable.empty())
        self._added: set[bytes] = set()
        self._removed: set[bytes] = set()
        self._other: set[bytes] = set()
        keys = keys if isinstance(keys, Sequence | Set) else list(keys)
        if len(keys) >= BATCH_MIN:
            fixed = [k for k in keys if len(k) == KEY_BYTES]
            self._set_table(KeyTable.from_packed(b"".join(fixed)).unstamped())
            self._other = {bytes(k) for k in keys if len(k) != KEY_BYTES}
        else:
            for key in keys:
                self.add(key)

    def _set_table(self, table: KeyTable) -> None:
        self._table = table
        self._rows = len(table)
        self._merge_at = max(MERGE_MIN, self._rows // MERGE_FRACTION)

    @classmethod
    def of_table(cls, table: KeyTable, other: Iterable[bytes] = ()) -> KeySet:
        """The set of ``table``'s keys (sharing its arrays) and the ``other`` keys (none of 16 bytes)."""
        out = cls()
        out._set_table(table.unstamped())
        out._other = set(other)
        return out

    @classmethod
    def union_of(cls, maps: Iterable[KeyStamps]) -> KeySet:
        """The keys of all ``maps`` (a single map's table is shared, not copied)."""
        tables = []
        other: set[bytes] = set()
        for m in maps:
            if len(m.table()):
                tables.append(m.table())
            other.update(m.other())
        if not tables:
            return cls.of_table(KeyTable.empty(), other)
        table = tables[0]
        for more in tables[1:]:
            table = table.union(more.unstamped())
        return cls.of_table(table, other)

    @classmethod
    def _from_iterable(cls, it: Iterable[bytes]) -> KeySet:
        return cls(it)

    # -- the Set protocol --------------------------------------------------------------

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, bytes):
            return False
        if len(key) != KEY_BYTES:
            return key in self._other
        if key in self._added:
            return True
        if not self._rows:
            return False
        table = self._table
        lo = int.from_bytes(key[8:])
        if not table.may_contain(lo) or key in self._removed:
            return False
        return table.find_one(int.from_bytes(key[:8]) ^ lo, lo) >= 0

    def __len__(self) -> int:
        return self._rows - len(self._removed) + len(self._added) + len(self._other)

    def __iter__(self) -> Iterator[bytes]:
        removed = self._removed
        for key in self._table.iter_keys():
            if key not in removed:
                yield key
        yield from self._added
        yield from self._other

    def __repr__(self) -> str:
        return f"KeySet({len(self)} keys)"

    # -- changes -----------------------------------------------------------------------

    def add(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            self._other.add(key)
            return
        added = self._added
        if key in added:
            return
        removed = self._removed
        if removed and key in removed:
            removed.discard(key)
            return
        if self._rows:
            table = self._table
            lo = int.from_bytes(key[8:])
            if table.may_contain(lo) and table.find_one(int.from_bytes(key[:8]) ^ lo, lo) >= 0:
                return
        added.add(key)
        if len(added) + len(removed) > self._merge_at:
            self.merge()

    def discard(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            self._other.discard(key)
            return
        if key in self._added:
            self._added.discard(key)
            return
        table = self._table
        if key in self._removed or not self._rows:
            return
        h, lo = key_row(key)
        if table.may_contain(lo) and table.find_one(h, lo) >= 0:
            self._removed.add(key)
            if len(self._added) + len(self._removed) > self._merge_at:
                self.merge()

    def update(self, keys: Iterable[bytes]) -> None:
        """``add`` each of ``keys`` (a large batch is checked against the table in one lookup)."""
        keys = list(keys)
        if len(keys) < BATCH_MIN:
            for key in keys:
                self.add(key)
            return
        fixed = [k for k in keys if len(k) == KEY_BYTES]
        if len(fixed) != len(keys):
            self._other.update(k for k in keys if len(k) != KEY_BYTES)
        if self._removed:
            self._removed.difference_update(fixed)  # back in: the table has them
        if self._rows and fixed:
            in_table = self._table.find(*split_packed(b"".join(fixed))) >= 0
            fixed = list(compress(fixed, (~in_table).tolist()))
        self._added.update(fixed)
        if len(self._added) + len(self._removed) > self._merge_at:
            self.merge()

    def merge(self) -> None:
        """Fold ``added`` and ``removed`` into a new table (membership is unchanged)."""
        table = self._table
        if self._removed:
            h, lo = split_packed(b"".join(self._removed))
            table = table.without(table.find(h, lo))
        if self._added:
            table = table.union(KeyTable.from_packed(b"".join(self._added)))
        self._set_table(table)
        self._added, self._removed = set(), set()

    # -- batched queries ---------------------------------------------------------------

    def contains_packed(self, raw: bytes) -> np.ndarray:
        """Membership (a boolean array) of the 16-byte keys back to back in ``raw``."""
        h, lo = split_packed(raw)
        return self._contains_rows(h, lo, raw)

    def contains_keys(self, keys: Sequence[bytes]) -> np.ndarray:
        """Membership (a boolean array) of each of ``keys`` (any lengths)."""
        if len(keys) < BATCH_MIN:
            return np.fromiter((k in self for k in keys), dtype=bool, count=len(keys))
        fixed = [i for i, k in enumerate(keys) if len(k) == KEY_BYTES]
        out = np.fromiter((len(k) != KEY_BYTES and k in self._other for k in keys), dtype=bool, count=len(keys))
        if fixed:
            out[fixed] = self.contains_packed(b"".join(keys[i] for i in fixed))
        return out

    def _contains_rows(self, h: np.ndarray, lo: np.ndarray, raw: bytes | None) -> np.ndarray:
        found = self._table.find(h, lo) >= 0
        if self._removed:
            found &= ~_delta_hits(self._removed, h, lo, raw)
        if self._added:
            found |= _delta_hits(self._added, h, lo, raw)
        return found

    def intersection(self, other: KeySet) -> KeySet:
        """The members of this set that are also members of ``other`` (a new set)."""
        table = self._table
        keep = other._contains_rows(table.h, table.lo, None)
        if self._removed:
            keep &= ~_delta_hits(self._removed, table.h, table.lo, None)
        out = KeySet.of_table(table.select(keep), [k for k in self._other if k in other])
        out._added = {k for k in self._added if k in other}
        return out


class KeyStamps(Mapping[bytes, int]):
    """A map source key -> stamp whose values only grow (``set_max``), compact for 16-byte keys.

    Rows live in a stamped ``KeyTable`` plus ``pending`` chunks not merged yet; keys of other
    lengths in a dict. Invariant: a 16-byte key's value is the largest stamp of its rows in the
    table and the chunks. The chunks are merged before any read and whenever they hold more than
    ``max(MERGE_MIN, PENDING_FACTOR * rows of the table)`` rows, so each row is copied
    ``O(log n)`` times in all (folding 100 segments of 100,000 merges four times).
    """

    __slots__ = ("_other", "_pending", "_pending_rows", "_table")

    def __init__(self, items: Mapping[bytes, int] | Iterable[tuple[bytes, int]] = ()) -> None:
        self._table = KeyTable.empty(stamped=True)
        self._pending: list[tuple[np.ndarray, np.ndarray, int]] = []
        self._pending_rows = 0
        self._other: dict[bytes, int] = {}
        pairs = list(items.items() if isinstance(items, Mapping) else items)
        by_stamp: dict[int, list[bytes]] = {}
        for key, stamp in pairs:
            by_stamp.setdefault(int(stamp), []).append(key)
        for stamp, keys in by_stamp.items():
            self.set_max(keys, stamp)

    @classmethod
    def from_packed(cls, raw: bytes | memoryview, stamps: np.ndarray) -> KeyStamps:
        """The map of the 16-byte keys back to back in ``raw`` to their aligned ``stamps``."""
        out = cls()
        out._table = KeyTable.from_packed(raw, np.asarray(stamps, dtype=_U64))
        return out

    def set_max(self, keys: Iterable[bytes], stamp: int) -> None:
        """Set each key's value to ``stamp`` unless it already has a larger one."""
        if isinstance(keys, PackedKeys):
            raw = keys.raw
        else:
            keys = list(keys)
            other = self._other
            for key in keys:
                if len(key) != KEY_BYTES and other.get(key, -1) < stamp:
                    other[key] = stamp
            raw = b"".join(k for k in keys if len(k) == KEY_BYTES)
        if raw:
            h, lo = split_packed(raw)
            self._pending.append((h, lo, stamp))
            self._pending_rows += len(h)
            if self._pending_rows > max(MERGE_MIN, PENDING_FACTOR * len(self._table)):
                self._merge()

    def _merge(self) -> None:
        if not self._pending:
            return
        chunks, self._pending, self._pending_rows = self._pending, [], 0
        h = np.concatenate([c[0] for c in chunks])
        lo = np.concatenate([c[1] for c in chunks])
        stamps = np.repeat(np.array([c[2] for c in chunks], dtype=_U64), [len(c[0]) for c in chunks])
        del chunks
        self._table = self._table.union(KeyTable.build(h, lo, stamps))

    def table(self) -> KeyTable:
        """The 16-byte keys with their stamps (merged)."""
        self._merge()
        return self._table

    def other(self) -> dict[bytes, int]:
        """The keys of other lengths with their stamps (do not modify)."""
        return self._other

    def copy(self) -> KeyStamps:
        out = KeyStamps()
        out._table = self.table()
        out._other = dict(self._other)
        return out

    def packed(self) -> tuple[bytes, bytes]:
        """The 16-byte keys back to back and their stamps as big-endian ``u64``, aligned."""
        table = self.table()
        return table.packed(), table.stamps.astype(_BE).tobytes()

    def by_stamp(self) -> Iterator[tuple[int, list[bytes] | PackedKeys]]:
        """``(stamp, keys)`` groups by increasing stamp (16-byte keys as ``PackedKeys``, others apart)."""
        table = self.table()
        groups: dict[int, list[bytes] | PackedKeys] = {}
        if len(table):
            order = np.argsort(table.stamps, kind="stable")
            sorted_stamps = table.stamps[order]
            bounds = np.flatnonzero(np.diff(sorted_stamps)) + 1
            for part in np.split(order, bounds):
                stamp = int(table.stamps[part[0]])
                groups[stamp] = PackedKeys(join_packed(table.h[part], table.lo[part]))
        for key, stamp in self._other.items():
            group = groups.setdefault(stamp, [])
            if isinstance(group, PackedKeys):
                group = groups[stamp] = list(group)
            group.append(key)
        for stamp in sorted(groups):
            yield stamp, groups[stamp]

    # -- the Mapping protocol ----------------------------------------------------------

    def __getitem__(self, key: bytes) -> int:
        if len(key) != KEY_BYTES:
            return self._other[key]
        table = self.table()
        row = table.find_one(*key_row(key))
        if row < 0:
            raise KeyError(key)
        return int(table.stamps[row])

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, bytes):
            return False
        if len(key) != KEY_BYTES:
            return key in self._other
        return self.table().find_one(*key_row(key)) >= 0

    def __len__(self) -> int:
        return len(self.table()) + len(self._other)

    def __iter__(self) -> Iterator[bytes]:
        yield from self.table().iter_keys()
        yield from self._other

    def __eq__(self, other: object) -> bool:
        if isinstance(other, KeyStamps):
            mine, theirs = self.table(), other.table()
            return (
                mine.same_keys(theirs)
                and bool(np.array_equal(mine.stamps, theirs.stamps))
                and self._other == other._other
            )
        return super().__eq__(other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"KeyStamps({len(self)} keys)"


class PackedKeys(Sequence[bytes]):
    """A read-only sequence of 16-byte keys held back to back in one ``bytes`` (``raw``).

    Equal to any sequence of the same keys in the same order (so to the ``list`` it replaces).
    """

    __slots__ = ("raw",)

    def __init__(self, raw: bytes | memoryview = b"") -> None:
        if len(raw) % KEY_BYTES:
            raise ValueError(f"packed keys must be a multiple of {KEY_BYTES} bytes long, got {len(raw)}")
        self.raw = bytes(raw)

    def __len__(self) -> int:
        return len(self.raw) // KEY_BYTES

    @overload
    def __getitem__(self, index: int) -> bytes: ...
    @overload
    def __getitem__(self, index: slice) -> list[bytes]: ...
    def __getitem__(self, index: int | slice) -> bytes | list[bytes]:
        if isinstance(index, slice):
            return list(self)[index]
        n = len(self)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(index)
        return self.raw[index * KEY_BYTES : (index + 1) * KEY_BYTES]

    def __iter__(self) -> Iterator[bytes]:
        raw = self.raw
        for i in range(0, len(raw), KEY_BYTES):
            yield raw[i : i + KEY_BYTES]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, PackedKeys):
            return self.raw == other.raw
        if isinstance(other, Sequence) and not isinstance(other, str | bytes):
            return len(other) == len(self) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"PackedKeys({len(self)} keys)"
