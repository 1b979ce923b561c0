"""``RayDataExecutor``: a pipeline as one streaming Ray Data dataset, one ``map_batches`` per stage.

The initial tasks become a dataset with a single column of packs of pickled tasks (see
``adapter``). Every stage appends one ``map_batches``: stages without ``setup``/``teardown``
run as Ray tasks, stages with them on an actor pool whose actors run ``setup`` once; by
default every pack travels in a block of its own, and the last stage's outputs of one call in
one pack.
The driver pulls the last stage's output blocks with a streaming iterator as they finish;
nothing is materialised stage by stage, so the first outputs (and, with a checkpoint, the
first completion reports) arrive while earlier stages are still working.

Completion reports need no channel of their own: ids and credit ride inside the tasks, so the
last stage's blocks *are* the reports. The driver hands each block's tasks (outputs and the
sentinels carrying filtered or failed credit) to ``tracker.on_terminal`` before it asks for
the next block; no worker talks to the ledger.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import itertools
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from loguru import logger

from nemo_curator.backends.base import BaseExecutor, CompletionTracker, ExecutionPlan
from nemo_curator.backends.errors import error_to_raise
from nemo_curator.backends.ray_data.adapter import (
    Packing,
    encode_tasks,
    iter_task_batches,
    pack_sizes,
    setup_on_node,
    stage_actor_class,
    stage_batch_fn,
)
from nemo_curator.backends.ray_data.config import RayDataSettings
from nemo_curator.backends.resources import RAY_RESOURCE_STEP, scale_cpu_requests
from nemo_curator.stages.base import ProcessingStage
from nemo_curator.tasks import Task
from nemo_curator.utils.processes import pid_alive

if TYPE_CHECKING:
    import ray.data

    from nemo_curator.resumability.config import CheckpointConfig

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
    # The demand: every actor at its pool's maximum, and one task of the most demanding task stage.
    tasks = [i for i, size in enumerate(sizes) if size is None]
    widest = max(tasks, key=wanted.__getitem__, default=None)
    counts = [size[1] if size is not None else int(i == widest) for i, size in enumerate(sizes)]
    scaled, scale = scale_cpu_requests(wanted, counts, cluster_cpus)
    # CPU requests in units of Ray's resource step, exact (scaled ones are whole steps already).
    steps = [max(round(c / RAY_RESOURCE_STEP), 1) if c > 0 else 0 for c in scaled]
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
        cpus = round(step * RAY_RESOURCE_STEP, 4)
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
    - ``max_tasks_per_block`` (int, default 32): the most tasks that travel together in one
      pack (one row, and one block by default; see the adapter). A call's outputs take as few
      packs as that allows, but as many as the call multiplied its tasks, up to twice the
      cluster's CPUs, so a source's or a fan-out's outputs still spread over the next stage's
      workers. Larger packs mean fewer Ray tasks, each costing tens of milliseconds of Ray
      Data's scheduling on a small machine; smaller ones mean finer streaming: a pack moves on,
      and the last stage's outputs reach the driver (and the checkpoint), only once all its
      tasks are done, so a kill redoes at most the packs in flight. ``1`` sends every task on
      its own (measurements in the benchmarks' RESULTS).
    - ``max_bytes_per_block`` (int bytes, default ``128 * 1024**2``, Ray Data's usual block
      size): a pack is also cut where its pickled tasks would exceed this (a larger task
      travels alone), so packs of large payloads stay bounded.
    - ``target_max_block_size`` (int bytes, default 1): Ray Data's block size for the run. The
      default makes every pack a block of its own, so packs spread over parallel workers.
      Larger blocks gather several packs into one Ray task: faster still when the work per
      task is small (upstream's workload: 3 times), but one call's outputs then run one after
      the other in the next stage, on one worker.

    Dataflow: tasks travel in packs (see ``max_tasks_per_block``), by default one pack per
    Ray Data block. The last stage's outputs of one call travel as one pack: the driver is
    their only consumer. A batch stage's callable gets ``batch_size`` packs per call and hands
    them to ``process_batch`` in batches of ``batch_size`` tasks. Every stage is an operator of
    its own (Ray Data is kept from fusing adjacent stages, see :func:`place_stages`), with its
    own workers and resources.

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

    def __init__(
        self, config: dict[str, Any] | None = None, checkpoint: str | os.PathLike | CheckpointConfig | None = None
    ) -> None:
        super().__init__(config, checkpoint)
        self.settings = RayDataSettings.from_config(self.config)

    # -- the run ----------------------------------------------------------------------------

    def _execute(self, plan: ExecutionPlan, initial_tasks: list[Task], tracker: CompletionTracker) -> list[Task]:
        import ray

        resources = ray.cluster_resources()
        placements, scale = place_stages(
            plan.stages,
            self.settings.actor_pool_size,
            float(resources.get("CPU", 0.0)),
            float(resources.get("GPU", 0.0)),
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
            failure = error_to_raise(exc, where="a Ray worker")
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
        tracker: CompletionTracker,
        placements: list[StagePlacement],
    ) -> list[Task]:
        with self._data_context():
            self._setup_on_nodes(plan, tracker)
            dataset = self._build(plan, initial_tasks, tracker, placements)
            outputs: list[Task] = []
            for batch in iter_task_batches(dataset):  # each finished block, as it reaches the driver
                tracker.on_terminal(batch)
                outputs.extend(batch)
            return outputs

    def _build(
        self,
        plan: ExecutionPlan,
        initial_tasks: list[Task],
        tracker: CompletionTracker,
        placements: list[StagePlacement],
    ) -> ray.data.Dataset:
        import ray.data

        spread = max(2 * int(ray.cluster_resources().get("CPU", 1)), 1)
        max_tasks = self.settings.max_tasks_per_block
        # The initial tasks in packs like any stage's outputs, one block each: they start in parallel.
        sizes = pack_sizes(len(initial_tasks), 1, spread, max_tasks)
        starts = itertools.accumulate(sizes, initial=0)
        max_bytes = self.settings.max_bytes_per_block
        tables = [
            encode_tasks(initial_tasks[at : at + size], [size], max_bytes)
            for at, size in zip(starts, sizes, strict=False)
        ]
        dataset = ray.data.from_arrow(tables or [encode_tasks([])])
        last = len(plan.stages) - 1
        for index, (stage, placement) in enumerate(zip(plan.stages, placements, strict=True)):
            adapter = plan.adapter(index, tracker)
            batch_size = _batch_size(stage)
            packing = Packing(
                batch_size=batch_size,
                spread=spread,
                max_tasks=max_tasks,
                max_bytes=self.settings.max_bytes_per_block,
                last=index == last,
            )
            options: dict[str, Any] = {
                # Rows are packs: a batch stage gets ``batch_size`` packs per call, so that every
                # ``process_batch`` call but a run's last ones gets a full batch.
                "batch_size": batch_size,
                "batch_format": "pyarrow",
                "zero_copy_batch": True,
                "num_cpus": placement.num_cpus,
            }
            if placement.num_gpus:
                options["num_gpus"] = placement.num_gpus
            if placement.actors is None:
                dataset = dataset.map_batches(stage_batch_fn(adapter, packing), **options)
            else:
                low, high = placement.actors
                pool = (
                    ray.data.ActorPoolStrategy(size=low)
                    if low == high
                    else ray.data.ActorPoolStrategy(min_size=low, max_size=high)
                )
                dataset = dataset.map_batches(stage_actor_class(adapter, packing), compute=pool, **options)
        return dataset

    def _setup_on_nodes(self, plan: ExecutionPlan, tracker: CompletionTracker) -> None:
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

        show = self.settings.show_progress
        original = DataContext.get_current()
        ctx = copy.deepcopy(original)
        ctx.enable_progress_bars = show
        ctx.enable_operator_progress_bars = show
        ctx.print_on_execution_start = show
        ctx.enable_auto_log_stats = False
        # By default every pack of tasks in a block of its own: packs spread over parallel
        # workers and each finished pack streams on at once. Every block costs the driver's
        # scheduling loop; larger blocks trade parallelism for fewer of them.
        ctx.target_max_block_size = self.settings.target_max_block_size
        # The adapter's StageError must reach the driver as such, and an application error
        # must fail the run: no retries, no skipped blocks.
        ctx.raise_original_map_exception = True
        ctx.max_errored_blocks = 0
        ctx.actor_task_retry_on_errors = False
        ctx.retried_map_errors = False
        ctx.max_map_retries = 0
        ctx.execution_options.preserve_order = self.settings.preserve_order
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

        timeout = self.settings.actor_exit_timeout_s
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
                if a.actor_id not in before and (a.state != "DEAD" or (a.node_id == here and pid_alive(a.pid)))
            ]
            if not left:
                return
            if time.monotonic() >= deadline:
                logger.warning("ray_data: {} actor(s) of the run still alive after {:g}s", len(left), timeout)
                return
            time.sleep(0.1)


def _batch_size(stage: ProcessingStage) -> int:
    return max(int(stage.batch_size or 1), 1)


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
