"""The completion ledger: order-independent credit recovery per source (pure Python).

Every source starts with credit 1. Stages split a task's credit exactly among its children
(``Credit.split`` / ``split_lineage``) with no message; a task that ends (written by the sink,
or filtered, as a ``NoneTask`` sentinel) returns its credit in a ``Report``; a failed task
(``FailedTask``) returns nothing. ``SourceLedger.apply(reports)`` sums the returned credit per
source and says which sources became complete.

Invariants (for every source ``s``):

1. ``s`` is complete exactly when the *distinct* credit returned for it sums to exactly 1.
   Returns commute, so no arrival order completes a source early: a child's report that
   arrives before anything about its parent's fan-out carries only a fraction of 1.
2. Reports are deduplicated by ``(source_id, task_id)``: a retried task that reports again with
   the same credit changes nothing (task ids longer than 256 bytes are deduplicated by a
   128-bit hash, ``keys.task_dedup_key``).
3. A failure report returns no credit; the source is recorded failed for this run and stays
   incomplete (it is redone on the next run). Later reports for it are ignored.
4. Anomalies are never raised; each is logged as a loguru warning naming the source and the
   fix, and the source is marked for redo (recorded failed, its completion revoked if it had
   one). They are: returned credit above 1; the same task id reported with different credit
   (a non-deterministic stage); a report for an already complete source that is not an exact
   duplicate of one its completion was made of (a new task, or a known task with another
   credit or a failure); any report for a source completed by an earlier run.
5. A late exact duplicate never revokes a completion. A source completed in this run keeps a
   digest of its ``(task, credit)`` pairs (``digests``): a duplicate always matches it; a
   report that is not a duplicate matches it with probability at most ``n / 2**w`` (``n``
   tasks, digest width ``w`` = 64, 32 or 16 bits as the digest ages), and is otherwise an
   anomaly. The digests live within a byte budget (``digest_budget``, 64 MiB by default)
   and are persisted by the store, so a restarted ledger of the same run has them too. A
   report for a source completed in this run whose digest was dropped for the budget cannot
   be checked: the completion is kept, the report is counted as ``unverified`` and logged
   with the fix (a larger budget). So a new task is caught with certainty up to hash
   collisions while its source's digest is held, and never causes a wrong skip silently.
6. Memory: the per-task state of a source (its seen task ids and their credit) is dropped the
   moment it completes or fails; digests take at most ``digest_budget`` bytes; per source
   beyond that only its key in the completed set (``keys.source_key`` in a ``keyset.KeySet``:
   about 16 bytes for a framework id, so 10,000,000 completed sources take ~160 MB) and, for
   sources completed in this run, in ``_completed_now`` (another ``KeySet``).
7. A source is known by its id; an id whose key is hashed (``keys.MAX_SOURCE_ID_BYTES``) comes
   back from the store as ``keys.source_id_from_key(key)``. Its first report after a restart
   adopts the in-flight state and failure restored under that name, and a digest restored
   under it is looked up under it, so each stays one source's.

``apply(reports)`` / ``apply_batch(batch)`` return a ``LedgerUpdate`` with exactly what a store
must persist for the batch. The ledger has no I/O; ``CheckpointStore`` commits each update in one
transaction.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import compress, islice

from loguru import logger

from nemo_curator.resumability.digests import (
    DEFAULT_DIGEST_BUDGET,
    EXP_BITS,
    DigestWindow,
    digests_of,
    fingerprint,
    fingerprints,
)
from nemo_curator.resumability.keys import (
    is_hashed_key,
    packed_source_keys,
    source_id_from_key,
    source_key,
    task_dedup_key,
)
from nemo_curator.resumability.keyset import BATCH_MIN, KeySet, KeyStamps
from nemo_curator.resumability.report import Report, ReportBatch
from nemo_curator.tasks.credit import Credit

#: At most this many completed sources keep a digest (the byte budget usually binds first).
DEFAULT_RECENT_LIMIT = 1 << 20

#: Anomaly kinds.
CREDIT_ABOVE_ONE = "credit_above_one"
NONDETERMINISTIC = "nondeterministic"
COMPLETED_SOURCE = "completed_source"

_FIXES = {
    CREDIT_ABOVE_ONE: (
        "two different task ids returned the same credit; this happens when a stage emits one output object "
        "several times in different lists, or when task ids are not deterministic. Make the stage's outputs "
        "and ids deterministic"
    ),
    NONDETERMINISTIC: (
        "a stage produced different outputs for the same input when its task was retried (a non-deterministic "
        "stage). Make process()/process_batch() return the same number of outputs for the same input"
    ),
    COMPLETED_SOURCE: (
        "the source was already complete, so the source stage emitted an already complete source (its "
        "get_deterministic_id() is not stable, or the source filter was bypassed) or a stage is "
        "non-deterministic. Make source ids stable and stages deterministic"
    ),
}

_UNVERIFIED_FIX = (
    "it is most likely a duplicate delivery (a retried task), so the completion is kept; if stages may be "
    "non-deterministic, give the ledger a larger digest budget (digest_budget) so such reports can be checked"
)


@dataclass(frozen=True, slots=True)
class Anomaly:
    """Something that cannot happen with deterministic stages; its source is redone."""

    kind: str
    source_id: str
    task_id: str
    detail: str

    @property
    def reason(self) -> str:
        """The failure reason recorded for the source."""
        return f"ledger anomaly ({self.kind}) at task {self.task_id!r}: {self.detail}"


@dataclass(slots=True)
class LedgerUpdate:
    """What one ``apply`` changed; a store persists it in one transaction.

    ``completed`` lists the newly completed source ids; ``completed_keys`` their
    ``keys.source_key`` and ``completed_digests`` their digests (``digests.digest_of``: the sorted
    fingerprints of their ``(task, credit)`` pairs), aligned with it. ``inflight_added`` holds the
    ``(source_key, task_dedup_key, num, exp)`` rows (credit ``num / 2**exp``) accepted in this
    batch for sources still in flight at its end (rows of sources that completed or failed
    within the batch are never written). ``inflight_cleared`` lists the source keys of sources
    that left the in-flight state in this batch and had rows persisted by earlier batches.
    ``revoked`` lists sources whose completion was withdrawn (they are also in ``failed``).
    ``unverified`` counts reports for sources completed in this run whose digest was dropped
    for the budget (kept as complete, see the module docstring).
    """

    completed: list[str] = field(default_factory=list)
    completed_keys: list[bytes] = field(default_factory=list)
    completed_digests: list[bytes] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    revoked: list[str] = field(default_factory=list)
    anomalies: list[Anomaly] = field(default_factory=list)
    inflight_added: list[tuple[bytes, str, int, int]] = field(default_factory=list)
    inflight_cleared: list[bytes] = field(default_factory=list)
    applied: int = 0
    duplicates: int = 0
    ignored: int = 0
    unverified: int = 0

    def _set_completed(self, batch_completed: dict[str, _InFlight]) -> None:
        self.completed = list(batch_completed)
        states = list(batch_completed.values())
        self.completed_keys = [st.key for st in states]
        if not states:
            return
        task_keys = [t for st in states for t in st.seen]
        credits = [c for st in states for c in st.seen.values()]
        fps = fingerprints(task_keys, credits)  # vectorized: one call for the whole batch
        self.completed_digests = digests_of(fps, [len(st.seen) for st in states])

    def needs_commit(self) -> bool:
        """Whether anything must be written."""
        return bool(self.completed or self.failed or self.revoked or self.inflight_added or self.inflight_cleared)


@dataclass(slots=True)
class LedgerStats:
    """Counters since this ledger object was built (a restarted ledger starts again at 0)."""

    reports: int = 0
    applied: int = 0
    duplicates: int = 0
    ignored: int = 0
    unverified: int = 0
    anomalies: int = 0
    completed: int = 0
    failed: int = 0


#: Bits of a packed credit that hold the exponent (``ReportBatch`` guarantees ``exp < 2**32``).
_EXP_BITS = EXP_BITS
_EXP_MASK = (1 << _EXP_BITS) - 1


def pack_credit(num: int, exp: int) -> int:
    """The credit ``num / 2**exp`` as one int: plain ints are not tracked by the garbage collector,
    so the per-task state of in-flight sources costs the collector nothing (tuples would)."""
    return (num << _EXP_BITS) | exp


def unpack_credit(packed: int) -> tuple[int, int]:
    return packed >> _EXP_BITS, packed & _EXP_MASK


class _InFlight:
    """Returned credit of one in-flight source: ``num / 2**exp`` (not normalized) and its seen tasks.

    ``seen`` maps task dedup key -> packed credit that task returned, in arrival order; the
    entries from index ``mark`` on arrived in the batch being applied (``batch`` identifies it).
    """

    __slots__ = ("batch", "done", "exp", "key", "mark", "num", "persisted", "seen")

    def __init__(self, key: bytes) -> None:
        self.key = key
        self.num = 0
        self.exp = 0
        self.seen: dict[str, int] = {}
        self.persisted = False
        self.done = False  # left the in-flight state (completed or failed)
        self.batch: object = None
        self.mark = 0

    def add(self, num: int, exp: int) -> None:
        """Add ``num / 2**exp`` exactly; the running exponent never decreases."""
        e = self.exp
        if exp == e:
            self.num += num
        elif exp < e:
            self.num += num << (e - exp)
        else:
            self.num = (self.num << (exp - e)) + num
            self.exp = exp


def _same_credit(a: int, b: int) -> bool:
    """Equal credit values (packed credits need not be normalized)."""
    if a == b:
        return True
    (an, ae), (bn, be) = unpack_credit(a), unpack_credit(b)
    e = max(ae, be)
    return an << (e - ae) == bn << (e - be)


def _wire(packed: int) -> str:
    return Credit.make(*unpack_credit(packed)).to_wire()


class SourceLedger:
    """Per-source credit accounting over a stream of report batches (see the module docstring).

    ``completed_keys`` holds the ``source_key`` values of sources already complete (from the
    checkpoint); a ``KeySet`` given is taken over (the ledger adds to it and owns it), other
    iterables are copied into one. ``failed_this_run`` are sources this run
    already recorded failed (a restarted ledger of the same run reloads them). At most
    ``recent_limit`` completed sources keep a digest, within ``digest_budget`` bytes.
    """

    def __init__(
        self,
        completed_keys: KeySet | Iterable[bytes] | None = None,
        failed_this_run: Iterable[str] = (),
        *,
        recent_limit: int = DEFAULT_RECENT_LIMIT,
        digest_budget: int = DEFAULT_DIGEST_BUDGET,
        max_logged_anomalies: int = 50,
    ) -> None:
        if not isinstance(completed_keys, KeySet):
            completed_keys = KeySet(completed_keys or ())
        self._completed = completed_keys
        self._completed_now = KeySet()  # keys of the sources completed in this run
        self._failed_run: set[str] = set(failed_this_run)
        self._inflight: dict[str, _InFlight] = {}
        self._digests = DigestWindow(digest_budget, recent_limit)
        self._max_logged = max_logged_anomalies
        self._unverified_logged = 0
        self.stats = LedgerStats()

    # -- queries ----------------------------------------------------------------------

    def is_completed(self, source_id: str) -> bool:
        return source_key(source_id) in self._completed

    def completed_among(self, source_ids: Iterable[str]) -> list[str]:
        """The ids among ``source_ids`` that are complete, in their given order.

        Batched: canonical framework ids are converted and looked up together (``keys.packed_source_keys``,
        ``KeySet.contains_packed``); about 0.3 us per id for large batches.
        """
        ids = source_ids if isinstance(source_ids, list) else list(source_ids)
        done = self._completed
        if len(ids) < BATCH_MIN:
            return [sid for sid in ids if source_key(sid) in done]
        packed = packed_source_keys(ids)
        if packed is not None:
            found = done.contains_packed(packed)
        else:
            found = done.contains_keys([source_key(sid) for sid in ids])
        return list(compress(ids, found.tolist()))

    def is_failed_this_run(self, source_id: str) -> bool:
        failed = self._failed_run
        if source_id in failed:
            return True
        key = source_key(source_id)
        return is_hashed_key(key) and source_id_from_key(key) in failed

    @property
    def completed_count(self) -> int:
        return len(self._completed)

    @property
    def in_flight_count(self) -> int:
        return len(self._inflight)

    @property
    def failed_this_run_count(self) -> int:
        return len(self._failed_run)

    @property
    def recent_count(self) -> int:
        """Completed sources that hold a digest to recognise late duplicates (<= ``recent_limit``)."""
        return len(self._digests)

    @property
    def digests(self) -> DigestWindow:
        """The digests of this run's completed sources (for inspection and tests)."""
        return self._digests

    def in_flight(self) -> dict[str, Credit]:
        """Credit returned so far per in-flight source (a copy, for inspection and tests)."""
        return {sid: Credit.make(st.num, st.exp) for sid, st in self._inflight.items() if st.num}

    # -- restore ----------------------------------------------------------------------

    def restore_recent(
        self, entries: Iterable[tuple[bytes, bytes | None]], completed_now: KeyStamps | Iterable[bytes]
    ) -> None:
        """Reload this run's completions: ``completed_now`` their keys (those still complete count),
        ``entries`` the persisted digests ``(source key, digests.digest_bytes(...) or None)``, oldest first."""
        completed = self._completed
        now = KeySet.union_of([completed_now]) if isinstance(completed_now, KeyStamps) else KeySet(completed_now)
        now = now.intersection(completed)
        if self._completed_now:
            now.update(self._completed_now)
        self._completed_now = now
        for key, data in entries:
            if data is None or key not in completed:
                continue
            sid = source_id_from_key(key)
            self._digests.pop(sid)
            self._digests.add(sid, data)

    def restore(self, rows: Iterable[tuple[bytes, str, int, int]]) -> LedgerUpdate:
        """Reload persisted in-flight rows ``(source_key, task_dedup_key, num, exp)`` of this run.

        Rows are treated as already persisted. A restored source whose rows already sum to 1 is
        completed, and one above 1 is an anomaly (neither happens with a consistent store); the
        returned update says what to write for those.
        """
        upd = LedgerUpdate()
        touched: dict[str, _InFlight] = {}
        ids: dict[bytes, str] = {}
        for key, tkey, num, exp in rows:
            sid = ids.get(key)
            if sid is None:
                sid = ids[key] = source_id_from_key(key)
            if sid in self._failed_run:
                continue
            st = self._inflight.get(sid)
            if st is None:
                st = _InFlight(key)
                st.persisted = True
                self._inflight[sid] = st
            if tkey in st.seen:
                continue
            st.seen[tkey] = pack_credit(num, exp)
            st.add(num, exp)
            touched[sid] = st
        batch_completed: dict[str, _InFlight] = {}
        for sid, st in touched.items():
            if st.num >= 1 << st.exp:
                self._settle(sid, st, next(reversed(st.seen)), upd, batch_completed)
        self._record_completed(upd, batch_completed)
        return upd

    # -- the hot path -----------------------------------------------------------------

    def apply(self, reports: Iterable[Report]) -> LedgerUpdate:
        """Apply a batch of ``Report`` objects; returns what changed (never raises on bad reports)."""
        return self.apply_batch(ReportBatch.from_reports(reports))

    def apply_batch(self, batch: ReportBatch) -> LedgerUpdate:
        """Apply a columnar batch; returns what changed (never raises on bad reports)."""
        upd = LedgerUpdate()
        inflight_get = self._inflight.get
        touched: list[_InFlight] = []
        batch_completed: dict[str, _InFlight] = {}
        sids, tids, nums, exps = batch.source_ids, batch.task_ids, batch.nums, batch.exps
        if batch.failures:
            # Failures first: a failed task's credit never returns, so its source cannot complete in
            # this run whatever the order; its other reports in this batch are then ignored.
            self._apply_failures(batch, upd, batch_completed)
            skip = set(batch.failures)
            keep = [i for i in range(len(sids)) if i not in skip]
            sids, tids = [sids[i] for i in keep], [tids[i] for i in keep]
            nums, exps = [nums[i] for i in keep], [exps[i] for i in keep]
        applied = 0
        for sid, tkey, num, exp in zip(sids, tids, nums, exps, strict=True):
            if len(tkey) > 64:
                tkey = task_dedup_key(tkey)
            st = inflight_get(sid)
            if st is None:
                st = self._admit(sid)
                if st is None:
                    self._report_for_settled(sid, tkey, num, exp, None, upd, batch_completed)
                    continue
            seen = st.seen
            if st.batch is not upd:
                st.batch = upd
                st.mark = len(seen)
                touched.append(st)
            packed = pack_credit(num, exp)
            prev = seen.setdefault(tkey, packed)
            if prev is not packed:
                if _same_credit(prev, packed):
                    upd.duplicates += 1
                else:
                    detail = f"reported first with credit {_wire(prev)}, now with credit {_wire(packed)}"
                    self._anomaly(NONDETERMINISTIC, sid, tkey, detail, upd)
                    self._fail(sid, st, upd)
                continue
            st.add(num, exp)
            applied += 1
            if st.num >= 1 << st.exp:
                self._settle(sid, st, tkey, upd, batch_completed)
        # Rows to persist: the tasks that arrived in this batch for sources still in flight.
        added = upd.inflight_added
        for st in touched:
            st.batch = None
            if st.done or st.mark == len(st.seen):
                continue
            st.persisted = True
            key = st.key
            for tkey, packed in islice(st.seen.items(), st.mark, None):
                added.append((key, tkey, *unpack_credit(packed)))
        upd.applied = applied
        self._record_completed(upd, batch_completed)
        stats = self.stats
        stats.reports += len(batch)
        stats.applied += applied
        stats.duplicates += upd.duplicates
        stats.ignored += upd.ignored
        stats.unverified += upd.unverified
        stats.completed += len(upd.completed)
        stats.failed += len(upd.failed)
        return upd

    def _apply_failures(self, batch: ReportBatch, upd: LedgerUpdate, batch_completed: dict[str, _InFlight]) -> None:
        """Record the failure reports of ``batch``: each one's source fails for this run."""
        for i, failure in batch.failures.items():
            sid = batch.source_ids[i]
            tkey = task_dedup_key(batch.task_ids[i])
            st = self._inflight.get(sid) or self._admit(sid)
            if st is None:
                self._report_for_settled(sid, tkey, batch.nums[i], batch.exps[i], failure, upd, batch_completed)
                continue
            prev = st.seen.get(tkey)
            if prev is not None:
                detail = f"reported first with credit {_wire(prev)}, now with a failure ({failure})"
                self._anomaly(NONDETERMINISTIC, sid, tkey, detail, upd)
            else:
                upd.failed[sid] = failure
            self._fail(sid, st, upd)

    def _record_completed(self, upd: LedgerUpdate, batch_completed: dict[str, _InFlight]) -> None:
        """Fill ``upd``'s completions and hold their digests (their seen tasks are dropped with them)."""
        upd._set_completed(batch_completed)
        self._completed_now.update(upd.completed_keys)  # those still complete at the batch's end
        add = self._digests.add
        for sid, digest in zip(upd.completed, upd.completed_digests, strict=True):
            add(sid, digest)

    def _admit(self, sid: str) -> _InFlight | None:
        """The in-flight state for a report of ``sid``, which is not in flight under that name.

        ``None`` when ``sid`` is settled: failed in this run or complete. For an id with a hashed
        key, state restored under ``source_id_from_key(key)`` is adopted first (invariant 7).
        """
        failed_run = self._failed_run
        if sid in failed_run:
            return None
        key = source_key(sid)
        if is_hashed_key(key):
            alias = source_id_from_key(key)
            if alias != sid:
                self._adopt(sid, alias)
                st = self._inflight.get(sid)
                if st is not None:
                    return st
                if sid in failed_run:
                    return None
        if key in self._completed:
            return None
        st = self._inflight[sid] = _InFlight(key)
        return st

    def _adopt(self, sid: str, alias: str) -> None:
        """Move the state restored under ``alias`` (a hashed key's placeholder name) to ``sid``."""
        st = self._inflight.pop(alias, None)
        if st is not None:
            self._inflight[sid] = st
        if alias in self._failed_run:
            self._failed_run.discard(alias)
            self._failed_run.add(sid)

    def _report_for_settled(
        self,
        sid: str,
        tkey: str,
        num: int,
        exp: int,
        failure: str | None,
        upd: LedgerUpdate,
        batch_completed: dict[str, _InFlight],
    ) -> None:
        """A report for ``sid``, a source that failed in this run or is complete (invariants 3-5)."""
        if sid in self._failed_run:
            upd.ignored += 1
            return
        packed = pack_credit(num, exp)
        now = "a failure" if failure is not None else f"credit {_wire(packed)}"
        st = batch_completed.get(sid)
        if st is not None:  # completed earlier in this batch: its seen tasks are still at hand
            prev = st.seen.get(tkey)
            if prev is not None and failure is None and _same_credit(prev, packed):
                upd.duplicates += 1
                return
            if prev is not None:
                self._anomaly(NONDETERMINISTIC, sid, tkey, f"task reported again with {now} (was {_wire(prev)})", upd)
            else:
                detail = "a report arrived after the source completed, from a task that was not part of its completion"
                self._anomaly(COMPLETED_SOURCE, sid, tkey, detail, upd)
            self._revoke(sid, batch_completed, upd)
            return
        fp = fingerprint(tkey, packed)
        known = self._digests.match(sid, fp)
        key = source_key(sid)
        if known is None and is_hashed_key(key):  # a digest restored under the key's name (invariant 7)
            known = self._digests.match(source_id_from_key(key), fp)
        if known and failure is None:
            upd.duplicates += 1
            return
        if known is not None:
            detail = (
                f"a report with {now} arrived after the source completed that is not an exact duplicate of one its "
                "completion was made of (a new task, or a known task with other credit or a failure)"
            )
            self._anomaly(COMPLETED_SOURCE, sid, tkey, detail, upd)
            self._revoke(sid, batch_completed, upd)
            return
        if key in self._completed_now:
            self._unverified(sid, tkey, upd)
            return
        self._anomaly(COMPLETED_SOURCE, sid, tkey, "a report arrived for a source completed by an earlier run", upd)
        self._revoke(sid, batch_completed, upd)

    def _unverified(self, sid: str, tkey: str, upd: LedgerUpdate) -> None:
        upd.unverified += 1
        self._unverified_logged += 1
        count = self._unverified_logged
        if count <= self._max_logged:
            logger.warning(
                "completion ledger: a report (task {!r}) arrived for source {!r}, completed in this run, whose digest "
                "was dropped to stay within the ledger's digest budget ({} bytes), so it cannot be checked against "
                "the source's completion: {}.{}",
                tkey,
                sid,
                self._digests.budget,
                _UNVERIFIED_FIX,
                " Further such reports are only counted (`unverified`)." if count == self._max_logged else "",
            )

    def _settle(
        self, sid: str, st: _InFlight, tkey: str, upd: LedgerUpdate, batch_completed: dict[str, _InFlight]
    ) -> None:
        """``st`` reached at least 1: complete it, or flag credit above 1."""
        full = 1 << st.exp
        if st.num == full:
            del self._inflight[sid]
            st.done = True
            self._completed.add(st.key)  # (``_completed_now`` gets the batch's completions at its end)
            batch_completed[sid] = st
            if st.persisted:
                upd.inflight_cleared.append(st.key)
        else:
            detail = f"returned credit reached {_wire(pack_credit(st.num, st.exp))}, above 1"
            self._anomaly(CREDIT_ABOVE_ONE, sid, tkey, detail, upd)
            self._fail(sid, st, upd)

    def _fail(self, sid: str, st: _InFlight, upd: LedgerUpdate) -> None:
        """Drop ``sid``'s in-flight state; it stays incomplete for the rest of this run."""
        del self._inflight[sid]
        st.done = True
        self._failed_run.add(sid)
        if st.persisted:
            upd.inflight_cleared.append(st.key)

    def _revoke(self, sid: str, batch_completed: dict[str, _InFlight], upd: LedgerUpdate) -> None:
        """Withdraw ``sid``'s completion; it is redone on the next run."""
        key = source_key(sid)
        self._completed.discard(key)
        self._completed_now.discard(key)
        self._digests.pop(sid)
        if is_hashed_key(key):
            self._digests.pop(source_id_from_key(key))
        self._failed_run.add(sid)
        batch_completed.pop(sid, None)
        upd.revoked.append(sid)

    def _anomaly(self, kind: str, sid: str, task_id: str, detail: str, upd: LedgerUpdate) -> None:
        anomaly = Anomaly(kind=kind, source_id=sid, task_id=task_id, detail=detail)
        upd.anomalies.append(anomaly)
        upd.failed[sid] = anomaly.reason
        self.stats.anomalies += 1
        count = self.stats.anomalies
        if count <= self._max_logged:
            logger.warning(
                "completion ledger anomaly for source {!r}: {} (task {!r}). Fix: {}. The source is marked for redo "
                "and will be processed again on the next run.",
                sid,
                detail,
                task_id,
                _FIXES[kind],
            )
            if count == self._max_logged:
                logger.warning(
                    "completion ledger: {} anomalies so far; further ones are recorded as failed sources without "
                    "a log line each (see `nemo-curator checkpoint status`)",
                    count,
                )
