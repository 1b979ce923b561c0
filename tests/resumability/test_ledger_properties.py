"""Properties of the completion ledger over random task trees (hypothesis), with a real LMDB store.

Random forests of task trees (fan-out 0..4, filtered slots, failures anywhere, depth up to 8)
produce the exact reports the stage adapter would send. Their reports are shuffled, partly
duplicated, cut into batches and applied through a ``CheckpointStore`` that is closed and
reopened (a ledger restart from LMDB) at random batch boundaries. After every batch:

(i)   a source is never complete while any of its leaves is unreported;
(ii)  it is complete as soon as all its leaves are reported;
(iii) a failed leaf keeps it incomplete;
(iv)  returned credit never exceeds 1 (no anomaly) for these deterministic trees;
(v)   restarts lose nothing and double-count nothing: every source completes exactly once, in
      the same batch as in an uninterrupted ledger, and what is on disk agrees.

Source ids are framework-like hex ids, short text with any characters, and ids longer than
``keys.MAX_SOURCE_ID_BYTES`` (stored by hash), so restarts are exercised with all three.
"""

from __future__ import annotations

import itertools
import tempfile
from collections import defaultdict

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from nemo_curator.resumability.digests import DigestWindow, digest_of, fingerprint, fingerprints
from nemo_curator.resumability.inspect import checkpoint_status
from nemo_curator.resumability.keys import MAX_SOURCE_ID_BYTES, source_id_from_key, source_key
from nemo_curator.resumability.ledger import (
    COMPLETED_SOURCE,
    CREDIT_ABOVE_ONE,
    NONDETERMINISTIC,
    SourceLedger,
)
from nemo_curator.resumability.report import Report
from nemo_curator.resumability.store import CheckpointStore
from nemo_curator.tasks.credit import Credit, merge_lineages, split_lineage
from tests.resumability.examples import budget
from tests.resumability.trees import FAIL, SINK, Expand, Node, has_failure, source_id, tree_reports, trees


def _leaf_ids(reports: list[Report]) -> set[str]:
    return {r.task_id for r in reports if r.failure is None}


#: Source ids of every kind: framework hex ids, short text of any characters (NUL, emoji, ...),
#: ids around and beyond the hashed-key threshold (3-byte characters cross it at 34).
any_source_ids = st.one_of(
    st.integers(0, 2**128 - 1).map(lambda i: f"{i:032x}"),
    st.text(max_size=20),
    st.text(
        st.characters(min_codepoint=0x800, max_codepoint=0xFFFF, exclude_categories=["Cs"]), min_size=30, max_size=40
    ),
    st.text(min_size=MAX_SOURCE_ID_BYTES + 1, max_size=MAX_SOURCE_ID_BYTES + 60),
)


def _by_key(ids: object) -> set[bytes]:
    return {source_key(s) for s in ids}  # type: ignore[attr-defined]


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[dict[str, Node], list[list[Report]], set[int]]:
    n_sources = draw(st.integers(1, 4), label="sources")
    ids = draw(st.lists(any_source_ids, min_size=n_sources, max_size=n_sources, unique_by=source_key), label="ids")
    forest = {sid: draw(trees(), label=f"tree {i}") for i, sid in enumerate(ids)}
    reports = [r for sid, tree in forest.items() for r in tree_reports(sid, tree)]
    dups = draw(st.lists(st.integers(0, len(reports) - 1), max_size=len(reports)), label="duplicates")
    stream = draw(st.permutations(reports + [reports[i] for i in dups]), label="order")
    n_batches = draw(st.integers(1, min(12, len(stream))), label="batches")
    cuts = draw(
        st.lists(st.integers(1, len(stream) - 1), min_size=n_batches - 1, max_size=n_batches - 1, unique=True)
        if n_batches > 1
        else st.just([]),
        label="cuts",
    )
    bounds = [0, *sorted(cuts), len(stream)]
    batches = [list(stream[a:b]) for a, b in itertools.pairwise(bounds)]
    flags = draw(st.lists(st.booleans(), min_size=len(batches), max_size=len(batches)), label="restart after")
    return forest, batches, {i for i, flag in enumerate(flags) if flag}


