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
"""

from __future__ import annotations

import itertools
import tempfile
from collections import defaultdict

from hypothesis import given
from hypothesis import strategies as st

from nemo_curator.resumability.inspect import checkpoint_status
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


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[dict[str, Node], list[list[Report]], set[int]]:
    n_sources = draw(st.integers(1, 4), label="sources")
    forest = {source_id(i): draw(trees(), label=f"tree {i}") for i in range(n_sources)}
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
                    assert sid not in failure_delivered
                if i in restarts:
                    before = ledger.in_flight()
                    store.close()
                    store = CheckpointStore.open(tmp, fingerprint="trees", writer_id="run-1")
                    assert store.ledger.in_flight() == before  # (v) in-flight state reloads exactly
            assert completions == reference  # (v) same moment as without restarts
            expected_complete = {sid for sid in forest if sid not in failing}
            assert set(completions) == expected_complete
        finally:
            store.close()
        on_disk = checkpoint_status(tmp)
        assert set(on_disk["completed"]) == expected_complete
        assert set(on_disk["failed"]) == failure_delivered == failing
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
