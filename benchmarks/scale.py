"""Scale of the ledger (issue 13, item 5): a checkpoint of N completed sources (10,000,000 by default).

N completed sources are written synthetically through ``CheckpointStore.commit`` (segments of
100,000, each with its sources' digests, as a run writes them). Then a *fresh process* (the ledger
actor's situation: nothing loaded yet) opens the checkpoint as a new run and measures:

- ``startup_s``: from spawning the process to the answer of its first ``completed()`` lookup:
  interpreter and imports, the driver's checks (``preflight.preflight``: ``preflight_s``), the actor's
  ``CheckpointStore.open`` (``open_s``), one lookup. Here one process does what the driver and the
  ledger actor do one after the other;
- ``rss_delta_bytes``: the resident memory the loaded ledger adds to the process (``VmRSS`` after
  the open minus before it), ``peak_rss_bytes`` the process's peak (``VmHWM``) up to then;
- ``lookup_s``: ``CheckpointStore.completed`` (the body of the actor's ``completed()``, the call
  the source stage makes) on N ids in batches of 100,000, half of them complete and half not; the
  answers are checked exactly (outside the timing).

CPU times (``*_cpu_s``, of all threads) are given beside wall times: on a busy machine they are
the steadier numbers. Measured twice: while the writer has left only segments (it died without
closing) and after it closed (one snapshot). Targets (issue 13): start-up at most 10 s, resident memory at most 1 GB,
the lookup of 10,000,000 ids at most 10 s. Without Ray: a Ray actor adds its own start-up (about
a second on an idle machine) to ``startup_s``.

``python -m benchmarks --sections scale [--scale-sources N]`` runs it (``--quick``: 200,000);
``python -m benchmarks.scale [--sources N]`` prints the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from itertools import zip_longest
from pathlib import Path
from typing import Any

import numpy as np

TARGET_STARTUP_S = 10.0
TARGET_RSS_BYTES = 1_000_000_000
TARGET_LOOKUP_S = 10.0
FULL_SOURCES = 10_000_000
QUICK_SOURCES = 200_000
#: Completed sources per written segment, and ids per lookup call.
SEGMENT = 100_000
LOOKUP_BATCH = 100_000
WRITTEN_SEED = 13
FRESH_SEED = 17
FINGERPRINT = "bench-scale"


def id_chunks(n: int, seed: int, chunk: int) -> Iterator[list[str]]:
    """``n`` random framework source ids (32 hex digits) in lists of ``chunk``; the same for a seed."""
    rng = np.random.default_rng(seed)
    for begin in range(0, n, chunk):
        count = min(chunk, n - begin)
        text = rng.bytes(16 * count).hex()
        yield [text[i : i + 32] for i in range(0, 32 * count, 32)]


def write_completed(checkpoint: Any, n: int) -> tuple[Any, float]:
    """A store (left open) whose writer recorded ``n`` completed sources, one segment per ``SEGMENT``."""
    from benchmarks.synthetic import commit_completed
    from nemo_curator.resumability.store import CheckpointStore

    store = CheckpointStore.open(checkpoint, fingerprint=FINGERPRINT, writer_id="scale-writer")
    start = time.perf_counter()
    for ids in id_chunks(n, WRITTEN_SEED, SEGMENT):
        commit_completed(store, ids)
    return store, time.perf_counter() - start


def _proc_status() -> dict[str, int]:
    """``VmRSS`` and ``VmHWM`` of this process in bytes (empty off Linux)."""
    out: dict[str, int] = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                out[name] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return out


def measure_in_this_process(path: Path, cache_dir: Path, n: int, spawned_at: float) -> dict[str, Any]:
    """The child's side: open ``path`` as a new run, look ``n`` ids up; ``spawned_at`` is the parent's clock."""
    import gc

    from nemo_curator.resumability.config import CheckpointConfig
    from nemo_curator.resumability.heap import map_large_buffers
    from nemo_curator.resumability.preflight import preflight
    from nemo_curator.resumability.store import CheckpointStore

    map_large_buffers()  # as the ledger actor does before its load
    imported = time.time()
    gc.collect()
    before = _proc_status()
    config = CheckpointConfig(path, cache_dir=cache_dir)
    start, cpu = time.perf_counter(), time.process_time()
    preflight(config, FINGERPRINT)
    preflight_s, preflight_cpu_s = time.perf_counter() - start, time.process_time() - cpu
    start, cpu = time.perf_counter(), time.process_time()
    store = CheckpointStore.open(config, fingerprint=FINGERPRINT, writer_id="scale-reader")
    open_s, open_cpu_s = time.perf_counter() - start, time.process_time() - cpu
    first = next(id_chunks(1, WRITTEN_SEED, 1))
    answered = store.completed(first)
    first_answer = time.time()
    if answered != first:
        raise RuntimeError(f"the first written source {first} is not complete after the open")
    gc.collect()
    after = _proc_status()
    loaded = store.ledger.completed_count
    if loaded != n:
        raise RuntimeError(f"loaded {loaded} completed sources, expected {n}")
    half = n // 2
    lookup_s = lookup_cpu_s = 0.0
    found = looked_up = 0
    written = id_chunks(half, WRITTEN_SEED, LOOKUP_BATCH // 2)
    fresh = id_chunks(n - half, FRESH_SEED, LOOKUP_BATCH // 2)
    for done_part, fresh_part in zip_longest(written, fresh, fillvalue=[]):
        batch = done_part + fresh_part
        start, cpu = time.perf_counter(), time.process_time()
        done = store.completed(batch)
        lookup_s += time.perf_counter() - start
        lookup_cpu_s += time.process_time() - cpu
        if len(done) != len(done_part) or set(done) != set(done_part):
            raise RuntimeError("the lookup did not answer exactly the ids that were written as complete")
        found += len(done)
        looked_up += len(batch)
    store.close()
    return {
        "completed_sources": loaded,
        "import_s": imported - spawned_at,
        "preflight_s": preflight_s,
        "preflight_cpu_s": preflight_cpu_s,
        "open_s": open_s,
        "open_cpu_s": open_cpu_s,
        "startup_s": first_answer - spawned_at,
        "rss_before_bytes": before.get("VmRSS"),
        "rss_after_load_bytes": after.get("VmRSS"),
        "rss_delta_bytes": after["VmRSS"] - before["VmRSS"] if "VmRSS" in after else None,
        "peak_rss_bytes": after.get("VmHWM"),
        "looked_up_ids": looked_up,
        "lookup_complete_ids": found,
        "lookup_batch": LOOKUP_BATCH,
        "lookup_s": lookup_s,
        "lookup_cpu_s": lookup_cpu_s,
    }


def measure_fresh_process(path: Path, cache_dir: Path, n: int) -> dict[str, Any]:
    """Run ``measure_in_this_process`` in a new Python process (``nice``-ness inherited)."""
    env = dict(os.environ)
    repo = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (repo, env.get("PYTHONPATH", "")) if p)
    spawned_at = time.time()
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.scale", "--child", str(path), str(cache_dir), str(n), repr(spawned_at)],
        env=env,
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"the measuring process failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def run_scale_benchmark(n: int, root: Path | None = None) -> dict[str, Any]:
    """The section: write ``n`` completed sources, then measure from segments and from a snapshot."""
    from nemo_curator.resumability.config import CheckpointConfig

    own_root = root is None
    root = Path(tempfile.mkdtemp(prefix="scale-bench-")) if root is None else root
    try:
        checkpoint = root / "ckpt"
        writer, write_s = write_completed(CheckpointConfig(checkpoint, cache_dir=root / "cache-writer"), n)
        segments = measure_fresh_process(checkpoint, root / "cache-1", n)
        segments["checkpoint_bytes"] = _dir_bytes(checkpoint)
        start = time.perf_counter()
        writer.close()
        close_s = time.perf_counter() - start
        snapshot = measure_fresh_process(checkpoint, root / "cache-2", n)
        snapshot["checkpoint_bytes"] = _dir_bytes(checkpoint)
    finally:
        if own_root:
            shutil.rmtree(root, ignore_errors=True)
    return {
        "completed_sources": n,
        "write_s": write_s,
        "close_s": close_s,
        "from_segments": segments,
        "from_snapshot": snapshot,
        "targets": {"startup_s": TARGET_STARTUP_S, "rss_bytes": TARGET_RSS_BYTES, "lookup_s": TARGET_LOOKUP_S},
    }


def markdown_lines(scale: dict[str, Any] | None) -> list[str]:
    """The section's table for ``summary.md`` (nothing when the section did not run)."""
    if not scale:
        return []
    lines = ["## Scale of the ledger", ""]
    if "error" in scale:
        return [*lines, f"Error: {scale['error']}", ""]
    n = scale["completed_sources"]
    lines += [
        f"A checkpoint of {n:,} completed sources written through the store ({scale['write_s']:.1f} s); a fresh "
        "process opens it as a new run. Start-up: process spawn to the first `completed()` answer (the driver's "
        "check and the actor's open, one after the other). Memory: resident memory the loaded ledger adds (peak "
        f"of the process in brackets). Lookup: {n:,} ids (half complete) through `CheckpointStore.completed` in "
        f"batches of {LOOKUP_BATCH:,}.",
        "",
        "| checkpoint | start-up (s) | driver check (s) | open (s) | memory (MB) | lookup (s) | size on disk (MB) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    rows = (("writer died: segments only", "from_segments"), ("writer closed: one snapshot", "from_snapshot"))
    for label, key in rows:
        d = scale[key]
        memory = f"{d['rss_delta_bytes'] / 1e6:,.0f} ({d['peak_rss_bytes'] / 1e6:,.0f})"
        lines.append(
            f"| {label} | {d['startup_s']:.2f} | {d['preflight_s']:.2f} | {d['open_s']:.2f} | {memory} "
            f"| {d['lookup_s']:.2f} | {d['checkpoint_bytes'] / 1e6:,.0f} |"
        )
    lines += [
        f"| target (10,000,000 sources) | <= {TARGET_STARTUP_S:g} | | | <= {TARGET_RSS_BYTES / 1e6:,.0f} "
        f"| <= {TARGET_LOOKUP_S:g} | |",
        "",
    ]
    return lines


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        path, cache_dir, n, spawned_at = argv[1:5]
        print(json.dumps(measure_in_this_process(Path(path), Path(cache_dir), int(n), float(spawned_at))))
        return
    p = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__.split("\n\n")[0])
    p.add_argument("--sources", type=int, default=FULL_SOURCES)
    args = p.parse_args(argv)
    print(json.dumps(run_scale_benchmark(args.sources), indent=2))


if __name__ == "__main__":
    main()
