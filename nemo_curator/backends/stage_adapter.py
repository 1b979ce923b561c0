"""Backend-independent execution of one stage on one worker.

Every backend wraps its workers around a ``StageAdapter``: it calls user code, and stamps
each output with its deterministic ``task_id`` and, when checkpointing is on, its lineage
(source id -> credit). Backends never interpret user results themselves.

Invariants (with checkpointing on, from the source stage onwards):
- the credit of each input task is handed, exactly and in full, to its outputs: surviving
  slots share it; when every slot is filtered a ``NoneTask`` sentinel carries it on;
- a failure turns the input into a ``FailedTask`` that keeps the input's credit (it is never
  returned, so the source stays incomplete);
- sentinels pass through untouched, so their credit reaches the driver with the outputs.
Ids are pure functions of the parent id and the slot position (or, at the source stage, of
the task's content), so reruns, retries and every executor give the same ids.
"""

from __future__ import annotations

import copy
import hashlib
import json
import traceback
from dataclasses import dataclass
from typing import Any, Protocol

from loguru import logger

from nemo_curator.stages.base import ProcessingStage
from nemo_curator.tasks import FailedTask, NoneTask, Task, is_sentinel


class StageError(RuntimeError):
    """A stage raised: names the stage and the task and chains the original exception."""

    def __init__(self, stage_name: str, task_id: str, cause: BaseException) -> None:
        super().__init__(f"stage {stage_name!r} failed on task {task_id!r}: {type(cause).__name__}: {cause}")
        self.stage_name = stage_name
        self.task_id = task_id
        self.__cause__ = cause

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_stage_error, (self.stage_name, self.task_id, self.__cause__))


def _rebuild_stage_error(stage_name: str, task_id: str, cause: BaseException) -> StageError:
    return StageError(stage_name, task_id, cause)


class SourceFilter(Protocol):
    """Worker-side view of the ledger used by the source stage (picklable)."""

    def completed(self, source_ids: list[str]) -> set[str]:
        """The subset of ``source_ids`` already complete in the checkpoint."""
        ...


@dataclass(frozen=True)
class StageRole:
    """Where a stage sits in the pipeline's accounting."""

    index: int
    is_source: bool
    is_sink: bool
    tracked: bool  # at or after the source stage


