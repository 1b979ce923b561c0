"""Reading and writing the durable record at a checkpoint location (the truth of a checkpoint).

``read_checkpoint(location)`` lists ``ledger/`` once (recursively), reads what each writer needs
(its header, its newest snapshot and the segments after it) in parallel on a thread pool, and
folds them (``scan``). When a listed object has vanished (its writer compacted meanwhile: the
snapshot that replaced it is written before it is deleted) it lists again and retries, so a
reader never misses a record. A checkpoint in the old format (LMDB files directly in
``ledger/``) is refused, naming the path and the fix.

``WriterLog`` is one writer's side: ``write_header``, ``append`` (one segment per acknowledged
batch: written once, under a unique name, durable when the call returns) and ``compact`` (a
snapshot covering its segments so far, then the deletion of what it covers).
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

from loguru import logger

from nemo_curator.resumability.location import Location
from nemo_curator.resumability.objects import (
    LEDGER_PREFIX,
    ObjectName,
    WriterHeader,
    decode_header,
    encode_header,
    object_path,
)
from nemo_curator.resumability.records import (
    Segment,
    WriterState,
    decode_segment,
    decode_snapshot,
    encode_segment,
    encode_snapshot,
)
from nemo_curator.resumability.scan import CheckpointUnion, apply_segment, copy_state, fold_writer, union
from nemo_curator.resumability.writers import (
    READ_THREADS,
    WriterObjects,
    check_format,
    missing_header,
    read_objects,
)


@dataclass
class CheckpointRead:
    """What ``read_checkpoint`` found: per writer its header and state; and their union.

    ``objects`` holds the listed objects of every writer, also of one that so far has only
    heartbeats (it is starting: ``lease``); ``headers`` and ``states`` only writers with a header.
    """

    headers: dict[str, WriterHeader]
    states: dict[str, WriterState]
    objects: dict[str, WriterObjects]
    union: CheckpointUnion
    unexpected: list[str] = field(default_factory=list)


Decoded = WriterHeader | WriterState | Segment


def _decode(name: ObjectName, data: bytes, where: str, recent: bool) -> Decoded:
    if name.kind == "header":
        return decode_header(data, where)
    if name.kind == "snap":
        return decode_snapshot(data, where, recent=recent)
    return decode_segment(data, where, recent=recent)


def read_checkpoint(
    location: Location,
    *,
    recent_limit: int,
    threads: int = READ_THREADS,
    recent_for: Collection[str] | None = None,
) -> CheckpointRead:
    """Read and fold the whole durable record (see the module docstring). Raises ``CheckpointError``.

    The digests of recent completions are decoded only for the writers in ``recent_for`` (all
    when ``None``): a new run needs only its own, and 10,000,000 of another's cost seconds.
    """
    check_format(location)
    writers, unexpected, decoded = read_objects(
        location,
        threads,
        WriterObjects.needed,
        lambda name, data, where: _decode(name, data, where, recent_for is None or name.writer_id in recent_for),
    )
    headers: dict[str, WriterHeader] = {}
    states: dict[str, WriterState] = {}
    for writer_id, objs in writers.items():
        needed = objs.needed()
        if not needed and not objs.headers and not (objs.snapshots or objs.segments):
            continue  # only heartbeats: a writer starting right now (it writes its header next)
        if not needed:
            raise missing_header(location, writer_id)
        header = decoded[needed[0].path]
        assert isinstance(header, WriterHeader)
        headers[writer_id] = header
        snaps = [(n, decoded.pop(n.path, None)) for n in needed if n.kind == "snap"]
        # Popped as they are folded, so each segment's keys are freed once applied.
        segs = ((n, decoded.pop(n.path, None)) for n in needed if n.kind == "seg")
        states[writer_id] = fold_writer(writer_id, snaps, segs, recent_limit)
        states[writer_id].stamp = max(states[writer_id].stamp, header.start_stamp)
    if unexpected:
        logger.warning(
            "checkpoint {}: ignoring {} unexpected object(s) under {}/ (e.g. {}); they are left alone",
            location.display,
            len(unexpected),
            LEDGER_PREFIX,
            unexpected[0],
        )
    return CheckpointRead(
        headers=headers,
        states=states,
        objects=writers,
        union=union(states.values(), headers.values()),
        unexpected=unexpected,
    )


def new_nonce() -> str:
    """A random nonce for object names (one per writing process)."""
    return uuid.uuid4().hex[:16]


class WriterLog:
    """One writer's objects at a location: header, segments, snapshots (see the module docstring).

    ``state`` is the fold of everything this writer has written (it is what a snapshot holds).
    Invariant: ``state`` equals ``fold_writer`` of this writer's objects at the location.
    """

    def __init__(
        self,
        location: Location,
        writer_id: str,
        *,
        state: WriterState | None,
        objects: WriterObjects | None,
        recent_limit: int,
        compact_every: int,
    ) -> None:
        self.location = location
        self.writer_id = writer_id
        self.nonce = new_nonce()
        self.state = copy_state(state) if state is not None else WriterState(writer_id)
        objs = objects or WriterObjects()
        #: Objects this writer has at the location that a snapshot would make obsolete.
        self._segments: list[ObjectName] = list(objs.segments)
        self._snapshots: list[ObjectName] = list(objs.snapshots)
        self.next_number = max([n.number for n in objs.segments + objs.snapshots], default=-1) + 1
        self.next_number = max(self.next_number, self.state.upto + 1)
        self.recent_limit = recent_limit
        self.compact_every = compact_every
        self.segments_since_snapshot = sum(1 for n in objs.segments if n.number > self.state.upto)
        self.appended = 0
        self.compactions = 0

    def write_header(self, header: WriterHeader) -> None:
        self.location.write_once(object_path(self.writer_id, "header", -1, self.nonce), encode_header(header))

    def append(self, seg: Segment) -> None:
        """Write ``seg`` (numbered ``next_number``) durably, then fold it into ``state``."""
        seg.number = self.next_number
        name = ObjectName(self.writer_id, "seg", seg.number, self.nonce)
        self.location.write_once(name.path, encode_segment(seg))
        self.next_number += 1
        self.appended += 1
        apply_segment(self.state, seg, self.recent_limit)
        self._segments.append(name)
        self.segments_since_snapshot += 1

    def compaction_due(self) -> bool:
        return self.segments_since_snapshot >= self.compact_every

    def compact(self, *, closed: float | None = None, meta: dict | None = None) -> bool:
        """Write a snapshot of ``state`` covering every segment so far, then delete what it replaces.

        The snapshot is durable before anything is deleted, so a reader always finds either the
        segments or the snapshot. Returns whether a snapshot was written; failures are logged
        (the segments stay and remain valid).
        """
        state = self.state
        if meta:
            state.meta.update(meta)
        if closed is not None:
            state.closed = closed
        if self.segments_since_snapshot == 0 and closed is None and self._snapshots:
            return False
        # A writer without segments still snapshots (at close) as number 0, and its next segment
        # is numbered after the snapshot, so the snapshot never hides it.
        upto = max(self.next_number - 1, 0)
        state.upto = max(state.upto, upto)
        self.next_number = max(self.next_number, state.upto + 1)
        # A fresh nonce: a second snapshot at the same ``upto`` (at close) must not overwrite the first.
        name = ObjectName(self.writer_id, "snap", state.upto, new_nonce())
        try:
            self.location.write_once(name.path, encode_snapshot(state))
        except Exception as exc:
            logger.warning("checkpoint {}: could not write snapshot {} ({}); segments kept", self.location, name, exc)
            return False
        obsolete = [n for n in self._segments if n.number <= state.upto] + list(self._snapshots)
        self._segments = [n for n in self._segments if n.number > state.upto]
        self._snapshots = [name]
        self.segments_since_snapshot = 0
        self.compactions += 1
        try:
            self.location.delete([n.path for n in obsolete])
        except Exception as exc:
            logger.warning(
                "checkpoint {}: could not delete {} compacted object(s) ({})", self.location, len(obsolete), exc
            )
        return True

    @property
    def object_count(self) -> int:
        return len(self._segments) + len(self._snapshots)


def header_of(headers: Iterable[WriterHeader], writer_id: str) -> WriterHeader | None:
    for header in headers:
        if header.writer_id == writer_id:
            return header
    return None
