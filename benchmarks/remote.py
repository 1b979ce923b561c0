"""Checkpoints on object storage against local disk: run overhead, durable acknowledgement, start-up load.

The object store is a real S3-protocol server on this machine (moto's standalone server in a
subprocess, ``tests.s3_server.S3Server``; ``moto[server]`` and ``s3fs`` are in the ``test``
extra) reached through s3fs, as a user reaches S3. A local server answers in about a millisecond,
so these numbers are the cost of the code path (encoding, s3fs, HTTP), not of a WAN.

- ``overhead``: B1 (as in ``benchmarks.overhead``) per executor, each rep three runs in rotating
  order: no checkpoint, a checkpoint directory on local disk, a checkpoint on S3 (a fresh prefix
  and a fresh cache dir per run). Ratios per rep: local / none, s3 / none, s3 / local.
- ``throughput``: reports per second through ``CheckpointStore.apply`` (each batch made durable
  at the location before the call returns: fsync + rename on disk, one PUT on S3), at a small and
  a large batch size, on local disk and on S3; also the milliseconds per acknowledged batch.
- ``load``: ``n`` completed sources written through the store API (segments of 100,000), then a
  fresh ``CheckpointStore.open`` with an empty cache dir, as on a new node, timed twice: while the
  writer left only segments (it died without closing) and after it closed (one snapshot). Target
  (issue 12): 1,000,000 completed sources from object storage in at most 5 s.

``python -m benchmarks --sections remote`` runs it (``--quick`` for small sizes).
"""

from __future__ import annotations

import gc
import random
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from loguru import logger

from benchmarks.ledger import _make_batches
from benchmarks.overhead import B1Settings, counting_executor, machine_cpu_seconds
from benchmarks.synthetic import commit_completed
from benchmarks.workloads import OUTPUTS_PER_SOURCE, b1_initial_tasks, b1_pipeline
from nemo_curator.backends.registry import make_executor
from nemo_curator.resumability.config import CheckpointConfig
from nemo_curator.resumability.store import CheckpointStore

#: Target of issue 12 for the start-up load of 1,000,000 completed sources from object storage.
TARGET_LOAD_1M_S = 5.0
MODES = ("none", "local", "s3")
FULL = {"throughput_sources": 40_000, "batch_sizes": [100, 5000], "load_sources": 1_000_000}
QUICK = {"throughput_sources": 4_000, "batch_sizes": [100, 2000], "load_sources": 100_000}


