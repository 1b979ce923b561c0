"""Digests of completed sources: recognise a late exact duplicate report in bounded memory.

When a source completes, the ledger drops its per-task state and keeps a *digest*: the sorted
64-bit fingerprints of its ``(task dedup key, credit)`` pairs (``fingerprints``), held as the
bytes of little-endian unsigned integers (the form the store persists, too). A later report
for the source is an exact duplicate exactly when its fingerprint is in the digest, up to hash
collisions: a report that is *not* a duplicate is taken for one with probability at most
``n / 2**w`` for a digest of ``n`` tasks held at width ``w`` bits (it matches one of ``n``
uniform ``w``-bit values). A duplicate is always recognised (no false negatives).

``DigestWindow`` holds the digests of this run's completions within a byte budget. When over
budget it degrades, oldest first, never the newest before the older ones:

1. the oldest 32-bit digest is shrunk to 16 bits, else the oldest 64-bit digest to 32 bits
   (a shrunk digest keeps the top bits of each fingerprint, so it stays sorted and a
   duplicate still matches); so the newest digests stay at 64 bits (a false match at most
   ``n / 2**64``), middle ones at 32 (``n / 2**32``) and old ones at 16 (``n / 2**16``);
2. when only 16-bit digests are left (or the 16-bit ones take more than half the budget), the
   oldest digest is dropped. Its source is still known to have completed in this run, but a
   report for it can no longer be told apart from a new task (the ledger then keeps the
   completion, see ``ledger``).

A digest's cost is ``ENTRY_OVERHEAD`` plus its fingerprint bytes; ``bytes_used`` is their sum
and never exceeds the budget after ``add`` returns (a single digest larger than the whole
budget is dropped at once).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator

import numpy as np

#: Default byte budget of the digests of one ledger.
DEFAULT_DIGEST_BUDGET = 64 << 20

#: Bytes one digest costs besides its fingerprints (dict entries, the array header, the id),
#: measured with tracemalloc for 32-character ids (``benchmarks.ledger``).
ENTRY_OVERHEAD = 300

#: Widths a digest is held at, widest first.
WIDTHS = (64, 32, 16)
_DTYPES = {64: np.dtype("<u8"), 32: np.dtype("<u4"), 16: np.dtype("<u2")}

#: Bits of a packed credit (``num << EXP_BITS | exp``) that hold the exponent.
EXP_BITS = 32
_EXP_MASK = (1 << EXP_BITS) - 1
_M64 = (1 << 64) - 1

_SEED = np.uint64(0x243F6A8885A308D3)
_MUL = np.uint64(0x9E3779B97F4A7C15)
_FMIX1 = np.uint64(0xFF51AFD7ED558CCD)
_FMIX2 = np.uint64(0xC4CEB9FE1A85EC53)


def _canonical_credit(packed: int) -> int:
    """The packed credit in lowest terms (``num`` odd or ``exp == 0``), so equal values hash equally."""
    num, exp = packed >> EXP_BITS, packed & _EXP_MASK
    if num & 1 or not exp or not num:
        return packed
    shift = min((num & -num).bit_length() - 1, exp)
    return ((num >> shift) << EXP_BITS) | (exp - shift)


def _credit_word(packed: int) -> int:
    packed = _canonical_credit(packed)
    if packed <= _M64:
        return packed
    return (packed & _M64) ^ (hash(packed >> 64) * 0x9E3779B97F4A7C15 & _M64)  # int hash is not salted


def _credit_words(credits: list[int]) -> np.ndarray:
    """``_credit_word`` of each credit; vectorized when all fit 64 bits and are in lowest terms."""
    try:
        packed = np.array(credits, dtype=np.uint64)
    except OverflowError:
        packed = None
    if packed is not None:
        num, exp = packed >> np.uint64(EXP_BITS), packed & np.uint64(_EXP_MASK)
        if not ((num & np.uint64(1) == 0) & (exp != 0) & (num != 0)).any():
            return packed
    return np.fromiter(map(_credit_word, credits), dtype=np.uint64, count=len(credits))


def _mix(h: np.ndarray) -> None:
    h *= _MUL
    h ^= h >> np.uint64(29)


def fingerprints(task_keys: list[str], credits: list[int]) -> np.ndarray:
    """64-bit fingerprints (``uint64``) of ``(task key, packed credit)`` pairs, aligned with the inputs.

    Stable across processes and machines (a restarted ledger compares them with persisted
    ones): the UTF-8 bytes of the key, read as little-endian 64-bit words, its length and the
    credit in lowest terms go through a multiply-xorshift chain and the murmur3 finalizer.
    Vectorized: about 0.1 us per pair in large calls.
    """
    n = len(task_keys)
    if n == 0:
        return np.zeros(0, dtype=np.uint64)
    data = [t.encode("utf-8", "surrogatepass") for t in task_keys]
    lengths = np.fromiter(map(len, data), dtype=np.uint64, count=n)
    width = max(8, -(-int(lengths.max()) // 8) * 8)
    words = np.array(data, dtype=f"S{width}").view("<u8").reshape(n, width // 8)
    nwords = (lengths + np.uint64(7)) // np.uint64(8)
    with np.errstate(over="ignore"):
        h = lengths * _MUL
        h ^= _SEED
        for column in range(width // 8):
            # Only a key's own words: its fingerprint must not depend on the others in the call.
            mixed = h ^ words[:, column]
            _mix(mixed)
            h = np.where(nwords > column, mixed, h)
        h ^= _credit_words(credits)
        _mix(h)
        h ^= h >> np.uint64(33)
        h *= _FMIX1
        h ^= h >> np.uint64(33)
        h *= _FMIX2
        h ^= h >> np.uint64(33)
    return h


def fingerprint(task_key: str, packed_credit: int) -> int:
    """The fingerprint of one pair (see ``fingerprints``)."""
    return int(fingerprints([task_key], [packed_credit])[0])


def digest_of(fps: np.ndarray) -> bytes:
    """A 64-bit digest: the fingerprints sorted, as little-endian ``u64`` bytes."""
    return np.sort(fps.astype(np.uint64, copy=False)).astype(_DTYPES[64]).tobytes()


def digests_of(fps: np.ndarray, counts: list[int]) -> list[bytes]:
    """``digest_of`` each consecutive run of ``counts`` fingerprints, in one sort for all of them."""
    if len(counts) == 1:
        return [digest_of(fps)]
    segment = np.repeat(np.arange(len(counts)), counts)
    data = fps[np.lexsort((fps, segment))].astype(_DTYPES[64]).tobytes()
    out = []
    start = 0
    for n in counts:
        end = start + 8 * n
        out.append(data[start:end])
        start = end
    return out


def floor_cost(n_tasks: int) -> int:
    """What a digest of ``n_tasks`` costs at its narrowest width (the most the window keeps per source)."""
    return ENTRY_OVERHEAD + 2 * n_tasks


def _shrink(digest: bytes, width: int, new_width: int) -> bytes:
    """Keep the top ``new_width`` of ``width`` bits of each fingerprint (order and matches are preserved)."""
    values = np.frombuffer(digest, dtype=_DTYPES[width]).astype(np.uint64)
    return (values >> np.uint64(width - new_width)).astype(_DTYPES[new_width]).tobytes()


class DigestWindow:
    """The digests of this run's recently completed sources, within ``budget`` bytes (module docstring)."""

    def __init__(self, budget: int = DEFAULT_DIGEST_BUDGET, max_sources: int | None = None) -> None:
        self.budget = budget
        self.max_sources = max_sources
        self.bytes_used = 0
        self.dropped = 0
        self._count = 0
        # One ordered map per width, oldest first; every 16-bit digest is older than every 32-bit
        # one, which is older than every 64-bit one.
        self._tiers: dict[int, OrderedDict[str, bytes]] = {w: OrderedDict() for w in WIDTHS}
        self._tier_bytes = dict.fromkeys(WIDTHS, 0)

    def __len__(self) -> int:
        return self._count

    def __contains__(self, sid: object) -> bool:
        return any(sid in t for t in self._tiers.values())

    def widths(self) -> dict[int, int]:
        """Number of digests held at each width."""
        return {w: len(t) for w, t in self._tiers.items()}

    def items(self) -> Iterator[tuple[str, bytes]]:
        """``(source id, digest)`` oldest first."""
        for w in reversed(WIDTHS):
            yield from self._tiers[w].items()

    def add(self, sid: str, digest: bytes) -> None:
        """Hold ``digest`` (``digest_of``) of ``sid``, which holds none, as the newest; enforce the budget.

        (A source completes at most once in a run: a revoked one stays failed for the run.)
        """
        self._put(64, sid, digest)
        self._count += 1
        if self.bytes_used > self.budget or (self.max_sources is not None and self._count > self.max_sources):
            self._enforce()

    def match(self, sid: str, fp: int) -> bool | None:
        """Whether fingerprint ``fp`` is in ``sid``'s digest; ``None`` when no digest is held."""
        for w, tier in self._tiers.items():
            digest = tier.get(sid)
            if digest is not None:
                values = np.frombuffer(digest, dtype=_DTYPES[w])
                value = fp >> (64 - w)
                i = int(np.searchsorted(values, value))
                return i < len(values) and int(values[i]) == value
        return None

    def pop(self, sid: str) -> bytes | None:
        for w, tier in self._tiers.items():
            digest = tier.pop(sid, None)
            if digest is not None:
                self._account(w, -self._cost(digest))
                self._count -= 1
                return digest
        return None

    # -- internals ------------------------------------------------------------------

    @staticmethod
    def _cost(digest: bytes) -> int:
        return ENTRY_OVERHEAD + len(digest)

    def _account(self, width: int, delta: int) -> None:
        self._tier_bytes[width] += delta
        self.bytes_used += delta

    def _put(self, width: int, sid: str, digest: bytes) -> None:
        self._tiers[width][sid] = digest
        self._account(width, self._cost(digest))

    def _enforce(self) -> None:
        tiers = self._tiers
        while self.bytes_used > self.budget or (self.max_sources is not None and len(self) > self.max_sources):
            over_count = self.max_sources is not None and len(self) > self.max_sources
            if not over_count and self._tier_bytes[16] <= self.budget // 2 and (tiers[32] or tiers[64]):
                wide = 32 if tiers[32] else 64
                sid, digest = tiers[wide].popitem(last=False)
                self._account(wide, -self._cost(digest))
                self._put(wide // 2, sid, _shrink(digest, wide, wide // 2))
                continue
            oldest = next(w for w in reversed(WIDTHS) if tiers[w])
            _, digest = tiers[oldest].popitem(last=False)
            self._account(oldest, -self._cost(digest))
            self._count -= 1
            self.dropped += 1
