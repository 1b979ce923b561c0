"""Backend-independent execution of one stage on one worker.

Every backend wraps its workers around a ``StageAdapter``: it calls user code, and stamps
each output with its deterministic ``task_id`` and, when checkpointing is on, its lineage
(source id -> credit). Backends never interpret user results themselves.

Invariants (with checkpointing on, from the source stage onwards):
- the credit of each input task is handed, exactly and in full, to its outputs: surviving
  slots share it; when every slot is filtered a ``NoneTask`` sentinel carries it on;
- an output carries the credit of every input it may have come from. ``process(task)``'s
  outputs come from ``task``. An output of ``process_batch(tasks)`` comes from the input it
  *is* (the same object returned) or whose parent token it carries in ``_metadata`` (see
  ``PARENT_TOKEN_KEY``); when any output of a batch shows neither, every output of that batch
  carries the credit of all its inputs (their sources complete together). An input without
  outputs was filtered when every output is a returned input object; otherwise it may have been
  merged into them and its credit rides on every output of the batch. Outputs are never matched
  to inputs by position;
- an object returned more than once in one call is copied, so that each return is its own
  output with its own id and credit;
- a failure turns the input into a ``FailedTask`` that keeps the input's credit (it is never
  returned, so the source stays incomplete); at the source stage or before it (no source yet)
  the ``FailedTask`` carries no credit: no source is recorded for that input and the next run
  redoes it;
- sentinels pass through untouched, so their credit reaches the driver with the outputs;
- every source has a content id (``Task.get_deterministic_id()``), unless the run allows
  positional ones (``allow_positional_source_ids``).
Ids are pure functions of the parent id and the slot position (or, at the source stage, of
the task's content), so reruns, retries and every executor give the same ids.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import traceback
from dataclasses import dataclass
from typing import Any, Protocol

from loguru import logger

from nemo_curator.stages.base import ProcessingStage
from nemo_curator.tasks import FailedTask, NoneTask, Task, is_sentinel

#: During one ``process_batch`` call, each input's ``_metadata`` holds a parent token under
#: this key; an output built with that ``_metadata`` (the same dict or a copy) is attributed
#: to that input. The adapter removes the key from inputs and outputs when the call returns.
PARENT_TOKEN_KEY = "_nemo_curator_parent"


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
    return _source_id(task.get_deterministic_id(), parent_id, position)


def _source_id(content_id: str | None, parent_id: str, position: int) -> str:
    if content_id is not None:
        return _digest("det\x00" + content_id)
    return _digest(f"pos\x00{parent_id}\x00{position}")


def initial_task_id(task: Task, position: int) -> str:
    det = task.get_deterministic_id()
    return _digest("init\x00" + det) if det is not None else f"init{position}"


class PositionalSourceIdError(ValueError):
    """A checkpointed run's source stage emitted a task without a content id."""

    def __init__(self, stage_name: str, task_class: str) -> None:
        cls = task_class
        super().__init__(
            f"source stage {stage_name!r} emitted a {cls} whose get_deterministic_id() returns None. With a "
            "checkpoint every source needs an id derived from its content: an id derived from its position "
            "would point at other content if the order of the sources changed between runs, and that content "
            f"would be skipped as complete. Fix: implement {cls}.get_deterministic_id() to return a stable "
            "string from the task's content (e.g. its input paths), or, if the sources' order never changes, "
            "pass config={'allow_positional_source_ids': True} to the executor"
        )
        self.stage_name = stage_name
        self.task_class = cls

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.stage_name, self.task_class))


def _flatten(results: list[Any]) -> list[Any]:
    slots: list[Any] = []
    for result in results:
        if isinstance(result, list | tuple):
            slots.extend(result)
        else:
            slots.append(result)
    return slots


#: ``_owners`` value of a filtered slot (``None`` or a ``NoneTask``).
_FILTERED = -1

#: type -> whether it is a filtered slot's type; ``isinstance`` against the abstract ``Task``
#: costs about a microsecond, and every output is checked.
_FILTERED_TYPE: dict[type, bool] = {type(None): True}
_TASK_TYPE: dict[type, bool] = {}


def _is_filtered(slot: Any) -> bool:
    kind = type(slot)
    filtered = _FILTERED_TYPE.get(kind)
    if filtered is None:
        filtered = _FILTERED_TYPE[kind] = issubclass(kind, NoneTask)
    return filtered


def _is_task(obj: Any) -> bool:
    kind = type(obj)
    known = _TASK_TYPE.get(kind)
    if known is None:
        known = _TASK_TYPE[kind] = issubclass(kind, Task)
    return known


_SENTINEL_TYPE: dict[type, bool] = {}


