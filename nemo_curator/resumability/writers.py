"""A checkpoint's writers as listed at its location: their objects, headers and closed marks.

``list_objects`` groups the listed ``ledger/`` objects by writer; ``read_objects`` reads what a
reader needs of each writer in parallel, listing again when objects vanish under a compaction
(a snapshot is written before the segments it covers are deleted, so a reader never misses a
record); ``read_writers`` reads only the headers and the newest snapshots' heads, for the
driver's checks before a run (``preflight``). ``durable.read_checkpoint`` reads and folds the
whole record with the same listing.

This module imports nothing heavy (no numpy, no LMDB): the driver runs it before its first work.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from loguru import logger

from nemo_curator.resumability.errors import CheckpointError
from nemo_curator.resumability.location import Location
from nemo_curator.resumability.objects import (
    LEDGER_PREFIX,
    ObjectName,
    WriterHeader,
    decode_header,
    parse_object_path,
    snapshot_head,
)

#: Threads reading objects in parallel at start-up.
READ_THREADS = 16
#: How often a reader lists again when listed objects vanished under it.
MAX_LIST_ATTEMPTS = 8
#: Old-format ledger files (one LMDB file per writer directly in ``ledger/``).
OLD_FORMAT_SUFFIXES = (".lmdb", ".lmdb-lock")


@dataclass
class WriterObjects:
    """The listed objects of one writer."""

    headers: list[ObjectName] = field(default_factory=list)
    snapshots: list[ObjectName] = field(default_factory=list)
    segments: list[ObjectName] = field(default_factory=list)
    #: Heartbeats (``lease``): never read to build the ledger.
    beats: list[ObjectName] = field(default_factory=list)

    def newest_snapshot(self) -> ObjectName | None:
        return max(self.snapshots, key=lambda n: (n.number, n.nonce), default=None)

    def needed(self) -> list[ObjectName]:
        """What a reader must read: one header, the newest snapshot, the segments after it.

        Nothing for a writer without a header (its records are ignored, with a warning).
        """
        if not self.headers:
            return []
        snap = self.newest_snapshot()
        upto = snap.number if snap is not None else -1
        out = sorted(self.headers, key=lambda n: n.nonce)[:1]
        if snap is not None:
            out.append(snap)
        out.extend(n for n in self.segments if n.number > upto)
        return out


def check_format(location: Location) -> None:
    """Refuse a checkpoint written by the earlier LMDB-in-the-checkpoint format."""
    old = [name for name in location.entries(LEDGER_PREFIX) if name.endswith(OLD_FORMAT_SUFFIXES)]
    if old:
        raise CheckpointError(
            f"checkpoint {location.display} was written by an older version of nemo_curator (LMDB files such as "
            f"{LEDGER_PREFIX}/{old[0]} directly in the checkpoint); this version keeps a durable record of immutable "
            "objects instead and cannot read it. Nothing was changed. Fix: use a new checkpoint location (the sources "
            "recorded there are then redone), or finish the run with the version that wrote it"
        )


def list_objects(location: Location) -> tuple[dict[str, WriterObjects], list[str]]:
    """The listed ledger objects grouped by writer, and the paths that are not ledger objects."""
    writers: dict[str, WriterObjects] = {}
    unexpected = []
    for path in location.list(LEDGER_PREFIX):
        name = parse_object_path(path)
        if name is None:
            unexpected.append(path)
            continue
        objs = writers.setdefault(name.writer_id, WriterObjects())
        {"header": objs.headers, "snap": objs.snapshots, "seg": objs.segments, "beat": objs.beats}[name.kind].append(
            name
        )
    return writers, unexpected


def read_objects(
    location: Location,
    threads: int,
    needed: Callable[[WriterObjects], list[ObjectName]],
    decode: Callable[[ObjectName, bytes, str], Any],
) -> tuple[dict[str, WriterObjects], list[str], dict[str, Any]]:
    """List, then read and ``decode`` the ``needed`` objects of every writer in parallel (listing again
    when listed objects vanished under a compaction)."""
    decoded: dict[str, Any] = {}

    def fetch(name: ObjectName) -> tuple[ObjectName, Any]:
        where = f"{location.display}/{name.path}"
        try:
            data = location.read(name.path)
        except FileNotFoundError:
            return name, None
        return name, decode(name, data, where)

    with concurrent.futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="checkpoint-read") as pool:
        for _attempt in range(MAX_LIST_ATTEMPTS):
            writers, unexpected = list_objects(location)
            wanted = [n for objs in writers.values() for n in needed(objs) if n.path not in decoded]
            vanished = False
            for name, value in pool.map(fetch, wanted):
                if value is None:
                    vanished = True
                else:
                    decoded[name.path] = value
            if not vanished:
                break
            logger.debug("checkpoint {}: listed objects vanished while reading (compaction); listing again", location)
        else:
            raise CheckpointError(
                f"checkpoint {location.display}: objects kept vanishing between listing and reading in "
                f"{MAX_LIST_ATTEMPTS} attempts. Fix: retry; if it persists, check that no tool deletes objects there"
            )
    return writers, unexpected, decoded


@dataclass
class WritersRead:
    """What ``read_writers`` found: every writer's header and whether its newest snapshot marks it closed."""

    headers: dict[str, WriterHeader]
    closed: dict[str, bool]


