"""Checkpoint overhead on workload B1: wall time of ``pipeline.run`` with and without a checkpoint.

Per executor, runs alternate in one session (ABBA order: without/with, then with/without, ...)
so that slow drift of the machine's load hits both sides alike; every run gets a fresh output
directory and, with a checkpoint, a fresh checkpoint directory. Run ``i`` with a checkpoint is
paired with run ``i`` without one (its neighbour), and the ratios with/without of the pairs give
the median and the spread. Only ``pipeline.run`` is timed: Ray is started once by the caller.

Each run also records the CPU time the whole machine spent while it ran (``/proc/stat``: user,
nice, system, irq and softirq of all processes, including the Ray workers and actors that exit
before the run returns) and the time the hypervisor stole. The CPU ratio with/without is a
second view of the overhead: it counts work, so it does not move with how the scheduler happened
to interleave the processes, although it still grows with wall time through Ray's polling loops.

Runs with a checkpoint use ``counting_executor``: the executor with its ``_open_tracker``
wrapped to keep the run's ``LedgerTracker`` (its ``counts`` feed the message benchmark) and to
time opening and closing the ledger, the fixed part of the overhead.
"""

from __future__ import annotations

import os
import shutil
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from loguru import logger

from benchmarks.workloads import (
    OUTPUTS_PER_SOURCE,
    B1Config,
    b1_initial_tasks,
    b1_pipeline,
    b1_task_stage_visits,
)
from nemo_curator.backends.registry import executor_class, make_executor


@dataclass
class TrackerStats:
    """What one checkpointed run's tracker counted, plus the time spent opening / closing the ledger."""

    ledger_calls: int = 0
    reports_sent: int = 0
    terminal_tasks: int = 0
    on_terminal_calls: int = 0
    completed_this_run: int = 0
    open_s: float = 0.0
    close_s: float = 0.0


@dataclass
class RunRecord:
    """One timed ``pipeline.run``."""

    executor: str
    sources: int
    checkpoint: bool
    seconds: float
    outputs: int
    rep: int
    tracker: TrackerStats | None = None
    #: CPU seconds of the whole machine during the run (``None`` where ``/proc/stat`` is missing).
    cpu_s: float | None = None
    #: CPU seconds the hypervisor stole during the run.
    steal_s: float | None = None
    #: The sources were passed to ``pipeline.run`` as initial tasks (no source stage).
    initial_tasks: bool = False