def _is_sentinel(task: Any) -> bool:
    kind = type(task)
    known = _SENTINEL_TYPE.get(kind)
    if known is None:
        known = _SENTINEL_TYPE[kind] = is_sentinel(task)
    return known


def _unmark(tasks: list[Any]) -> None:
    for task in tasks:
        meta = getattr(task, "_metadata", None)
        if type(meta) is dict or isinstance(meta, dict):
            meta.pop(PARENT_TOKEN_KEY, None)


def _owners(real: list[Task], slots: list[Task | None], key: int) -> list[int | None]:
    """For each slot: the index of the input it is or whose token it carries, ``_FILTERED``, or ``None``."""
    by_object = {id(task): i for i, task in enumerate(real)}
    owners: list[int | None] = []
    for slot in slots:
        if _is_filtered(slot):
            owners.append(_FILTERED)
            continue
        owner = by_object.get(id(slot))
        if owner is None:
            meta = slot._metadata  # type: ignore[union-attr]
            token = meta.get(PARENT_TOKEN_KEY) if isinstance(meta, dict) else None
            if type(token) is tuple and len(token) == 2 and token[0] == key and 0 <= token[1] < len(real):
                owner = token[1]
        owners.append(owner)
    return owners


def _may_be_merged(real: list[Task], slots: list[Task | None], groups: list[list[int]]) -> bool:
    """Whether an input without outputs may have been merged into another input's output.

    ``groups[i]`` lists the positions in ``slots`` of input ``i``'s outputs. No when every input
    has outputs or none has. Yes whenever some inputs have outputs and some have none: even a
    batch whose outputs are all returned input objects may have merged the others into one of
    them in place (``tasks[0]`` packed and returned), which cannot be told from a filter. The
    inputs without outputs then have their credit ride on every output of the batch, so they
    complete when those do, never before (a filter's sources complete a little later).
    """
    return not all(groups) and any(groups)


def _bound_to_checkpoint(stage: ProcessingStage, source_filter: SourceFilter) -> ProcessingStage:
    """The source stage as it runs under a checkpoint: ``stage.for_checkpoint(source_filter)`` if it has one.

    A stage that plans its sources against the checkpoint (``FilePartitioningStage`` keeps the
    membership of complete groups) returns a bound copy; the user's stage object is not changed.
    """
    bind = getattr(stage, "for_checkpoint", None)
    return bind(source_filter) if callable(bind) else stage


