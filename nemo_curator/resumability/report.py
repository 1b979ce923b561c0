"""Terminal reports: what the driver forwards to the ledger for each task that ended."""

from __future__ import annotations

from dataclasses import dataclass

from nemo_curator.resumability.credit import Credit


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
