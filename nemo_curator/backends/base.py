"""What every executor shares: the execution plan, the completion-tracker seam, the base class.

An executor subclass implements ``_execute(plan, initial_tasks, tracker)``: it runs one
``StageAdapter`` per stage worker (``plan.adapter(i, tracker)``), streams tasks between
stages, and hands every batch of last-stage outputs to ``tracker.on_terminal`` *as it
arrives on the driver*, in one call on its result loop. It returns all last-stage outputs;
the base class removes sentinels.

There is always a tracker: without a checkpoint it is ``NO_TRACKER``, whose calls do
nothing, so that no executor branches on whether a run is checkpointed (except where the
backend must choose a different way to run; it reads ``tracker.tracking``). Without a
checkpoint nothing of ``nemo_curator.resumability`` is imported.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import math
import os
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, Self

from loguru import logger

from nemo_curator.backends.preemption import PREEMPTION_CONFIG_KEYS, PreemptionGuard, PreemptionSettings
from nemo_curator.backends.stage_adapter import SourceFilter, StageAdapter, StageRole, initial_task_id
from nemo_curator.stages.base import ProcessingStage
from nemo_curator.tasks import EmptyTask, FailedTask, Task, is_sentinel

if TYPE_CHECKING:
    from nemo_curator.resumability.config import CheckpointConfig


class CompletionTracker(Protocol):
    """Driver-side resumability for one run (implemented in ``nemo_curator.resumability``).

    A tracker may say ``tracking = False`` (``NoTracker``): the run is not checkpointed, the
    adapters stamp no lineage and the executor may run without a results channel. A tracker
    without the attribute tracks.
    """

    #: Given to the source stage's adapters; asks the ledger which sources are complete.
    source_filter: SourceFilter | None

    def on_terminal(self, tasks: list[Task]) -> None:
        """Forward the reports of these last-stage outputs (acknowledged, batched)."""
        ...

    def workers_started(self) -> None:
        """The executor's workers are up: the ledger may start now (optional; see ``LedgerTracker``)."""
        ...

    def close(self, success: bool, timeout_s: float | None = None) -> None:
        """Flush what is buffered and release the ledger; log the summary.

        With ``timeout_s`` (a preempted run) it waits at most that long for acknowledgements,
        then gives up on the rest (logged; their sources are redone by the next run).
        """
        ...


class NoTracker:
    """The tracker of a run without a checkpoint: tracks nothing, and every call is a no-op."""

    tracking = False
    source_filter: SourceFilter | None = None

    def on_terminal(self, tasks: list[Task]) -> None:
        pass

    def workers_started(self) -> None:
        pass

    def close(self, success: bool, timeout_s: float | None = None) -> None:
        pass

    def __repr__(self) -> str:
        return "NO_TRACKER"


#: The one ``NoTracker`` (it holds no state).
NO_TRACKER = NoTracker()


def is_tracking(tracker: CompletionTracker) -> bool:
    """Whether ``tracker`` checkpoints the run (true unless it says ``tracking = False``)."""
    return bool(getattr(tracker, "tracking", True))


