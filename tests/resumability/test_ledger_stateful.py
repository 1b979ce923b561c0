"""Stateful hypothesis test of the store and ledger together, with restarts and new runs as rules.

The model knows every source's tree. It tracks, for the current run, which of a source's
reports were delivered, and whether the source is complete (forever) or failed (for this run).
Rules add sources (framework hex ids, ids with odd characters, and ids longer than
``keys.MAX_SOURCE_ID_BYTES``, which are stored by hash), deliver random batches (with
duplicates), resend late duplicates of sources completed in this run (recognised by their
digest, also after a restart; beyond the digest window they are counted as unverified and the
completion is kept), restart the ledger from LMDB (same run), start a new run (new writer:
in-flight and failed sources are redone from scratch), and send a report for a source
completed by an earlier run (an anomaly: its completion is revoked and it is redone). After
every step the ledger and the on-disk status must agree with the model exactly, with no other
anomaly.
"""

from __future__ import annotations

import shutil
import tempfile

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from nemo_curator.resumability.inspect import checkpoint_status
from nemo_curator.resumability.keys import source_key
from nemo_curator.resumability.report import Report
from nemo_curator.resumability.store import CheckpointStore
from tests.resumability.examples import budget
from tests.resumability.trees import Node, has_failure, source_id, tree_reports, trees

#: Completed sources that keep a digest: small, so that some late duplicates fall beyond it.
RECENT_LIMIT = 4


def _keys(ids: object) -> set[bytes]:
    return {source_key(s) for s in ids}  # type: ignore[attr-defined]


def _new_source_id(n: int, kind: str) -> str:
    if kind == "long":
        return f"s3://bucket/{'directory-é/' * 12}part-{n:05d}.jsonl"  # > 100 bytes: a hashed key
    if kind == "odd":
        return f"src\x00{n}\u00e9\U0001f600/\t"
    return source_id(n)


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.mkdtemp(prefix="ledger-stateful-")
        self.run = 0
        self.store = self._open()
        self.trees: dict[str, Node] = {}
        self.reports: dict[str, list[Report]] = {}
        self.delivered: dict[str, set[str]] = {}
        self.complete: set[str] = set()
        self.failed_run: set[str] = set()
        self.failed_ever: set[str] = set()
        self.completed_this_run: list[str] = []
        self.expected_anomalies = 0

    def _open(self) -> CheckpointStore:
        return CheckpointStore.open(
            self.tmp, fingerprint="stateful", writer_id=f"run-{self.run}", recent_limit=RECENT_LIMIT
        )

    def teardown(self) -> None:
        self.store.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- rules ------------------------------------------------------------------------

    @rule(tree=trees(max_depth=5, max_nodes=12), kind=st.sampled_from(["hex", "long", "odd"]))
    def add_source(self, tree: Node, kind: str) -> None:
        sid = _new_source_id(len(self.trees), kind)
        self.trees[sid] = tree
        self.reports[sid] = tree_reports(sid, tree)
        self.delivered[sid] = set()

    def _live(self) -> list[str]:
        return [sid for sid in self.trees if sid not in self.complete and sid not in self.failed_run]

    @precondition(lambda self: bool(self._live()))
    @rule(data=st.data())
    def deliver(self, data: st.DataObject) -> None:
        candidates = [r for sid in self._live() for r in self.reports[sid]]
        batch = data.draw(st.lists(st.sampled_from(candidates), min_size=1, max_size=12), label="batch")
        update = self.store.apply(batch)
        assert update is not None and not update.anomalies, update and update.anomalies
        for r in batch:
            if r.source_id in self.complete or r.source_id in self.failed_run:
                continue
            if r.failure is not None:
                self.failed_run.add(r.source_id)
                self.failed_ever.add(r.source_id)
                continue
            self.delivered[r.source_id].add(r.task_id)
            leaves = {x.task_id for x in self.reports[r.source_id] if x.failure is None}
            if not has_failure(self.trees[r.source_id]) and leaves <= self.delivered[r.source_id]:
                self.complete.add(r.source_id)
                self.completed_this_run.append(r.source_id)
        assert set(update.completed) <= self.complete

    @precondition(lambda self: bool(self.completed_this_run))
    @rule(data=st.data())
    def late_duplicate(self, data: st.DataObject) -> None:
        window = self.completed_this_run[-RECENT_LIMIT:]
        sid = data.draw(st.sampled_from(window), label="source completed in this run")
        report = data.draw(st.sampled_from(self.reports[sid]), label="duplicate")
        update = self.store.apply([report])
        assert update is not None and not update.anomalies and not update.completed
        assert update.duplicates == 1

    @precondition(lambda self: len(self.completed_this_run) > RECENT_LIMIT)
    @rule(data=st.data())
    def late_duplicate_beyond_the_digest_window(self, data: st.DataObject) -> None:
        older = self.completed_this_run[:-RECENT_LIMIT]
        sid = data.draw(st.sampled_from(older), label="source completed in this run, digest dropped")
        report = data.draw(st.sampled_from(self.reports[sid]), label="duplicate")
        update = self.store.apply([report])
        assert update is not None and not update.anomalies and not update.revoked and not update.completed
        assert update.unverified == 1

    @precondition(lambda self: bool(self.complete - set(self.completed_this_run)))
    @rule(data=st.data())
    def report_for_source_completed_earlier(self, data: st.DataObject) -> None:
        sid = data.draw(st.sampled_from(sorted(self.complete - set(self.completed_this_run))), label="old source")
        report = data.draw(st.sampled_from(self.reports[sid]), label="report")
        update = self.store.apply([report])
        assert update is not None and [a.kind for a in update.anomalies] == ["completed_source"]
        assert update.revoked == [sid]
        self.expected_anomalies += 1
        self.complete.discard(sid)
        self.failed_run.add(sid)
        self.failed_ever.add(sid)

    @rule()
    def restart(self) -> None:
        self.expected_anomalies = 0  # the counters restart with the ledger
        before = {source_key(s): c for s, c in self.store.ledger.in_flight().items()}
        self.store.close()
        self.store = self._open()
        assert {source_key(s): c for s, c in self.store.ledger.in_flight().items()} == before

    @rule()
    def new_run(self) -> None:
        self.expected_anomalies = 0
        self.store.close()
        self.run += 1
        self.store = self._open()
        assert self.store.ledger.in_flight_count == 0
        self.failed_run.clear()
        self.completed_this_run.clear()
        for sid in self.trees:
            if sid not in self.complete:
                self.delivered[sid] = set()

    # -- invariants -------------------------------------------------------------------

    @invariant()
    def ledger_matches_model(self) -> None:
        ledger = self.store.ledger
        assert {sid for sid in self.trees if ledger.is_completed(sid)} == self.complete
        assert {sid for sid in self.trees if ledger.is_failed_this_run(sid)} == self.failed_run
        assert ledger.stats.anomalies <= self.expected_anomalies
        for sid, credit in ledger.in_flight().items():
            assert not credit.exceeds_one() and not credit.is_one()
            assert source_key(sid) not in _keys(self.complete) | _keys(self.failed_run)

    @invariant()
    def disk_matches_model(self) -> None:
        status = checkpoint_status(self.tmp)
        assert _keys(status["completed"]) == _keys(self.complete)
        assert _keys(status["failed"]) == _keys(self.failed_ever - self.complete)
        assert status["completed_sources"] == len(self.complete)


LedgerMachine.TestCase.settings = budget(40, stateful_step_count=25)
test_ledger_store_state_machine = LedgerMachine.TestCase
