"""The durable record, pure: the object codec and the union rules (folds, snapshots, Lamport order)."""

from __future__ import annotations

import random
from collections import OrderedDict

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nemo_curator.resumability.errors import CheckpointError
from nemo_curator.resumability.objects import (
    ObjectName,
    WriterHeader,
    decode_header,
    encode_header,
    object_path,
    parse_object_path,
)
from nemo_curator.resumability.records import (
    Segment,
    WriterState,
    decode_segment,
    decode_snapshot,
    encode_segment,
    encode_snapshot,
)
from nemo_curator.resumability.scan import apply_segment, copy_state, fold_writer, union
from nemo_curator.resumability.writers import current_writer
from tests.resumability.examples import budget

RECENT = 6
small_keys = st.sampled_from([bytes([i]) * 16 for i in range(8)] + [b"\xffsrc-" + bytes([48 + i]) for i in range(4)])
task_keys = st.text(min_size=1, max_size=12)


@st.composite
def segments(draw: st.DrawFn, writer_id: str = "w", count: int | None = None) -> list[Segment]:
    n = count if count is not None else draw(st.integers(0, 12))
    out = []
    stamp = draw(st.integers(1, 5))
    for number in range(n):
        stamp += draw(st.integers(1, 3))
        completed = draw(st.lists(small_keys, max_size=4, unique=True))
        out.append(
            Segment(
                writer_id=writer_id,
                number=number,
                stamp=stamp,
                completed=completed,
                recent=[(k, draw(st.binary(min_size=1, max_size=3).map(lambda b: b * 8))) for k in completed],
                failed=draw(st.dictionaries(small_keys, st.text(max_size=30), max_size=2)),
                revoked=draw(st.lists(small_keys, max_size=2, unique=True)),
                added=[
                    (k, t, draw(st.integers(1, 7)), draw(st.integers(3, 40)))
                    for k, t in draw(st.lists(st.tuples(small_keys, task_keys), max_size=4, unique=True))
                ],
                cleared=draw(st.lists(small_keys, max_size=2, unique=True)),
                sender=draw(st.sampled_from([None, "d1", "d2"])),
                seq=number,
                time=draw(st.floats(0, 2e9)),
                meta={"sources_seen": number},
            )
        )
    return out


def fold_all(segs: list[Segment], writer_id: str = "w") -> WriterState:
    state = WriterState(writer_id)
    for seg in segs:
        apply_segment(state, seg, RECENT)
    return state


@budget(60)
@given(segments())
def test_segments_and_snapshots_round_trip(segs: list[Segment]) -> None:
    for seg in segs:
        assert decode_segment(encode_segment(seg), "x") == seg
    state = fold_all(segs)
    assert decode_snapshot(encode_snapshot(state), "x") == state


def test_header_round_trips_and_names_parse() -> None:
    header = WriterHeader("host-1-abc", "fp", 7, [{"index": 0}], {"created": 1.5, "host": "h"})
    assert decode_header(encode_header(header), "x") == header
    for kind, number in (("header", -1), ("seg", 0), ("snap", 123456789012)):
        path = object_path("host-1-abc", kind, number, "0123456789abcdef")
        assert parse_object_path(path) == ObjectName("host-1-abc", kind, number, "0123456789abcdef")
    for bad in ("ledger/w/seg-1-0123456789abcdef.rec", "ledger/w/header-000000000001-0123456789abcdef.rec", "x/y"):
        assert parse_object_path(bad) is None


@budget(60)
@given(segments(count=3), st.data())
def test_any_damage_to_an_object_is_a_loud_error(segs: list[Segment], data: st.DataObject) -> None:
    blob = encode_segment(segs[-1])
    cut = data.draw(st.integers(0, len(blob) - 1))
    with pytest.raises(CheckpointError, match="ledger/w/seg-x"):
        decode_segment(blob[:cut], "ledger/w/seg-x")
    i = data.draw(st.integers(0, len(blob) - 1))
    flipped = blob[:i] + bytes([blob[i] ^ data.draw(st.integers(1, 255))]) + blob[i + 1 :]
    with pytest.raises(CheckpointError, match="corrupt"):
        decode_segment(flipped, "ledger/w/seg-x")


