"""The durable record of a workflow of segments (a fan-in split at its barriers) in one checkpoint.

A workflow (e.g. exact deduplication) runs as segments, one after the other; each segment is an
ordinary resumable pipeline with a checkpoint of its own under the workflow's location::

    <checkpoint>/workflow/plan.json                 written once by the first run: the workflow's
                                                    name, its inputs (e.g. the pinned input files)
                                                    and each segment's name and pipeline description
    <checkpoint>/workflow/done-<index>-<name>.json  written once when segment <index> is complete
                                                    (every source complete, its outputs all present)
    <checkpoint>/segments/<index>-<name>/           that segment's ledger (see ``objects``)

Invariants:
- every object is written once and never changed (``Location.write_once``), so a kill leaves
  either no object or a whole one;
- a segment's ``done`` record is written only after its run succeeded with no failed task and
  the workflow found every output the next segment reads; a rerun skips exactly the segments
  with a ``done`` record, and the next segment starts only after it;
- a rerun whose plan differs from the recorded one (other inputs, another setting, another
  stage) is refused with the differences and the fix: its complete segments would be skipped
  although they were computed from something else;
- a checkpoint location holds either one pipeline's ledger or one workflow, never both
  (``check_not_a_workflow`` is the pipeline's side of that check).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from nemo_curator.resumability.config import CheckpointConfig, coerce_checkpoint
from nemo_curator.resumability.errors import CheckpointError
from nemo_curator.resumability.fingerprint import diff_descriptions
from nemo_curator.resumability.location import Location, describe_access_error, open_location
from nemo_curator.utils.file_changes import file_changes

WORKFLOW_PREFIX = "workflow"
PLAN_PATH = f"{WORKFLOW_PREFIX}/plan.json"
SEGMENTS_PREFIX = "segments"
PLAN_FORMAT = 1


class WorkflowMismatchError(CheckpointError):
    """The checkpoint holds a workflow run on other inputs or with other settings."""


class WorkflowOutputsMissingError(CheckpointError):
    """A segment recorded complete lost outputs that the next segment needs."""


def segment_dirname(index: int, name: str) -> str:
    """``<index>-<name>``: the segment's folder under ``segments/``."""
    return f"{index}-{name}"


def segment_checkpoint(config: CheckpointConfig, index: int, name: str) -> CheckpointConfig:
    """The checkpoint of segment ``index`` (same storage options; a cache folder of its own)."""
    sub = f"{SEGMENTS_PREFIX}/{segment_dirname(index, name)}"
    path = os.path.join(config.local_path, sub) if config.is_local else f"{config.location_id}/{sub}"
    cache_dir = None if config.cache_dir is None else os.path.join(str(config.cache_dir), segment_dirname(index, name))
    return CheckpointConfig(path, config.storage_options, cache_dir)


@dataclass
class SegmentPlan:
    """One segment as planned: its name, its pipeline's fingerprint and description, its source count."""

    name: str
    fingerprint: str
    description: list[dict[str, Any]]
    #: How many sources the segment has, when the workflow knows it in advance (for status).
    sources: int | None = None


