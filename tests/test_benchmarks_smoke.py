"""Smoke test of the benchmark suite: ``python -m benchmarks --quick`` runs its sections end to end.

It asserts what the suite writes (files, keys, types, the consistency of the counts), never how
fast anything was: performance targets live in ``benchmarks/``, not in timed tests. It runs on the
fastest executor only: the benchmark code is the same for all three (``registry.make_executor``),
and each executor's behaviour is proven by ``tests/e2e``; a run of every executor costs about three
CI minutes more (set NEMO_CURATOR_E2E_ALL=1 for it, and for the sections ``SECTIONS`` leaves out by default).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nemo_curator.backends import registry

REPO = Path(__file__).resolve().parents[1]
FULL = os.environ.get("NEMO_CURATOR_E2E_ALL") == "1"
EXECUTORS = list(registry.EXECUTORS) if FULL else ["ray_actor_pool"]
#: The sections that start servers, clusters or workflows of their own (a local S3 server, a
#: ``ray start`` cluster, three-segment dedup runs and a killed subprocess) cost about 100 s more
#: of the CI budget: they run with NEMO_CURATOR_E2E_ALL=1.
SECTIONS = ["overhead", "resume", "ledger", "messages", "scale"] + (["remote", "upstream", "dedup"] if FULL else [])


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@pytest.mark.slow
def test_quick_benchmark_suite_writes_summary_tables_and_plots(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env["LEDGER_BENCH_DIR"] = str(tmp_path)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "--quick",
            "--executors",
            *EXECUTORS,
            "--sections",
            *SECTIONS,
            "--out",
            str(out),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-6000:]}"

    summary = json.loads((out / "summary.json").read_text())
    for executor in EXECUTORS:
        overhead = summary["overhead"][executor]
        for key in ("median_ratio", "min_ratio", "max_ratio"):
            assert _is_number(overhead[key]) and overhead[key] > 0, (executor, key, overhead)
        assert overhead["min_ratio"] <= overhead["median_ratio"] <= overhead["max_ratio"]
        if sys.platform == "linux":  # the machine's CPU time comes from /proc/stat
            assert len(overhead["cpu_ratios"]) == summary["meta"]["reps"]
            assert _is_number(overhead["median_cpu_ratio"]) and overhead["median_cpu_ratio"] > 0
        assert overhead["sources"] == summary["meta"]["sources"]
        assert len(overhead["ratios"]) == summary["meta"]["reps"]
        assert [g["sources"] for g in overhead["growth"]] == summary["meta"]["growth_sizes"]
        variant = overhead["initial_tasks"]  # the sources handed to pipeline.run as initial tasks
        assert variant["sources"] == summary["meta"]["sources"]
        assert variant["reps"] == summary["meta"]["initial_task_reps"] == 1
        assert _is_number(variant["median_ratio"]) and variant["median_ratio"] > 0

        resume = summary["resume"][executor]
        assert _is_number(resume["redo_fraction"]) and 0.0 <= resume["redo_fraction"] <= 1.0
        assert resume["redone_of_completed_sources"] == 0, resume
        assert len(resume["points"]) == len(summary["meta"]["kill_points"]) * len(summary["meta"]["kill_by"])
        for point in resume["points"]:
            assert 0 <= point["redone"] <= point["outputs_before"] <= 2 * resume["sources"]
            assert _is_number(point["resume_s"]) and point["resume_s"] > 0
            if point["kill_by"] == "outputs":  # --quick kills once half of the outputs exist
                assert point["outputs_before"] >= point["kill_fraction"] * 2 * resume["sources"]

        messages = summary["messages"][executor]
        assert [m["sources"] for m in messages["sizes"]] == summary["meta"]["growth_sizes"]
        for size in messages["sizes"]:
            # Every terminal task reaches the ledger, in fewer calls than tasks x stages.
            assert size["terminal_tasks"] == 2 * size["sources"]
            assert size["reports_sent"] == size["terminal_tasks"]
            assert 1 <= size["ledger_calls"] < size["task_stage_visits"]

    ledger = summary["ledger"]
    for key in ("reports_per_s", "load_1m_completed_s", "bytes_per_inflight_source"):
        assert _is_number(ledger[key]) and ledger[key] > 0, (key, ledger)

    if FULL:
        remote = summary["remote"]  # benchmarks.remote: the checkpoint on a local S3 server against local disk
        assert {t["location"] for t in remote["throughput"]} == {"local", "s3"}
        assert all(_is_number(t["reports_per_s"]) for t in remote["throughput"]), remote["throughput"]
        assert all(_is_number(remote["load"][m]["open_from_snapshot_s"]) for m in ("local", "s3")), remote["load"]
        assert all(_is_number(o["s3_over_local"]["median"]) for o in remote["overhead"].values()), remote["overhead"]

        upstream = summary["upstream"]  # benchmarks.upstream: upstream's workload on a cluster started beforehand
        for executor in EXECUTORS:
            ours = upstream["executors"][executor]["ours"]
            assert len(ours["runs"]) == 2 * summary["meta"]["upstream_reps"]
            assert all(r["files"] == 2 * upstream["sources"] for r in ours["runs"]), ours["runs"]
            assert all(r["completed_sources"] == upstream["sources"] for r in ours["runs"] if r["checkpoint"])
            assert _is_number(ours["ratio"]["median"]) and ours["ratio"]["median"] > 0
            assert _is_number(ours["first_work_delta_s"]), ours
            assert all(_is_number(r["driver_cpu_s"]) and r["driver_cpu_s"] > 0 for r in ours["runs"]), ours["runs"]
            assert _is_number(ours["driver_cpu_delta_s"]), ours
    scale = summary["scale"]  # benchmarks.scale: a checkpoint of --scale-sources completed sources (quick size)
    assert scale["completed_sources"] == summary["meta"]["scale_sources"]
    for mode in ("from_segments", "from_snapshot"):
        measured = scale[mode]
        for key in ("startup_s", "preflight_s", "open_s", "rss_delta_bytes", "peak_rss_bytes", "lookup_s"):
            assert _is_number(measured[key]), (mode, key, measured)
        assert measured["completed_sources"] == measured["looked_up_ids"] == scale["completed_sources"]
        assert measured["lookup_complete_ids"] == scale["completed_sources"] // 2

    if FULL:
        dedup = summary["dedup"]  # benchmarks.dedup: exact deduplication, with and without a checkpoint, and a resume
        assert dedup["duplicates"] > 0
        for executor in EXECUTORS:
            measured = dedup["executors"][executor]
            assert _is_number(measured["median_pair_ratio"]) and measured["median_pair_ratio"] > 0, measured
            assert _is_number(measured["resume_fraction"]) and measured["resume_fraction"] > 0, measured
            assert [s["name"] for s in measured["segments_at_kill"]] in ([], ["hash", "identify", "remove"])

    table = (out / "summary.md").read_text()
    for heading in (
        "Checkpoint overhead",
        "Sources passed as initial tasks",
        "Resume efficiency",
        "Ledger",
        "Messages to the ledger",
        "Scale of the ledger",
        *(["Checkpoint on object storage", "Upstream's workload, side by side", "Exact deduplication"] if FULL else []),
    ):
        assert heading in table
    for executor in EXECUTORS:
        assert f"| {executor} |" in table
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "matplotlib is not installed" in table
    else:
        for name in ("overhead_ratio.png", "growth.png", "resume.png", "messages.png"):
            data = (out / name).read_bytes()
            assert data.startswith(b"\x89PNG"), name
        assert set(summary["plots"].values()) == {"overhead_ratio.png", "growth.png", "resume.png", "messages.png"}
