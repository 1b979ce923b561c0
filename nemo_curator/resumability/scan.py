"""The union rules: a writer's objects folded into its state, all writers' states into the checkpoint's (pure).

Per writer (``fold_writer``): start from its newest snapshot (largest ``upto``; an empty state
without one) and apply, in ``(number, nonce)`` order, every segment numbered above ``upto``.
Segments at or below ``upto`` are already in the snapshot and are skipped, so a reader that sees
a snapshot *and* the segments it replaced (a compaction that crashed before deleting them, or a
listing taken mid-compaction) gets the same state; an object listed twice is read once.

Across writers (``union``), with Lamport stamps ordered as ``(stamp, writer_id)``:

- a source is complete when some writer's latest completion of it is later than every writer's
  latest revocation of it;
- a failure counts only for sources that are not complete (the latest one is kept);
- a source is in flight when some writer holds partial credit for it and it is neither complete
  nor failed.

Logical clocks: a writer's clock starts at 1 + the largest stamp it read at start-up; its header
carries that start stamp and each of its segments the next value. So anything a writer learned
at start-up (a completion it then revokes, a fingerprint it then replaces) has a smaller stamp
than what it writes, whatever the hosts' wall clocks say. Events no writer could have seen are
concurrent; ``(stamp, writer_id)`` orders them arbitrarily but identically for every reader.
The "current writer" (whose pipeline fingerprint the checkpoint has) is the one with the
largest ``(start_stamp, writer_id)``. Wall-clock times are kept for humans only.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from nemo_curator.resumability.digests import DEFAULT_DIGEST_BUDGET
from nemo_curator.resumability.keyset import KeySet
from nemo_curator.resumability.objects import ObjectName, WriterHeader
from nemo_curator.resumability.records import Segment, WriterState, recent_entry_weight

#: A Lamport time with its tie-breaker.
Stamp = tuple[int, str]


def apply_segment(
    state: WriterState, seg: Segment, recent_limit: int, digest_budget: int = DEFAULT_DIGEST_BUDGET
) -> None:
    """Fold one segment into ``state`` (in place). Idempotent: applying it twice changes nothing more.

    The recent window keeps the newest digests within ``recent_limit`` sources and
    ``digest_budget`` bytes at their narrowest width: at least what a ledger with that budget holds.
    """
    stamp = seg.stamp
    state.stamp = max(state.stamp, stamp)
    state.upto = max(state.upto, seg.number)
    inflight = state.inflight
    for key in seg.cleared:
        inflight.pop(key, None)
    for key, tkey, num, exp in seg.added:
        inflight.setdefault(key, {})[tkey] = (num, exp)
    state.completed.set_max(seg.completed, stamp)
    if inflight:
        _leave_inflight(inflight, seg.completed)
    recent = state.recent
    for key, digest in seg.recent:
        previous = recent.pop(key, None)
        state.recent_weight += recent_entry_weight(digest) - recent_entry_weight(previous)
        recent[key] = digest
    while recent and (len(recent) > recent_limit or state.recent_weight > digest_budget):
        state.recent_weight -= recent_entry_weight(recent.popitem(last=False)[1])
    for key, reason in seg.failed.items():
        if state.failed.get(key, (-1, ""))[0] <= stamp:
            state.failed[key] = (stamp, reason)
        inflight.pop(key, None)
    for key in seg.revoked:
        if state.revoked.get(key, -1) < stamp:
            state.revoked[key] = stamp
        state.recent_weight -= recent_entry_weight(recent.pop(key, None))
    if seg.sender is not None and seg.seq is not None and seg.seq > state.senders.get(seg.sender, -1):
        state.senders[seg.sender] = seg.seq
    state.meta.update(seg.meta)
    state.updated = max(state.updated, seg.time)


def _leave_inflight(inflight: dict[bytes, dict[str, tuple[int, int]]], completed: Sequence[bytes]) -> None:
    """Drop the in-flight rows of the ``completed`` sources, walking the smaller of the two."""
    if len(completed) <= 4 * len(inflight):
        for key in completed:
            inflight.pop(key, None)
        return
    done = KeySet(completed)
    for key in [k for k in inflight if k in done]:
        del inflight[key]


def fold_writer(
    writer_id: str,
    snapshots: Iterable[tuple[ObjectName, WriterState]],
    segments: Iterable[tuple[ObjectName, Segment]],
    recent_limit: int,
) -> WriterState:
    """The state of one writer from its newest snapshot and the segments after it (see the module docstring).

    The newest snapshot is not modified. Segments are dropped from the fold as they are applied:
    given as an iterator that holds no other reference, each one's memory is freed right away.
    """
    best: tuple[ObjectName, WriterState] | None = None
    for name, snap in snapshots:
        if best is None or (name.number, name.nonce) > (best[0].number, best[0].nonce):
            best = (name, snap)
    state = copy_state(best[1]) if best is not None else WriterState(writer_id)
    upto = state.upto
    seen: set[str] = set()
    ordered = sorted(segments, key=lambda item: (item[0].number, item[0].nonce))
    ordered.reverse()
    while ordered:
        name, seg = ordered.pop()
        if name.number <= upto or name.path in seen:
            continue
        seen.add(name.path)
        apply_segment(state, seg, recent_limit)
    return state


def copy_state(state: WriterState) -> WriterState:
    """A deep enough copy of ``state`` that folding into it leaves ``state`` unchanged."""
    return WriterState(
        writer_id=state.writer_id,
        upto=state.upto,
        stamp=state.stamp,
        completed=state.completed.copy(),
        revoked=dict(state.revoked),
        failed=dict(state.failed),
        inflight={k: dict(v) for k, v in state.inflight.items()},
        senders=dict(state.senders),
        recent=state.recent.copy(),
        recent_weight=state.recent_weight,
        meta=dict(state.meta),
        updated=state.updated,
        closed=state.closed,
    )


@dataclass
class CheckpointUnion:
    """The union of every writer's state (keys are ``keys.source_key``; ``completed`` is compact)."""

    completed: KeySet = field(default_factory=KeySet)
    #: Sources failed somewhere and not complete: the latest ``(stamp, reason)``.
    failed: dict[bytes, tuple[int, str]] = field(default_factory=dict)
    #: Revocations in force (not outdated by a later completion): key -> stamp.
    revoked: dict[bytes, int] = field(default_factory=dict)
    in_flight: set[bytes] = field(default_factory=set)
    #: The largest stamp of any writer (0 when there are none).
    max_stamp: int = 0