@budget(150)
@given(segments(), st.data())
def test_a_listing_with_snapshots_overlapping_segments_duplicates_and_any_order_folds_the_same(
    segs: list[Segment], data: st.DataObject
) -> None:
    """Crashes between writing a snapshot and deleting what it covers, and listings in any order, change nothing."""
    expected = fold_all(segs)
    named = [(ObjectName("w", "seg", s.number, "n1"), s) for s in segs]
    snapshots = []
    for upto in sorted(data.draw(st.sets(st.integers(0, max(len(segs) - 1, 0)), max_size=3))):
        if upto < len(segs):
            snap = fold_all(segs[: upto + 1])
            snapshots.append((ObjectName("w", "snap", upto, data.draw(st.sampled_from(["a1", "b2"]))), snap))
    newest = max((n.number for n, _ in snapshots), default=-1)
    # Segments a snapshot covers may or may not have been deleted yet; later ones are all there.
    listed = [(n, s) for n, s in named if n.number > newest or data.draw(st.booleans())]
    listed += data.draw(st.lists(st.sampled_from(listed), max_size=3)) if listed else []
    rng = random.Random(data.draw(st.integers(0, 2**32)))
    rng.shuffle(listed)
    rng.shuffle(snapshots)
    before = [copy_state(s) for _, s in snapshots]
    state = fold_writer("w", snapshots, listed, RECENT)
    assert state == expected
    assert [s for _, s in snapshots] == before  # the snapshots read are not modified


def _stamped(
    writer: str, completed: dict[bytes, int] | None = None, revoked: dict[bytes, int] | None = None
) -> WriterState:
    state = WriterState(writer, completed=dict(completed or {}), revoked=dict(revoked or {}))
    state.stamp = max([0, *state.completed.values(), *state.revoked.values()])
    return state


K = b"\x01" * 16


@budget(50)
@given(
    st.lists(st.floats(-1e9, 1e9), min_size=3, max_size=3),
    st.permutations(["writer-a", "writer-b", "writer-c"]),
)
def test_lamport_order_decides_revocation_against_completion_whatever_the_wall_clocks(
    skews: list[float], names: list[str]
) -> None:
    """A completes s; B starts after reading it and revokes s; C starts after B and completes s again.

    Each writer's clock starts at 1 + the largest stamp it read, so the union follows causality
    for any wall clocks (the times recorded for humans are skewed at random here) and any names.
    """
    a, b, c = names
    sa = 3
    writer_a = _stamped(a, completed={K: sa})
    writer_b = _stamped(b, revoked={K: sa + 2})  # B read A (max stamp 3): start 4, its segment 5
    writer_a.updated, writer_b.updated = 1e9 + skews[0], skews[1]
    assert K not in union([writer_a, writer_b]).completed
    assert K in union([writer_a, writer_b]).revoked
    writer_c = _stamped(c, completed={K: sa + 4})  # C read B
    writer_c.updated = -1e9 + skews[2]
    assert K in union([writer_a, writer_b, writer_c]).completed
    assert K not in union([writer_a, writer_b, writer_c]).revoked
    # The current writer (whose fingerprint the checkpoint has) is the latest *logical* start.
    headers = [
        WriterHeader(a, "fp-a", 1, info={"created": 1e9 + skews[0]}),
        WriterHeader(b, "fp-b", 4, info={"created": skews[1]}),
        WriterHeader(c, "fp-c", 6, info={"created": -1e9 + skews[2]}),
    ]
    assert current_writer(headers).fingerprint == "fp-c"  # type: ignore[union-attr]
    assert current_writer(headers[:2]).fingerprint == "fp-b"  # type: ignore[union-attr]


def test_concurrent_events_are_ordered_by_stamp_then_writer_id_the_same_for_every_reader() -> None:
    completes = _stamped("w1", completed={K: 5})
    revokes = _stamped("w2", revoked={K: 5})
    for order in ([completes, revokes], [revokes, completes]):
        assert K not in union(order).completed  # (5, "w2") > (5, "w1")
    assert K in union([_stamped("w3", completed={K: 5}), revokes]).completed


def test_failures_count_only_for_incomplete_sources_and_the_latest_wins() -> None:
    other = b"\x02" * 16
    w1 = WriterState("w1", failed={K: (2, "old"), other: (2, "x")}, completed={other: 3})
    w2 = WriterState("w2", failed={K: (4, "new")})
    u = union([w1, w2])
    assert u.failed == {K: (4, "new")} and u.completed == {other}


def test_recent_window_is_bounded_and_in_completion_order() -> None:
    segs = [
        Segment("w", n, n + 1, completed=[bytes([n]) * 16], recent=[(bytes([n]) * 16, bytes([n]) * 8)])
        for n in range(10)
    ]
    state = fold_all(segs)
    assert list(state.recent) == [bytes([n]) * 16 for n in range(10 - RECENT, 10)]
    assert isinstance(state.recent, OrderedDict)
