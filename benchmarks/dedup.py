"""Exact deduplication (issue 14): time with and without a checkpoint, and the finish after a kill at 50 %.

The corpus: ``files`` JSONL files of ``docs_per_file`` documents (100 x 1,000 by default), of which
a fraction ``dup_rate`` (20 %) repeat the text of an earlier document (in the same file or another),
so the exact number of duplicates is known and checked after every run. Texts are about 300
characters.

Measured per executor, on the benchmark's shared Ray, only ``workflow.run`` timed:

- ``pairs`` alternating runs without and with a checkpoint (fresh output and checkpoint each; the
  order within a pair alternates too);
  the ratio of the medians and the median of the pairs' ratios;
- a kill at 50 %: the workflow runs with a checkpoint in a subprocess (its own Ray) and is
  SIGKILLed, process tree and all, at half of that subprocess's uninterrupted wall time (measured
  first); then ``workflow.run`` resumes here. ``resume_s`` against ``from_scratch_s`` (the median
  checkpointed run above) is the share of the work a kill at 50 % costs again; the segment the
  kill landed in and its progress are recorded.

``python -m benchmarks --sections dedup`` runs it (``--quick``: 10 x 300 documents, 1 pair, and the
kill once the hash segment is recorded complete instead of at 50 % of a measured run);
``python -m benchmarks.dedup --run JSON`` is the killed subprocess.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from nemo_curator.utils.processes import kill_process_tree

FULL = {"files": 100, "docs_per_file": 1000, "dup_rate": 0.2, "pairs": 3, "partitions": 16}
QUICK = {"files": 10, "docs_per_file": 300, "dup_rate": 0.2, "pairs": 1, "partitions": 4, "kill_at_barrier": True}
REPO = Path(__file__).resolve().parents[1]
_WORDS = ["data", "curation", "ray", "resume", "ledger", "shard", "token", "model", "corpus", "filter", "batch"]


def write_corpus(directory: Path, files: int, docs_per_file: int, dup_rate: float, seed: int = 14) -> int:
    """Write the corpus (see the module docstring); returns its number of duplicate documents."""
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    texts: list[str] = []
    duplicates = 0
    for f in range(files):
        lines = []
        for i in range(docs_per_file):
            if texts and rng.random() < dup_rate:
                text = texts[rng.randrange(len(texts))]
                duplicates += 1
            else:
                text = f"{len(texts)} " + " ".join(rng.choice(_WORDS) for _ in range(45))
                texts.append(text)
            lines.append(json.dumps({"id": f"{f}-{i}", "text": text}))
        (directory / f"part-{f:05d}.jsonl").write_text("\n".join(lines) + "\n")
    return duplicates


def _workflow(cfg: dict[str, Any]) -> Any:
    from nemo_curator.stages.deduplication.exact import ExactDeduplicationWorkflow

    return ExactDeduplicationWorkflow(
        input_path=cfg["input"], output_path=cfg["output"], total_nparts=cfg["partitions"], perform_removal=True
    )


def _executor(name: str, checkpoint: str | None) -> Any:
    from nemo_curator.backends.registry import make_executor

    return make_executor(name, checkpoint=checkpoint)


def _timed_run(name: str, cfg: dict[str, Any], checkpoint: str | None, expected_duplicates: int) -> float:
    shutil.rmtree(cfg["output"], ignore_errors=True)
    if checkpoint:
        shutil.rmtree(checkpoint, ignore_errors=True)
    begin = time.perf_counter()
    result = _workflow(cfg).run(_executor(name, checkpoint))
    seconds = time.perf_counter() - begin
    if result.duplicates != expected_duplicates:
        raise RuntimeError(f"{name}: {result.duplicates} duplicates found, {expected_duplicates} expected")
    return seconds


def _subprocess_run(
    name: str,
    cfg: dict[str, Any],
    checkpoint: str,
    kill_after_s: float | None,
    kill_when: Any = None,
) -> float:
    """Run the workflow in a subprocess, SIGKILLed after ``kill_after_s`` or once ``kill_when()``; its wall time."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = str(REPO)
    payload = json.dumps({**cfg, "executor": name, "checkpoint": checkpoint})
    begin = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.dedup", "--run", payload],
        cwd=REPO,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        if kill_when is not None:
            deadline = time.monotonic() + 1800
            while proc.poll() is None and not kill_when() and time.monotonic() < deadline:
                time.sleep(0.05)
            if proc.poll() is None:
                raise subprocess.TimeoutExpired(proc.args, 0)
        proc.wait(timeout=kill_after_s if kill_after_s is not None else 1800)
    except subprocess.TimeoutExpired:
        kill_process_tree(proc.pid)
        proc.wait(timeout=60)
        return time.perf_counter() - begin
    if proc.returncode != 0:
        raise RuntimeError(f"{name}: the workflow subprocess failed (exit code {proc.returncode})")
    return time.perf_counter() - begin


