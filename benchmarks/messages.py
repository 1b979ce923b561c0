"""Messages to the ledger per run, against terminal tasks and tasks x stages.

The figures come from the checkpointed runs of the overhead section (each run's
``LedgerTracker.counts``, kept by ``benchmarks.overhead.counting_executor``), at every size the
section ran. The claim to check: the number of ledger calls follows the number of *batches* of
terminal outputs the driver flushes (bounded by ``on_terminal`` calls and, per flush, by the
tracker's size/time thresholds), not the number of tasks times stages, which is what a
per-task, per-stage report (as in upstream NeMo Curator) would cost.

Besides the report calls counted here, a run makes a fixed handful of ledger calls (open,
status, close) and one ``completed`` lookup per batch of the source stage (one for B1).
"""

from __future__ import annotations

import statistics
from typing import Any

from benchmarks.overhead import RunRecord
from benchmarks.workloads import NUM_STAGES, b1_task_stage_visits


def summarize_messages(records: list[RunRecord]) -> dict[str, Any]:
    """Per size: median ledger calls, ``on_terminal`` calls, reports, terminal tasks, tasks x stages."""
    by_size: dict[int, list[RunRecord]] = {}
    for r in records:
        if r.checkpoint and r.tracker is not None and r.rep >= 0 and not r.initial_tasks:
            by_size.setdefault(r.sources, []).append(r)
    sizes: list[dict[str, Any]] = []
    for n, runs in sorted(by_size.items()):
        stats = [r.tracker for r in runs if r.tracker is not None]
        calls = statistics.median(s.ledger_calls for s in stats)
        visits = b1_task_stage_visits(n)
        terminal = statistics.median(s.terminal_tasks for s in stats)
        sizes.append(
            {
                "sources": n,
                "runs": len(stats),
                "ledger_calls": calls,
                "ledger_calls_all": [s.ledger_calls for s in stats],
                "on_terminal_calls": statistics.median(s.on_terminal_calls for s in stats),
                "reports_sent": statistics.median(s.reports_sent for s in stats),
                "terminal_tasks": terminal,
                "task_stage_visits": visits,
                "stages": NUM_STAGES,
                "calls_per_terminal_task": calls / terminal if terminal else None,
                "calls_per_task_stage": calls / visits,
                "median_run_s": statistics.median(r.seconds for r in runs),
            }
        )
    result: dict[str, Any] = {"sizes": sizes}
    if len(sizes) >= 2:
        small, large = sizes[0], sizes[-1]
        result["growth"] = {
            "from_sources": small["sources"],
            "to_sources": large["sources"],
            "task_stage_visits_factor": large["task_stage_visits"] / small["task_stage_visits"],
            "terminal_tasks_factor": large["terminal_tasks"] / small["terminal_tasks"]
            if small["terminal_tasks"]
            else None,
            "ledger_calls_factor": large["ledger_calls"] / small["ledger_calls"] if small["ledger_calls"] else None,
            "on_terminal_calls_factor": large["on_terminal_calls"] / small["on_terminal_calls"]
            if small["on_terminal_calls"]
            else None,
        }
    return result