@contextmanager
def s3_server(root: Path) -> Iterator[Any]:
    """A running moto server (``tests.s3_server.S3Server``) for the duration of the block."""
    from tests.s3_server import S3Server, free_port

    server = S3Server(port=free_port(), log_path=root / "moto.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


class Locations:
    """Fresh checkpoint locations: directories under ``root``, prefixes in one bucket of ``server``."""

    def __init__(self, server: Any, root: Path) -> None:
        self.server = server
        self.root = root
        self.bucket = server.make_bucket()

    def new(self, mode: str, name: str) -> CheckpointConfig:
        tag = f"{name}-{uuid.uuid4().hex[:8]}"
        cache = self.root / "cache" / tag
        if mode == "local":
            return CheckpointConfig(self.root / "ckpt" / tag, cache_dir=cache)
        return CheckpointConfig(
            f"s3://{self.bucket}/{tag}", storage_options=self.server.storage_options, cache_dir=cache
        )


# -- overhead ---------------------------------------------------------------------------------------


def timed_b1(
    executor_name: str, sources: int, checkpoint: CheckpointConfig | None, work_dir: Path, settings: B1Settings
) -> dict[str, Any]:
    """One B1 run in a fresh directory: wall and machine CPU seconds, ledger open / close seconds."""
    shutil.rmtree(work_dir, ignore_errors=True)
    work_dir.mkdir(parents=True)
    cfg = settings.b1_config(sources, work_dir)
    config = settings.executor_config.get(executor_name)
    stats = None
    if checkpoint is None:
        executor = make_executor(executor_name, checkpoint=None, config=config)
    else:
        executor, stats = counting_executor(executor_name, checkpoint, config)  # type: ignore[arg-type]
    try:
        cpu_before = machine_cpu_seconds()
        start = time.perf_counter()
        outputs = b1_pipeline(cfg).run(executor, initial_tasks=b1_initial_tasks(cfg))
        seconds = time.perf_counter() - start
        cpu_after = machine_cpu_seconds()
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    if len(outputs) != OUTPUTS_PER_SOURCE * sources:
        raise RuntimeError(
            f"{executor_name}: B1 returned {len(outputs)} outputs, expected {OUTPUTS_PER_SOURCE * sources}"
        )
    cpu_s = None if cpu_before is None or cpu_after is None else cpu_after[0] - cpu_before[0]
    return {
        "seconds": seconds,
        "cpu_s": cpu_s,
        "ledger_open_s": None if stats is None else stats.open_s,
        "ledger_close_s": None if stats is None else stats.close_s,
        "ledger_calls": None if stats is None else stats.ledger_calls,
    }


def _ratios(reps: list[dict[str, dict[str, Any]]], num: str, den: str) -> list[float]:
    return [r[num]["seconds"] / r[den]["seconds"] for r in reps]


def measure_remote_overhead(
    executor_name: str, sources: int, reps: int, places: Locations, work_root: Path, settings: B1Settings
) -> dict[str, Any]:
    """``reps`` triples (none / local / s3, the order rotating by one each rep) and their ratios."""
    runs: list[dict[str, dict[str, Any]]] = []
    for rep in range(reps):
        order = MODES[rep % 3 :] + MODES[: rep % 3]
        triple: dict[str, dict[str, Any]] = {}
        for mode in order:
            checkpoint = None if mode == "none" else places.new(mode, f"{executor_name}-{rep}")
            triple[mode] = timed_b1(executor_name, sources, checkpoint, work_root / f"remote-{executor_name}", settings)
            logger.info("remote overhead {} rep {} {}: {:.2f}s", executor_name, rep, mode, triple[mode]["seconds"])
        runs.append(triple)
    out: dict[str, Any] = {"sources": sources, "reps": reps, "runs": runs}
    for num, den in (("local", "none"), ("s3", "none"), ("s3", "local")):
        ratios = _ratios(runs, num, den)
        out[f"{num}_over_{den}"] = {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}
    for mode in MODES:
        out[f"median_{mode}_s"] = statistics.median(r[mode]["seconds"] for r in runs)
    for mode in ("local", "s3"):
        out[f"median_{mode}_ledger_open_s"] = statistics.median(r[mode]["ledger_open_s"] for r in runs)
        out[f"median_{mode}_ledger_close_s"] = statistics.median(r[mode]["ledger_close_s"] for r in runs)
    return out


# -- durable acknowledgement throughput -------------------------------------------------------------


def measure_ack_throughput(checkpoint: CheckpointConfig, n_sources: int, batch_size: int) -> dict[str, Any]:
    """Reports per second through ``CheckpointStore.apply``, each batch durable before the call returns."""
    batches = _make_batches(n_sources, batch_size)
    total = sum(len(b) for b in batches)
    store = CheckpointStore.open(checkpoint, fingerprint="bench", writer_id="bench-ack")
    gc.collect()
    gc.freeze()
    try:
        start = time.perf_counter()
        for seq, batch in enumerate(batches):
            store.apply(batch, sender="bench", seq=seq)
        elapsed = time.perf_counter() - start
    finally:
        gc.unfreeze()
    status = store.status()
    segments = store.segments_written
    store.close()
    if status.completed_sources != n_sources or status.in_flight_sources != 0:
        raise RuntimeError(f"throughput benchmark ended in an unexpected state: {status}")
    return {
        "reports": total,
        "batch_size": batch_size,
        "batches": len(batches),
        "segments": segments,
        "seconds": elapsed,
        "reports_per_s": total / elapsed,
        "ms_per_batch": 1000 * elapsed / len(batches),
    }


# -- start-up load ----------------------------------------------------------------------------------


def write_completed(checkpoint: CheckpointConfig, n: int, segment: int = 100_000) -> tuple[CheckpointStore, float]:
    """A store (left open) whose writer recorded ``n`` completed sources in segments of ``segment``."""
    rng = random.Random(11)
    store = CheckpointStore.open(checkpoint, fingerprint="bench", writer_id="bench-writer")
    start = time.perf_counter()
    for begin in range(0, n, segment):
        ids = [rng.randbytes(16).hex() for _ in range(min(segment, n - begin))]
        commit_completed(store, ids)
    return store, time.perf_counter() - start


def timed_open(checkpoint: CheckpointConfig, cache_dir: Path, expected: int) -> dict[str, Any]:
    """Open ``checkpoint`` as a new run with an empty ``cache_dir``; the time until the ledger is loaded."""
    fresh = CheckpointConfig(checkpoint.path, checkpoint.storage_options, cache_dir)
    gc.collect()
    start = time.perf_counter()
    cpu_start = time.process_time()
    store = CheckpointStore.open(fresh, fingerprint="bench", writer_id=f"bench-reader-{uuid.uuid4().hex[:6]}")
    seconds = time.perf_counter() - start
    cpu = time.process_time() - cpu_start
    loaded = store.ledger.completed_count
    store.close()
    if loaded != expected:
        raise RuntimeError(f"loaded {loaded} completed sources, expected {expected}")
    return {"seconds": seconds, "cpu_s": cpu}


def measure_load(places: Locations, mode: str, n: int) -> dict[str, Any]:
    checkpoint = places.new(mode, "load")
    writer, write_s = write_completed(checkpoint, n)
    segments = timed_open(checkpoint, places.root / "cache" / f"fresh-{mode}-1", n)
    start = time.perf_counter()
    writer.close()
    close_s = time.perf_counter() - start
    snapshot = timed_open(checkpoint, places.root / "cache" / f"fresh-{mode}-2", n)
    return {
        "completed_sources": n,
        "write_s": write_s,
        "close_s": close_s,
        "open_from_segments_s": segments["seconds"],
        "open_from_snapshot_s": snapshot["seconds"],
        "open_from_snapshot_cpu_s": snapshot["cpu_s"],
    }


# -- the section ------------------------------------------------------------------------------------


def run_remote_benchmark(
    executors: list[str],
    sources: int,
    reps: int,
    work_root: Path,
    settings: B1Settings,
    *,
    quick: bool = False,
    sections: tuple[str, ...] = ("overhead", "throughput", "load"),
) -> dict[str, Any]:
    """The three measurements (see the module docstring); Ray must be running for ``overhead``."""
    sizes = QUICK if quick else FULL
    root = Path(tempfile.mkdtemp(prefix="remote-bench-", dir=work_root if work_root.is_dir() else None))
    result: dict[str, Any] = {"quick": quick}
    try:
        with s3_server(root) as server:
            places = Locations(server, root)
            if "overhead" in sections:
                result["overhead"] = {}
                # --quick (the CI smoke run) measures the fastest executor only.
                fastest = [n for n in executors if n == "ray_actor_pool"] or executors[:1]
                for name in fastest if quick else executors:
                    logger.info("remote overhead: {} ({} triples at {} sources)", name, reps, sources)
                    result["overhead"][name] = measure_remote_overhead(name, sources, reps, places, root, settings)
            if "throughput" in sections:
                result["throughput"] = []
                for batch_size in sizes["batch_sizes"]:
                    for mode in ("local", "s3"):
                        point = measure_ack_throughput(places.new(mode, "ack"), sizes["throughput_sources"], batch_size)
                        result["throughput"].append({"location": mode, **point})
                        logger.info(
                            "remote throughput {} batch {}: {:,.0f} reports/s, {:.1f} ms per batch",
                            mode,
                            batch_size,
                            point["reports_per_s"],
                            point["ms_per_batch"],
                        )
            if "load" in sections:
                result["load"] = {mode: measure_load(places, mode, sizes["load_sources"]) for mode in ("local", "s3")}
                logger.info("remote load: {}", result["load"])
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return result


def markdown_lines(remote: dict[str, Any] | None) -> list[str]:
    """The section's tables for ``summary.md`` (nothing when the section did not run)."""
    if not remote:
        return []
    lines = ["## Checkpoint on object storage (local S3 server) against local disk", ""]
    if "error" in remote:
        return [*lines, f"Error: {remote['error']}", ""]
    overhead = remote.get("overhead", {})
    if overhead:
        lines += [
            "B1, per rep one run without a checkpoint, one with it on local disk, one on S3 (rotating order); "
            "median (min - max) of the per-rep ratios of wall time.",
            "",
            "| executor | sources | reps | none (s) | local (s) | S3 (s) | local / none | S3 / none | S3 / local "
            "| ledger open local / S3 (s) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name, o in overhead.items():
            cells = [
                f"{o[k]['median']:.3f} ({o[k]['min']:.2f} - {o[k]['max']:.2f})"
                for k in ("local_over_none", "s3_over_none", "s3_over_local")
            ]
            lines.append(
                f"| {name} | {o['sources']} | {o['reps']} | {o['median_none_s']:.2f} | {o['median_local_s']:.2f} "
                f"| {o['median_s3_s']:.2f} | {' | '.join(cells)} "
                f"| {o['median_local_ledger_open_s']:.2f} / {o['median_s3_ledger_open_s']:.2f} |"
            )
        lines.append("")
    throughput = remote.get("throughput", [])
    if throughput:
        lines += [
            "Reports through `CheckpointStore.apply`, each batch durable at the location before it returns.",
            "",
            "| location | batch size | batches | reports/s | ms per acknowledged batch |",
            "|---|---:|---:|---:|---:|",
        ]
        for t in throughput:
            lines.append(
                f"| {t['location']} | {t['batch_size']:,} | {t['batches']} | {t['reports_per_s']:,.0f} "
                f"| {t['ms_per_batch']:.1f} |"
            )
        lines.append("")
    load = remote.get("load", {})
    if load:
        lines += [
            "Start-up load on a new node (empty cache dir) of completed sources written through the store.",
            "",
            "| location | completed sources | from segments (writer died) (s) | from a snapshot (writer closed) (s) "
            "| target (1M from S3) |",
            "|---|---:|---:|---:|---:|",
        ]
        for mode, d in load.items():
            lines.append(
                f"| {mode} | {d['completed_sources']:,} | {d['open_from_segments_s']:.2f} "
                f"| {d['open_from_snapshot_s']:.2f} | {f'<= {TARGET_LOAD_1M_S:g} s' if mode == 's3' else ''} |"
            )
        lines.append("")
    return lines
