"""``python -m benchmarks [--quick] [--executors ...] --out DIR``: the benchmark suite.

Sections (see each module): ``overhead`` (checkpoint overhead on workload B1, with its growth
curve and a variant that passes the sources to ``pipeline.run`` as initial tasks), ``resume``
(SIGKILL mid-run, resume, count redone outputs), ``ledger`` (report throughput, start-up load,
memory per in-flight source; ``benchmarks.ledger``), ``messages`` (ledger calls per run, from the
overhead section's checkpointed runs), ``remote`` (the checkpoint on a local S3 server against local
disk: run overhead, durable acknowledgement, start-up load; ``benchmarks.remote``), ``upstream``
(upstream NeMo Curator's own workload on a cluster started beforehand, side by side with upstream
when ``--peer-python`` names its environment; ``benchmarks.upstream``), ``scale`` (a checkpoint
of ``--scale-sources`` completed sources, 10,000,000 by default: start-up, resident memory,
lookup of as many ids; ``benchmarks.scale``), ``dedup`` (exact deduplication of 100,000 documents with
and without a checkpoint, and its resume after a kill at 50 %; ``benchmarks.dedup``).

Writes ``DIR/summary.json`` (rewritten after every section, so a crash keeps what was
measured), ``DIR/summary.md`` and PNG plots. One local Ray is started for the whole process
and only ``pipeline.run`` is timed; the resume section's killed runs start their own Ray in a
subprocess (resumes run here). Exits with status 1 if any section failed (its entry in the
summary holds the error).

The full suite uses the issue's sizes (2,000 sources, 5 pairs, kills at 25 / 50 / 75 % of T, and
also at 25 / 50 / 75 % of the outputs written, since a short run spends its first quarter starting
up), except that the growth curve stops at 4,000 sources by default (``--growth-sizes 500 2000
8000`` for the issue's full curve; it adds about 8 minutes). ``--quick`` is a smoke run of every
section (200 sources, 1 pair plus 1 with the sources as initial tasks, no extra growth size, one
kill once half of the outputs exist, the ledger's quick mode); its numbers mean little.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loguru import logger

from benchmarks.overhead import B1Settings, OverheadResult, measure_overhead
from benchmarks.report import render, write_json
from nemo_curator.backends import registry

EXECUTORS = tuple(registry.EXECUTORS)
SECTIONS = ("overhead", "resume", "ledger", "messages", "remote", "upstream", "scale", "dedup")

#: Sizes of the full suite (the issue's) and of ``--quick`` (a smoke run: under 3 minutes on 2 CPUs).
FULL = {
    "sources": 2000,
    "reps": 5,
    # The curve is 500 / 2,000 / 8,000; 8,000 alone adds ~8 minutes on 2 CPUs (Ray Data runs
    # it in ~3 min per run), pushing the suite past 25 minutes: pass --growth-sizes 500 2000 8000 for it.
    "growth_sizes": [500, 2000, 4000],
    "growth_reps": 1,
    "initial_task_reps": 2,
    "kill_points": [0.25, 0.5, 0.75],
    "kill_by": ["time", "outputs"],
    "warmup_sources": 200,
    "child_warmup_sources": 100,
    "upstream_sources": 400,
    "upstream_reps": 5,
    "scale_sources": 10_000_000,
    "dedup_pairs": 3,
}
QUICK = {
    "sources": 200,
    "reps": 1,
    "growth_sizes": [200],  # one size: an extra one costs ~30 s, mostly xenna's fixed start-up
    "growth_reps": 1,
    "initial_task_reps": 1,
    "kill_points": [0.5],
    "kill_by": ["outputs"],
    "warmup_sources": 0,
    "child_warmup_sources": 0,
    "upstream_sources": 30,
    "upstream_reps": 1,
    "scale_sources": 200_000,
    "dedup_pairs": 1,
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, type=Path, help="results directory (created)")
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke run of every section")
    p.add_argument("--executors", nargs="+", choices=EXECUTORS, default=list(EXECUTORS))
    p.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    p.add_argument("--sources", type=int, help="sources of the overhead pairs and the resume runs")
    p.add_argument("--reps", type=int, help="pairs (with/without checkpoint) per executor, >= 1")
    p.add_argument("--growth-sizes", type=int, nargs="+", help="sizes of the growth curve")
    p.add_argument("--growth-reps", type=int, help="pairs per extra growth size")
    p.add_argument(
        "--initial-task-reps",
        type=int,
        help="pairs with the sources passed to pipeline.run as initial tasks, no source stage (0: none)",
    )
    p.add_argument("--kill-points", type=float, nargs="+", help="kill points as fractions of T, e.g. 0.25 0.5")
    p.add_argument(
        "--kill-by",
        nargs="+",
        choices=("time", "outputs"),
        help="kill points as fractions of T and/or of the run's output files (full suite: both; --quick: outputs)",
    )
    p.add_argument(
        "--child-warmup-sources",
        type=int,
        help="sources of an untimed warm-up run in each killed subprocess before its timed run (0: none)",
    )
    p.add_argument("--warmup-sources", type=int, help="size of an untimed warm-up pair per executor (0: none)")
    p.add_argument("--batch-size", type=int, default=50, help="batch size of the stages after the source")
    p.add_argument("--work-ms", type=float, default=1.0, help="CPU milliseconds per task of the map stage")
    p.add_argument("--sink-fsync", action="store_true", help="fsync every sink file before the rename")
    p.add_argument("--num-cpus", type=int, default=4, help="logical CPUs of the benchmark's local Ray")
    p.add_argument("--results-md", type=Path, help="also write the markdown tables to this file")
    p.add_argument("--upstream-sources", type=int, help="sources of upstream's workload (its issue: 400)")
    p.add_argument("--upstream-reps", type=int, help="alternating pairs of upstream's workload per executor")
    p.add_argument(
        "--peer-python",
        default=os.environ.get("NEMO_CURATOR_PEER_PYTHON"),
        help="python of upstream NeMo Curator's environment (../shared/peer/README.md): runs upstream side by side",
    )
    p.add_argument("--upstream-num-cpus", type=int, default=2, help="CPUs of the cluster started beforehand")
    p.add_argument(
        "--upstream-serving-control",
        action="store_true",
        help="on xenna, a third run per pair: ours without a checkpoint in SERVING mode (the mode's own cost)",
    )
    p.add_argument("--scale-sources", type=int, help="completed sources of the scale section (quick: 200,000)")
    p.add_argument("--dedup-pairs", type=int, help="alternating pairs of the dedup section per executor")
    args = p.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    for key, value in sizes.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.reps < 1 or args.sources < 1 or args.batch_size < 1 or args.dedup_pairs < 1:
        p.error("--reps, --sources, --batch-size and --dedup-pairs must be >= 1")
    if any(not 0.0 < f < 1.0 for f in args.kill_points):
        p.error("--kill-points must be fractions strictly between 0 and 1")
    return args


def _log_filter(record: dict[str, Any]) -> bool:
    name = record["name"] or ""
    if name.startswith("benchmarks") or name == "__main__":  # ``python -m benchmarks`` runs as __main__
        return True
    # cosmos-xenna warns about slow autoscaler rounds on a busy machine: not worth a line here.
    return record["level"].no >= (40 if name.startswith("cosmos_xenna") else 30)


def configure_logging() -> None:
    """Our progress lines at INFO; everything else (executors, Ray) at WARNING and above."""
    logger.remove()
    logger.add(
        sys.stderr,
        level="INFO",
        format="{time:HH:mm:ss} | {level: <7} | {message}",
        filter=_log_filter,
    )


def _display_path(path: Path) -> str:
    """``path`` relative to the working directory when inside it (as typed on the command line)."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for dist in ("ray", "cosmos-xenna", "lmdb", "matplotlib"):
        try:
            found[dist] = version(dist)
        except PackageNotFoundError:
            found[dist] = "not installed"
    return found


