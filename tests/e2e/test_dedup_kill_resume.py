"""SIGKILL a checkpointed exact deduplication at each step, resume it, and compare with the expected output.

Real Ray, real cosmos-xenna, real LMDB. The killed run is a subprocess with a Ray of its own
(``tests/e2e/dedup_job.py``), its whole process tree SIGKILLed; the resume runs in this process
on the session's Ray with the same checkpoint. Kill points: inside ``hash`` (some groups
complete), at the barrier (``hash`` recorded complete, nothing of ``identify`` yet), inside
``identify`` and inside ``remove``. Inside ``remove`` (the kill that proves the most: two
complete segments, a writer's resume) runs on every executor; the others on the fastest, on
all with ``NEMO_CURATOR_E2E_ALL=1`` (``tests/e2e/matrix.py``).

After the resume, each case checks that:
- the deduplicated files and their records equal the expected ones (the first of each text in
  input order), and no hidden temp file is left anywhere under the output;
- segments complete before the kill were skipped: their ``done`` record, their outputs
  (inode and mtime_ns) and their ledger's runs are untouched;
- in the killed segment, the outputs of the sources recorded complete before the kill are
  untouched.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from nemo_curator.resumability.errors import CheckpointError
from nemo_curator.resumability.inspect import checkpoint_status, read_checkpoint_status
from nemo_curator.resumability.workflow import read_workflow_status
from nemo_curator.stages.text.io.temp_files import writer_identity
from tests.e2e import dedup_job, matrix
from tests.e2e.test_kill_resume import kill_when, start_job

FILES = 16
DOCS = 20
NPARTS = 5
#: Seconds per document in the segment a case kills (none elsewhere, none in the resume). Ray
#: Data and xenna take seconds on 2 cores to start a segment's workers, and Ray Data reports
#: completions a pack of tasks at a time: their slow segment must outlast that, or every source
#: is done before the first is recorded and no kill lands inside the segment.
SLOW_S = {"ray_actor_pool": 0.02, "ray_data": 0.1, "xenna": 0.1}

Status = list[dict[str, Any]]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One input corpus for every case (never written to, so its pinned mtimes stay)."""
    input_dir = str(tmp_path_factory.mktemp("dedup-corpus") / "in")
    dedup_job.write_corpus(input_dir, FILES, DOCS)
    return input_dir


def segment_status(cfg: dict[str, Any]) -> Status | None:
    """``read_workflow_status(...)["segments"]``; ``None`` while the job has not recorded its plan."""
    if not os.path.exists(os.path.join(cfg["checkpoint"], "workflow", "plan.json")):
        return None
    status = read_workflow_status(cfg["checkpoint"])
    return None if status is None else status["segments"]


def segment_checkpoint(cfg: dict[str, Any], index: int) -> str:
    return os.path.join(cfg["checkpoint"], "segments", f"{index}-{dedup_job.SEGMENTS[index]}")


def completed_in(index: int, at_least: int) -> Callable[[dict[str, Any]], bool]:
    """Whether segment ``index`` has ``at_least`` sources recorded complete (reads that segment's ledger only)."""

    def reached(cfg: dict[str, Any]) -> bool:
        checkpoint = segment_checkpoint(cfg, index)
        if not os.path.isdir(os.path.join(checkpoint, "ledger")):
            return False
        try:
            return read_checkpoint_status(checkpoint, include_ids=False).completed_sources >= at_least
        except CheckpointError:  # a record being written while we read; the next poll sees it
            return False

    return reached


def segment_done(index: int) -> Callable[[dict[str, Any]], bool]:
    name = f"done-{index}-{dedup_job.SEGMENTS[index]}.json"
    return lambda cfg: os.path.exists(os.path.join(cfg["checkpoint"], "workflow", name))


#: Kill point -> (the segment that is slow, when to kill, the index of the first segment the resume runs).
KILL_POINTS: dict[str, tuple[str, Callable[[dict[str, Any]], bool], int]] = {
    "hash": ("hash", completed_in(0, 3), 0),
    "barrier": ("identify", segment_done(0), 1),
    "identify": ("identify", completed_in(1, 1), 1),
    "remove": ("remove", completed_in(2, 3), 2),
}

KILL_CASES = [pytest.param(e, "remove", id=f"remove-{e}") for e in matrix.EXECUTORS] + [
    pytest.param(p.values[0], point, id=f"{point}-{p.values[0]}", marks=p.marks)
    for point in ("hash", "barrier", "identify")
    for p in matrix.executors_beyond_fastest()
]


def file_stamps(root: str) -> dict[str, tuple[int, int]]:
    """Relative path -> (inode, mtime_ns) of every file under ``root``."""
    stamps: dict[str, tuple[int, int]] = {}
    for directory, _, names in os.walk(root):
        for name in names:
            st = os.stat(os.path.join(directory, name))
            stamps[os.path.relpath(os.path.join(directory, name), root)] = (st.st_ino, st.st_mtime_ns)
    return stamps