def _reference_completion_batches(batches: list[list[Report]]) -> dict[str, int]:
    ledger = SourceLedger()
    done: dict[str, int] = {}
    for i, batch in enumerate(batches):
        for sid in ledger.apply(batch).completed:
            done[sid] = i
    return done


#: Each example opens real LMDB files: half the ci profile's examples keep the suite fast on 2 cores.
STORE_EXAMPLES = budget(150)


@STORE_EXAMPLES
@given(scenarios())
def test_random_trees_interleavings_duplicates_and_restarts(
    scenario: tuple[dict[str, Node], list[list[Report]], set[int]],
) -> None:
    forest, batches, restarts = scenario
    leaves = {sid: _leaf_ids(tree_reports(sid, tree)) for sid, tree in forest.items()}
    failing = {sid for sid, tree in forest.items() if has_failure(tree)}
    reference = _reference_completion_batches(batches)
    delivered: dict[str, set[str]] = defaultdict(set)
    failure_delivered: set[str] = set()
    completions: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        store = CheckpointStore.open(tmp, fingerprint="trees", writer_id="run-1")
        try:
            for i, batch in enumerate(batches):
                update = store.apply(batch)
                assert update is not None
                assert not update.anomalies, update.anomalies  # (iv)
                for sid in update.completed:
                    assert sid not in completions, f"{sid} completed twice"  # (v)
                    completions[sid] = i
                for r in batch:
                    delivered[r.source_id].add(r.task_id)
                    if r.failure is not None:
                        failure_delivered.add(r.source_id)
                ledger = store.ledger
                for sid in forest:
                    complete = ledger.is_completed(sid)
                    all_reported = leaves[sid] <= delivered[sid]
                    if complete:  # (i)
                        assert all_reported and sid not in failing
                    if all_reported and sid not in failing:  # (ii)
                        assert complete
                    if sid in failing:  # (iii)
                        assert not complete
                for sid, credit in ledger.in_flight().items():  # (iv)
                    assert not credit.exceeds_one() and not credit.is_one()
                    assert source_key(sid) not in _by_key(failure_delivered)
                if i in restarts:
                    before = {source_key(s): c for s, c in ledger.in_flight().items()}
                    store.close()
                    store = CheckpointStore.open(tmp, fingerprint="trees", writer_id="run-1")
                    # (v) in-flight state reloads exactly (long ids come back under their key's name)
                    assert {source_key(s): c for s, c in store.ledger.in_flight().items()} == before
            assert completions == reference  # (v) same moment as without restarts
            expected_complete = {sid for sid in forest if sid not in failing}
            assert set(completions) == expected_complete
        finally:
            store.close()
        on_disk = checkpoint_status(tmp)
        assert _by_key(on_disk["completed"]) == _by_key(expected_complete)
        assert _by_key(on_disk["failed"]) == _by_key(failure_delivered) == _by_key(failing)
        assert on_disk["in_flight_sources"] == 0


@STORE_EXAMPLES
@given(scenarios())
def test_a_new_run_redoes_in_flight_sources_and_keeps_completed(
    scenario: tuple[dict[str, Node], list[list[Report]], set[int]],
) -> None:
    """A new writer (a new run) sees every completion, but not the old run's in-flight state."""
    forest, batches, _ = scenario
    half = len(batches) // 2
    with tempfile.TemporaryDirectory() as tmp:
        with CheckpointStore.open(tmp, fingerprint="trees", writer_id="run-1") as first:
            for batch in batches[:half]:
                first.apply(batch)
            done_first = {sid for sid in forest if first.ledger.is_completed(sid)}
        with CheckpointStore.open(tmp, fingerprint="trees", writer_id="run-2") as second:
            assert {sid for sid in forest if second.ledger.is_completed(sid)} == done_first
            assert second.ledger.in_flight_count == 0
            # The new run redoes every incomplete source from scratch: all its reports again.
            redo = [r for sid, tree in forest.items() if sid not in done_first for r in tree_reports(sid, tree)]
            update = second.apply(redo)
            assert update is not None and not update.anomalies
            assert {sid for sid in forest if second.ledger.is_completed(sid)} == {
                sid for sid, tree in forest.items() if not has_failure(tree)
            }