@dataclass
class WorkflowPlan:
    """What a workflow's checkpoint is for: the workflow, its inputs and its segments."""

    workflow: str
    inputs: dict[str, Any]
    segments: list[SegmentPlan] = field(default_factory=list)

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "format": PLAN_FORMAT,
                "workflow": self.workflow,
                "inputs": self.inputs,
                "segments": [s.__dict__ for s in self.segments],
            },
            sort_keys=True,
            separators=(",", ":"),
        ).encode()

    @staticmethod
    def from_json(data: bytes, where: str) -> WorkflowPlan:
        try:
            raw = json.loads(data)
            if raw.get("format") != PLAN_FORMAT:
                raise ValueError(f"format {raw.get('format')!r}, expected {PLAN_FORMAT}")
            return WorkflowPlan(
                workflow=str(raw["workflow"]),
                inputs=dict(raw["inputs"]),
                segments=[SegmentPlan(**s) for s in raw["segments"]],
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(
                f"workflow plan {where} is unreadable ({exc}). Fix: start over with a new checkpoint location"
            ) from exc


def plan_differences(stored: WorkflowPlan, current: WorkflowPlan) -> list[str]:
    """What differs between two plans, for people (empty: the same plan)."""
    diffs: list[str] = []
    if stored.workflow != current.workflow:
        diffs.append(f"workflow: {stored.workflow!r} recorded, {current.workflow!r} now")
    diffs.extend(_input_differences(stored.inputs, current.inputs))
    old = {s.name: s for s in stored.segments}
    new = {s.name: s for s in current.segments}
    if [s.name for s in stored.segments] != [s.name for s in current.segments]:
        diffs.append(f"segments: {list(old)} recorded, {list(new)} now")
    for name, seg in new.items():
        before = old.get(name)
        if before is not None and before.fingerprint != seg.fingerprint:
            changes = diff_descriptions(before.description, seg.description) or ["its stages' configuration"]
            diffs.extend(f"segment {name!r}: {c}" for c in changes)
    return diffs


def _input_differences(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    diffs: list[str] = []
    for key in sorted(set(stored) | set(current)):
        a, b = stored.get(key), current.get(key)
        if a == b:
            continue
        if key == "files" and isinstance(a, list) and isinstance(b, list):
            diffs.extend(file_changes(a, b))
        else:
            diffs.append(f"input {key}: {_short(a)} recorded, {_short(b)} now")
    return diffs


def _short(value: Any, limit: int = 100) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class WorkflowCheckpoint:
    """A workflow's record at one checkpoint location (the driver's side; see the module docstring)."""

    def __init__(self, config: CheckpointConfig, location: Location) -> None:
        self.config = config
        self.location = location

    @classmethod
    def open(cls, checkpoint: str | os.PathLike | CheckpointConfig) -> WorkflowCheckpoint:
        """Open (create) the location; refuse one that holds a pipeline's ledger."""
        config = coerce_checkpoint(checkpoint)
        location = open_location(config, writable=True)
        try:
            ledger_objects = location.list("ledger")
        except Exception as exc:
            raise describe_access_error(config, exc, "listing the checkpoint") from exc
        if ledger_objects:
            raise CheckpointError(
                f"checkpoint {config.display} holds the ledger of a pipeline run, not a workflow's segments. "
                "Fix: give the workflow a checkpoint location of its own (a new, empty one)"
            )
        return cls(config, location)

    def adopt(self, plan: WorkflowPlan) -> bool:
        """Record ``plan`` if the checkpoint has none; else check it is the recorded one.

        Returns whether the plan was recorded now (a first run). Raises
        ``WorkflowMismatchError`` listing the differences and the fix.
        """
        stored = self.stored_plan()
        first = stored is None
        if first:
            self.location.write_once(PLAN_PATH, plan.to_json())
            # Two first runs at once both write; the read-back makes all but the last writer's refuse.
            stored = self.stored_plan()
            assert stored is not None
        diffs = plan_differences(stored, plan)
        if diffs:
            lines = [
                f"checkpoint {self.config.display} holds a {stored.workflow!r} workflow run on other inputs or with "
                "other settings; its complete segments would be skipped although they do not fit this run:"
            ]
            lines.extend(f"  - {d}" for d in diffs)
            lines.append(
                "Fix: restore the inputs and settings of the recorded run to resume it, or start over with a new "
                "checkpoint location (and a new output path)"
            )
            raise WorkflowMismatchError("\n".join(lines))
        return first

    def stored_plan(self) -> WorkflowPlan | None:
        try:
            data = self.location.read(PLAN_PATH)
        except FileNotFoundError:
            return None
        except Exception as exc:
            raise describe_access_error(self.config, exc, "reading the workflow plan") from exc
        return WorkflowPlan.from_json(data, f"{self.config.display}/{PLAN_PATH}")

    def segment_done(self, index: int, name: str) -> bool:
        """Whether segment ``index`` is recorded complete."""
        return _done_path(index, name) in set(self.location.list(WORKFLOW_PREFIX))

    def mark_done(self, index: int, name: str, info: dict[str, Any]) -> None:
        """Record segment ``index`` complete (durable when this returns)."""
        path = _done_path(index, name)
        if path in set(self.location.list(WORKFLOW_PREFIX)):
            return
        self.location.write_once(path, json.dumps(info, sort_keys=True, default=str).encode())

    def segment_config(self, index: int, name: str) -> CheckpointConfig:
        return segment_checkpoint(self.config, index, name)


def _done_path(index: int, name: str) -> str:
    return f"{WORKFLOW_PREFIX}/done-{segment_dirname(index, name)}.json"


def check_not_a_workflow(location: Location, display: str) -> None:
    """Refuse to run a pipeline on a workflow's checkpoint location (raises ``CheckpointError``)."""
    if PLAN_PATH in set(location.list(WORKFLOW_PREFIX)):
        raise CheckpointError(
            f"checkpoint {display} belongs to a workflow (it holds {PLAN_PATH}); a pipeline run here would not see "
            "the workflow's segments. Fix: run the workflow with this checkpoint, or give the pipeline a new "
            "checkpoint location"
        )


def read_workflow_status(
    checkpoint: str | os.PathLike | CheckpointConfig, storage_options: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """A workflow checkpoint's progress per segment, JSON-serialisable; ``None`` if it is no workflow's.

    Read-only. Keys: ``checkpoint``, ``workflow``, ``segments`` (per segment: ``index``,
    ``name``, ``complete``, ``sources`` (planned, or ``None``), ``completed_sources``,
    ``failed_sources``, ``in_flight_sources``, ``runs``).
    """
    from nemo_curator.resumability.inspect import read_checkpoint_status

    config = coerce_checkpoint(checkpoint)
    if storage_options:
        config = CheckpointConfig(config.path, {**(config.storage_options or {}), **storage_options}, config.cache_dir)
    location = open_location(config, writable=False)
    try:
        names = set(location.list(WORKFLOW_PREFIX))
        if PLAN_PATH not in names:
            return None
        plan = WorkflowPlan.from_json(location.read(PLAN_PATH), f"{config.display}/{PLAN_PATH}")
    except CheckpointError:
        raise
    except Exception as exc:
        raise describe_access_error(config, exc, "reading the workflow plan") from exc
    segments = []
    for index, seg in enumerate(plan.segments):
        entry: dict[str, Any] = {
            "index": index,
            "name": seg.name,
            "complete": _done_path(index, seg.name) in names,
            "sources": seg.sources,
            "completed_sources": 0,
            "failed_sources": 0,
            "in_flight_sources": 0,
            "runs": 0,
        }
        sub = segment_checkpoint(config, index, seg.name)
        if location.list(f"{SEGMENTS_PREFIX}/{segment_dirname(index, seg.name)}/ledger"):
            status = read_checkpoint_status(sub, include_ids=False)
            entry.update(
                completed_sources=status.completed_sources,
                failed_sources=status.failed_sources,
                in_flight_sources=status.in_flight_sources,
                runs=len(status.writers),
            )
        segments.append(entry)
    return {"checkpoint": config.display, "workflow": plan.workflow, "segments": segments}
