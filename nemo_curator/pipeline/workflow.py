"""Workflows: pipelines run one after the other as *segments*, split at barriers (fan-in points).

A stage whose output depends on every input (a shuffle, a global duplicate search) cannot be
tracked by source-level credit: a document's fate depends on documents of other sources. A
workflow splits the job at such a barrier into segments. Each segment is an ordinary
pipeline; what a barrier hands on is written durably under deterministic names (e.g. one
file per (upstream source, partition)), and the next segment's sources are read from it.

``run_segments(workflow, segments, executor, inputs)`` runs them with ``executor``:
- without a checkpoint, each segment runs once, in order (nothing of ``resumability`` is loaded);
- with ``executor.checkpoint``, each segment runs with a checkpoint of its own under it
  (``resumability.workflow``), so a killed segment resumes at source level like any pipeline;
  a segment is recorded complete once its run succeeded with no failed task and every output
  the next segment reads is present; a rerun skips complete segments, and refuses a checkpoint
  whose recorded plan (inputs, settings, stages) differs from this one;
- Ray is started (or joined) once for all segments.

Invariant: segment ``i + 1`` starts only after segment ``i`` is complete (in this run, or
recorded complete by an earlier one with its outputs still present).
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from loguru import logger

from nemo_curator.tasks import Task

if TYPE_CHECKING:
    from nemo_curator.backends.base import BaseExecutor, RunSummary


class SegmentFailedError(RuntimeError):
    """A segment ended with failed tasks (or without its outputs); the segments after it did not run."""


class InputChangedError(RuntimeError):
    """The input changed while the workflow ran (before a segment that reads it again)."""


@dataclass
class Segment:
    """One segment: a pipeline, and how to tell that what it hands on is all there.

    ``missing_outputs()`` returns what the next segment needs and does not find (paths, for
    the message); an empty list means the segment's outputs are complete. ``sources`` is the
    segment's number of sources when known in advance (shown by ``checkpoint status``).
    """

    name: str
    pipeline: Buildable
    missing_outputs: Callable[[], list[str]]
    initial_tasks: list[Task] | None = None
    sources: int | None = None
    #: Called before the segment runs (not when it is skipped): what changed in the input it
    #: reads since the workflow pinned it (empty: nothing), e.g. a file edited during the run.
    input_changes: Callable[[], list[str]] | None = None


class Buildable(Protocol):
    """What a segment runs: a ``Pipeline``, or ``BuiltStages`` (anything whose ``build()`` gives its stages)."""

    def build(self) -> list[Any]: ...


@dataclass
class BuiltStages:
    """Stages already built, standing in for a ``Pipeline`` as a segment's ``pipeline`` (it has ``build``)."""

    name: str
    stages: list[Any]

    def build(self) -> list[Any]:
        return list(self.stages)


@dataclass
class SegmentResult:
    """What running (or skipping) one segment did."""

    name: str
    skipped: bool
    outputs: list[Task] = field(default_factory=list)
    seconds: float = 0.0
    summary: RunSummary | None = None


def run_segments(
    workflow: str, segments: list[Segment], executor: BaseExecutor, inputs: dict[str, Any]
) -> list[SegmentResult]:
    """Run ``segments`` in order with ``executor`` (see the module docstring); one result per segment.

    ``inputs`` (JSON-serialisable) describes what the workflow reads; with a checkpoint it is
    recorded by the first run and a rerun with other inputs is refused.
    Raises ``SegmentFailedError`` when a segment ends incomplete, and the checkpoint's errors.
    """
    if not segments:
        raise ValueError(f"workflow {workflow!r} has no segments")
    names = [s.name for s in segments]
    if len(set(names)) != len(names):
        raise ValueError(f"workflow {workflow!r}: segment names must be distinct, got {names}")
    _refuse_shard(workflow, executor)
    built = [s.pipeline.build() for s in segments]
    record = None
    if executor.checkpoint is not None:
        record = _open_record(workflow, segments, built, executor, inputs)
    results: list[SegmentResult] = []
    with executor.runtime(built):
        for index, (segment, stages) in enumerate(zip(segments, built, strict=True)):
            if record is not None and record.segment_done(index, segment.name):
                results.append(SegmentResult(segment.name, skipped=True))
                following = index + 1 < len(segments) and not record.segment_done(index + 1, segments[index + 1].name)
                if following:
                    _require_outputs_of_done(record, index, segment)
                logger.info("workflow {}: segment {} ({}) is complete, skipped", workflow, index, segment.name)
                continue
            results.append(_run_segment(workflow, index, segment, stages, executor, record))
    return results