def measure_executor(name: str, cfg: dict[str, Any], pairs: int, expected_duplicates: int) -> dict[str, Any]:
    from nemo_curator.resumability.workflow import read_workflow_status

    ckpt = cfg["work"] + "/ckpt"
    without, with_ = [], []
    for pair in range(pairs):  # ABBA order: neither side always runs on the warmer Ray
        if pair % 2 == 0:
            without.append(_timed_run(name, cfg, None, expected_duplicates))
            with_.append(_timed_run(name, cfg, ckpt, expected_duplicates))
        else:
            with_.append(_timed_run(name, cfg, ckpt, expected_duplicates))
            without.append(_timed_run(name, cfg, None, expected_duplicates))
    shutil.rmtree(cfg["output"], ignore_errors=True)
    shutil.rmtree(ckpt, ignore_errors=True)
    if cfg.get("kill_at_barrier"):  # --quick: no uninterrupted subprocess run, a kill once hashing is done
        full_subprocess_s = float("nan")
        _subprocess_run(name, cfg, ckpt, None, kill_when=lambda: os.path.exists(f"{ckpt}/workflow/done-0-hash.json"))
    else:
        full_subprocess_s = _subprocess_run(name, cfg, ckpt, None)
        shutil.rmtree(cfg["output"], ignore_errors=True)
        shutil.rmtree(ckpt, ignore_errors=True)
        _subprocess_run(name, cfg, ckpt, full_subprocess_s * 0.5)
    at_kill = read_workflow_status(ckpt)
    begin = time.perf_counter()
    result = _workflow(cfg).run(_executor(name, ckpt))
    resume_s = time.perf_counter() - begin
    if result.duplicates != expected_duplicates:
        raise RuntimeError(f"{name}: after the resume {result.duplicates} duplicates, {expected_duplicates} expected")
    scratch = statistics.median(with_)
    return {
        "without_s": without,
        "with_s": with_,
        "median_without_s": statistics.median(without),
        "median_with_s": scratch,
        "ratio_of_medians": scratch / statistics.median(without),
        "median_pair_ratio": statistics.median(w / wo for w, wo in zip(with_, without, strict=True)),
        "killed_at_s": None if cfg.get("kill_at_barrier") else full_subprocess_s * 0.5,
        "subprocess_full_s": None if cfg.get("kill_at_barrier") else full_subprocess_s,
        "segments_at_kill": [] if at_kill is None else at_kill["segments"],
        "resume_s": resume_s,
        "from_scratch_s": scratch,
        "resume_fraction": resume_s / scratch,
    }


def run_dedup_benchmark(
    executors: list[str], work_root: Path, quick: bool = False, pairs: int | None = None
) -> dict[str, Any]:
    """The section (see the module docstring); needs a connected Ray. ``pairs`` overrides the size's."""
    sizes = QUICK if quick else FULL
    pairs = sizes["pairs"] if pairs is None else pairs
    work = work_root / "dedup"
    shutil.rmtree(work, ignore_errors=True)
    duplicates = write_corpus(work / "in", sizes["files"], sizes["docs_per_file"], sizes["dup_rate"])
    cfg = {
        "input": str(work / "in"),
        "output": str(work / "out"),
        "work": str(work),
        "partitions": sizes["partitions"],
        "kill_at_barrier": bool(sizes.get("kill_at_barrier")),
    }
    out: dict[str, Any] = {
        "documents": sizes["files"] * sizes["docs_per_file"],
        "files": sizes["files"],
        "duplicates": duplicates,
        "partitions": sizes["partitions"],
        "executors": {},
    }
    for name in executors:
        try:
            out["executors"][name] = measure_executor(name, cfg, pairs, duplicates)
        except Exception as exc:
            out["executors"][name] = {"error": f"{type(exc).__name__}: {exc}"}
    shutil.rmtree(work, ignore_errors=True)
    return out


def _segment_progress(segments: list[dict[str, Any]]) -> str:
    if not segments:
        return "nothing recorded"
    parts = []
    for s in segments:
        state = "done" if s["complete"] else f"{s['completed_sources']}/{s['sources']}"
        parts.append(f"{s['name']} {state}")
    return ", ".join(parts)


def markdown_lines(section: dict[str, Any] | None) -> list[str]:
    """The section's table for ``summary.md`` (nothing when it did not run)."""
    if not section:
        return []
    lines = ["## Exact deduplication", ""]
    if "error" in section:
        return [*lines, f"Error: {section['error']}", ""]
    lines += [
        f"{section['documents']:,} documents in {section['files']} files, {section['duplicates']:,} exact duplicates, "
        f"{section['partitions']} hash partitions. Resume: killed (SIGKILL, whole process tree) "
        + (
            "once the hash segment was recorded complete (--quick)"
            if section.get("kill_at_barrier")
            else "at half of an uninterrupted subprocess run's wall time"
        )
        + ", then resumed; `resume / scratch` is the resume's time over a checkpointed run from scratch.",
        "",
        "| executor | without (s) | with (s) | ratio of medians | median pair ratio | resume (s) | resume / scratch "
        "| at the kill |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, d in section["executors"].items():
        if "error" in d:
            lines.append(f"| {name} | error: {d['error']} | | | | | | |")
            continue
        lines.append(
            f"| {name} | {d['median_without_s']:.1f} | {d['median_with_s']:.1f} | {d['ratio_of_medians']:.3f} "
            f"| {d['median_pair_ratio']:.3f} | {d['resume_s']:.1f} | {d['resume_fraction']:.2f} "
            f"| {_segment_progress(d['segments_at_kill'])} |"
        )
    lines.append("")
    return lines


def _run_child(payload: str) -> None:
    cfg = json.loads(payload)
    _workflow(cfg).run(_executor(cfg["executor"], cfg["checkpoint"]))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--run":
        _run_child(sys.argv[2])
    else:
        sys.exit("usage: python -m benchmarks.dedup --run JSON (or: python -m benchmarks --sections dedup)")
