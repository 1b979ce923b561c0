"""Terminal reports: what the driver forwards to the ledger for each task that ended."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from nemo_curator.tasks.credit import Credit


@dataclass(frozen=True, slots=True)
class Report:
    """One terminal task's return of credit to one source.

    ``task_id`` is the terminal task's deterministic id and the deduplication key within its
    source. A report with ``failure`` set returns no credit (``credit`` is informational):
    the source stays incomplete and is redone on the next run.
    """

    source_id: str
    task_id: str
    credit: Credit
    failure: str | None = None


@dataclass(frozen=True, slots=True)
class ReportBatch:
    """Reports as parallel columns: the compact, exact wire form for the ledger actor.

    Row ``i`` is ``(source_ids[i], task_ids[i], Credit(nums[i], exps[i]), failures.get(i))``.
    Credits travel as two integers (never floats); four flat lists pickle far cheaper than
    ``Report`` objects one by one.
    """

    source_ids: list[str]
    task_ids: list[str]
    nums: list[int]
    exps: list[int]
    failures: dict[int, str]

    def __post_init__(self) -> None:
        n = len(self.source_ids)
        if not (len(self.task_ids) == len(self.nums) == len(self.exps) == n):
            raise ValueError("ReportBatch columns must have the same length")
        if n and (min(self.nums) <= 0 or min(self.exps) < 0 or max(self.exps) >= 1 << 32):
            raise ValueError("ReportBatch credits must be positive: num > 0 and 0 <= exp < 2**32")

    @staticmethod
    def from_reports(reports: Iterable[Report]) -> ReportBatch:
        reports = reports if isinstance(reports, list) else list(reports)
        failures = {i: r.failure for i, r in enumerate(reports) if r.failure is not None}
        return ReportBatch(
            source_ids=[r.source_id for r in reports],
            task_ids=[r.task_id for r in reports],
            nums=[r.credit.num for r in reports],
            exps=[r.credit.exp for r in reports],
            failures=failures,
        )

    def reports(self) -> list[Report]:
        """Back to ``Report`` objects (credits normalized)."""
        failures = self.failures
        columns = zip(self.source_ids, self.task_ids, self.nums, self.exps, strict=True)
        return [
            Report(sid, tid, Credit.make(num, exp), failures.get(i)) for i, (sid, tid, num, exp) in enumerate(columns)
        ]

    def __len__(self) -> int:
        return len(self.source_ids)