def test_upstream_reordering_failure_cannot_complete_a_source_early() -> None:
    """Upstream's counter hits 0 when a child's sink report overtakes its parent's fan-out delta.

    With credit, the child's report carries only its share: the source stays incomplete until
    every sibling has reported, whatever the order.
    """
    sid = source_id(1)
    # source -> fan-out into 3 -> child 1 fans out again into 2
    tree = Expand([SINK, Expand([SINK, SINK]), SINK])
    reports = tree_reports(sid, tree)
    ledger = SourceLedger()
    first_sink = next(r for r in reports if r.task_id == f"{sid}_0")
    assert not ledger.apply([first_sink]).completed
    assert not ledger.is_completed(sid)
    grandchild = next(r for r in reports if r.task_id == f"{sid}_1_1")
    assert not ledger.apply([grandchild]).completed
    rest = [r for r in reports if r not in (first_sink, grandchild)]
    for r in rest[:-1]:
        assert not ledger.apply([r]).completed
    assert ledger.apply([rest[-1]]).completed == [sid]


def test_single_task_source_completes_on_its_only_report() -> None:
    sid = source_id(2)
    ledger = SourceLedger()
    assert ledger.apply([Report(sid, sid, Credit.one())]).completed == [sid]
    assert ledger.in_flight_count == 0


def test_filtered_everything_sentinel_returns_whole_credit() -> None:
    sid = source_id(3)
    reports = tree_reports(sid, Expand([None, None]))
    assert reports == [Report(sid, f"{sid}_f", Credit.one())]
    assert SourceLedger().apply(reports).completed == [sid]


def test_failure_keeps_source_incomplete_and_later_reports_are_ignored() -> None:
    sid = source_id(4)
    reports = tree_reports(sid, Expand([SINK, FAIL, SINK]))
    failure = next(r for r in reports if r.failure)
    others = [r for r in reports if not r.failure]
    ledger = SourceLedger()
    update = ledger.apply([others[0], failure])
    assert update.failed == {sid: "boom"}
    assert ledger.is_failed_this_run(sid) and ledger.in_flight_count == 0
    later = ledger.apply(others[1:])
    assert later.ignored == len(others) - 1 and not later.completed
    assert not ledger.is_completed(sid)


def test_merged_lineage_reports_complete_both_sources() -> None:
    """A batch stage merging tasks of two sources sums their credit per source and splits it on."""
    a, b = source_id(10), source_id(11)
    a_parts = Credit.one().split(2)
    reports = [Report(a, f"{a}_0", a_parts[0])]
    merged = merge_lineages([{a: a_parts[1]}, {b: Credit.one()}])
    for i, share in enumerate(split_lineage(merged, 3)):
        reports.extend(Report(sid, f"m_{i}", credit) for sid, credit in share.items())
    ledger = SourceLedger()
    done: list[str] = []
    for r in reversed(reports):
        done.extend(ledger.apply([r]).completed)
    assert sorted(done) == sorted([a, b])


def test_duplicates_are_counted_once() -> None:
    sid = source_id(5)
    halves = Credit.one().split(2)
    ledger = SourceLedger()
    first = Report(sid, f"{sid}_0", halves[0])
    update = ledger.apply([first, first, first])
    assert update.duplicates == 2 and update.applied == 1
    assert ledger.in_flight()[sid] == halves[0]
    assert ledger.apply([Report(sid, f"{sid}_1", halves[1])]).completed == [sid]
    late = ledger.apply([first])  # a late duplicate of a completed source is harmless
    assert late.duplicates == 1 and not late.anomalies and ledger.is_completed(sid)


