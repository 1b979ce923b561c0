"""Write the benchmark results: ``summary.json``, ``summary.md`` (markdown tables) and PNG plots.

Plots need matplotlib (the optional ``bench`` extra: ``pip install -e .[bench]``). It is imported
only here, lazily; without it the plots are skipped and ``summary.md`` says so.

``python -m benchmarks.report DIR [--results-md PATH]`` renders the tables and plots again from
``DIR/summary.json`` (e.g. after a change of this module), without measuring anything.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

#: Targets of the issue, shown next to the numbers.
TARGET_MEDIAN_RATIO = 1.02
TARGET_REDO_FRACTION = 0.05
TARGET_REPORTS_PER_S = 200_000
TARGET_LOAD_1M_S = 2.0

PLOTS = {
    "overhead": "overhead_ratio.png",
    "growth": "growth.png",
    "resume": "resume.png",
    "messages": "messages.png",
}


def write_json(summary: dict[str, Any], out: Path) -> Path:
    """Write ``summary.json`` atomically (a partial summary is rewritten after every section)."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "summary.json"
    tmp = out / ".summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2, sort_keys=False, default=str) + "\n")
    os.replace(tmp, path)
    return path


def _f(value: Any, fmt: str = "{:.3f}") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, int | float):
        return fmt.format(value)
    return str(value)


def _errors(section: dict[str, Any]) -> list[str]:
    return [
        f"- `{name}`: {entry['error']}"
        for name, entry in section.items()
        if isinstance(entry, dict) and "error" in entry
    ]