def read_writers(location: Location, *, threads: int = READ_THREADS) -> WritersRead:
    """The writers' headers and closed marks only: one header and the newest snapshot per writer, whose
    sections are checked (checksum) but not decoded, and no segments (a segment never closes a writer).

    For the driver's checks before a run (fingerprint, leases): a fraction of ``read_checkpoint``'s
    cost on a large checkpoint. Raises ``CheckpointError`` like it.
    """
    check_format(location)

    def needed(objs: WriterObjects) -> list[ObjectName]:
        return [n for n in objs.needed() if n.kind != "seg"]

    def decode(name: ObjectName, data: bytes, where: str) -> WriterHeader | dict[str, Any]:
        return decode_header(data, where) if name.kind == "header" else snapshot_head(data, where)

    writers, _unexpected, decoded = read_objects(location, threads, needed, decode)
    headers: dict[str, WriterHeader] = {}
    closed: dict[str, bool] = {}
    for writer_id, objs in writers.items():
        names = needed(objs)
        if not names:
            if objs.snapshots or objs.segments:
                raise missing_header(location, writer_id)
            continue
        header = decoded[names[0].path]
        assert isinstance(header, WriterHeader)
        headers[writer_id] = header
        snaps = [decoded[n.path] for n in names if n.kind == "snap"]
        closed[writer_id] = bool(snaps) and snaps[0].get("closed") is not None
    return WritersRead(headers, closed)


def missing_header(location: Location, writer_id: str) -> CheckpointError:
    # A header is written before any other object of its writer, so this is a partial copy or an
    # outside deletion: ignoring the writer would drop its revocations (wrong skips).
    return CheckpointError(
        f"checkpoint {location.display}: writer {writer_id} has records but no header object "
        f"({LEDGER_PREFIX}/{writer_id}/header-*.rec is missing); its records (revocations included) cannot "
        "be trusted or ignored. Nothing was changed. Fix: restore the header object (if the checkpoint was "
        f"copied, copy {LEDGER_PREFIX}/{writer_id}/ whole), or move {LEDGER_PREFIX}/{writer_id}/ away to redo "
        "what it recorded"
    )


def current_writer(headers: Iterable[WriterHeader]) -> WriterHeader | None:
    """The writer with the largest logical start ``(start_stamp, writer_id)``: its fingerprint is the checkpoint's."""
    latest: WriterHeader | None = None
    for header in headers:
        if latest is None or (header.start_stamp, header.writer_id) > (latest.start_stamp, latest.writer_id):
            latest = header
    return latest


def iso_time(ts: float | None) -> str | None:
    """An epoch time as ISO 8601 (UTC, seconds), or ``None``."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds") if ts else None
