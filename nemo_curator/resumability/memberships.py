"""Stable file-group memberships under a checkpoint: the regrouping rule and its durable records.

Without a checkpoint, ``FilePartitioningStage`` groups the sorted listing afresh on every run, so
adding or removing one file shifts every later group: new group ids, and content already written
is written again under new names. Under a checkpoint it plans with ``plan_partitions`` instead,
against the memberships that earlier runs recorded here.

Records. Before the partitioning stage emits its groups it records their memberships, through the
ledger actor, in one write-once object ``partitions/<stage key>/gen-<generation>-<nonce>.rec``
(``stage key``: a hash of the stage's name; ``generation``: 1 + the largest generation read, a
logical clock). A group is a source, and a source can complete only after it was emitted, so:
every complete group of the stage has its membership recorded (except groups completed by
versions that did not record them; those are regrouped exactly as before and, on unchanged input,
find their ids again).

The rule (``plan_partitions``), given the current listing and every recorded group with whether
its source is complete. A file is *the same* when its path is listed with the recorded size and
modification time.

1. A complete group with at least one member that is the same is *kept*: it keeps its recorded
   membership and is not emitted (it is complete). Its members that are the same are covered.
   For a complete group with at least one member path still listed:
   - a member no longer listed: the group's output still holds that file's records (notice
     ``missing``);
   - a member listed with another size or mtime: the old content's records stay in the group's
     output, and the file is grouped again like a new file (notice ``changed``), as a rewritten
     file is without partitions.
   A complete group none of whose member paths is listed concerns no current input: it is ignored
   silently, as a removed file's source is without partitions (its output stays).
2. A recorded group that is not complete is *kept* when all its members are the same, none is
   covered by step 1, it was recorded by the same grouping options, and it is disjoint from the
   groups kept before it (newest generation first, then by paths). So a group that was emitted
   (and perhaps written) before a kill has the same id on the rerun and overwrites its own output.
   A group of the newest generation (the last plan) that is not kept because a member is gone or
   changed gets notice ``dissolved``: if it was written before that run stopped, its output stays
   beside the new groups' outputs (its files must go back into new groups: they may hold content
   that no complete group holds).
3. Every other listed file is grouped afresh: the listing is cut into maximal runs of consecutive
   files (in sorted order) that step 1 and 2 left, and each run is grouped by the stage's rule.

Invariants of the plan: every listed file is in exactly one group (a file in two complete groups,
which only a changed pipeline can produce, is reported as notice ``overlap`` and stays in both);
every emitted group's members are listed with their recorded stats; a complete group keeps its
recorded membership; with no records the plan equals grouping the whole listing; on an unchanged
listing the plan's groups equal the recorded plan's.
"""

from __future__ import annotations

import hashlib
import json
import uuid
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from nemo_curator.resumability.errors import CheckpointError

#: A listed file: ``(path, size, mtime)``.
FileEntry = tuple[str, int, Any]

PARTITIONS_PREFIX = "partitions"
RECORD_FORMAT = 1
_MAGIC = "nemo_curator.partitions"

NOTICE_MISSING = "missing"
NOTICE_CHANGED = "changed"
NOTICE_OVERLAP = "overlap"
NOTICE_DISSOLVED = "dissolved"


@dataclass(frozen=True)
class RecordedGroup:
    """A group as an earlier run recorded it; ``members`` are sorted by path."""

    source_id: str
    members: tuple[FileEntry, ...]
    generation: int = 0
    grouping: str = ""
    complete: bool = False


@dataclass(frozen=True)
class PlannedGroup:
    """A group of the plan: ``members`` as listed now, sorted by path.

    ``source_id`` is the recorded id of a kept group (``None`` for a new one); ``complete``
    groups are not emitted.
    """

    members: tuple[FileEntry, ...]
    source_id: str | None = None
    complete: bool = False


@dataclass(frozen=True)
class Notice:
    """Something a user must hear about: ``kind`` is ``missing``, ``changed``, ``overlap`` or ``dissolved``."""

    kind: str
    source_id: str
    path: str


@dataclass
class PartitionPlan:
    """Groups ordered by their first path (complete ones included) and the notices."""

    groups: list[PlannedGroup] = field(default_factory=list)
    notices: list[Notice] = field(default_factory=list)

    @property
    def emitted(self) -> list[PlannedGroup]:
        return [g for g in self.groups if not g.complete]


def _stats(entry: FileEntry) -> tuple[int, Any]:
    return (int(entry[1]), entry[2])


