"""Several driver processes share one checkpoint directory (SLURM array tasks), each with its own prefix."""

from __future__ import annotations

import multiprocessing
import shutil
import subprocess
import sys
import time
from pathlib import Path

from nemo_curator.resumability.durable import read_checkpoint
from nemo_curator.resumability.inspect import checkpoint_status
from nemo_curator.resumability.location import LocalLocation
from nemo_curator.resumability.objects import decode_header, encode_header
from nemo_curator.resumability.report import Report
from nemo_curator.resumability.store import CheckpointStore
from nemo_curator.tasks.credit import Credit
from tests.resumability.multiwriter_worker import run_writer, writer_sources

WRITERS = 4
OWN = 600
SHARED = 150


def test_concurrent_writers_never_corrupt_each_other_and_see_each_others_work(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(WRITERS)
    queue = ctx.Queue()
    processes = [
        ctx.Process(target=run_writer, args=(str(tmp_path), i, OWN, SHARED, 1000 + i, barrier, queue))
        for i in range(WRITERS)
    ]
    for process in processes:
        process.start()
    # Read the directory while the writers write it: every snapshot is consistent and progress only grows.
    seen = 0
    polls = 0
    deadline = time.monotonic() + 120
    while any(p.is_alive() for p in processes) and time.monotonic() < deadline:
        if (tmp_path / "ledger").is_dir():
            status = checkpoint_status(tmp_path, include_ids=False)
            assert status["completed_sources"] >= seen
            seen = status["completed_sources"]
            polls += 1
        time.sleep(0.005)
    by_index = dict(queue.get(timeout=30) for _ in processes)
    for process in processes:
        process.join(timeout=30)
        assert process.exitcode == 0
    results = [by_index[i] for i in range(WRITERS)]
    assert all("error" not in r for r in results), results
    assert polls > 0
    # The writers really wrote at the same time.
    assert max(r["start"] for r in results) < min(r["end"] for r in results)
    for result in results:
        assert result["completed"] + result["skipped"] == OWN + SHARED
        assert result["skipped"] <= SHARED and result["in_flight"] == 0

    expected = {sid for i in range(WRITERS) for sid in writer_sources(i, OWN, SHARED)}
    status = checkpoint_status(tmp_path)
    assert set(status["completed"]) == expected
    assert status["completed_sources"] == WRITERS * OWN + SHARED
    assert status["failed_sources"] == 0 and status["in_flight_sources"] == 0
    assert sorted(w["writer_id"] for w in status["writers"]) == [f"writer-{i}" for i in range(WRITERS)]
    by_writer = {f"writer-{i}": r["completed"] for i, r in enumerate(results)}
    assert {w["writer_id"]: w["completed"] for w in status["writers"]} == by_writer
    assert all(w["closed"] for w in status["writers"])

    read = read_checkpoint(LocalLocation(tmp_path), recent_limit=16)
    for writer_id, header in read.headers.items():
        assert header.fingerprint == "multi"
        assert len(read.states[writer_id].completed) == by_writer[writer_id]
    # Logical start stamps: every writer started from what it read, so all stamps are distinct per writer.
    assert len({h.start_stamp for h in read.headers.values()}) >= 1

    # A later run sees what every writer completed.
    with CheckpointStore.open(tmp_path, fingerprint="multi", writer_id="later") as later:
        assert later.ledger.completed_count == len(expected)
        assert later.status().other_writers == WRITERS


MANY_WRITERS_CODE = """
import resource, sys
from nemo_curator.resumability.inspect import checkpoint_status
from nemo_curator.resumability.store import CheckpointStore
resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
with CheckpointStore.open(sys.argv[1], fingerprint="many", writer_id="newest") as store:
    print(store.ledger.completed_count, store.status().other_writers)
print(checkpoint_status(sys.argv[1], include_ids=False)["completed_sources"])
"""


def test_a_directory_with_hundreds_of_runs_loads_with_few_file_descriptors(tmp_path: Path) -> None:
    """Start-up reads every run's objects; with 64 file descriptors, 150 runs must still load."""
    distinct, copies = 10, 15
    for i in range(distinct):
        with CheckpointStore.open(tmp_path, fingerprint="many", writer_id=f"run-{i:03d}") as store:
            sid = f"{i:032x}"
            store.apply([Report(sid, sid, Credit.one())])
    ledger = tmp_path / "ledger"
    for i in range(distinct):  # more runs that recorded the same
        for j in range(1, copies):
            copy = ledger / f"run-{i:03d}-copy{j:02d}"
            shutil.copytree(ledger / f"run-{i:03d}", copy)
            for path in copy.glob("header-*.rec"):
                header = decode_header(path.read_bytes(), str(path))
                header.writer_id = copy.name
                path.write_bytes(encode_header(header))
    runs = distinct * copies
    result = subprocess.run(
        [sys.executable, "-c", MANY_WRITERS_CODE, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == [str(distinct), str(runs), str(distinct)]