def machine_cpu_seconds() -> tuple[float, float] | None:
    """``(busy, steal)`` CPU seconds of the whole machine since boot, from ``/proc/stat`` (Linux)."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    # Columns after "cpu": user nice system idle iowait irq softirq steal (older kernels stop early).
    values = ([int(v) for v in fields[1:9]] + [0] * 8)[:8]
    user, nice, system, _idle, _iowait, irq, softirq, steal = values
    return (user + nice + system + irq + softirq) / ticks, steal / ticks


@dataclass
class B1Settings:
    """How B1 runs are made: stage batch size (all stages after the source), sink fsync, CPU work per task."""

    batch_size: int = 50
    fsync: bool = False
    work_ms: float = 1.0
    executor_config: dict[str, dict[str, Any]] = field(default_factory=dict)

    def b1_config(self, sources: int, work_dir: Path, initial_tasks: bool = False) -> B1Config:
        """The ``B1Config`` of one run with these settings, writing under ``work_dir / "out"``."""
        return B1Config(
            sources=sources,
            out_dir=str(work_dir / "out"),
            work_ms=self.work_ms,
            fsync=self.fsync,
            batch_size=self.batch_size,
            initial_tasks=initial_tasks,
        )


def counting_executor(name: str, checkpoint: str, config: dict[str, Any] | None = None) -> tuple[Any, TrackerStats]:
    """An executor whose run keeps tracker statistics in the returned ``TrackerStats``.

    A subclass of the executor overrides ``_open_tracker`` (the base class's seam for the
    ledger) to time it and to wrap the tracker's ``on_terminal`` / ``close``; nothing else of
    the executor changes, and the pipeline fingerprint does not involve the executor.
    """
    stats = TrackerStats()
    base = executor_class(name)

    def _open_tracker(self: Any, plan: Any) -> Any:
        start = time.perf_counter()
        tracker = base._open_tracker(self, plan)
        stats.open_s = time.perf_counter() - start
        on_terminal = tracker.on_terminal
        close = tracker.close

        def counted_on_terminal(tasks: list[Any]) -> None:
            stats.on_terminal_calls += 1
            on_terminal(tasks)

        def timed_close(success: bool) -> None:
            began = time.perf_counter()
            try:
                close(success)
            finally:
                stats.close_s = time.perf_counter() - began
                counts = tracker.counts
                stats.ledger_calls = counts.ledger_calls
                stats.reports_sent = counts.reports_sent
                stats.terminal_tasks = counts.terminal_tasks
                stats.completed_this_run = counts.completed_this_run

        tracker.on_terminal = counted_on_terminal
        tracker.close = timed_close
        return tracker

    cls = type(f"Counting{base.__name__}", (base,), {"_open_tracker": _open_tracker})
    return cls(config=dict(config or {}), checkpoint=checkpoint), stats


def timed_run(
    executor_name: str,
    sources: int,
    checkpoint: bool,
    work_dir: Path,
    settings: B1Settings,
    rep: int,
    initial_tasks: bool = False,
) -> RunRecord:
    """One B1 run in a fresh directory (removed afterwards); checks the output count."""
    if work_dir.exists():
        shutil.rmtree(work_dir)
    work_dir.mkdir(parents=True)
    cfg = settings.b1_config(sources, work_dir, initial_tasks)
    pipeline = b1_pipeline(cfg)
    config = settings.executor_config.get(executor_name)
    stats: TrackerStats | None = None
    if checkpoint:
        executor, stats = counting_executor(executor_name, str(work_dir / "ckpt"), config)
    else:
        executor = make_executor(executor_name, checkpoint=None, config=config)
    try:
        cpu_before = machine_cpu_seconds()
        start = time.perf_counter()
        outputs = pipeline.run(executor, initial_tasks=b1_initial_tasks(cfg))
        seconds = time.perf_counter() - start
        cpu_after = machine_cpu_seconds()
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    if len(outputs) != OUTPUTS_PER_SOURCE * sources:
        raise RuntimeError(
            f"{executor_name}: B1 with {sources} sources returned {len(outputs)} outputs, "
            f"expected {OUTPUTS_PER_SOURCE * sources}"
        )
    cpu_s = steal_s = None
    if cpu_before is not None and cpu_after is not None:
        cpu_s, steal_s = cpu_after[0] - cpu_before[0], cpu_after[1] - cpu_before[1]
    logger.info(
        "overhead {} n={}{} {} rep {}: {:.2f}s (machine CPU {}, stolen {})",
        executor_name,
        sources,
        " as initial tasks" if initial_tasks else "",
        "with checkpoint" if checkpoint else "without",
        rep,
        seconds,
        "?" if cpu_s is None else f"{cpu_s:.2f}s",
        "?" if steal_s is None else f"{steal_s:.2f}s",
    )
    return RunRecord(
        executor_name, sources, checkpoint, seconds, len(outputs), rep, stats, cpu_s, steal_s, initial_tasks
    )


def alternating_runs(
    executor_name: str,
    sources: int,
    reps: int,
    work_root: Path,
    settings: B1Settings,
    initial_tasks: bool = False,
) -> list[RunRecord]:
    """``reps`` pairs of runs, in ABBA order (rep 0 without first, rep 1 with first, ...)."""
    records: list[RunRecord] = []
    for rep in range(reps):
        order = (False, True) if rep % 2 == 0 else (True, False)
        for checkpoint in order:
            tag = ("ckpt" if checkpoint else "plain") + ("-initial" if initial_tasks else "")
            records.append(
                timed_run(
                    executor_name,
                    sources,
                    checkpoint,
                    work_root / f"{executor_name}-{sources}-{rep}-{tag}",
                    settings,
                    rep,
                    initial_tasks,
                )
            )
    return records


def pair_ratios(records: list[RunRecord], measure: str = "seconds") -> list[float]:
    """with/without of each rep's pair, of ``measure`` (``seconds`` or ``cpu_s``; pairs missing it are left out)."""
    by_rep: dict[int, dict[bool, float]] = {}
    for r in records:
        value = getattr(r, measure)
        if value is not None:
            by_rep.setdefault(r.rep, {})[r.checkpoint] = value
    return [
        pair[True] / pair[False]
        for _, pair in sorted(by_rep.items())
        if True in pair and False in pair and pair[False] > 0
    ]


