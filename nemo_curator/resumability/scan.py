"""Reading a whole checkpoint directory, one writer file at a time.

A directory shared by many runs (a SLURM array of hundreds of tasks) holds one file per run;
every reader here opens one file, reads a consistent snapshot of it and closes it before the
next, so the number of open files and memory maps stays constant.

The union rules: a source is complete when some file records its completion later than every
file's revocation of it; a failure record counts only for sources that are not complete; a
source is in flight when some file holds partial credit for it and it is neither complete nor
failed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nemo_curator.resumability.layout import DB_FAILED, WRITER_SUFFIX, WriterFile, writer_paths


@dataclass(frozen=True)
class WriterInfo:
    """One writer file's path and metadata."""

    path: Path
    meta: dict[str, Any]

    @property
    def writer_id(self) -> str:
        return str(self.meta.get("writer_id") or self.path.name.removesuffix(WRITER_SUFFIX))

    @property
    def fingerprint(self) -> str:
        return str(self.meta.get("fingerprint", ""))

    @property
    def created(self) -> float:
        return float(self.meta.get("created", 0.0))

    @property
    def updated(self) -> float:
        return float(self.meta.get("updated", self.created))


def iso_time(ts: float | None) -> str | None:
    """An epoch time as ISO 8601 (UTC, seconds), or ``None``."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds") if ts else None


def writer_infos(checkpoint: Path, exclude: Path | None = None) -> list[WriterInfo]:
    """Metadata of every writer file (except ``exclude``); raises ``CheckpointError`` for a bad file."""
    infos = []
    for path in writer_paths(checkpoint):
        if exclude is not None and path.name == exclude.name:
            continue
        wf = WriterFile.open(path)
        if wf is None:
            continue
        with wf:
            infos.append(WriterInfo(path, wf.meta))
    return infos


def current_writer(infos: Iterable[WriterInfo]) -> WriterInfo | None:
    """The most recently created writer: its fingerprint is the checkpoint's."""
    latest: WriterInfo | None = None
    for info in infos:
        if latest is None or (info.created, info.writer_id) > (latest.created, latest.writer_id):
            latest = info
    return latest


@dataclass
class WriterCounts:
    """What one writer file records (counts of its own records)."""

    info: WriterInfo
    completed: int
    failed: int
    in_flight: int


@dataclass
class CheckpointScan:
    """The union of every writer file of a checkpoint directory (keys are ``keys.source_key``)."""

    completed: set[bytes] = field(default_factory=set)
    #: Sources failed somewhere and not complete: latest ``(time ns, reason)``.
    failed: dict[bytes, tuple[int, str]] = field(default_factory=dict)
    #: Revocations in force (not outdated by a later completion): key -> time ns.
    revoked: dict[bytes, int] = field(default_factory=dict)
    #: Only filled by ``scan_checkpoint(in_flight=True)``.
    in_flight: set[bytes] = field(default_factory=set)
    writers: list[WriterCounts] = field(default_factory=list)


def scan_checkpoint(checkpoint: Path, *, in_flight: bool = False) -> CheckpointScan:
    """Read every writer file of ``checkpoint`` once (twice when a revocation must be resolved)."""
    scan = CheckpointScan()
    revoked: dict[bytes, int] = {}
    paths = []
    for path in writer_paths(checkpoint):
        wf = WriterFile.open(path)
        if wf is None:
            continue
        paths.append(path)
        with wf:
            completed = wf.add_completed_to(scan.completed)
            for key, when in wf.revoked().items():
                if when > revoked.get(key, -1):
                    revoked[key] = when
            for key, (when, reason) in wf.failed().items():
                if key not in scan.failed or when > scan.failed[key][0]:
                    scan.failed[key] = (when, reason)
            partial = wf.inflight_source_keys() if in_flight else set()
            scan.in_flight |= partial
            scan.writers.append(WriterCounts(WriterInfo(path, wf.meta), completed, wf.count(DB_FAILED), len(partial)))
    if revoked:
        latest: dict[bytes, int] = {}
        for path in paths:
            wf = WriterFile.open(path)
            if wf is None:
                continue
            with wf:
                for when, keys in wf.completed_records():
                    for key in keys:
                        if key in revoked and when > latest.get(key, -1):
                            latest[key] = when
        for key, when in revoked.items():
            if latest.get(key, -1) <= when:
                scan.completed.discard(key)
                scan.revoked[key] = when
    if scan.failed and scan.completed:
        scan.failed = {k: v for k, v in scan.failed.items() if k not in scan.completed}
    if scan.in_flight:
        scan.in_flight -= scan.completed
        scan.in_flight -= scan.failed.keys()
    return scan