def union(states: Iterable[WriterState], headers: Iterable[WriterHeader] = ()) -> CheckpointUnion:
    """Combine writers' states by the rules of the module docstring."""
    states = list(states)
    out = CheckpointUnion()
    out.max_stamp = max([s.stamp for s in states] + [h.start_stamp for h in headers], default=0)
    revoked: dict[bytes, Stamp] = {}
    for st in states:
        for key, stamp in st.revoked.items():
            mark = (stamp, st.writer_id)
            if key not in revoked or mark > revoked[key]:
                revoked[key] = mark
    completed = out.completed = KeySet.union_of(st.completed for st in states)
    for key, mark in revoked.items():
        if key not in completed:
            out.revoked[key] = mark[0]
            continue
        latest = max(((st.completed[key], st.writer_id) for st in states if key in st.completed), default=None)
        if latest is None or latest < mark:
            completed.discard(key)
            out.revoked[key] = mark[0]
    failed: dict[bytes, tuple[Stamp, str]] = {}
    for st in states:
        for key, (stamp, reason) in st.failed.items():
            if key in completed:
                continue
            mark = (stamp, st.writer_id)
            if key not in failed or mark > failed[key][0]:
                failed[key] = (mark, reason)
    out.failed = {k: (mark[0], reason) for k, (mark, reason) in failed.items()}
    for st in states:
        out.in_flight.update(k for k in st.inflight if k not in completed and k not in failed)
    return out