def _refuse_shard(workflow: str, executor: BaseExecutor) -> None:
    """A sharded executor cannot run a workflow (raises ``ValueError`` naming the checkpoint and the fix).

    A shard runs only its share of a segment's sources, yet its run ends without a failed task:
    its ``done`` record would let every shard skip the sources of the others (documents lost).
    """
    shard = executor.config.get("shard")
    if shard is not None:
        raise ValueError(
            f"workflow {workflow!r}: config shard={shard!r} cannot run a workflow (checkpoint {executor.checkpoint}): "
            "each segment ends at a barrier that needs every shard's outputs, and one shard would record a segment "
            "complete with only its own sources done. Fix: drop shard and run the workflow once; its segments "
            "resume at source level without it"
        )


def _open_record(
    workflow: str,
    segments: list[Segment],
    built: list[list[Any]],
    executor: BaseExecutor,
    inputs: dict[str, Any],
) -> Any:
    from nemo_curator.resumability.config import coerce_checkpoint
    from nemo_curator.resumability.fingerprint import describe_fingerprint, fingerprint_of_description
    from nemo_curator.resumability.workflow import SegmentPlan, WorkflowCheckpoint, WorkflowPlan

    plan_segments = []
    for segment, stages in zip(segments, built, strict=True):
        description = describe_fingerprint(stages)
        plan_segments.append(
            SegmentPlan(segment.name, fingerprint_of_description(description), description, segment.sources)
        )
    assert executor.checkpoint is not None
    record = WorkflowCheckpoint.open(coerce_checkpoint(executor.checkpoint))
    if not record.adopt(WorkflowPlan(workflow, inputs, plan_segments)):
        logger.info("workflow {}: resuming from checkpoint {}", workflow, record.config.display)
    return record


def _require_outputs_of_done(record: Any, index: int, segment: Segment) -> None:
    from nemo_curator.resumability.workflow import WorkflowOutputsMissingError

    missing = segment.missing_outputs()
    if missing:
        listed = "\n".join(f"  - {m}" for m in missing[:10])
        more = f"\n  ... and {len(missing) - 10} more" if len(missing) > 10 else ""
        raise WorkflowOutputsMissingError(
            f"segment {index} ({segment.name}) is recorded complete in checkpoint {record.config.display}, but "
            f"outputs the next segment reads are gone:\n{listed}{more}\n"
            "Fix: restore them, or start over with a new checkpoint location and new output paths"
        )


def _refuse_lost_outputs(workflow: str, index: int, segment: Segment, missing: list[str], checkpoint: Any) -> None:
    """A checkpointed segment ran to the end without writing some outputs: they were lost after their
    sources were recorded complete, and a rerun would skip those sources again (raises, naming the fix)."""
    from nemo_curator.resumability.workflow import WorkflowOutputsMissingError

    listed = "\n".join(f"  - {m}" for m in missing[:10])
    more = f"\n  ... and {len(missing) - 10} more" if len(missing) > 10 else ""
    raise WorkflowOutputsMissingError(
        f"workflow {workflow}: segment {index} ({segment.name}) ran to the end, but outputs the next segment reads "
        f"are missing:\n{listed}{more}\nTheir sources are recorded complete in checkpoint "
        f"{getattr(checkpoint, 'display', checkpoint)}, so a rerun would not write them again. Fix: restore them, "
        "or start over with a new checkpoint location and new output paths"
    )


def _run_segment(
    workflow: str,
    index: int,
    segment: Segment,
    stages: list[Any],
    executor: BaseExecutor,
    record: Any,
) -> SegmentResult:
    start = time.perf_counter()
    changes = segment.input_changes() if segment.input_changes is not None else []
    if changes:
        listed = "\n".join(f"  - {c}" for c in changes[:10])
        raise InputChangedError(
            f"workflow {workflow}: the input changed since the workflow started, before segment {index} "
            f"({segment.name}) reads it again:\n{listed}\nIts earlier segments were computed from the old input. "
            "Fix: restore the input and run again, or start over with a new checkpoint location and output path"
        )
    runner = executor if record is None else executor.with_checkpoint(record.segment_config(index, segment.name))
    logger.info("workflow {}: segment {} ({}) starts", workflow, index, segment.name)
    outputs = runner.execute(stages, segment.initial_tasks)
    summary = runner.last_summary
    failed = summary.failed_tasks if summary is not None else 0
    if failed:
        raise SegmentFailedError(
            f"workflow {workflow}: segment {index} ({segment.name}) ended with {failed} failed task(s) (see the "
            "warnings above); the segments after it did not run. Fix the cause and run again: "
            + ("only the failed sources are redone" if record is not None else "without a checkpoint all is redone")
        )
    missing = segment.missing_outputs()
    if missing and record is not None:
        _refuse_lost_outputs(workflow, index, segment, missing, runner.checkpoint)
    if missing:
        raise SegmentFailedError(
            f"workflow {workflow}: segment {index} ({segment.name}) finished, but {len(missing)} of its outputs are "
            f"missing (first: {missing[0]}); the segments after it did not run. Run again"
        )
    seconds = time.perf_counter() - start
    if record is not None:
        record.mark_done(index, segment.name, {"outputs": len(outputs), "seconds": round(seconds, 3)})
    logger.info("workflow {}: segment {} ({}) complete in {:.1f} s", workflow, index, segment.name, seconds)
    return SegmentResult(segment.name, skipped=False, outputs=outputs, seconds=seconds, summary=summary)