def plan_partitions(
    files: Sequence[FileEntry],
    recorded: Iterable[RecordedGroup],
    group_run: Callable[[list[FileEntry]], list[list[FileEntry]]],
    grouping: str = "",
) -> PartitionPlan:
    """The plan for the sorted listing ``files`` (see the module docstring for the rule)."""
    listed: dict[str, tuple[int, Any]] = {e[0]: _stats(e) for e in files}
    entry_of = {e[0]: e for e in files}
    plan = PartitionPlan()
    covered: dict[str, str] = {}
    by_id: dict[str, RecordedGroup] = {}
    for group in recorded:
        previous = by_id.get(group.source_id)
        if previous is None or (group.complete, group.generation) > (previous.complete, previous.generation):
            by_id[group.source_id] = group
    groups = sorted(by_id.values(), key=lambda g: g.source_id)

    for group in (g for g in groups if g.complete):
        if not any(m[0] in listed for m in group.members):
            continue
        same = [m for m in group.members if listed.get(m[0]) == _stats(m)]
        for member in group.members:
            if member[0] not in listed:
                plan.notices.append(Notice(NOTICE_MISSING, group.source_id, member[0]))
            elif listed[member[0]] != _stats(member):
                plan.notices.append(Notice(NOTICE_CHANGED, group.source_id, member[0]))
        for member in same:
            if member[0] in covered:
                plan.notices.append(Notice(NOTICE_OVERLAP, group.source_id, member[0]))
            else:
                covered[member[0]] = group.source_id
        if same:
            plan.groups.append(
                PlannedGroup(tuple(entry_of[m[0]] for m in same), source_id=group.source_id, complete=True)
            )

    taken: set[str] = set(covered)
    candidates = sorted(
        (g for g in groups if not g.complete and g.grouping == grouping),
        key=lambda g: (-g.generation, [m[0] for m in g.members]),
    )
    newest = max((g.generation for g in groups), default=0)
    for group in candidates:
        paths = [m[0] for m in group.members]
        if not paths or any(m[0] in taken or listed.get(m[0]) != _stats(m) for m in group.members):
            if group.generation == newest:
                plan.notices.extend(
                    Notice(NOTICE_DISSOLVED, group.source_id, m[0])
                    for m in group.members
                    if listed.get(m[0]) != _stats(m)
                )
            continue
        taken.update(paths)
        plan.groups.append(PlannedGroup(tuple(entry_of[p] for p in sorted(paths)), source_id=group.source_id))

    run: list[FileEntry] = []
    for entry in [*files, None]:
        if entry is not None and entry[0] not in taken:
            run.append(entry)
            continue
        if run:
            plan.groups.extend(PlannedGroup(tuple(g)) for g in group_run(run) if g)
            run = []
    plan.groups.sort(key=lambda g: g.members[0][0])
    return plan


# -- records ---------------------------------------------------------------------------


def stage_key(stage_name: str) -> str:
    """The directory name of a partitioning stage's records (a hash: any name is path-safe)."""
    return hashlib.blake2b(stage_name.encode(), digest_size=8).hexdigest()


def records_prefix(stage_name: str) -> str:
    return f"{PARTITIONS_PREFIX}/{stage_key(stage_name)}"


def encode_record(
    stage_name: str, generation: int, grouping: str, groups: Sequence[tuple[str, Sequence[FileEntry]]]
) -> bytes:
    """One record: the memberships ``(source_id, members)`` a stage is about to emit."""
    body = {
        "app": _MAGIC,
        "format": RECORD_FORMAT,
        "stage": stage_name,
        "generation": generation,
        "grouping": grouping,
        "groups": [[sid, [[p, s, m] for p, s, m in members]] for sid, members in groups],
    }
    raw = json.dumps(body, separators=(",", ":"), default=str).encode()
    return zlib.compress(raw, 6)


def _corrupt(where: str, why: str) -> CheckpointError:
    return CheckpointError(
        f"partition record {where} is unreadable ({why}). Fix: if a copy of the checkpoint was interrupted, copy "
        "it again; otherwise move this object out of the checkpoint location (the groups it recorded are then "
        "formed again from the listing, and any output they wrote under their old names stays)"
    )


def decode_record(data: bytes, where: str) -> list[RecordedGroup]:
    """The groups of one record (``complete`` unset); ``CheckpointError`` naming it when unreadable."""
    try:
        body = json.loads(zlib.decompress(data))
    except (zlib.error, ValueError) as exc:
        raise _corrupt(where, f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(body, dict) or body.get("app") != _MAGIC:
        raise _corrupt(where, "no partition record marker")
    if int(body.get("format", 0)) > RECORD_FORMAT:
        raise CheckpointError(
            f"partition record {where} was written in format {body.get('format')}, newer than this version of "
            "nemo_curator reads. Fix: upgrade nemo_curator, or use a new checkpoint location"
        )
    generation = int(body["generation"])
    grouping = str(body.get("grouping", ""))
    return [
        RecordedGroup(
            source_id=str(sid),
            members=tuple((str(p), int(s), m) for p, s, m in members),
            generation=generation,
            grouping=grouping,
        )
        for sid, members in body["groups"]
    ]


def record_path(stage_name: str, generation: int) -> str:
    """A fresh, never-written name for a record of ``generation``."""
    return f"{records_prefix(stage_name)}/gen-{generation:012d}-{uuid.uuid4().hex}.rec"


def read_records(location: Any, stage_name: str) -> list[RecordedGroup]:
    """Every group recorded for the stage at ``location`` (a ``location.Location``)."""
    out: list[RecordedGroup] = []
    for path in sorted(location.list(records_prefix(stage_name))):
        if path.endswith(".rec"):
            out.extend(decode_record(location.read(path), f"{location.display}/{path}"))
    return out


def write_record(location: Any, stage_name: str, generation: int, data: bytes) -> str:
    """Write one encoded record durably (write-once); its path."""
    decode_record(data, "(about to be written)")
    path = record_path(stage_name, generation)
    location.write_once(path, data)
    return path


def recorded_history(
    location: Any, stage_name: str, completed_among: Callable[[list[str]], Iterable[str]]
) -> list[RecordedGroup]:
    """Every group recorded for the stage, with ``complete`` set from ``completed_among(ids)``."""
    groups = read_records(location, stage_name)
    done = set(completed_among(sorted({g.source_id for g in groups})))
    return [RecordedGroup(g.source_id, g.members, g.generation, g.grouping, g.source_id in done) for g in groups]