def test_credit_above_one_is_an_anomaly_marked_for_redo() -> None:
    sid = source_id(6)
    ledger = SourceLedger()
    update = ledger.apply([Report(sid, "t1", Credit.make(3, 2)), Report(sid, "t2", Credit.make(1, 1))])
    assert [a.kind for a in update.anomalies] == [CREDIT_ABOVE_ONE]
    assert sid in update.failed and "above 1" in update.failed[sid]
    assert not ledger.is_completed(sid) and ledger.in_flight_count == 0


def test_same_task_with_different_credit_is_a_nondeterminism_anomaly() -> None:
    sid = source_id(7)
    ledger = SourceLedger()
    update = ledger.apply([Report(sid, "t1", Credit.make(1, 1)), Report(sid, "t1", Credit.make(1, 2))])
    assert [a.kind for a in update.anomalies] == [NONDETERMINISTIC]
    assert ledger.is_failed_this_run(sid) and not ledger.is_completed(sid)


def test_unknown_report_for_completed_source_revokes_it(tmp_path: object) -> None:
    sid = source_id(8)
    with CheckpointStore.open(str(tmp_path), fingerprint="f", writer_id="w1") as store:
        store.apply([Report(sid, sid, Credit.one())])
        assert store.ledger.is_completed(sid)
        update = store.apply([Report(sid, "unrelated", Credit.make(1, 1))])
        assert update is not None
        assert [a.kind for a in update.anomalies] == [COMPLETED_SOURCE]
        assert update.revoked == [sid] and not store.ledger.is_completed(sid)
    # The revocation outdates the completion record for every later reader and run ...
    status = checkpoint_status(str(tmp_path))
    assert status["completed_sources"] == 0 and sid in status["failed"]
    with CheckpointStore.open(str(tmp_path), fingerprint="f", writer_id="w2") as again:
        assert not again.ledger.is_completed(sid)
        # ... until a later run completes the source again.
        again.apply([Report(sid, sid, Credit.one())])
    assert checkpoint_status(str(tmp_path))["completed"] == [sid]


def test_late_duplicate_is_recognised_after_a_restart(tmp_path: object) -> None:
    sid = source_id(9)
    parts = Credit.one().split(3)
    reports = [Report(sid, f"{sid}_{i}", c) for i, c in enumerate(parts)]
    with CheckpointStore.open(str(tmp_path), fingerprint="f", writer_id="w1") as store:
        store.apply(reports)
    with CheckpointStore.open(str(tmp_path), fingerprint="f", writer_id="w1") as restarted:
        update = restarted.apply([reports[1]])
        assert update is not None and update.duplicates == 1 and not update.anomalies
        assert restarted.ledger.is_completed(sid)
        unknown = restarted.apply([Report(sid, f"{sid}_7", parts[0])])
        assert unknown is not None and [a.kind for a in unknown.anomalies] == [COMPLETED_SOURCE]
        assert not restarted.ledger.is_completed(sid)


def test_memory_is_bounded_by_in_flight_sources() -> None:
    ledger = SourceLedger(recent_limit=10)
    for i in range(200):
        sid = source_id(1000 + i)
        parts = Credit.one().split(4)
        ledger.apply([Report(sid, f"{sid}_{j}", c) for j, c in enumerate(parts[:3])])
        assert ledger.in_flight_count == 1
        ledger.apply([Report(sid, f"{sid}_3", parts[3])])
        assert ledger.in_flight_count == 0
    assert ledger.completed_count == 200
    assert ledger.recent_count == 10