def _error(exc: BaseException) -> dict[str, Any]:
    logger.error("{}: {}\n{}", type(exc).__name__, exc, "".join(traceback.format_exception(exc)))
    return {"error": f"{type(exc).__name__}: {exc}"}


def _git_commit() -> str | None:
    """The code's commit (``+dirty`` with uncommitted changes), or ``None`` outside a git checkout."""
    repo = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def finish(summary: dict[str, Any], out: Path, results_md: Path | None) -> None:
    summary["meta"]["duration_s"] = time.time() - summary["meta"]["started_ts"]
    summary["meta"]["load_average_end"] = round(os.getloadavg()[0], 2)
    write_json(summary, out)
    render(out, results_md)


def compile_like_an_install() -> int:
    """Write the bytecode of this project's modules, as ``pip install`` does for an installed package.

    An editable install leaves the sources uncompiled, and with ``PYTHONDONTWRITEBYTECODE`` set every
    process of every run, the driver and each Ray worker, compiles each of our modules it imports
    again: tenths of a second per process, more with a checkpoint (more modules), which upstream's
    pip-installed package never pays. Returns the number of modules newly compiled (``compileall``
    writes even when ``PYTHONDONTWRITEBYTECODE`` is set; a stale file rewritten is not counted).
    """
    import compileall
    import contextlib
    import io

    root = Path(__file__).resolve().parents[1]
    packages = [root / "nemo_curator", root / "benchmarks"]

    def count() -> int:
        return sum(1 for package in packages for _ in package.glob("**/__pycache__/*.pyc"))

    before = count()
    listing = io.StringIO()
    with contextlib.redirect_stdout(listing):
        ok = all([compileall.compile_dir(package, quiet=1) for package in packages])
    if not ok:
        raise RuntimeError(f"compiling this project's modules failed:\n{listing.getvalue()}")
    return count() - before


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    work_root = out / "work"
    if "xenna" in args.executors and {"overhead", "resume"} & set(args.sections):
        import cosmos_xenna.pipelines.v1  # noqa: F401 - its import replaces loguru's sinks; do it before ours
    configure_logging()
    compiled = compile_like_an_install()
    settings = B1Settings(batch_size=args.batch_size, fsync=args.sink_fsync, work_ms=args.work_ms)
    summary: dict[str, Any] = {
        "meta": {
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
            "started_ts": time.time(),
            "command": "python -m benchmarks " + " ".join(argv if argv is not None else sys.argv[1:]),
            "out": _display_path(out),
            "quick": args.quick,
            "executors": args.executors,
            "cpus": os.cpu_count(),
            "ray_logical_cpus": args.num_cpus,
            "load_average_start": round(os.getloadavg()[0], 2),
            "bytecode_compiled": compiled,
            "versions": _versions(),
            "commit": _git_commit(),
            "sources": args.sources,
            "reps": args.reps,
            "growth_sizes": sorted(set(args.growth_sizes) | {args.sources}),
            "initial_task_reps": args.initial_task_reps,
            "kill_points": args.kill_points,
            "kill_by": args.kill_by,
            "child_warmup_sources": args.child_warmup_sources,
            "upstream_sources": args.upstream_sources,
            "upstream_reps": args.upstream_reps,
            "scale_sources": args.scale_sources,
            "batch_size": settings.batch_size,
            "sink_fsync": settings.fsync,
            "work_ms": settings.work_ms,
        },
        "overhead": {},
        "resume": {},
        "ledger": {},
        "messages": {},
        "remote": {},
        "upstream": {},
        "scale": {},
        "dedup": {},
    }
    failed = False
    if "upstream" in args.sections:  # before the suite's own Ray: its runs join clusters of their own
        from benchmarks.upstream import run_upstream_benchmark

        logger.info("upstream workload: {} sources, {} pairs", args.upstream_sources, args.upstream_reps)
        try:
            summary["upstream"] = run_upstream_benchmark(
                args.executors,
                args.upstream_sources,
                args.upstream_reps,
                work_root / "upstream",
                num_cpus=args.upstream_num_cpus,
                peer_python=args.peer_python,
                serving_control=args.upstream_serving_control,
            )
        except Exception as exc:
            failed = True
            summary["upstream"] = _error(exc)
        write_json(summary, out)
    needs_ray = {"overhead", "resume", "remote", "dedup"} & set(args.sections)
    if needs_ray:
        from nemo_curator.backends.ray_runtime import start_local_ray

        began = time.perf_counter()
        start_local_ray(num_cpus=args.num_cpus, dashboard=True)
        logger.info("benchmark Ray started in {:.1f}s ({} logical CPUs)", time.perf_counter() - began, args.num_cpus)
    try:
        overhead: dict[str, OverheadResult] = {}
        for name in args.executors:
            if "overhead" in args.sections:
                logger.info("overhead: {} ({} pairs at {} sources)", name, args.reps, args.sources)
                try:
                    result = measure_overhead(
                        name,
                        args.sources,
                        args.reps,
                        args.growth_sizes,
                        args.growth_reps,
                        work_root,
                        settings,
                        warmup_sources=args.warmup_sources,
                        initial_task_reps=args.initial_task_reps,
                    )
                    overhead[name] = result
                    summary["overhead"][name] = result.to_json()
                    logger.info(
                        "overhead: {} median ratio {:.3f} (min {:.3f}, max {:.3f})",
                        name,
                        result.summary["median_ratio"],
                        result.summary["min_ratio"],
                        result.summary["max_ratio"],
                    )
                except Exception as exc:
                    failed = True
                    summary["overhead"][name] = _error(exc)
                write_json(summary, out)
            if "resume" in args.sections:
                from benchmarks.resume import ResumeSettings, measure_resume

                logger.info("resume: {} (kill points {})", name, args.kill_points)
                try:
                    resume = ResumeSettings(
                        fractions=args.kill_points,
                        kill_by=args.kill_by,
                        num_cpus=args.num_cpus,
                        warmup_sources=args.child_warmup_sources,
                        full_run_s=overhead[name].summary["median_with_s"] if name in overhead else None,
                    )
                    summary["resume"][name] = measure_resume(name, args.sources, work_root, settings, resume)
                    logger.info("resume: {} redo fraction {:.2%}", name, summary["resume"][name]["redo_fraction"])
                except Exception as exc:
                    failed = True
                    summary["resume"][name] = _error(exc)
                write_json(summary, out)
            if "messages" in args.sections:
                from benchmarks.messages import summarize_messages

                if name in overhead:
                    summary["messages"][name] = summarize_messages(overhead[name].records)
                else:
                    summary["messages"][name] = {"error": "needs the overhead section's checkpointed runs"}
                    failed = failed or "overhead" in args.sections
        if "remote" in args.sections:  # checkpoints on a local S3 server against local disk (benchmarks.remote)
            from benchmarks.remote import run_remote_benchmark

            try:
                summary["remote"] = run_remote_benchmark(
                    args.executors, args.sources, args.reps, work_root, settings, quick=args.quick
                )
            except Exception as exc:
                failed = True
                summary["remote"] = _error(exc)
            write_json(summary, out)
        if "dedup" in args.sections:  # exact deduplication with and without a checkpoint (benchmarks.dedup)
            from benchmarks.dedup import run_dedup_benchmark

            logger.info("dedup: exact deduplication on {}", list(args.executors))
            try:
                summary["dedup"] = run_dedup_benchmark(
                    list(args.executors), work_root, quick=args.quick, pairs=args.dedup_pairs
                )
            except Exception as exc:
                failed = True
                summary["dedup"] = _error(exc)
            failed = failed or any("error" in d for d in summary["dedup"].get("executors", {}).values())
            write_json(summary, out)
    finally:
        if needs_ray:
            import ray

            ray.shutdown()
            os.environ.pop("RAY_ADDRESS", None)
    if "ledger" in args.sections:
        from benchmarks.ledger import run_ledger_benchmark

        logger.info("ledger: {} mode", "quick" if args.quick else "full")
        try:
            summary["ledger"] = run_ledger_benchmark(quick=args.quick)
            logger.info(
                "ledger: {:,.0f} reports/s, load of {:,} completed sources {:.2f}s",
                summary["ledger"]["reports_per_s"],
                summary["ledger"]["load_completed_sources"],
                summary["ledger"]["load_1m_completed_s"],
            )
        except Exception as exc:
            failed = True
            summary["ledger"] = _error(exc)
        write_json(summary, out)
    if "scale" in args.sections:  # no Ray: a fresh process opens the checkpoint (benchmarks.scale)
        from benchmarks.scale import run_scale_benchmark

        logger.info("scale: a checkpoint of {:,} completed sources", args.scale_sources)
        try:
            summary["scale"] = run_scale_benchmark(args.scale_sources, work_root / "scale")
            snap, segs = summary["scale"]["from_snapshot"], summary["scale"]["from_segments"]
            logger.info(
                "scale: start-up {:.1f} s (segments {:.1f} s), {:,.0f} MB, lookup {:.1f} s",
                snap["startup_s"],
                segs["startup_s"],
                snap["rss_delta_bytes"] / 1e6,
                snap["lookup_s"],
            )
        except Exception as exc:
            failed = True
            summary["scale"] = _error(exc)
    shutil.rmtree(work_root, ignore_errors=True)
    finish(summary, out, args.results_md)
    logger.info("results in {}", out)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
