"""``RayDataExecutor``: a pipeline as one streaming Ray Data dataset, one ``map_batches`` per stage.

The initial tasks become a dataset with a single column of pickled tasks (see ``adapter``).
Every stage appends one ``map_batches``: stages without ``setup``/``teardown`` run as Ray
tasks, stages with them on an actor pool whose actors run ``setup`` once; by default every
task travels in a block of its own, and the last stage's outputs of one call in one packed row.
The driver pulls the last stage's output blocks with a streaming iterator as they finish;
nothing is materialised stage by stage, so the first outputs (and, with a checkpoint, the
first completion reports) arrive while earlier stages are still working.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import logging
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from loguru import logger

from nemo_curator.backends.base import BASE_CONFIG_KEYS, BaseExecutor, CompletionTracker, ExecutionPlan
from nemo_curator.backends.ray_data.adapter import (
    encode_tasks,
    exception_chain,
    find_stage_error,
    iter_task_batches,
    setup_on_node,
    stage_actor_class,
    stage_batch_fn,
)
from nemo_curator.stages.base import ProcessingStage
from nemo_curator.tasks import Task

if TYPE_CHECKING:
    import ray.data

#: Ray accepts fractional resource quantities down to this step.
_RESOURCE_STEP = 1e-4
#: Ray Data names the actors of a class UDF's pool ``MapWorker(<operator>)``.
_MAP_WORKER_PREFIX = "MapWorker("

#: Logger levels while a quiet run executes. Ray Data logs a failed task's traceback twice at
#: ERROR before raising it; the caller gets the same error (with the remote traceback) anyway.
_QUIET_LOGGERS = (
    ("ray.data", logging.WARNING),
    ("ray.data._internal.progress", logging.ERROR),
    ("ray.data._internal.execution.streaming_executor_state", logging.CRITICAL),
    ("ray.data.exceptions", logging.CRITICAL),
)

_CONFIG_KEYS = BASE_CONFIG_KEYS | {
    "actor_pool_size",
    "show_progress",
    "preserve_order",
    "actor_exit_timeout_s",
    "target_max_block_size",
}


@dataclass(frozen=True)
class StagePlacement:
    """How one stage runs: on Ray tasks or on an actor pool, with what resources per worker."""

    name: str
    #: ``(min, max)`` actors when the stage runs on an actor pool, else ``None`` (Ray tasks).
    actors: tuple[int, int] | None
    num_cpus: float
    num_gpus: float


def place_stages(
    stages: list[ProcessingStage],
    pool_size: tuple[int, int],
    cluster_cpus: float,
    cluster_gpus: float,
) -> tuple[list[StagePlacement], float]:
    """Decide each stage's workers and resources; returns the placements and the CPU scale.

    Invariants:
    - all actors of all pools at their maximum size *plus* one task of the most demanding task
      stage fit into ``cluster_cpus`` together. Actors hold their CPUs for the whole run; if
      they could take every CPU, the tasks feeding them would never be scheduled and the run
      would wait forever. When the stages ask for more, every stage's CPU request is scaled
      down by the same factor (Ray schedules fractional CPUs; the work still shares the cores);
    - a task stage never asks for exactly the CPUs of the stage after it. Ray Data fuses a
      task operator into the next map operator when their resource requests are equal; fused,
      a fan-out's children would be processed one after the other inside their parent's task
      (or inside the next stage's actors) and the stages would no longer have workers of their
      own. Where two requests would be equal, the later one is lowered by Ray's smallest
      resource step (0.0001 CPU; raised from 0 to that step), which changes nothing else.
    """
    sizes: list[tuple[int, int] | None] = []
    for stage in stages:
        if not stage.has_setup():
            sizes.append(None)
            continue
        fixed = stage.num_workers()
        sizes.append((fixed, fixed) if fixed else pool_size)
    wanted = [max(float(s.resources.cpus), 0.0) for s in stages]
    actor_demand = sum(c * size[1] for c, size in zip(wanted, sizes, strict=True) if size is not None)
    task_demand = max((c for c, size in zip(wanted, sizes, strict=True) if size is None), default=0.0)
    demand = actor_demand + task_demand
    scale = 1.0 if demand <= cluster_cpus else cluster_cpus / demand
    steps: list[int] = []  # CPU requests in units of Ray's resource step, exact
    for c in wanted:
        if c == 0:
            steps.append(0)
        elif scale == 1.0:
            steps.append(max(round(c / _RESOURCE_STEP), 1))
        else:
            # Rounded down so that the scaled requests still fit.
            steps.append(max(math.floor(c * scale / _RESOURCE_STEP), 1))
    for i in range(1, len(steps)):
        if sizes[i - 1] is None and steps[i] == steps[i - 1]:
            steps[i] = steps[i] - 1 if steps[i] > 1 else steps[i] + 1
    placements: list[StagePlacement] = []
    for stage, step, size in zip(stages, steps, sizes, strict=True):
        gpus = max(float(stage.resources.gpus), 0.0)
        if gpus > cluster_gpus:
            raise ValueError(
                f"stage {stage.name!r} asks for {gpus:g} GPU(s) per worker but the Ray cluster has {cluster_gpus:g}"
            )
        cpus = round(step * _RESOURCE_STEP, 4)
        placements.append(StagePlacement(name=stage.name, actors=size, num_cpus=cpus, num_gpus=gpus))
    return placements, scale


class RayDataExecutor(BaseExecutor):
    """Run a pipeline as a streaming Ray Data dataset: one ``map_batches`` per stage.

    ``RayDataExecutor(config=None, checkpoint=None)``. Config keys:

    - ``num_cpus`` and ``allow_pipeline_change``: read by the base class (see ``BaseExecutor``).
    - ``actor_pool_size`` (int or ``(min, max)``, default 1): actors per stage with
      ``setup``/``teardown``; a ``(min, max)`` pair lets Ray Data autoscale the pool. A stage
      whose ``num_workers()`` returns a number gets exactly that many.
    - ``show_progress`` (bool, default False): Ray Data's progress bars and execution banner.
    - ``preserve_order`` (bool, default False): return outputs in input order instead of
      completion order (ids are deterministic either way).
    - ``actor_exit_timeout_s`` (float, default 30): how long the end of a run waits for the
      actors of its pools to exit.
    - ``target_max_block_size`` (int bytes, default 1): Ray Data's block size for the run. The
      default puts every task in a block of its own (see Dataflow). Pipelines of many small
      tasks in batches run several times faster with Ray's usual size (``128 * 1024**2``): B1
      at 2,000 sources took about 6 s instead of about 30 s on 2 CPUs. The price is coarser
      streaming: a block moves on, and its outputs reach the driver (and the checkpoint), only
      once its whole task has finished, and a fan-out's children stay in their parent's block.

    Dataflow: by default every task travels in a Ray Data block of its own, so a fan-out's
    children spread over parallel workers and each finished task moves on at once. The last
    stage's outputs of one call travel as one packed row: the driver is their only consumer.
    Every stage is an operator of its own (Ray Data is kept from fusing adjacent stages, see
    :func:`place_stages`), with its own workers and resources.

    Workers: stages without ``setup``/``teardown`` run as Ray tasks; the others on an actor
    pool (``setup`` once per actor, ``teardown`` when Ray Data releases the actor, best effort).
    ``setup_on_node`` runs once per stage and alive node, in a Ray task pinned to the node,
    before the pipeline starts. Each worker asks for ``stage.resources``; CPU requests are
    scaled down together when the stages ask for more than the cluster has (see
    :func:`place_stages`), so a small machine never deadlocks.

    Errors: a failure inside a worker reaches the caller as the worker's own exception, not
    Ray's wrapper, with Ray's report of the worker (where it ran, its traceback) attached as a
    note. Without a checkpoint a stage that raises therefore fails the run with the adapter's
    ``StageError`` (names the stage and the task, chains the original exception); a ``setup``
    that raises surfaces the same way, from the first batch its actor receives. Ray Data is
    configured not to retry application errors nor to skip failed blocks; Ray still retries
    tasks whose worker process died and restarts dead actors.

    Clean-up: Ray Data releases the run's actors when the stream ends or fails; the run waits
    (up to ``actor_exit_timeout_s``) until they have exited, so none outlives ``run`` in a
    shared Ray. A Ray the run started is stopped by the base class. Ray Data's own
    bookkeeping actors (``_StatsActor`` and the like) are cluster singletons it keeps.

    Quiet by default: progress bars and the execution banner off, the ``ray.data`` logger at
    WARNING for the run's duration.
    """

    name = "ray_data"

    def __init__(self, config: dict[str, Any] | None = None, checkpoint: str | os.PathLike | None = None) -> None:
        super().__init__(config, checkpoint)
        unknown = sorted(set(self.config) - _CONFIG_KEYS)
        if unknown:
            raise ValueError(f"RayDataExecutor: unknown config key(s) {unknown}; known keys: {sorted(_CONFIG_KEYS)}")
        self._pool_size = _pool_size(self.config.get("actor_pool_size", 1))
        timeout = self.config.get("actor_exit_timeout_s", 30.0)
        if not isinstance(timeout, int | float) or isinstance(timeout, bool) or timeout < 0:
            raise ValueError(f"RayDataExecutor: actor_exit_timeout_s must be a number >= 0, got {timeout!r}")
        self._actor_exit_timeout_s = float(timeout)
        block = self.config.get("target_max_block_size", 1)
        if not isinstance(block, int) or isinstance(block, bool) or block < 1:
            raise ValueError(f"RayDataExecutor: target_max_block_size must be an int >= 1 (bytes), got {block!r}")
        self._target_max_block_size = block

    # -- the run ----------------------------------------------------------------------------

    def _execute(self, plan: ExecutionPlan, initial_tasks: list[Task], tracker: CompletionTracker | None) -> list[Task]:
        import ray

        resources = ray.cluster_resources()
        placements, scale = place_stages(
            plan.stages, self._pool_size, float(resources.get("CPU", 0.0)), float(resources.get("GPU", 0.0))
        )
        if scale < 1.0:
            logger.info(
                "ray_data: the stages ask for more CPUs than the cluster's {:g}; CPU requests scaled by {:.3f}",
                resources.get("CPU", 0.0),
                scale,
            )
        known = _pool_actors()
        before = set(known) if known is not None else None
        failure: Exception | None = None
        try:
            outputs = self._stream(plan, initial_tasks, tracker, placements)
        except Exception as exc:
            failure = _caller_error(exc)
        self._await_actor_exit(before)
        if failure is not None:
            # Raised here, outside the handler, so that it does not chain Ray Data's wrapper as
            # its context; a StageError keeps the user's exception as its cause.
            raise failure
        return outputs

    def _stream(
        self,
        plan: ExecutionPlan,
        initial_tasks: list[Task],
        tracker: CompletionTracker | None,
        placements: list[StagePlacement],
    ) -> list[Task]:
        with self._data_context():
            self._setup_on_nodes(plan, tracker)
            dataset = self._build(plan, initial_tasks, tracker, placements)
            if tracker is not None:
                from nemo_curator.backends.ray_data.resumability import consume_with_tracker

                return consume_with_tracker(dataset, tracker)
            outputs: list[Task] = []
            for batch in iter_task_batches(dataset):
                outputs.extend(batch)
            return outputs

    def _build(
        self,
        plan: ExecutionPlan,
        initial_tasks: list[Task],
        tracker: CompletionTracker | None,
        placements: list[StagePlacement],
    ) -> ray.data.Dataset:
        import ray.data

        # One block per initial task, so that several initial tasks start in parallel.
        dataset = ray.data.from_arrow([encode_tasks([task]) for task in initial_tasks])
        last = len(plan.stages) - 1
        for index, (stage, placement) in enumerate(zip(plan.stages, placements, strict=True)):
            adapter = plan.adapter(index, tracker)
            pack = index == last  # the driver is the only consumer: one row per call
            options: dict[str, Any] = {
                "batch_size": _batch_size(stage),
                "batch_format": "pyarrow",
                "zero_copy_batch": True,
                "num_cpus": placement.num_cpus,
            }
            if placement.num_gpus:
                options["num_gpus"] = placement.num_gpus
            if placement.actors is None:
                dataset = dataset.map_batches(stage_batch_fn(adapter, pack), **options)
            else:
                low, high = placement.actors
                pool = (
                    ray.data.ActorPoolStrategy(size=low)
                    if low == high
                    else ray.data.ActorPoolStrategy(min_size=low, max_size=high)
                )
                dataset = dataset.map_batches(stage_actor_class(adapter, pack), compute=pool, **options)
        return dataset

    def _setup_on_nodes(self, plan: ExecutionPlan, tracker: CompletionTracker | None) -> None:
        """``setup_on_node`` once per stage that defines it and alive node, before the run."""
        stages = [i for i, s in enumerate(plan.stages) if type(s).setup_on_node is not ProcessingStage.setup_on_node]
        if not stages:
            return
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        remote = ray.remote(setup_on_node)
        nodes = [n["NodeID"] for n in ray.nodes() if n.get("Alive")]
        refs = [
            remote.options(
                num_cpus=0,
                max_retries=0,
                scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node, soft=False),
            ).remote(plan.adapter(i, tracker))
            for i in stages
            for node in nodes
        ]
        ray.get(refs)

    @contextlib.contextmanager
    def _data_context(self) -> Iterator[None]:
        """A private Ray Data context for the datasets built inside (the user's is restored)."""
        from ray.data import DataContext

        show = bool(self.config.get("show_progress", False))
        original = DataContext.get_current()
        ctx = copy.deepcopy(original)
        ctx.enable_progress_bars = show
        ctx.enable_operator_progress_bars = show
        ctx.print_on_execution_start = show
        ctx.enable_auto_log_stats = False
        # By default every task in a block of its own: a fan-out's children spread over parallel
        # workers, and each finished task streams on at once (the granularity of the other
        # executors). Every block costs the driver's scheduling loop, so many small tasks run
        # faster with larger blocks (``target_max_block_size`` in the config).
        ctx.target_max_block_size = self._target_max_block_size
        # The adapter's StageError must reach the driver as such, and an application error
        # must fail the run: no retries, no skipped blocks.
        ctx.raise_original_map_exception = True
        ctx.max_errored_blocks = 0
        ctx.actor_task_retry_on_errors = False
        ctx.retried_map_errors = False
        ctx.max_map_retries = 0
        ctx.execution_options.preserve_order = bool(self.config.get("preserve_order", False))
        levels: list[tuple[logging.Logger, int]] = []
        if not show:
            for name, level in _QUIET_LOGGERS:
                log = logging.getLogger(name)
                levels.append((log, log.level))
                log.setLevel(max(level, log.getEffectiveLevel()))
        DataContext._set_current(ctx)
        try:
            yield
        finally:
            DataContext._set_current(original)
            for log, level in levels:
                log.setLevel(level)

    def _await_actor_exit(self, before: set[str] | None) -> None:
        """Wait until the actor pools this run created have exited (see the class docstring).

        Ray marks an actor DEAD as soon as its handles are released, before its process has run
        ``teardown`` and exited; so on this node the wait is for the processes themselves.
        """
        if before is None:
            return
        import ray

        timeout = self._actor_exit_timeout_s
        deadline = time.monotonic() + timeout
        here = ray.get_runtime_context().get_node_id()
        gc.collect()  # a failed stream can leave the executor (and its actor handles) in a cycle
        while True:
            actors = _pool_actors()
            if actors is None:
                return
            left = [
                a
                for a in actors.values()
                if a.actor_id not in before and (a.state != "DEAD" or (a.node_id == here and _process_running(a.pid)))
            ]
            if not left:
                return
            if time.monotonic() >= deadline:
                logger.warning("ray_data: {} actor(s) of the run still alive after {:g}s", len(left), timeout)
                return
            time.sleep(0.1)


def _batch_size(stage: ProcessingStage) -> int:
    return max(int(stage.batch_size or 1), 1)


def _pool_size(value: Any) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return (value, value)
    if (
        isinstance(value, tuple | list)
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        and 1 <= value[0] <= value[1]
    ):
        return (int(value[0]), int(value[1]))
    raise ValueError(f"RayDataExecutor: actor_pool_size must be an int >= 1 or (min, max), got {value!r}")


@dataclass(frozen=True)
class _PoolActor:
    actor_id: str
    state: str
    pid: int
    node_id: str


def _pool_actors() -> dict[str, _PoolActor] | None:
    """This job's Ray Data pool actors, dead or alive, by id; ``None`` if Ray cannot tell."""
    import ray

    try:
        from ray._private import state  # the GCS actor table; needs no dashboard

        table = state.actors(job_id=ray.JobID.from_hex(ray.get_runtime_context().get_job_id()))
    except Exception as exc:  # an API change must not fail a run that already finished
        logger.debug("ray_data: cannot list actors ({})", exc)
        return None
    return {
        actor_id: _PoolActor(
            actor_id=actor_id,
            state=str(info.get("State", "")),
            pid=int(info.get("Pid") or 0),
            node_id=str((info.get("Address") or {}).get("NodeID", "")),
        )
        for actor_id, info in table.items()
        if str(info.get("ActorClassName", "")).startswith(_MAP_WORKER_PREFIX)
    }


def _process_running(pid: int) -> bool:
    """Whether process ``pid`` of this machine still runs (a zombie has finished)."""
    if pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            # The state letter follows the parenthesised command name.
            return f.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except FileNotFoundError:
        return False
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _caller_error(exc: Exception) -> Exception:
    """The exception the caller gets for a failed stream.

    A failure inside a worker arrives wrapped by Ray (``RayTaskError``) and Ray Data; the caller
    gets the worker's own exception instead (the adapter's ``StageError``, which names the stage
    and chains the user's exception), with the remote traceback attached as a note. Ray Data's
    wrappers are dropped: their tracebacks reach into its scheduler's frames, which hold the
    executor and with it the handles of the run's actors, which must be released for the actors
    to exit. For the same reason the frames of any other failure are cleared (their source lines
    still print).
    """
    from ray.exceptions import RayTaskError

    chain = list(exception_chain(exc))
    remote = next((link for link in chain if isinstance(link, RayTaskError)), None)
    original: Exception | None = find_stage_error(exc)
    if original is None and remote is not None and isinstance(remote.cause, Exception):
        original = remote.cause
    if original is not None and original is not exc:
        if remote is not None:
            # The dual-class wrapper renders as Ray's report: where the worker ran, and its traceback.
            original.add_note(f"raised in a Ray worker:\n{remote}")
        return original
    _clear_frames(chain)
    return exc


def _clear_frames(chain: list[BaseException]) -> None:
    """Drop the local variables of the finished frames these exceptions' tracebacks reach."""
    for link in chain:
        tb = link.__traceback__
        while tb is not None:
            frame: Any = tb.tb_frame
            while frame is not None:
                with contextlib.suppress(RuntimeError):  # a frame that is still executing
                    frame.clear()
                frame = frame.f_back
            tb = tb.tb_next
