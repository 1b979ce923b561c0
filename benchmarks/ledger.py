"""Ledger benchmark: report throughput with LMDB commits, start-up load, memory per in-flight source,
and memory of completed sources at 1,000 outputs per source (the digests of late-duplicate detection).

``python -m benchmarks.ledger [--quick]`` prints one JSON object. Targets (issue 3): at least
200,000 reports/s applied in batches including the LMDB commit; start-up load of a checkpoint
with 1,000,000 completed sources in at most 2 s.

Throughput workload: sources fan out in two levels into 1-8 terminal reports (about 3.7 on
average); reports are shuffled within windows of two batches of 5,000, so many sources span a
batch boundary and their partial credit is persisted and later cleared. Each batch goes through
``CheckpointStore.apply`` (ledger + one synced LMDB transaction), as in the ledger actor.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import shutil
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

from nemo_curator.resumability.digests import digests_of, fingerprints
from nemo_curator.resumability.keys import source_key
from nemo_curator.resumability.ledger import LedgerUpdate, SourceLedger, pack_credit
from nemo_curator.resumability.report import ReportBatch
from nemo_curator.resumability.store import CheckpointStore
from nemo_curator.tasks.credit import Credit

FINGERPRINT = "bench"


def _source_reports(rng: random.Random, sid: str, max_leaves: int) -> list[tuple[str, str, int, int]]:
    """The terminal reports of one source: a two-level fan-out whose credits sum to exactly 1."""
    rows: list[tuple[str, str, int, int]] = []
    top = rng.randint(1, max_leaves // 2 or 1)
    for i, part in enumerate(Credit.one().split(top)):
        width = rng.randint(1, 2)
        for j, leaf in enumerate(part.split(width)):
            rows.append((sid, f"{sid}_{i}_{j}", leaf.num, leaf.exp))
    return rows


def _make_batches(n_sources: int, batch_size: int, seed: int = 7, max_leaves: int = 8) -> list[ReportBatch]:
    """Reports of ``n_sources`` sources, locally shuffled (a window of two batches) and cut into batches."""
    rng = random.Random(seed)
    rows: list[tuple[str, str, int, int]] = []
    for _ in range(n_sources):
        rows.extend(_source_reports(rng, rng.randbytes(16).hex(), max_leaves))
    window = 2 * batch_size
    for start in range(0, len(rows), window):
        chunk = rows[start : start + window]
        rng.shuffle(chunk)
        rows[start : start + window] = chunk
    batches = []
    for start in range(0, len(rows), batch_size):
        part = rows[start : start + batch_size]
        batches.append(
            ReportBatch(
                source_ids=[r[0] for r in part],
                task_ids=[r[1] for r in part],
                nums=[r[2] for r in part],
                exps=[r[3] for r in part],
                failures={},
            )
        )
    return batches


def measure_throughput(root: Path, n_sources: int, batch_size: int = 5000) -> dict[str, Any]:
    batches = _make_batches(n_sources, batch_size)
    total = sum(len(b) for b in batches)
    directory = root / "throughput"
    store = CheckpointStore.open(directory, fingerprint=FINGERPRINT, writer_id="bench-throughput")
    # The pre-built batches stand for messages the actor receives one at a time: keep the garbage
    # collector from scanning them again and again (the actor freezes its loaded state likewise).
    gc.collect()
    gc.freeze()
    try:
        start = time.perf_counter()
        cpu_start = time.process_time()
        for seq, batch in enumerate(batches):
            store.apply(batch, sender="bench", seq=seq)
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - cpu_start
    finally:
        gc.unfreeze()
    status = store.status()
    store.close()
    if status.completed_sources != n_sources or status.in_flight_sources != 0 or status.anomalies:
        raise RuntimeError(f"benchmark ledger ended in an unexpected state: {status}")
    return {
        "reports": total,
        "sources": n_sources,
        "batch_size": batch_size,
        "batches": len(batches),
        "seconds": elapsed,
        "cpu_seconds": cpu,
        "reports_per_s": total / elapsed,
        "reports_per_cpu_s": total / cpu if cpu > 0 else None,
    }


def measure_load(root: Path, n_completed: int, write_batch: int = 100_000) -> dict[str, Any]:
    directory = root / "load"
    rng = random.Random(11)
    store = CheckpointStore.open(directory, fingerprint=FINGERPRINT, writer_id="bench-writer")
    start = time.perf_counter()
    for begin in range(0, n_completed, write_batch):
        count = min(write_batch, n_completed - begin)
        ids = [rng.randbytes(16).hex() for _ in range(count)]
        digests = digests_of(fingerprints([f"{sid}_0" for sid in ids], [pack_credit(1, 0)] * count), [1] * count)
        update = LedgerUpdate(completed=ids, completed_keys=[source_key(s) for s in ids], completed_digests=digests)
        store.commit(update)
    write_s = time.perf_counter() - start
    store.close()
    gc.collect()
    start = time.perf_counter()
    cpu_start = time.process_time()
    reopened = CheckpointStore.open(directory, fingerprint=FINGERPRINT, writer_id="bench-reader")
    load_s = time.perf_counter() - start
    load_cpu = time.process_time() - cpu_start
    loaded = reopened.ledger.completed_count
    reopened.close()
    if loaded != n_completed:
        raise RuntimeError(f"loaded {loaded} completed sources, expected {n_completed}")
    return {"completed_sources": n_completed, "load_s": load_s, "load_cpu_s": load_cpu, "write_s": write_s}


def measure_inflight_memory(n_sources: int, leaves: int = 4, reported: int = 2) -> dict[str, Any]:
    """Bytes held per in-flight source (``reported`` of its ``leaves`` reports applied)."""
    rng = random.Random(5)
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    ledger = SourceLedger()
    sids: list[str] = []
    tids: list[str] = []
    nums: list[int] = []
    exps: list[int] = []
    for _ in range(n_sources):
        sid = rng.randbytes(16).hex()
        for j, credit in enumerate(Credit.one().split(leaves)[:reported]):
            sids.append(sid)
            tids.append(f"{sid}_{j}")
            nums.append(credit.num)
            exps.append(credit.exp)
    ledger.apply_batch(ReportBatch(sids, tids, nums, exps, {}))
    del sids, tids, nums, exps
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    if ledger.in_flight_count != n_sources:
        raise RuntimeError("memory benchmark: sources did not stay in flight")
    return {"in_flight_sources": n_sources, "reported_tasks_per_source": reported, "bytes": held}


def measure_completed_memory(
    n_sources: int, tasks_per_source: int = 1000, digest_budget: int | None = None, batch_size: int = 5000
) -> dict[str, Any]:
    """Bytes the ledger holds after ``n_sources`` sources of ``tasks_per_source`` outputs each completed.

    What stays per completed source is its key in the completed set and its digest (before
    digests: its seen task ids and credits, for the most recent 16,384 sources). Reports go
    through ``SourceLedger.apply_batch`` (no store), each source's outputs in a row.
    """
    kwargs = {} if digest_budget is None else {"digest_budget": digest_budget}
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    ledger = SourceLedger(**kwargs)
    parts = Credit.one().split(tasks_per_source)
    rng = random.Random(3)
    sids: list[str] = []
    tids: list[str] = []
    nums: list[int] = []
    exps: list[int] = []
    start = time.perf_counter()
    for _ in range(n_sources):
        sid = rng.randbytes(16).hex()
        for j, credit in enumerate(parts):
            sids.append(sid)
            tids.append(f"{sid}_{j}")
            nums.append(credit.num)
            exps.append(credit.exp)
        if len(sids) >= batch_size:
            ledger.apply_batch(ReportBatch(sids, tids, nums, exps, {}))
            sids, tids, nums, exps = [], [], [], []
    if sids:
        ledger.apply_batch(ReportBatch(sids, tids, nums, exps, {}))
    elapsed = time.perf_counter() - start
    del sids, tids, nums, exps
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    if ledger.completed_count != n_sources or ledger.in_flight_count:
        raise RuntimeError("completed-memory benchmark: sources did not complete")
    window = getattr(ledger, "digests", None)
    return {
        "sources": n_sources,
        "tasks_per_source": tasks_per_source,
        "digest_budget": window.budget if window is not None else None,
        "bytes": held,
        "bytes_per_source": held / n_sources,
        "digest_bytes": window.bytes_used if window is not None else None,
        "digest_widths": window.widths() if window is not None else None,
        "sources_with_digest": ledger.recent_count,
        "seconds_traced": elapsed,
    }


def calibration_ns_per_dict_get() -> float:
    """A machine-speed yardstick: ns per ``dict.get`` in a Python loop (about 25-40 on an idle core).

    On a shared, overloaded machine every number here inflates by roughly the same factor.
    """
    table = {str(i): i for i in range(100_000)}
    keys = list(table)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        get = table.get
        for key in keys:
            get(key)
        best = min(best, time.perf_counter() - start)
    return best / len(keys) * 1e9


def run_ledger_benchmark(quick: bool = False) -> dict[str, Any]:
    """Run the three measurements; ``quick`` uses smaller sizes (the counts are in the result)."""
    root = Path(tempfile.mkdtemp(prefix="ledger-bench-", dir=os.environ.get("LEDGER_BENCH_DIR")))
    try:
        throughput = measure_throughput(root, n_sources=40_000 if quick else 250_000)
        load = measure_load(root, n_completed=100_000 if quick else 1_000_000)
        memory = measure_inflight_memory(n_sources=20_000 if quick else 100_000)
        completed_default = measure_completed_memory(n_sources=200 if quick else 2000)
        # A small budget, to show that it binds (the default binds at about 8,000 such sources).
        completed_bound = measure_completed_memory(n_sources=200 if quick else 2000, digest_budget=1 << 20)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {
        "quick": quick,
        "reports_per_s": throughput["reports_per_s"],
        "load_1m_completed_s": load["load_s"],
        "load_completed_sources": load["completed_sources"],
        "bytes_per_inflight_source": memory["bytes"] / memory["in_flight_sources"],
        "bytes_per_completed_source_1000_outputs": completed_default["bytes_per_source"],
        "completed_memory": [completed_default, completed_bound],
        "load_average_1m": os.getloadavg()[0],
        "calibration_ns_per_dict_get": calibration_ns_per_dict_get(),
        "throughput": throughput,
        "load": load,
        "memory": memory,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes (100k completed sources)")
    args = parser.parse_args(argv)
    print(json.dumps(run_ledger_benchmark(quick=args.quick), indent=2))


if __name__ == "__main__":
    main()