def outputs_of_sources(cfg: dict[str, Any], segment: int, sources: set[str]) -> list[str]:
    """The output files (relative to the output directory) of ``sources`` of ``segment``."""
    if segment == 0:
        ordinals = [g for g, sid in enumerate(dedup_job.group_source_ids(cfg)) if sid in sources]
        return [f"shuffle/part-{p:05d}/group-{g:08d}.parquet" for g in ordinals for p in range(NPARTS)]
    if segment == 1:
        return [
            f"ExactDuplicateIds/part-{p:05d}.parquet"
            for p, sid in enumerate(dedup_job.partition_source_ids(cfg))
            if sid in sources
        ]
    return [f"deduplicated/{sid}.jsonl" for sid in sorted(sources)]


def check_kill_point(point: str, status: Status, stamps: dict[str, tuple[int, int]]) -> None:
    """The kill landed where the case means it to."""
    complete = [s["complete"] for s in status]
    done = [s["completed_sources"] for s in status]
    if point == "hash":
        assert complete == [False, False, False] and 0 < done[0] < FILES, status
    elif point == "barrier":
        assert complete == [True, False, False] and done[1] == 0, status
        assert not any(p.startswith("ExactDuplicateIds/") and p.endswith(".parquet") for p in stamps), stamps
    elif point == "identify":
        assert complete == [True, False, False] and 0 < done[1] < NPARTS, status
    else:
        assert complete == [True, True, False] and 0 < done[2] < FILES, status


def plant_interrupted_writes(cfg: dict[str, Any], killed_pid: int, resumed_from: int) -> list[Path]:
    """Temp files as a writer of the killed job leaves them when killed between its write and its rename.

    A kill rarely hits that window, so they are planted, in each directory that a segment the
    resume runs writes to.
    """
    out = Path(cfg["output_dir"])
    suffix = f".tmp-{writer_identity()}-{killed_pid}-{'0' * 16}"
    planted = [(out / "deduplicated", "x.jsonl")]
    if resumed_from <= 1:
        planted.append((out / "ExactDuplicateIds", "part-00000.parquet"))
    if resumed_from == 0:
        planted.append((out / "shuffle" / "part-00000", "group-00000000.parquet"))
    paths = []
    for directory, final in planted:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f".{final}{suffix}"
        path.write_bytes(b"half a fi")
        paths.append(path)
    return paths


@pytest.mark.slow
@pytest.mark.parametrize(("executor", "point"), KILL_CASES)
def test_sigkill_then_resume_gives_exact_deduplication(
    ray_session, tmp_path: Path, corpus: str, executor: str, point: str
) -> None:
    slow_segment, reached, resumed_from = KILL_POINTS[point]
    cfg = {
        "executor": executor,
        "input_dir": corpus,
        "output_dir": str(tmp_path / "out"),
        "checkpoint": str(tmp_path / "ckpt"),
        "nparts": NPARTS,
        "slow_s": {slow_segment: SLOW_S[executor]},
    }

    killed_pid = kill_when(start_job(cfg, module="tests.e2e.dedup_job"), lambda: reached(cfg), poll_s=0.2)

    status = segment_status(cfg)
    assert status is not None
    stamps = file_stamps(cfg["output_dir"])
    check_kill_point(point, status, stamps)
    done_records = file_stamps(os.path.join(cfg["checkpoint"], "workflow"))
    killed = segment_checkpoint(cfg, resumed_from)
    complete_before = set(checkpoint_status(killed)["completed"]) if os.path.isdir(killed) else set()
    planted = plant_interrupted_writes(cfg, killed_pid, resumed_from)

    result = dedup_job.run({**cfg, "slow_s": {}})

    expected = dedup_job.expected_output(cfg)
    assert dedup_job.written_output(cfg["output_dir"]) == expected
    assert result.duplicates == FILES * DOCS - sum(len(records) for records in expected.values())
    assert [s.skipped for s in result.segments] == [i < resumed_from for i in range(3)]
    after = file_stamps(cfg["output_dir"])
    hidden = [p for p in after if any(part.startswith(".") for part in Path(p).parts)]
    assert not hidden, f"temp files of interrupted writes remain: {hidden}"
    assert not any(p.exists() for p in planted)

    # Segments complete before the kill did not run again.
    done_dirs = ("shuffle/", "ExactDuplicateIds/")[:resumed_from]
    before_done = {p: s for p, s in stamps.items() if p.startswith(done_dirs)}
    assert before_done == {p: s for p, s in after.items() if p.startswith(done_dirs)}
    assert bool(before_done) == bool(done_dirs)
    after_done = file_stamps(os.path.join(cfg["checkpoint"], "workflow"))
    assert {k: v for k, v in after_done.items() if k in done_records} == done_records
    runs_after = read_workflow_status(cfg["checkpoint"])["segments"]
    for i in range(resumed_from):
        assert runs_after[i]["runs"] == status[i]["runs"], (runs_after[i], status[i])
    assert all(s["complete"] for s in runs_after)

    # Within the killed segment, the sources complete before the kill were not redone.
    if point != "barrier":
        assert complete_before, "no source of the killed segment was recorded complete before the kill"
    kept = [p for p in outputs_of_sources(cfg, resumed_from, complete_before) if p in stamps]
    assert kept or not complete_before
    changed = [p for p in kept if after.get(p) != stamps[p]]
    assert not changed, f"outputs of sources complete before the kill were rewritten: {changed}"