def test_long_task_ids_are_deduplicated_by_hash(tmp_path: object) -> None:
    sid = source_id(12)
    long_ids = ["x" * 5000 + str(i) for i in range(2)]
    halves = Credit.one().split(2)
    with CheckpointStore.open(str(tmp_path), fingerprint="f", writer_id="w1") as store:
        store.apply([Report(sid, long_ids[0], halves[0])])
    with CheckpointStore.open(str(tmp_path), fingerprint="f", writer_id="w1") as store:
        update = store.apply([Report(sid, long_ids[0], halves[0]), Report(sid, long_ids[1], halves[1])])
        assert update is not None and update.duplicates == 1 and update.completed == [sid]


# -- long and odd source ids (issue 15, item 7) -----------------------------------------------------

LONG_ID = "s3://bucket/" + "very-long-directory-name/" * 6 + "part-00001.jsonl"  # > 100 bytes: hashed key


@budget()
@given(st.one_of(any_source_ids, st.text(st.characters(codec=None, exclude_categories=[]), max_size=120)))
def test_source_keys_round_trip(sid: str) -> None:
    key = source_key(sid)
    assert source_key(source_id_from_key(key)) == key
    if len(sid.encode("utf-8", "surrogatepass")) <= MAX_SOURCE_ID_BYTES:
        assert source_id_from_key(key) == sid


def test_long_source_id_completes_after_a_restart(tmp_path: object) -> None:
    halves = Credit.one().split(2)
    with CheckpointStore.open(str(tmp_path), fingerprint="f", writer_id="w1") as store:
        store.apply([Report(LONG_ID, LONG_ID + "_0", halves[0])])
    with CheckpointStore.open(str(tmp_path), fingerprint="f", writer_id="w1") as store:
        update = store.apply([Report(LONG_ID, LONG_ID + "_1", halves[1])])
        assert update is not None and update.completed == [LONG_ID] and not update.anomalies
        assert store.ledger.is_completed(LONG_ID) and store.ledger.in_flight_count == 0
    with CheckpointStore.open(str(tmp_path), fingerprint="f", writer_id="w1") as store:
        # a late duplicate after another restart: recognised by the digest restored under the key's name
        update = store.apply([Report(LONG_ID, LONG_ID + "_0", halves[0])])
        assert update is not None and update.duplicates == 1 and not update.anomalies
        assert store.ledger.is_completed(LONG_ID)
    assert _by_key(checkpoint_status(str(tmp_path))["completed"]) == {source_key(LONG_ID)}


def test_long_source_id_stays_failed_after_a_restart(tmp_path: object) -> None:
    halves = Credit.one().split(2)
    with CheckpointStore.open(str(tmp_path), fingerprint="f", writer_id="w1") as store:
        store.apply([Report(LONG_ID, LONG_ID + "_0", halves[0], failure="boom")])
        assert store.ledger.is_failed_this_run(LONG_ID)
    with CheckpointStore.open(str(tmp_path), fingerprint="f", writer_id="w1") as store:
        assert store.ledger.is_failed_this_run(LONG_ID)
        update = store.apply([Report(LONG_ID, LONG_ID + "_1", halves[1]), Report(LONG_ID, LONG_ID + "_0", halves[0])])
        assert update is not None and update.ignored == 2 and not update.completed
        assert store.ledger.in_flight_count == 0


# -- bounded digests of completed sources (issue 15, item 5) ---------------------------------------


@budget()
@given(st.lists(st.tuples(st.text(max_size=300), st.integers(1, 2**70)), min_size=1, max_size=20))
def test_fingerprints_do_not_depend_on_the_other_pairs_of_a_call(pairs: list[tuple[str, int]]) -> None:
    together = fingerprints([t for t, _ in pairs], [c for _, c in pairs])
    assert [int(v) for v in together] == [fingerprint(t, c) for t, c in pairs]


def test_fingerprints_are_stable_across_processes_and_credit_spellings() -> None:
    # A restarted ledger compares fresh fingerprints with persisted ones: the function may never change.
    assert fingerprint("abc_0", (1 << 32) | 1) == fingerprint("abc_0", (2 << 32) | 2)  # 1/2 == 2/4
    assert fingerprint("abc_0", (1 << 32) | 1) == 0x74C87C9A650D3500