def split_at_barriers(stages: list[Any], run_token: str = "") -> list[tuple[str, list[Any]]]:
    """``(segment name, stages)`` per segment of a pipeline with barrier stages (``is_barrier``).

    A barrier ends its segment with its ``write_stage(run_token)`` and starts the next one with
    its ``read_stages(run_token)`` (whose first stage is that segment's source stage): the token
    keeps one run's (or one checkpoint's) barrier files apart from any other's. Raises
    ``ValueError`` for a barrier that is first or last, or a stage after a barrier marked
    ``is_source_stage``.
    """
    segments: list[tuple[str, list[Any]]] = []
    current: list[Any] = []
    name = "start"
    for i, stage in enumerate(stages):
        if not getattr(stage, "is_barrier", False):
            if segments and getattr(stage, "is_source_stage", False):
                raise ValueError(
                    f"stage {stage.name!r} is marked is_source_stage after barrier {segments[-1][0]!r}: after a "
                    "barrier, the partitions are the sources"
                )
            current.append(stage)
            continue
        if i == 0 or i == len(stages) - 1:
            where = "first" if i == 0 else "last"
            raise ValueError(
                f"barrier stage {stage.name!r} is the {where} stage; a barrier needs stages before it (whose outputs "
                "it shuffles) and after it (which write what it groups)"
            )
        segments.append((f"{name}-to-{stage.name}", [*current, stage.write_stage(run_token)]))
        current = list(stage.read_stages(run_token))
        name = stage.name
    segments.append((f"{name}-to-end", current))
    return segments


def barrier_run_token(executor: BaseExecutor) -> str:
    """Names the barrier files of one checkpoint (stable across its resumes) or of one unckeckpointed run.

    A barrier's partition is every file in its folder, so files of another run (another input,
    another grouping, an abandoned checkpoint) must never share that folder.
    """
    if executor.checkpoint is None:
        return "run-" + uuid.uuid4().hex[:16]
    from nemo_curator.resumability.config import coerce_checkpoint

    location = coerce_checkpoint(executor.checkpoint).location_id
    return "ckpt-" + hashlib.blake2b(location.encode(), digest_size=8).hexdigest()


def run_pipeline_with_barriers(
    name: str, stages: list[Any], executor: BaseExecutor, initial_tasks: list[Task] | None
) -> list[Task]:
    """Run a pipeline with barrier stages as a workflow of segments; returns the last segment's outputs.

    With a checkpoint, the input files of a first stage that lists them (``FilePartitioningStage``)
    are pinned: a rerun on a changed input is refused (``WorkflowMismatchError``). Any other
    first stage gets a warning: a change of its input after the first segment completed is not seen.
    """
    parts = split_at_barriers(stages, barrier_run_token(executor))
    segments = [
        Segment(seg_name, BuiltStages(f"{name}:{seg_name}", seg_stages), lambda: []) for seg_name, seg_stages in parts
    ]
    segments[0].initial_tasks = initial_tasks
    inputs: dict[str, Any] = {}
    lister = getattr(stages[0], "list_files", None)
    if callable(lister):
        if executor.checkpoint is not None:
            inputs["files"] = [list(entry) for entry in lister()]
    elif executor.checkpoint is not None:
        logger.warning(
            "pipeline {}: its first stage {!r} does not list its input files, so a change of its input after the "
            "segment before the first barrier completed is not detected (that segment is skipped on a rerun). Fix: "
            "start with FilePartitioningStage (or JsonlReader), or use a new checkpoint when the input changes",
            name,
            stages[0].name,
        )
    results = run_segments(f"pipeline:{name}", segments, executor, inputs)
    return results[-1].outputs