class StageAdapter:
    """Runs ``stage`` on batches of tasks; one instance per worker.

    ``tracking`` is true when checkpointing is on; ``source_filter`` is given to the source
    stage only, so that already complete sources are dropped before they go further.
    ``allow_positional_source_ids`` lets a checkpointed source stage emit tasks without a
    content id (identified by position, with a warning) instead of failing the run.
    """

    def __init__(
        self,
        stage: ProcessingStage,
        role: StageRole,
        tracking: bool = False,
        source_filter: SourceFilter | None = None,
        allow_positional_source_ids: bool = False,
    ) -> None:
        self.stage = stage
        self.role = role
        self.checkpointed = tracking
        self.tracking = tracking and role.tracked
        self.source_filter = source_filter if role.is_source else None
        self.allow_positional_source_ids = allow_positional_source_ids
        self.skipped_sources = 0
        # Parent tokens are (nonce, call, input index): unique per worker and call, so a token
        # kept from another call or worker never matches; plain ints survive copies and pickling.
        self._nonce = int.from_bytes(os.urandom(8), "little")
        self._calls = 0
        self._warned: set[str] = set()
        if self.source_filter is not None and self.tracking:
            self.stage = _bound_to_checkpoint(stage, self.source_filter)

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

    def _warn_once(self, kind: str, message: str, *args: Any) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            logger.warning(message, *args)

    # -- processing -------------------------------------------------------------------

    def process_batch(self, tasks: list[Task]) -> list[Task]:
        """Process ``tasks``; returns stamped outputs followed by pass-through sentinels."""
        passthrough = [t for t in tasks if _is_sentinel(t)]
        real = [t for t in tasks if not _is_sentinel(t)] if passthrough else tasks
        if not real:
            return passthrough
        outputs: list[Task] = []
        seen: set[int] = set()  # objects already stamped in this call: a repeat is copied
        # Inputs' ids and lineages as they came: stamping an output that is an input object
        # must not change the parent of another input's outputs.
        parents = [(t.task_id, t._lineage) for t in real]
        if self.stage.overrides_process_batch():
            self._run_batch(real, parents, outputs, seen)
        else:
            for task, (parent_id, lineage) in zip(real, parents, strict=True):
                try:
                    result = self.stage.process(task)
                except Exception as exc:
                    outputs.append(self._failure(task, parent_id, lineage, exc))
                    continue
                children = self._name(parent_id, self._slots(result), seen)
                outputs.extend(self._credit(parent_id, lineage, children))
        if self.role.is_source:
            outputs = self._drop_completed_sources(outputs)
        outputs.extend(passthrough)
        return outputs

    def _run_batch(
        self,
        real: list[Task],
        parents: list[tuple[str, dict[str, Any] | None]],
        outputs: list[Task],
        seen: set[int],
    ) -> None:
        call = self._mark_parents(real)
        try:
            try:
                results = self.stage.process_batch(real)
            except Exception as exc:
                outputs.extend(
                    self._failure(task, parent_id, lineage, exc)
                    for task, (parent_id, lineage) in zip(real, parents, strict=True)
                )
                return
            if results is None:
                results = []
            if not isinstance(results, list):
                raise TypeError(
                    f"stage {self.stage.name!r}: process_batch must return a list, got {type(results).__name__}"
                )
            slots = self._slots(_flatten(results))
            owners = _owners(real, slots, call)
        finally:
            _unmark(real)
        _unmark(slots)
        n = len(real)
        if (
            len(slots) == n
            and not self.role.is_source
            and None not in owners
            and _FILTERED not in owners
            and len(set(owners)) == n
        ):
            # One output per input, in any order (1:1 maps, returned inputs): each output
            # takes its input's id and whole credit. Distinct owners imply distinct objects.
            for slot, owner in zip(slots, owners, strict=True):
                parent_id, lineage = parents[owner]  # type: ignore[index]
                if self.tracking and lineage is None:
                    break  # _credit raises below
                slot.task_id = parent_id  # type: ignore[union-attr]
                slot._lineage = lineage if self.tracking else None  # type: ignore[union-attr]
            else:
                outputs.extend(slots)  # type: ignore[arg-type]
                return
        if None in owners:
            outputs.extend(self._unattributed(parents, results, seen))
            return
        groups: list[list[int]] = [[] for _ in real]
        for k, owner in enumerate(owners):
            if owner != _FILTERED:
                groups[owner].append(k)  # type: ignore[index]
        placed: list[Task | None] = [None] * len(slots)  # outputs keep the order the stage returned
        unclaimed: list[dict[str, Any]] = []
        fold = self.tracking and not self.role.is_source and _may_be_merged(real, slots, groups)
        for (parent_id, lineage), group in zip(parents, groups, strict=True):
            if fold and not group:
                unclaimed.append(lineage or {})
                continue
            children = self._name(parent_id, [slots[k] for k in group], seen)
            credited = self._credit(parent_id, lineage, children)
            if group:
                for k, child in zip(group, credited, strict=True):
                    placed[k] = child
            else:
                outputs.extend(credited)  # a filtered input's sentinel (if tracking)
        live = [child for child in placed if child is not None]
        if unclaimed:
            from nemo_curator.tasks.credit import merge_lineages, split_lineage

            shares = split_lineage(merge_lineages(unclaimed), len(live))
            for child, share in zip(live, shares, strict=True):
                child._lineage = merge_lineages([child._lineage or {}, share])
        outputs.extend(live)

    def _mark_parents(self, real: list[Task]) -> int:
        """Put a parent token in each input's ``_metadata`` (a dict shared by two inputs is split).

        Returns this call's key: tokens are ``(key, input index)``.
        """
        self._calls += 1
        key = self._nonce + self._calls
        dicts: set[int] = set()
        for i, task in enumerate(real):
            meta = task._metadata
            if not isinstance(meta, dict):
                continue  # attributable by identity only
            if id(meta) in dicts:  # e.g. siblings of a fan-out built with one _metadata
                meta = task._metadata = dict(meta)
            dicts.add(id(meta))
            meta[PARENT_TOKEN_KEY] = (key, i)
        return key

    def _unattributed(
        self, parents: list[tuple[str, dict[str, Any] | None]], results: list[Any], seen: set[int]
    ) -> list[Task]:
        """A batch with an output that names no input: every output carries the whole batch's credit.

        Ids: with one result per input, result ``i`` is named under input ``i`` (a name only, so
        that a redone batch writes the same set of names); otherwise under the batch's sorted ids.
        """
        if len(results) == len(parents):
            children: list[Task] = []
            for (parent_id, _), result in zip(parents, results, strict=True):
                children.extend(self._name(parent_id, self._slots(result), seen))
        else:
            merged_id = _digest("merge\x00" + json.dumps(sorted(parent_id for parent_id, _ in parents)))
            children = self._name(merged_id, self._slots(_flatten(results)), seen, force_suffix=True)
        if not self.tracking or self.role.is_source:
            return self._credit(parents[0][0], None, children)
        self._warn_once(
            "unattributed",
            "stage {!r}: process_batch returned outputs that are neither input objects nor built with an input's "
            "_metadata, so they cannot be matched to their inputs. Each such batch's sources complete only "
            "together and are all redone if any of its outputs fails; names of redone outputs depend on how the "
            "executor forms batches. Fix: return the input objects, or build each output with "
            "_metadata=task._metadata (or a copy) of the input it came from",
            self.stage.name,
        )
        from nemo_curator.tasks.credit import merge_lineages

        lineage = merge_lineages([lineage or {} for _, lineage in parents])
        return self._credit(parents[0][0], lineage, children)

    def _failure(self, task: Task, task_id: str, lineage: dict[str, Any] | None, exc: Exception) -> FailedTask:
        if not self.checkpointed or (self.tracking and not self.role.is_source and lineage is None):
            raise StageError(self.stage.name, task_id, exc) from exc
        reason = f"{type(exc).__name__}: {exc}"
        before_sources = not self.tracking or self.role.is_source
        logger.warning(
            "stage {!r} failed on task {!r} ({}); {}\n{}",
            self.stage.name,
            task_id,
            reason,
            "no source was recorded for it: the next run redoes it"
            if before_sources
            else "its source will be redone on the next run",
            "".join(traceback.format_exception(exc)),
        )
        failed = FailedTask(dataset_name=task.dataset_name, reason=reason, stage_name=self.stage.name)
        failed.task_id = task_id + "_e"
        failed._lineage = {} if before_sources else lineage
        return failed

    def _slots(self, result: Any) -> list[Task | None]:
        if result is None:
            return []
        if _is_task(result):
            return [result]
        if isinstance(result, list | tuple):
            for item in result:
                if item is not None and not _is_task(item):
                    raise TypeError(
                        f"stage {self.stage.name!r} returned a list containing {type(item).__name__}; "
                        "expected Task or None"
                    )
            return list(result)
        raise TypeError(
            f"stage {self.stage.name!r} returned {type(result).__name__}; expected a Task, a list of Tasks or None"
        )

    def _name(
        self,
        parent_id: str,
        slots: list[Task | None],
        seen: set[int],
        force_suffix: bool = False,
    ) -> list[Task]:
        """The live slots with their ids; an object already stamped in this call is copied first."""
        live: list[Task] = []
        single = len(slots) == 1 and not force_suffix
        for i, slot in enumerate(slots):
            if _is_filtered(slot):
                continue
            if id(slot) in seen:
                slot = copy.copy(slot)
            seen.add(id(slot))
            if self.role.is_source:
                slot.task_id = self._source_id(slot, parent_id, i)
            else:
                slot.task_id = parent_id if single else f"{parent_id}_{i}"
            live.append(slot)
        return live

    def _source_id(self, task: Task, parent_id: str, position: int) -> str:
        content_id = task.get_deterministic_id()
        if content_id is None and self.tracking and not isinstance(task, FailedTask):
            if not self.allow_positional_source_ids:
                refused = PositionalSourceIdError(self.stage.name, type(task).__qualname__)
                raise StageError(self.stage.name, parent_id, refused)
            self._warn_once(
                "positional",
                "source stage {!r} emits {} tasks without get_deterministic_id(): they are identified by their "
                "position (allow_positional_source_ids=True). If the order of the sources changes between runs, "
                "a completed position is skipped although its content changed",
                self.stage.name,
                type(task).__qualname__,
            )
        return _source_id(content_id, parent_id, position)

    def _credit(self, parent_id: str, lineage: dict[str, Any] | None, children: list[Task]) -> list[Task]:
        """Give ``children`` their lineage: a share of ``lineage`` each, or a fresh source's credit."""
        if not self.tracking:
            for child in children:
                child._lineage = None
            return children
        if self.role.is_source:
            from nemo_curator.tasks.credit import Credit

            for child in children:
                child._lineage = {child.task_id: Credit.one()}
            return children
        if lineage is None:
            raise RuntimeError(f"stage {self.stage.name!r}: a tracked task {parent_id!r} arrived without lineage")
        if not children:
            sentinel = NoneTask(dataset_name="")
            sentinel.task_id = f"{parent_id}_f"
            sentinel._lineage = lineage
            return [sentinel]
        if len(children) == 1:
            children[0]._lineage = lineage  # lineages are never changed in place: share it
            return children
        from nemo_curator.tasks.credit import split_lineage

        for child, share in zip(children, split_lineage(lineage, len(children)), strict=True):
            child._lineage = share
        return children

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