@budget()
@given(
    st.lists(st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=40), min_size=1, max_size=30),
    st.integers(300, 6000),
)
def test_a_held_digest_always_recognises_its_own_fingerprints(digests: list[list[int]], budget_bytes: int) -> None:
    window = DigestWindow(budget_bytes)
    for i, fps in enumerate(digests):
        window.add(str(i), digest_of(np.array(fps, dtype=np.uint64)))
        assert window.bytes_used <= budget_bytes
        for j, earlier in enumerate(digests[: i + 1]):
            if str(j) in window:
                assert all(window.match(str(j), fp) for fp in earlier)
            else:
                assert window.match(str(j), earlier[0]) is None
    assert len(window) + window.dropped == len(digests)


def _complete(ledger: SourceLedger, sid: str, n: int) -> list[Report]:
    reports = [Report(sid, f"{sid}_{j}", c) for j, c in enumerate(Credit.one().split(n))]
    assert ledger.apply(reports).completed == [sid]
    return reports


def test_digests_degrade_within_the_byte_budget_and_still_catch_new_tasks() -> None:
    budget_bytes = 200_000
    ledger = SourceLedger(digest_budget=budget_bytes)
    reports = {source_id(i): _complete(ledger, source_id(i), 1000) for i in range(40)}
    window = ledger.digests
    assert window.bytes_used <= budget_bytes and window.widths()[16] and window.widths()[64]
    for rs in reports.values():
        update = ledger.apply([rs[7]])
        assert not update.anomalies and update.duplicates + update.unverified == 1
    # A new task for a source whose digest is held is an anomaly, whatever its width (16 bits here:
    # a false match has probability 1000 / 2**16; this id and credit do not match).
    held = next(iter(window.items()))[0]
    update = ledger.apply([Report(held, f"{held}_new", Credit.make(1, 20))])
    assert [a.kind for a in update.anomalies] == [COMPLETED_SOURCE] and update.revoked == [held]


def test_late_duplicate_after_its_digest_was_dropped_keeps_the_completion(tmp_path: object) -> None:
    # Before digests, a report for a complete source outside the recent window revoked it.
    with CheckpointStore.open(str(tmp_path), fingerprint="f", writer_id="w1", recent_limit=2) as store:
        first = [Report(source_id(0), f"{source_id(0)}_{j}", c) for j, c in enumerate(Credit.one().split(3))]
        store.apply(first)
        for i in range(1, 6):
            store.apply([Report(source_id(i), source_id(i), Credit.one())])
        assert source_id(0) not in store.ledger.digests
        update = store.apply([first[1]])
        assert update is not None and not update.anomalies and not update.revoked and update.unverified == 1
        assert store.ledger.is_completed(source_id(0))
    with CheckpointStore.open(str(tmp_path), fingerprint="f", writer_id="w1", recent_limit=2) as store:
        update = store.apply([first[2]])  # after a restart too
        assert update is not None and not update.anomalies and update.unverified == 1
        assert store.ledger.is_completed(source_id(0))
    with CheckpointStore.open(str(tmp_path), fingerprint="f", writer_id="w2", recent_limit=2) as store:
        update = store.apply([first[2]])  # a later run: the source was complete before it started
        assert update is not None and [a.kind for a in update.anomalies] == [COMPLETED_SOURCE]


def test_failure_of_a_task_of_a_complete_source_is_an_anomaly() -> None:
    ledger = SourceLedger()
    reports = _complete(ledger, source_id(3), 2)
    again = Report(reports[0].source_id, reports[0].task_id, reports[0].credit, failure="died on retry")
    update = ledger.apply([again])
    assert [a.kind for a in update.anomalies] == [COMPLETED_SOURCE] and update.revoked == [source_id(3)]
