"""Compact completed-key collections (``keyset``): exact against Python sets and dicts, and wired into loading."""

from __future__ import annotations

import random
import tracemalloc
from pathlib import Path

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from nemo_curator.resumability import keyset, objects, records
from nemo_curator.resumability.digests import EXP_BITS, digests_of, fingerprints
from nemo_curator.resumability.durable import read_checkpoint
from nemo_curator.resumability.keys import packed_source_keys, source_key
from nemo_curator.resumability.keyset import (
    BATCH_MIN,
    KeySet,
    KeyStamps,
    KeyTable,
    PackedKeys,
    join_packed,
    key_row,
    split_packed,
)
from nemo_curator.resumability.ledger import LedgerUpdate, SourceLedger
from nemo_curator.resumability.location import LocalLocation
from nemo_curator.resumability.records import Segment, WriterState, decode_snapshot, encode_segment
from nemo_curator.resumability.scan import apply_segment
from nemo_curator.resumability.store import CheckpointStore
from nemo_curator.resumability.writers import read_writers
from tests.resumability.examples import budget


def _key(h: int, lo: int) -> bytes:
    """The 16-byte key whose row is ``(h, lo)``."""
    return ((h ^ lo) & (2**64 - 1)).to_bytes(8, "big") + lo.to_bytes(8, "big")


# Keys that exercise every path: rows sharing ``h`` (the slow exact path), random 16-byte keys,
# and keys of other lengths (text ids, hashed long ids), all from a small pool so that
# additions, removals and lookups hit the same keys often.
shared_h = st.builds(_key, st.sampled_from([0, 1, 2**63, 2**64 - 1]), st.integers(0, 6))
random16 = st.binary(min_size=16, max_size=16)
other_len = st.one_of(st.binary(min_size=1, max_size=15), st.binary(min_size=17, max_size=40))
keys = st.one_of(shared_h, random16, other_len)


@st.composite
def key_pools(draw: st.DrawFn) -> list[bytes]:
    return draw(st.lists(keys, min_size=1, max_size=24, unique=True))


def test_rows_round_trip_and_name_one_key_each() -> None:
    rng = random.Random(1)
    ks = [rng.randbytes(16) for _ in range(50)] + [_key(0, i) for i in range(5)]
    h, lo = split_packed(b"".join(ks))
    assert [key_row(k) for k in ks] == list(zip(h.tolist(), lo.tolist(), strict=True))
    assert join_packed(h, lo) == b"".join(ks)


@budget(300)
@given(st.lists(st.tuples(st.one_of(shared_h, random16), st.integers(0, 2**64 - 1)), max_size=60), st.data())
def test_a_table_is_sorted_unique_and_keeps_the_largest_stamp(rows: list[tuple[bytes, int]], data) -> None:
    expected: dict[bytes, int] = {}
    for key, stamp in rows:
        expected[key] = max(stamp, expected.get(key, 0))
    h, lo = split_packed(b"".join(k for k, _ in rows))
    table = KeyTable.build(h, lo, np.array([s for _, s in rows], dtype=np.uint64))
    order = list(zip(table.h.tolist(), table.lo.tolist(), strict=True))
    assert order == sorted(set(order))
    assert dict(zip(table.iter_keys(), table.stamps.tolist(), strict=True)) == expected
    probes = data.draw(st.lists(st.one_of(shared_h, random16), max_size=20)) + list(expected)
    ph, plo = split_packed(b"".join(probes))
    rows_found = table.find(ph, plo)
    table._build_filter()
    for probe, row in zip(probes, rows_found.tolist(), strict=True):
        assert (row >= 0) == (probe in expected)
        assert table.find_one(*key_row(probe)) == row
        if row >= 0:
            assert table.may_contain(key_row(probe)[1])
            assert table.packed()[16 * row : 16 * row + 16] == probe
    other = KeyTable.build(*split_packed(b"".join(probes)), np.arange(len(probes), dtype=np.uint64))
    merged = table.union(other)
    assert set(merged.iter_keys()) == set(expected) | set(probes)


ops = st.lists(
    st.tuples(st.sampled_from(["add", "discard", "merge", "check"]), st.integers(0, 10**6)), min_size=1, max_size=60
)