@dataclass
class ExecutionPlan:
    """The built stage list with each stage's role in completion accounting."""

    stages: list[ProcessingStage]
    roles: list[StageRole]
    source_index: int
    #: With a checkpoint, let the source stage emit tasks without a content id (see ``StageAdapter``).
    allow_positional_source_ids: bool = False

    @staticmethod
    def from_stages(stages: list[ProcessingStage], *, allow_positional_source_ids: bool = False) -> ExecutionPlan:
        if not stages:
            raise ValueError("cannot execute a pipeline with no stages")
        for i, stage in enumerate(stages):
            if not isinstance(stage, ProcessingStage):
                raise TypeError(f"stage {i} is a {type(stage).__name__}, not a ProcessingStage")
        marked = [i for i, s in enumerate(stages) if getattr(s, "is_source_stage", False)]
        if len(marked) > 1:
            names = [stages[i].name for i in marked]
            raise ValueError(f"more than one stage is marked is_source_stage: {names}")
        source = marked[0] if marked else 0
        last = len(stages) - 1
        for i, stage in enumerate(stages):
            if getattr(stage, "is_sink_stage", False) and i != last:
                raise ValueError(
                    f"stage {stage.name!r} is marked is_sink_stage but is not the last stage; "
                    "the sink must be the last stage of the pipeline"
                )
        roles = [
            StageRole(index=i, is_source=i == source, is_sink=i == last, tracked=i >= source)
            for i in range(len(stages))
        ]
        return ExecutionPlan(
            stages=stages,
            roles=roles,
            source_index=source,
            allow_positional_source_ids=allow_positional_source_ids,
        )

    def adapter(self, index: int, tracker: CompletionTracker | None = None) -> StageAdapter:
        """The adapter of stage ``index`` for a run with ``tracker`` (``None``: ``NO_TRACKER``)."""
        role = self.roles[index]
        tracker = tracker if tracker is not None else NO_TRACKER
        tracking = is_tracking(tracker)
        return StageAdapter(
            self.stages[index],
            role,
            tracking=tracking,
            source_filter=tracker.source_filter if tracking and role.is_source else None,
            allow_positional_source_ids=self.allow_positional_source_ids,
        )

    def initial_tasks(self, initial_tasks: list[Task] | None) -> list[Task]:
        tasks = list(initial_tasks) if initial_tasks else [EmptyTask()]
        for i, task in enumerate(tasks):
            if not isinstance(task, Task):
                raise TypeError(f"initial task {i} is a {type(task).__name__}, not a Task")
            if not task.task_id:
                task.task_id = initial_task_id(task, i)
        return tasks


@dataclass
class RunSummary:
    """What the last run did (``executor.last_summary``)."""

    outputs: int = 0
    failed_tasks: int = 0
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


#: Config keys every executor accepts (the base class reads them).
BASE_CONFIG_KEYS = (
    frozenset({"num_cpus", "allow_pipeline_change", "allow_positional_source_ids", "shard", "ledger_in_driver"})
    | PREEMPTION_CONFIG_KEYS
)


def check_config_keys(owner: str, config: dict[str, Any], known: Iterable[str]) -> None:
    """Raise ``ValueError`` naming the unknown keys of ``config`` and listing the known ones.

    ``known`` are the executor's own keys; ``BASE_CONFIG_KEYS`` are always accepted.
    """
    accepted = set(known) | BASE_CONFIG_KEYS
    unknown = sorted(set(config) - accepted)
    if unknown:
        raise ValueError(f"{owner}: unknown config key(s) {unknown}; known keys: {sorted(accepted)}")


@dataclass(frozen=True)
class ExecutorSettings:
    """Base of each executor's frozen settings: one field per config key the executor reads.

    ``from_config`` refuses unknown keys; a subclass checks (and normalises) its values in
    ``__post_init__``, so a settings object that exists is valid. Both raise ``ValueError``
    when the executor is made, before any run.
    """

    #: The executor's name in error messages.
    owner: ClassVar[str] = "executor"

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Self:
        known = {f.name for f in fields(cls)}
        check_config_keys(cls.owner, config, known)
        return cls(**{k: v for k, v in config.items() if k in known})