def _digest(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def source_id_for(task: Task, parent_id: str, position: int) -> str:
    """A source's id: 128 bits from its content id, else from its position under its parent."""
    det = task.get_deterministic_id()
    if det is not None:
        return _digest("det\x00" + det)
    return _digest(f"pos\x00{parent_id}\x00{position}")


def initial_task_id(task: Task, position: int) -> str:
    det = task.get_deterministic_id()
    return _digest("init\x00" + det) if det is not None else f"init{position}"


class StageAdapter:
    """Runs ``stage`` on batches of tasks; one instance per worker.

    ``tracking`` is true when checkpointing is on; ``source_filter`` is given to the source
    stage only, so that already complete sources are dropped before they go further.
    """

    def __init__(
        self,
        stage: ProcessingStage,
        role: StageRole,
        tracking: bool = False,
        source_filter: SourceFilter | None = None,
    ) -> None:
        self.stage = stage
        self.role = role
        self.tracking = tracking and role.tracked
        self.source_filter = source_filter if role.is_source else None
        self.skipped_sources = 0

    def setup_on_node(self, node_info: Any = None, worker_metadata: Any = None) -> None:
        self._call_user("setup_on_node", lambda: self.stage.setup_on_node(node_info, worker_metadata))

    def setup(self, worker_metadata: Any = None) -> None:
        self._call_user("setup", lambda: self.stage.setup(worker_metadata))

    def teardown(self) -> None:
        self._call_user("teardown", self.stage.teardown)

    def _call_user(self, what: str, fn: Any) -> None:
        try:
            fn()
        except Exception as exc:
            raise StageError(self.stage.name, f"<{what}>", exc) from exc

    # -- processing -------------------------------------------------------------------

    def process_batch(self, tasks: list[Task]) -> list[Task]:
        """Process ``tasks``; returns stamped outputs followed by pass-through sentinels."""
        passthrough = [t for t in tasks if is_sentinel(t)]
        real = [t for t in tasks if not is_sentinel(t)] if passthrough else tasks
        if not real:
            return passthrough
        outputs: list[Task] = []
        if self.stage.overrides_process_batch():
            self._run_batch(real, outputs)
        else:
            for task in real:
                try:
                    result = self.stage.process(task)
                except Exception as exc:
                    outputs.append(self._failure(task, exc))
                    continue
                outputs.extend(self._stamp(task, result))
        if self.role.is_source:
            outputs = self._drop_completed_sources(outputs)
        outputs.extend(passthrough)
        return outputs

    def _run_batch(self, real: list[Task], outputs: list[Task]) -> None:
        try:
            results = self.stage.process_batch(real)
        except Exception as exc:
            outputs.extend(self._failure(task, exc) for task in real)
            return
        if results is None:
            results = []
        if not isinstance(results, list):
            raise TypeError(
                f"stage {self.stage.name!r}: process_batch must return a list, got {type(results).__name__}"
            )
        if len(results) == len(real):
            for task, result in zip(real, results, strict=True):
                outputs.extend(self._stamp(task, result))
        else:
            outputs.extend(self._stamp_merged(real, results))

    def _failure(self, task: Task, exc: Exception) -> FailedTask:
        if not self.tracking or task._lineage is None:
            raise StageError(self.stage.name, task.task_id, exc) from exc
        reason = f"{type(exc).__name__}: {exc}"
        logger.warning(
            "stage {!r} failed on task {!r} ({}); its source will be redone on the next run\n{}",
            self.stage.name,
            task.task_id,
            reason,
            "".join(traceback.format_exception(exc)),
        )
        failed = FailedTask(dataset_name=task.dataset_name, reason=reason, stage_name=self.stage.name)
        failed.task_id = task.task_id + "_e"
        failed._lineage = task._lineage
        return failed

    def _slots(self, result: Any) -> list[Task | None]:
        if result is None:
            return []
        if isinstance(result, Task):
            return [result]
        if isinstance(result, list | tuple):
            for item in result:
                if item is not None and not isinstance(item, Task):
                    raise TypeError(
                        f"stage {self.stage.name!r} returned a list containing {type(item).__name__}; "
                        "expected Task or None"
                    )
            return list(result)
        raise TypeError(
            f"stage {self.stage.name!r} returned {type(result).__name__}; expected a Task, a list of Tasks or None"
        )

    def _stamp(self, parent: Task, result: Any) -> list[Task]:
        slots = self._slots(result)
        return self._assign(parent.task_id, parent._lineage, slots)

    def _stamp_merged(self, parents: list[Task], results: list[Any]) -> list[Task]:
        """A batch whose outputs do not line up with its inputs: ids from the sorted input ids."""
        slots: list[Task | None] = []
        for result in results:
            slots.extend(self._slots(result) if isinstance(result, list | tuple) else [result])
        base = _digest("merge\x00" + json.dumps(sorted(p.task_id for p in parents)))
        lineage = None
        if self.tracking:
            from nemo_curator.tasks.credit import merge_lineages

            lineage = merge_lineages([p._lineage or {} for p in parents])
        outputs = self._assign(base, lineage, slots, force_suffix=True)
        return outputs

    def _assign(
        self,
        parent_id: str,
        lineage: dict[str, Any] | None,
        slots: list[Task | None],
        force_suffix: bool = False,
    ) -> list[Task]:
        live: list[tuple[int, Task]] = []
        seen: set[int] = set()
        for i, slot in enumerate(slots):
            if slot is None or isinstance(slot, NoneTask):
                continue
            if id(slot) in seen:
                slot = copy.copy(slot)
            seen.add(id(slot))
            live.append((i, slot))
        single = len(slots) == 1 and not force_suffix
        for i, child in live:
            if self.role.is_source:
                child.task_id = source_id_for(child, parent_id, i)
            else:
                child.task_id = parent_id if single else f"{parent_id}_{i}"
        if not self.tracking:
            for _, child in live:
                child._lineage = None
            return [child for _, child in live]
        if self.role.is_source:
            for _, child in live:
                from nemo_curator.tasks.credit import Credit

                child._lineage = {child.task_id: Credit.one()}
            return [child for _, child in live]
        if lineage is None:
            raise RuntimeError(f"stage {self.stage.name!r}: a tracked task {parent_id!r} arrived without lineage")
        if not live:
            sentinel = NoneTask(dataset_name="")
            sentinel.task_id = f"{parent_id}_f"
            sentinel._lineage = lineage
            return [sentinel]
        from nemo_curator.tasks.credit import split_lineage

        for (_, child), share in zip(live, split_lineage(lineage, len(live)), strict=True):
            child._lineage = share
        return [child for _, child in live]

    def _drop_completed_sources(self, outputs: list[Task]) -> list[Task]:
        unique: list[Task] = []
        seen: set[str] = set()
        for task in outputs:
            if isinstance(task, FailedTask):
                unique.append(task)
                continue
            if task.task_id in seen:
                logger.warning(
                    "source stage {!r} emitted two tasks with the same content id {!r}; keeping the first",
                    self.stage.name,
                    task.task_id,
                )
                continue
            seen.add(task.task_id)
            unique.append(task)
        if self.source_filter is None:
            return unique
        done = self.source_filter.completed([t.task_id for t in unique if not isinstance(t, FailedTask)])
        if not done:
            return unique
        self.skipped_sources += len(done)
        return [t for t in unique if isinstance(t, FailedTask) or t.task_id not in done]