def markdown(summary: dict[str, Any], plots_note: str | None = None) -> str:
    """The results as markdown tables (also used for ``benchmarks/RESULTS.md``)."""
    meta = summary.get("meta", {})
    lines = [
        "# Benchmark results",
        "",
        f"Run {meta.get('started', '?')} on {meta.get('cpus', '?')} CPUs "
        f"({'quick' if meta.get('quick') else 'full'} suite, {meta.get('duration_s', 0):.0f} s; "
        f"1-minute load average {meta.get('load_average_start', '?')} at the start, "
        f"{meta.get('load_average_end', '?')} at the end), commit {meta.get('commit') or 'unknown'}. "
        f"Command: `{meta.get('command', 'python -m benchmarks')}`.",
        "",
        "Workload B1: a source of N sources, a 1:1 map with "
        f"{meta.get('work_ms', 1.0):g} ms of CPU per task, a 1-to-3 fan-out that filters one child in three, "
        "a sink writing one small file per task (temp file + rename"
        f"{', fsync' if meta.get('sink_fsync') else ', no fsync'}); stages after the source take batches of "
        f"{meta.get('batch_size', '?')} tasks.",
        "",
    ]
    overhead = summary.get("overhead", {})
    if overhead:
        lines += [
            "## Checkpoint overhead (wall time of `pipeline.run`, with / without checkpoint)",
            "",
            f"Target: median ratio <= {TARGET_MEDIAN_RATIO}. Pairs of runs alternate (ABBA) in one session on one Ray. "
            "The CPU ratio compares the CPU time the whole machine spent during each run of a pair (all processes, "
            "Ray's included); *stolen* is the CPU time the hypervisor took from this machine during a run.",
            "",
            "| executor | sources | pairs | median ratio | min | max | median without (s) | median with (s) "
            "| ledger open (s) | ledger close (s) | median CPU ratio | stolen per run (s) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name, o in overhead.items():
            if "error" in o:
                continue
            lines.append(
                f"| {name} | {o['sources']} | {o['reps']} | {_f(o['median_ratio'])} | {_f(o['min_ratio'])} "
                f"| {_f(o['max_ratio'])} | {_f(o['median_without_s'], '{:.2f}')} | {_f(o['median_with_s'], '{:.2f}')} "
                f"| {_f(o.get('median_ledger_open_s'), '{:.2f}')} | {_f(o.get('median_ledger_close_s'), '{:.2f}')} "
                f"| {_f(o.get('median_cpu_ratio'))} | {_f(o.get('median_steal_s'), '{:.2f}')} |"
            )
        lines += _errors(overhead)
        lines += [
            "",
            "### Growth curve",
            "",
            "| executor | sources | pairs | without (s) | with (s) | ratio |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for name, o in overhead.items():
            for g in o.get("growth", []):
                lines.append(
                    f"| {name} | {g['sources']} | {g['reps']} | {_f(g['median_without_s'], '{:.2f}')} "
                    f"| {_f(g['median_with_s'], '{:.2f}')} | {_f(g['median_ratio'])} |"
                )
        variants = {name: o["initial_tasks"] for name, o in overhead.items() if o.get("initial_tasks")}
        if variants:
            lines += [
                "",
                "### Sources passed as initial tasks",
                "",
                "B1 without its source stage: `pipeline.run(executor, initial_tasks=[...])` gets the sources "
                "themselves, as users with pre-built tasks do.",
                "",
                "| executor | sources | pairs | without (s) | with (s) | ratio | min | max |",
                "|---|---:|---:|---:|---:|---:|---:|---:|",
            ]
            for name, v in variants.items():
                lines.append(
                    f"| {name} | {v['sources']} | {v['reps']} | {_f(v['median_without_s'], '{:.2f}')} "
                    f"| {_f(v['median_with_s'], '{:.2f}')} | {_f(v['median_ratio'])} | {_f(v['min_ratio'])} "
                    f"| {_f(v['max_ratio'])} |"
                )
        lines.append("")
    resume = summary.get("resume", {})
    if resume:
        lines += [
            "## Resume efficiency (SIGKILL of the run's whole process tree, then resume)",
            "",
            f"Target: at most {TARGET_REDO_FRACTION:.0%} of already-written outputs redone. T = a full checkpointed "
            "run (median of the overhead section). The killed run is a subprocess with its own Ray (warmed up by "
            "a small untimed run), killed at a fraction of T after it called `pipeline.run`, or once a fraction "
            "of its outputs exist; the resume runs in the benchmark process. *Redone* = outputs on disk at the "
            "kill that the resume wrote again.",
            "",
            "| executor | kill at | killed after (s) | outputs on disk | sources complete | redone "
            "| redo fraction | resume / T | (kill + resume) / T |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name, r in resume.items():
            if "error" in r:
                continue
            for p in r["points"]:
                unit = "of T" if p.get("kill_by", "time") == "time" else "of outputs"
                lines.append(
                    f"| {name} | {p['kill_fraction']:.0%} {unit} | {_f(p['kill_after_s'], '{:.2f}')} "
                    f"| {p['outputs_before']} ({p['progress_at_kill']:.0%}) | {p['completed_sources_before']} "
                    f"| {p['redone']} | {p['redo_fraction']:.2%} | {_f(p['resume_relative'], '{:.2f}')} "
                    f"| {_f(p['total_relative'], '{:.2f}')} |"
                )
        lines += [
            "",
            "| executor | T (s) | pooled redo fraction | max redo fraction | redone outputs of complete sources |",
            "|---|---:|---:|---:|---:|",
        ]
        for name, r in resume.items():
            if "error" in r:
                continue
            lines.append(
                f"| {name} | {_f(r['full_run_s'], '{:.2f}')} | {r['redo_fraction']:.2%} | {r['max_redo_fraction']:.2%} "
                f"| {r['redone_of_completed_sources']} |"
            )
        lines += _errors(resume)
        lines.append("")
    ledger = summary.get("ledger", {})
    if ledger:
        lines += ["## Ledger", ""]
        if "error" in ledger:
            lines.append(f"Error: {ledger['error']}")
        else:
            lines += [
                "| measure | value | target |",
                "|---|---:|---:|",
                f"| reports applied per second (batched, incl. LMDB commit) | {ledger['reports_per_s']:,.0f} "
                f"| >= {TARGET_REPORTS_PER_S:,} |",
                f"| start-up load of {ledger.get('load_completed_sources', 1_000_000):,} completed sources (s) "
                f"| {ledger['load_1m_completed_s']:.2f} | <= {TARGET_LOAD_1M_S} (1M) |",
                f"| memory per in-flight source (bytes) | {ledger.get('bytes_per_inflight_source', 0):,.0f} | |",
            ]
            for m in ledger.get("completed_memory", []):
                lines.append(
                    f"| memory after {m['sources']:,} sources of {m['tasks_per_source']:,} outputs completed, digest "
                    f"budget {m['digest_budget']:,} B (bytes; digests at 64/32/16 bits: "
                    f"{'/'.join(str(v) for v in m['digest_widths'].values())}) | {m['bytes']:,.0f} | <= budget + "
                    "~100 B per source |"
                )
        lines.append("")
    messages = summary.get("messages", {})
    if messages:
        lines += [
            "## Messages to the ledger",
            "",
            "Report calls per checkpointed run (median over the run's repetitions) against terminal tasks and "
            "tasks x stages (what a per-task, per-stage report would cost).",
            "",
            "| executor | sources | ledger report calls | on_terminal batches | terminal tasks | tasks x stages "
            "| calls / (tasks x stages) |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for name, m in messages.items():
            if "error" in m:
                continue
            for s in m["sizes"]:
                lines.append(
                    f"| {name} | {s['sources']} | {s['ledger_calls']:g} | {s['on_terminal_calls']:g} "
                    f"| {s['terminal_tasks']:g} | {s['task_stage_visits']} | {s['calls_per_task_stage']:.4f} |"
                )
        lines += _errors(messages)
        lines.append("")
    if summary.get("remote"):
        from benchmarks.remote import markdown_lines

        lines += markdown_lines(summary["remote"])
    if summary.get("upstream"):
        if "error" in summary["upstream"]:
            lines += ["## Upstream's workload, side by side", "", f"error: {summary['upstream']['error']}", ""]
        else:
            from benchmarks.upstream import markdown_lines as upstream_lines

            lines += upstream_lines(summary["upstream"])
    if summary.get("scale"):
        from benchmarks.scale import markdown_lines as scale_lines

        lines += scale_lines(summary["scale"])
    if summary.get("dedup"):
        from benchmarks.dedup import markdown_lines as dedup_lines

        lines += dedup_lines(summary["dedup"])
    plots = summary.get("plots", {})
    lines += ["## Plots", ""]
    if plots_note:
        lines.append(plots_note)
    if plots:
        lines.append(f"PNG files in `{meta.get('out', 'the results directory')}`:")
    for title, name in plots.items():
        lines.append(f"- {title}: `{name}`")
    lines.append("")
    return "\n".join(lines)


def write_markdown(summary: dict[str, Any], out: Path, plots_note: str | None = None) -> Path:
    path = out / "summary.md"
    path.write_text(markdown(summary, plots_note))
    return path


# -- plots --------------------------------------------------------------------------------------


def write_plots(summary: dict[str, Any], out: Path) -> tuple[dict[str, str], str | None]:
    """PNG plots; returns ``({title: file name}, note)``, the note explaining skipped plots."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return {}, "Plots skipped: matplotlib is not installed (`pip install -e .[bench]`)."
    written: dict[str, str] = {}
    overhead = {k: v for k, v in summary.get("overhead", {}).items() if "error" not in v}
    resume = {k: v for k, v in summary.get("resume", {}).items() if "error" not in v}
    messages = {k: v for k, v in summary.get("messages", {}).items() if "error" not in v}
    if overhead:
        fig, ax = plt.subplots(figsize=(6, 4))
        names = list(overhead)
        for i, name in enumerate(names):
            o = overhead[name]
            ax.errorbar(
                [i],
                [o["median_ratio"]],
                yerr=[[o["median_ratio"] - o["min_ratio"]], [o["max_ratio"] - o["median_ratio"]]],
                fmt="o",
                capsize=8,
                markersize=8,
                label=None,
            )
            ax.scatter([i + 0.12] * len(o["ratios"]), o["ratios"], s=12, color="gray", zorder=3)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.axhline(
            TARGET_MEDIAN_RATIO, color="red", linestyle="--", linewidth=0.8, label=f"target {TARGET_MEDIAN_RATIO}"
        )
        ax.set_xticks(range(len(names)), names)
        ax.set_ylabel("wall time with / without checkpoint")
        n = next(iter(overhead.values()))["sources"]
        ax.set_title(f"Checkpoint overhead, B1, {n} sources (median, min-max, pairs)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / PLOTS["overhead"], dpi=110)
        plt.close(fig)
        written["checkpoint overhead per executor"] = PLOTS["overhead"]

        fig, axes = plt.subplots(1, len(overhead), figsize=(4 * len(overhead), 3.6), squeeze=False)
        for ax, (name, o) in zip(axes[0], overhead.items(), strict=True):
            growth = o.get("growth", [])
            xs = [g["sources"] for g in growth]
            ax.plot(xs, [g["median_without_s"] for g in growth], marker="o", label="without checkpoint")
            ax.plot(xs, [g["median_with_s"] for g in growth], marker="s", linestyle="--", label="with checkpoint")
            ax.set_title(name)
            ax.set_xlabel("sources")
            ax.set_ylim(bottom=0)
        axes[0][0].set_ylabel("wall time of pipeline.run (s)")
        axes[0][0].legend(fontsize=8)
        fig.suptitle("Growth: B1 wall time vs sources")
        fig.tight_layout()
        fig.savefig(out / PLOTS["growth"], dpi=110)
        plt.close(fig)
        written["wall time vs sources"] = PLOTS["growth"]
    if resume:
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        markers = {"time": "o", "outputs": "s"}
        for name, r in resume.items():
            color = None
            for mode in ("time", "outputs"):
                pts = sorted(
                    (p for p in r["points"] if p.get("kill_by", "time") == mode), key=lambda p: p["kill_fraction"]
                )
                if not pts:
                    continue
                xs = [100 * p["kill_fraction"] for p in pts]
                (line,) = ax.plot(
                    xs,
                    [p["resume_relative"] for p in pts],
                    marker=markers[mode],
                    linestyle="-" if mode == "time" else "--",
                    color=color,
                    label=f"{name}, kill at % of {'T' if mode == 'time' else 'outputs'}",
                )
                color = line.get_color()
        ax.plot([0, 100], [1, 0], color="gray", linestyle=":", label="ideal: only the remaining work")
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xlim(0, 100)
        ax.set_ylim(bottom=0)
        ax.set_xlabel("kill point (% of a full run's time T, or of its outputs written)")
        ax.set_ylabel("resume time / T")
        ax.set_title("Resume after SIGKILL of the process tree")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / PLOTS["resume"], dpi=110)
        plt.close(fig)
        written["resume time vs kill point"] = PLOTS["resume"]
    if messages:
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, m in messages.items():
            sizes = m["sizes"]
            ax.plot(
                [s["task_stage_visits"] for s in sizes],
                [s["ledger_calls"] for s in sizes],
                marker="o",
                label=f"{name} ledger report calls",
            )
        if messages:
            first = next(iter(messages.values()))["sizes"]
            xs = [s["task_stage_visits"] for s in first]
            ax.plot(xs, xs, color="gray", linestyle=":", label="one call per task x stage")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("tasks x stages")
        ax.set_ylabel("ledger calls per run")
        ax.set_title("Messages to the ledger")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / PLOTS["messages"], dpi=110)
        plt.close(fig)
        written["ledger calls vs tasks x stages"] = PLOTS["messages"]
    return written, None


def render(out: Path, results_md: Path | None = None) -> dict[str, Any]:
    """Write plots, ``summary.json`` (with the plot names) and ``summary.md`` for ``out/summary.json``."""
    summary = json.loads((out / "summary.json").read_text())
    plots, note = write_plots(summary, out)
    summary["plots"] = plots
    write_json(summary, out)
    write_markdown(summary, out, note)
    if results_md is not None:
        results_md.write_text(markdown(summary, note))
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="a results directory holding summary.json")
    parser.add_argument("--results-md", type=Path, help="also write the markdown tables to this file")
    args = parser.parse_args(argv)
    render(args.out, args.results_md)


if __name__ == "__main__":
    main()