def summarize_size(records: list[RunRecord]) -> dict[str, Any]:
    """Ratios and times of the runs of one executor at one size."""
    ratios = pair_ratios(records)
    with_s = [r.seconds for r in records if r.checkpoint]
    without_s = [r.seconds for r in records if not r.checkpoint]
    opens = [r.tracker.open_s for r in records if r.tracker is not None]
    closes = [r.tracker.close_s for r in records if r.tracker is not None]
    cpu_ratios = pair_ratios(records, "cpu_s")
    steals = [r.steal_s for r in records if r.steal_s is not None]
    return {
        "sources": records[0].sources,
        "reps": len(ratios),
        "median_ratio": statistics.median(ratios),
        "min_ratio": min(ratios),
        "max_ratio": max(ratios),
        "ratios": ratios,
        "median_with_s": statistics.median(with_s),
        "median_without_s": statistics.median(without_s),
        "with_s": with_s,
        "without_s": without_s,
        "median_extra_s": statistics.median(w - wo for w, wo in zip(with_s, without_s, strict=False)),
        "median_ledger_open_s": statistics.median(opens) if opens else None,
        "median_ledger_close_s": statistics.median(closes) if closes else None,
        "cpu_ratios": cpu_ratios,
        "median_cpu_ratio": statistics.median(cpu_ratios) if cpu_ratios else None,
        "median_steal_s": statistics.median(steals) if steals else None,
    }


#: What the growth curve and the initial-tasks variant keep of ``summarize_size``.
_POINT_KEYS = ("sources", "reps", "median_with_s", "median_without_s", "median_ratio", "min_ratio", "max_ratio")


@dataclass
class OverheadResult:
    """Everything the overhead section measured for one executor."""

    summary: dict[str, Any]
    growth: list[dict[str, Any]]
    records: list[RunRecord]

    def to_json(self) -> dict[str, Any]:
        return {**self.summary, "growth": self.growth, "runs": [asdict(r) for r in self.records]}


def measure_overhead(
    executor_name: str,
    sources: int,
    reps: int,
    growth_sizes: list[int],
    growth_reps: int,
    work_root: Path,
    settings: B1Settings,
    warmup_sources: int | None = None,
    initial_task_reps: int = 0,
) -> OverheadResult:
    """The alternating pairs at ``sources``, then the growth curve (other sizes, ``growth_reps`` pairs each).

    ``warmup_sources`` runs one untimed pair first (first runs pay for imports and worker start-up).
    ``initial_task_reps`` pairs at ``sources`` then hand the sources to ``pipeline.run`` as initial
    tasks (no source stage): a guard for the path users take with pre-built tasks, which B1's
    source stage does not exercise (xenna once fed them at 100 per second).
    """
    if warmup_sources:
        for checkpoint in (False, True):
            timed_run(executor_name, warmup_sources, checkpoint, work_root / f"{executor_name}-warmup", settings, -1)
    main = alternating_runs(executor_name, sources, reps, work_root, settings)
    summary = summarize_size(main)
    summary["batch_size"] = settings.batch_size
    summary["sink_fsync"] = settings.fsync
    summary["work_ms"] = settings.work_ms
    summary["task_stage_visits"] = b1_task_stage_visits(sources)
    records = list(main)
    growth: list[dict[str, Any]] = []
    for size in sorted(set(growth_sizes) | {sources}):
        if size == sources:
            point = summarize_size(main)
        else:
            runs = alternating_runs(executor_name, size, growth_reps, work_root, settings)
            records.extend(runs)
            point = summarize_size(runs)
        growth.append({k: point[k] for k in _POINT_KEYS})
    if initial_task_reps > 0:
        runs = alternating_runs(executor_name, sources, initial_task_reps, work_root, settings, initial_tasks=True)
        records.extend(runs)
        point = summarize_size(runs)
        summary["initial_tasks"] = {k: point[k] for k in _POINT_KEYS}
    return OverheadResult(summary=summary, growth=growth, records=records)