class BaseExecutor(ABC):
    """Base for the three executors: ``XennaExecutor(config=None, checkpoint=None)`` etc.

    Config keys read here: ``num_cpus`` (logical CPUs of a local Ray started for the run),
    ``allow_pipeline_change`` (reuse a checkpoint written by a different pipeline, with a
    warning), ``allow_positional_source_ids`` (with a checkpoint, accept sources without a
    content id, identified by their position, with a warning; refused by default), ``shard``
    (``(index, count)`` or ``"slurm"``: process only that shard of the sources, so that several
    runs can share one checkpoint side by side; needs a checkpoint; see
    ``nemo_curator.resumability.shard``), ``ledger_in_driver`` (default ``True``: on a fresh
    checkpoint the ledger runs in the driver process, not in a Ray actor of its own; see
    ``LedgerHandle.open``), and for preemption (see
    ``nemo_curator.backends.preemption``):
    ``preemption_signals`` (default ``["SIGTERM", "SIGINT"]``; ``[]`` installs no handler),
    ``preemption_grace_s`` (default 30: how long a checkpointed run goes on after the first
    signal so that work in flight can finish) and ``preemption_flush_s`` (default 10: how long
    it then waits for the ledger to acknowledge the reports it holds).
    """

    name: str = "base"

    def __init__(
        self, config: dict[str, Any] | None = None, checkpoint: str | os.PathLike | CheckpointConfig | None = None
    ) -> None:
        self.config: dict[str, Any] = dict(config or {})
        # Kept as given (a path, URL or CheckpointConfig): coerced in _open_tracker, so that
        # nemo_curator.resumability is imported only by a checkpointed run.
        self.checkpoint: str | os.PathLike | CheckpointConfig | None = checkpoint
        self.preemption = PreemptionSettings.from_config(self.config)
        self.last_summary: RunSummary | None = None
        if self.config.get("shard") is not None:
            if checkpoint is None:
                raise ValueError(
                    f"{type(self).__name__}: config shard={self.config['shard']!r} needs a checkpoint (the shards of "
                    "one pipeline share it). Fix: pass checkpoint=..., or drop shard"
                )
            from nemo_curator.resumability.shard import parse_shard

            parse_shard(self.config["shard"])  # a bad value fails here, before any run

    def with_checkpoint(self, checkpoint: str | os.PathLike | CheckpointConfig | None) -> Self:
        """A copy of this executor (same class and settings) that runs with ``checkpoint``."""
        clone = copy.copy(self)
        clone.config = dict(self.config)
        clone.checkpoint = checkpoint
        clone.last_summary = None
        return clone

    def execute(self, stages: list[ProcessingStage], initial_tasks: list[Task] | None = None) -> list[Task]:
        """Run ``stages`` and return the last stage's outputs without sentinels.

        Raises ``PreemptedError`` (a ``SystemExit`` with code 128 + signal number) after a
        preemption signal, once the reports of the outputs written are saved (bounded by
        ``preemption_flush_s``) and a Ray started for the run is stopped.
        """
        plan = ExecutionPlan.from_stages(
            stages, allow_positional_source_ids=bool(self.config.get("allow_positional_source_ids", False))
        )
        tasks = plan.initial_tasks(initial_tasks)
        start = time.perf_counter()
        guard = PreemptionGuard(self.preemption, checkpoint=_checkpoint_location(self.checkpoint))
        if self.checkpoint is not None:
            _import_resumability_in_background()
        try:
            with self._runtime(plan):
                guard.install()  # after ray.init, which installs a SIGTERM handler of its own
                outputs = self._run(plan, tasks, guard)
        finally:
            guard.uninstall()
        if guard.preempted:
            error = guard.error(finished=outputs is not None)
            self.last_summary = RunSummary(seconds=time.perf_counter() - start, extra={"preempted": error.signal_name})
            logger.warning("{} ({:.1f} s after the signal)", error, guard.seconds_since_signal())
            raise error
        assert outputs is not None
        failed = [t for t in outputs if isinstance(t, FailedTask)]
        if failed:
            logger.warning(
                "{} task(s) failed; their sources stay incomplete and are redone on the next run (first: {} in {!r})",
                len(failed),
                failed[0].reason,
                failed[0].stage_name,
            )
        results = [t for t in outputs if not is_sentinel(t)]
        self.last_summary = RunSummary(
            outputs=len(results), failed_tasks=len(failed), seconds=time.perf_counter() - start
        )
        return results

    def _run(self, plan: ExecutionPlan, tasks: list[Task], guard: PreemptionGuard) -> list[Task] | None:
        """Open the tracker, execute, close the tracker; ``None`` when a signal stopped the run early.

        After a signal the tracker gets ``preemption_flush_s`` to have its reports acknowledged;
        whatever the run or the tracker raised while stopping is logged, not raised (the caller
        raises ``PreemptedError``).
        """
        tracker: CompletionTracker = NO_TRACKER
        outputs: list[Task] | None = None
        try:
            if self.checkpoint is not None:
                tracker = self._open_tracker(plan)
            outputs = self._execute(plan, tasks, tracker)
        except BaseException as exc:
            if not (guard.preempted or guard.adopt(exc)):
                raise
            if not isinstance(exc, SystemExit | KeyboardInterrupt):
                logger.error("{}: the run failed while stopping: {!r}", self.name, exc)
            logger.warning("{}: {}", self.name, guard.describe_stop())
        finally:
            guard.stopping()
            if not guard.preempted:
                tracker.close(success=outputs is not None)
            else:
                try:
                    tracker.close(success=outputs is not None, timeout_s=self.preemption.flush_s)
                except Exception as exc:
                    logger.error(
                        "{}: the checkpoint could not take the last reports while stopping ({!r}); what it "
                        "acknowledged before is kept, the rest is redone by the next run",
                        self.name,
                        exc,
                    )
        return outputs

    def runtime(self, stage_lists: list[list[ProcessingStage]]) -> Any:
        """Context manager: Ray for several runs of this executor (e.g. a workflow's segments).

        Sized for the widest of ``stage_lists``; runs inside it reuse that Ray instead of
        starting (and stopping) one each.
        """
        widest = max(stage_lists, key=lambda stages: sum(max(s.resources.cpus, 0.0) for s in stages))
        return self._runtime(ExecutionPlan.from_stages(widest))

    def _runtime(self, plan: ExecutionPlan) -> Any:
        """Context manager that makes Ray available for the run (see ``ray_runtime``).

        A local Ray started for the run gets enough *logical* CPUs for one worker of every
        stage at once (at least the machine's cores), so small machines never deadlock
        waiting for CPUs that a streaming pipeline holds.
        """
        from nemo_curator.backends.ray_runtime import ray_runtime

        num_cpus = self.config.get("num_cpus")
        if num_cpus is None:
            wanted = math.ceil(sum(max(s.resources.cpus, 0.0) for s in plan.stages)) + 1
            num_cpus = max(os.cpu_count() or 1, wanted)
        return ray_runtime(num_cpus=num_cpus, dashboard=self._needs_dashboard())

    def _needs_dashboard(self) -> bool:
        return False

    def _open_tracker(self, plan: ExecutionPlan) -> CompletionTracker:
        """Start this run's ledger (imported only here: ``checkpoint=None`` never loads it).

        Config ``allow_pipeline_change=True`` reuses a checkpoint written by a different
        pipeline (with a loud warning) instead of refusing it; ``shard`` restricts the run to
        one shard of the sources.
        """
        from nemo_curator.resumability.config import coerce_checkpoint
        from nemo_curator.resumability.shard import parse_shard
        from nemo_curator.resumability.tracker import LedgerTracker

        assert self.checkpoint is not None
        return LedgerTracker.open(
            coerce_checkpoint(self.checkpoint),
            plan.stages,
            allow_pipeline_change=bool(self.config.get("allow_pipeline_change", False)),
            shard=parse_shard(self.config.get("shard")),
            ledger_in_driver=bool(self.config.get("ledger_in_driver", True)),
        )

    @abstractmethod
    def _execute(self, plan: ExecutionPlan, initial_tasks: list[Task], tracker: CompletionTracker) -> list[Task]:
        """Run the plan; return every last-stage output (sentinels included).

        Every batch of last-stage outputs goes to ``tracker.on_terminal`` as it reaches the driver.
        """


def _import_resumability_in_background() -> None:
    """Import the tracker's modules while Ray starts or connects.

    Ray's start-up mostly waits on sockets and processes, so the import (about 0.07 s of CPU)
    overlaps it instead of delaying the first work. The ledger's own modules (LMDB, numpy) are
    not among them: they load when the ledger starts (``LedgerActor``). ``_open_tracker`` imports the same
    modules: Python's import locks make it wait for this import or do it itself (an error here
    is left for that import to raise).
    """

    def load() -> None:
        with contextlib.suppress(Exception):
            importlib.import_module("nemo_curator.resumability.tracker")
            importlib.import_module("nemo_curator.resumability.actor")

    threading.Thread(target=load, name="import-resumability", daemon=True).start()


def _checkpoint_location(checkpoint: Any) -> str | None:
    """Where a checkpoint lives, for messages (a path, URL or ``CheckpointConfig.path``)."""
    if checkpoint is None:
        return None
    return str(getattr(checkpoint, "path", checkpoint))