@budget(300)
@given(key_pools(), key_pools(), ops, st.sampled_from([1, keyset.FILTER_AFTER]))
def test_a_key_set_is_exactly_a_python_set_under_adds_revocations_and_merges(
    initial: list[bytes], pool: list[bytes], steps: list[tuple[str, int]], filter_after: int
) -> None:
    saved, keyset.FILTER_AFTER = keyset.FILTER_AFTER, filter_after  # 1: every lookup goes through the filter
    try:
        _check_key_set_against_a_set(initial, pool, steps)
    finally:
        keyset.FILTER_AFTER = saved


def _check_key_set_against_a_set(initial: list[bytes], pool: list[bytes], steps: list[tuple[str, int]]) -> None:
    pool = pool + initial
    ks, model = KeySet(initial + initial[:3]), set(initial)  # duplicates given are one key
    for op, pick in steps:
        key = pool[pick % len(pool)]
        if op == "add":
            ks.add(key)
            model.add(key)
        elif op == "discard":  # a revocation: the completion is withdrawn
            ks.discard(key)
            model.discard(key)
        elif op == "merge":
            ks.merge()
        else:
            probe = pool + [k + b"x" for k in pool[:3]]
            fixed = [k for k in probe if len(k) == 16]
            assert ks.contains_packed(b"".join(fixed)).tolist() == [k in model for k in fixed]
            many = (probe * (BATCH_MIN // len(probe) + 1))[: BATCH_MIN + 1]  # the batched path
            assert ks.contains_keys(many).tolist() == [k in model for k in many]
        assert len(ks) == len(model)
        assert all((k in ks) == (k in model) for k in pool)
    assert ks == model and sorted(ks) == sorted(model)
    half = KeySet(pool[::2])
    assert set(ks.intersection(half)) == model & set(pool[::2])


@budget(200)
@given(st.lists(st.tuples(st.lists(keys, max_size=8), st.integers(0, 50), st.booleans()), max_size=12))
def test_key_stamps_are_a_dict_of_largest_stamps(batches: list[tuple[list[bytes], int, bool]]) -> None:
    ks, model = KeyStamps(), {}
    snapshot = ks.copy()
    for batch, stamp, packed in batches:
        fixed = [k for k in batch if len(k) == 16]
        given_keys = PackedKeys(b"".join(fixed)) if packed else batch
        ks.set_max(given_keys, stamp)
        for key in fixed if packed else batch:
            model[key] = max(stamp, model.get(key, -1))
        assert snapshot != ks or not model or snapshot == KeyStamps(model)
        snapshot = ks.copy()
        assert dict(ks.items()) == model and len(ks) == len(model)
        assert ks == KeyStamps(model) == model
    assert snapshot == ks
    groups = list(ks.by_stamp())
    assert [s for s, _ in groups] == sorted({s for s, _ in groups})
    assert {k: s for s, group in groups for k in group} == model


def test_packed_keys_are_the_list_they_replace() -> None:
    ks = [bytes([i]) * 16 for i in range(5)]
    packed = PackedKeys(b"".join(ks))
    assert packed == ks and ks == packed and list(packed) == ks
    assert packed[-1] == ks[-1] and packed[1:3] == ks[1:3] and len(packed) == 5
    assert packed != ks[:4] and PackedKeys() == []


ids = st.one_of(
    st.binary(min_size=16, max_size=16).map(bytes.hex),
    st.binary(min_size=16, max_size=16).map(lambda b: b.hex().upper()),
    st.text(alphabet="0123456789abcdefABCDEF g", min_size=30, max_size=34),
    st.text(min_size=0, max_size=40),
)


@budget(300)
@given(st.lists(ids, max_size=BATCH_MIN + 8))
def test_packed_source_keys_agree_with_source_key(source_ids: list[str]) -> None:
    packed = packed_source_keys(source_ids)
    expected = [source_key(s) for s in source_ids]
    if all(len(k) == 16 for k in expected):
        assert packed == b"".join(expected)
    else:
        assert packed is None


@budget(100)
@given(st.lists(ids, min_size=BATCH_MIN, max_size=BATCH_MIN + 40), st.data())
def test_the_ledgers_batched_lookup_answers_as_one_by_one(source_ids: list[str], data) -> None:
    complete = data.draw(st.sets(st.sampled_from(source_ids)))
    ledger = SourceLedger({source_key(s) for s in complete})
    assert ledger.completed_among(source_ids) == [s for s in source_ids if s in complete]
    assert all(ledger.is_completed(s) == (s in complete) for s in source_ids)


def _old_format_snapshot(state: WriterState, keys_in_order: list[bytes]) -> bytes:
    """A snapshot as the previous writer encoded it: completed keys in insertion order, not sorted."""
    head = {"writer_id": state.writer_id, "upto": state.upto, "stamp": state.stamp, "senders": {}, "meta": {}}
    sections = {
        "completed": b"F" + b"".join(keys_in_order),
        "completed_stamps": b"".join(state.completed[k].to_bytes(8, "big") for k in keys_in_order),
    }
    return objects.frame(objects.KIND_SNAPSHOT, {**head, "updated": 0.0, "closed": None}, sections)


def test_snapshots_written_before_keep_loading() -> None:
    rng = random.Random(3)
    ks = [rng.randbytes(16) for _ in range(300)]
    state = WriterState("w", upto=4, stamp=9, completed={k: rng.randint(1, 9) for k in ks})
    decoded = decode_snapshot(_old_format_snapshot(state, ks), "x")
    assert decoded.completed == state.completed and len(decoded.completed) == 300


def test_a_segments_completions_leave_in_flight_state_either_way() -> None:
    done = [bytes([i]) * 16 for i in range(40)]
    for inflight_keys in (done[:2], done):  # fewer in flight than completed, and more
        state = WriterState("w", inflight={k: {"t": (1, 1)} for k in [*inflight_keys, b"\xffkeep"]})
        apply_segment(state, Segment("w", 0, 1, completed=PackedKeys(b"".join(done))), 8)
        assert list(state.inflight) == [b"\xffkeep"]
        assert set(state.completed) == set(done)


def _write_completed(path: Path, n: int) -> CheckpointStore:
    rng = np.random.default_rng(5)
    text = rng.bytes(16 * n).hex()
    sids = [text[i : i + 32] for i in range(0, 32 * n, 32)]
    fps = fingerprints([f"{s}_0" for s in sids], [1 << EXP_BITS] * n)
    store = CheckpointStore.open(path, fingerprint="fp", writer_id="writer")
    store.commit(
        LedgerUpdate(
            completed=sids, completed_keys=[source_key(s) for s in sids], completed_digests=digests_of(fps, [1] * n)
        )
    )
    return store


def test_a_new_run_holds_completed_sources_compactly_and_skips_other_writers_digests(tmp_path: Path) -> None:
    n = 50_000
    _write_completed(tmp_path / "ckpt", n).close()
    location = LocalLocation(tmp_path / "ckpt")
    read = read_checkpoint(location, recent_limit=10**6, recent_for={"reader"})
    assert len(read.union.completed) == n and not read.states["writer"].recent
    assert len(read_checkpoint(location, recent_limit=10**6).states["writer"].recent) == n
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        store = CheckpointStore.open(tmp_path / "ckpt", fingerprint="fp", writer_id="reader")
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert store.ledger.completed_count == n
    # 16 bytes per key plus the fixed costs of a store; a set of bytes took over 90 per key.
    assert held < 40 * n, held
    store.close()


def test_the_drivers_check_reads_headers_and_closed_marks_without_segments(tmp_path: Path) -> None:
    open_one = _write_completed(tmp_path, 100)
    closed = CheckpointStore.open(tmp_path, fingerprint="fp", writer_id="closed")
    closed.close()
    read: list[str] = []

    class Counting(LocalLocation):
        def read(self, path: str) -> bytes:
            read.append(path)
            return super().read(path)

    writers = read_writers(Counting(tmp_path))
    assert writers.closed == {"writer": False, "closed": True}
    assert set(writers.headers) == {"writer", "closed"}
    assert read and not [p for p in read if "/seg-" in p]
    full = read_checkpoint(LocalLocation(tmp_path), recent_limit=16)
    assert {w: s.closed is not None for w, s in full.states.items()} == writers.closed
    open_one.close()


def test_encoding_a_decoded_segment_gives_the_same_bytes() -> None:
    ks = [random.Random(2).randbytes(16) for _ in range(10)]
    seg = Segment("w", 0, 3, completed=ks)
    data = encode_segment(seg)
    decoded = records.decode_segment(data, "x")
    assert isinstance(decoded.completed, PackedKeys) and encode_segment(decoded) == data
