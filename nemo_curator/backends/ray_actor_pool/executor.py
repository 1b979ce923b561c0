"""``RayActorPoolExecutor``: a streaming pipeline on pools of plain Ray actors.

Every stage gets a pool of ``StageActor``s, all alive at once; the driver's scheduler loop
moves each batch on as soon as it is done, so the first sink outputs (and, with a checkpoint,
the first completed sources) appear while the source stage is still producing.

Data flow (the design in one paragraph): an actor call returns two objects, the number of
output tasks and the output list itself. The driver fetches only the number. The list stays
in Ray's object store (owned by the driver, so it survives a restarted worker) and is queued
for the next stage as one *piece*; a batch for the next stage is a list of whole pieces (as
``ObjectRef``s, resolved by the receiving actor) and loose tasks. Only when a piece holds more
tasks than fit into the batch being formed does the driver fetch it once and queue its tasks
one by one (e.g. a 1-to-n fan-out feeding a ``batch_size=1`` stage). Last-stage outputs are
always fetched: they are the run's result and, with a checkpoint, its completion reports.

Completion reports: the scheduler's own result loop is the channel. Each batch of last-stage
outputs goes to ``tracker.on_terminal`` the moment ``ray.get`` returns it, in the order the
driver receives them; no worker talks to the ledger, and credit rides inside the tasks.

Backpressure: each actor has at most ``max_inflight_per_actor`` calls in flight, and a stage
gets new work only while the next stage's queue holds fewer tasks than the next stage can take
in one round (``batch_size * actors * max_inflight_per_actor``). Downstream stages are served
first. Memory is therefore bounded by the in-flight calls plus one round of queued work per
stage (plus the fan-out of the calls in flight), never by the size of the input.
"""

from __future__ import annotations

import math
import os
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from loguru import logger

from nemo_curator.backends.base import BaseExecutor, CompletionTracker, ExecutionPlan, is_tracking
from nemo_curator.backends.errors import error_to_raise
from nemo_curator.backends.ray_actor_pool.config import ActorPoolSettings
from nemo_curator.backends.resources import (
    ClusterShrankError,
    alive_capacity,
    missing_resources,
    round_down_to_step,
    scale_cpu_requests,
)
from nemo_curator.stages.base import ProcessingStage
from nemo_curator.tasks import Task

if TYPE_CHECKING:
    from nemo_curator.resumability.config import CheckpointConfig


class RayActorPoolExecutor(BaseExecutor):
    """Run a pipeline on Ray actors, one pool per stage, streaming batches between them.

    ``RayActorPoolExecutor(config=None, checkpoint=None)``. Config keys:

    - ``num_actors_per_stage`` (int or ``{stage name: int}``, default 1): actors per stage.
      A stage whose ``num_workers()`` returns a number gets exactly that many.
    - ``max_inflight_per_actor`` (int, default 2): calls queued on one actor at a time; 2 hides
      the driver round trip, larger values only add memory.
    - ``max_retries`` (int, default 3): an actor whose process dies is restarted up to this many
      times and its unfinished calls are retried on the new process. A retried batch may have
      been partly or fully processed before the crash, so a stage's side effects (e.g. a sink's
      files) can happen twice; its results reach the driver once per call, and since task ids
      are deterministic, a checkpoint ledger deduplicates any repeated report anyway.
    - ``num_cpus`` (int): logical CPUs of the local Ray started for the run (default: enough
      for every actor of every pool, at least the machine's cores). Ignored when joining a
      running Ray.
    - ``lost_node_grace_s`` (float, default 60): after a node is lost, Ray restarts its actors
      on the other nodes (within ``max_retries``); when the alive nodes cannot hold every actor
      for this long, the run fails with ``ClusterShrankError`` rather than wait forever for a
      restart that cannot be placed (a replacement node within it lets the run go on).

    Unknown keys and invalid values are refused (``ValueError``) when the executor is made.

    Actors ask Ray for ``stage.resources.cpus`` / ``.gpus`` each. When the pools ask for more
    CPUs than the cluster has, every CPU request is scaled down by the same factor (logged), so
    a run never waits forever for CPUs; more GPUs than the cluster has is an error.

    Results: ``run`` returns the last stage's outputs in completion order (ids are
    deterministic, the order is not). A stage that raises (without a checkpoint) fails the run
    with the adapter's ``StageError``, which names the stage and chains the original exception.
    Every actor of the run is killed when the run ends, whether it succeeded or failed; a Ray
    the run started is shut down by the base class. ``teardown()`` runs on success only: after
    a failure the actors are killed at once.
    """

    name = "ray_actor_pool"

    def __init__(
        self, config: dict[str, Any] | None = None, checkpoint: str | os.PathLike | CheckpointConfig | None = None
    ) -> None:
        super().__init__(config=config, checkpoint=checkpoint)
        self.settings = ActorPoolSettings.from_config(self.config)

    def _runtime(self, plan: ExecutionPlan) -> Any:
        from nemo_curator.backends.ray_runtime import ray_runtime

        num_cpus = self.config.get("num_cpus")
        if num_cpus is None:
            wanted = math.ceil(sum(self._pool_size(s) * max(s.resources.cpus, 0.0) for s in plan.stages)) + 1
            num_cpus = max(os.cpu_count() or 1, wanted)
        return ray_runtime(num_cpus=num_cpus, dashboard=self._needs_dashboard())

    def _pool_size(self, stage: ProcessingStage) -> int:
        fixed = stage.num_workers()
        n = fixed if fixed is not None else self.settings.actors_for(stage.name)
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"stage {stage.name!r}: the number of actors must be a positive int, got {n!r}")
        return n

    def _execute(self, plan: ExecutionPlan, initial_tasks: list[Task], tracker: CompletionTracker) -> list[Task]:
        import ray

        counts = [self._pool_size(s) for s in plan.stages]
        cluster = ray.cluster_resources()
        requests = plan_resources(plan.stages, counts, cluster.get("CPU", 0.0), cluster.get("GPU", 0.0))
        start = time.perf_counter()
        pools: list[_Pool] = []
        ok = False
        try:
            _create_pools(pools, plan, tracker, counts, requests, self.settings.max_retries)
            watch = CapacityWatch(pools_demand(counts, requests), self.settings.lost_node_grace_s)
            _start_pools(pools, watch)
            tracker.workers_started()
            logger.info(
                "ray_actor_pool: {} stage(s) running with actors {} (startup {:.2f}s)",
                len(pools),
                {p.stage.name: len(p.actors) for p in pools},
                time.perf_counter() - start,
            )
            outputs = _Scheduler(pools, initial_tasks, self.settings.max_inflight_per_actor, tracker, watch).run()
            skipped = _close_pools(pools, watch)
            ok = True
        finally:
            for pool in pools:
                for actor in pool.actors:
                    ray.kill(actor, no_restart=True)
            if not ok:
                logger.warning("ray_actor_pool: run failed; all of its actors were killed")
        skipped_note = f"; {skipped} source(s) skipped as already complete" if is_tracking(tracker) else ""
        seconds = time.perf_counter() - start
        logger.info("ray_actor_pool: {} last-stage task(s) in {:.2f}s{}", len(outputs), seconds, skipped_note)
        return outputs


@dataclass(frozen=True)
class ActorResources:
    """What one actor of a stage asks Ray for."""

    cpus: float
    gpus: float


def plan_resources(
    stages: list[ProcessingStage], counts: list[int], cluster_cpus: float, cluster_gpus: float
) -> list[ActorResources]:
    """Per-actor resource requests that the cluster can hold all at once.

    CPU requests keep their proportions: if ``sum(count * cpus)`` exceeds ``cluster_cpus`` they
    are all multiplied by ``cluster_cpus / total`` (rounded down to Ray's 0.0001 step; a
    positive request stays positive). GPU requests are never scaled: too many is a
    ``ValueError`` (an actor that cannot be placed would wait forever).
    """
    wanted_gpus = sum(n * max(s.resources.gpus, 0.0) for n, s in zip(counts, stages, strict=True))
    if wanted_gpus > cluster_gpus + 1e-9:
        raise ValueError(
            f"the actor pools need {wanted_gpus:g} GPU(s) but the Ray cluster has {cluster_gpus:g}; "
            "lower num_actors_per_stage or the stages' Resources(gpus=...)"
        )
    requests = [max(s.resources.cpus, 0.0) for s in stages]
    # A cluster that reports no CPUs is left alone rather than scaled down to nothing.
    scaled, factor = scale_cpu_requests(requests, counts, cluster_cpus) if cluster_cpus > 0 else (requests, 1.0)
    if factor < 1.0:
        wanted_cpus = sum(r * n for r, n in zip(requests, counts, strict=True))
        logger.info(
            "ray_actor_pool: the stages ask for {:g} CPU(s) but the cluster has {:g}; scaling every CPU request "
            "by {:.3f}",
            wanted_cpus,
            cluster_cpus,
            factor,
        )
    return [
        ActorResources(cpus=round_down_to_step(cpus), gpus=max(stage.resources.gpus, 0.0))
        for cpus, stage in zip(scaled, stages, strict=True)
    ]


def pools_demand(counts: list[int], requests: list[ActorResources]) -> dict[str, float]:
    """CPUs and GPUs all actors of all pools hold at once."""
    return {
        "CPU": sum(n * r.cpus for n, r in zip(counts, requests, strict=True)),
        "GPU": sum(n * r.gpus for n, r in zip(counts, requests, strict=True)),
    }


#: Seconds without a finished call after which the scheduler checks that its actors still fit.
_CAPACITY_CHECK_S = 5.0


class CapacityWatch:
    """Whether a run's actors still fit into the cluster's alive nodes, checked while it waits.

    Ray restarts the actors of a lost node elsewhere, but a restart that finds no room waits
    forever, and so does every call queued on it. ``gave_up()`` turns true once the actors'
    ``demand`` has exceeded the alive nodes' CPUs or GPUs for ``grace_s`` without a break (a
    replacement node arriving within it lets the run go on); the first shortfall is logged.
    """

    def __init__(self, demand: dict[str, float], grace_s: float = 60.0) -> None:
        self.demand = demand
        self.grace_s = grace_s
        self.short_since: float | None = None
        self.missing: dict[str, float] = {}

    def gave_up(self) -> bool:
        import ray

        if not self.demand:
            return False
        self.missing = missing_resources(self.demand, alive_capacity(ray.nodes()))
        now = time.monotonic()
        if not self.missing:
            self.short_since = None
            return False
        if self.short_since is None:
            self.short_since = now
            logger.warning(
                "ray_actor_pool: the cluster's alive nodes lack {} for this run's actors (a node was lost?); "
                "the run fails unless they fit again within {:.0f}s",
                _describe(self.missing),
                self.grace_s,
            )
        return now - self.short_since >= self.grace_s

    def error(self) -> ClusterShrankError:
        return ClusterShrankError(
            f"ray_actor_pool: the run's actors need {_describe(self.demand)} but the cluster's alive nodes "
            f"have lacked {_describe(self.missing)} of it for {self.grace_s:.0f}s (a node was lost); actors "
            "that Ray restarts cannot be placed, so the run stops. Rerun the same command: with a checkpoint "
            "only unfinished sources are redone, on the cluster as it is then"
        )


@dataclass
class _Pool:
    """The actors of one stage and how many calls each has in flight."""

    index: int
    stage: ProcessingStage
    actors: list[Any]
    inflight: list[int] = field(default_factory=list)

    def free_actor(self, max_inflight: int) -> int | None:
        """The least busy actor with a free slot, or ``None``."""
        best = min(range(len(self.actors)), key=self.inflight.__getitem__)
        return best if self.inflight[best] < max_inflight else None


def _create_pools(
    pools: list[_Pool],
    plan: ExecutionPlan,
    tracker: CompletionTracker,
    counts: list[int],
    requests: list[ActorResources],
    max_retries: int,
) -> None:
    """Create every stage's actors into ``pools`` (filled in place, so that the caller can kill
    whatever was created even if this raises half-way)."""
    from nemo_curator.backends.ray_actor_pool.adapter import StageActor

    for i, stage in enumerate(plan.stages):
        # By value, not ray.put: Ray restarts an actor from its creation arguments, and an
        # object-store argument could be gone by then (ray-project/ray#53727).
        adapter = plan.adapter(i, tracker)
        options = StageActor.options(
            num_cpus=requests[i].cpus,
            num_gpus=requests[i].gpus,
            max_restarts=max_retries,
            max_task_retries=max_retries,
        )
        pool = _Pool(index=i, stage=stage, actors=[], inflight=[0] * counts[i])
        pools.append(pool)
        for _ in range(counts[i]):
            pool.actors.append(options.remote(adapter))


def _start_pools(pools: list[_Pool], watch: CapacityWatch) -> None:
    """``setup_on_node`` once per stage and node, then ``setup`` on every actor.

    Raises ``ClusterShrankError`` when the actors stop fitting into the cluster meanwhile.
    """
    node_refs = [(pool, actor, actor.node_id.remote()) for pool in pools for actor in pool.actors]
    _wait_or_raise([ref for _, _, ref in node_refs], watch)
    leaders: dict[tuple[int, str], Any] = {}
    for pool, actor, ref in node_refs:
        node = _get(pool.stage, ref)
        leaders.setdefault((pool.index, node), (pool, actor))
    node_setups = [(pool, actor.setup_on_node.remote()) for pool, actor in leaders.values()]
    _wait_or_raise([ref for _, ref in node_setups], watch)
    for pool, ref in node_setups:
        _get(pool.stage, ref)
    setups = [(pool, actor.start.remote()) for pool in pools for actor in pool.actors]
    _wait_or_raise([ref for _, ref in setups], watch)
    for pool, ref in setups:
        _get(pool.stage, ref)


def _close_pools(pools: list[_Pool], watch: CapacityWatch) -> int:
    """Run every actor's ``teardown()``; returns the number of sources skipped by the source stage.

    An actor that Ray restarted after a node loss and cannot place any more never answers;
    its teardown is skipped (with a warning) instead of waiting for it forever. Its process
    died with the node, and the run's work is done.
    """
    closes = [(pool, actor.close.remote()) for pool in pools for actor in pool.actors]
    if not _wait_watched([ref for _, ref in closes], watch):
        import ray

        ready, _ = ray.wait([ref for _, ref in closes], num_returns=len(closes), timeout=0)
        done = set(ready)
        logger.warning(
            "ray_actor_pool: {} actor(s) lost with a node could not be placed again; their teardown is skipped",
            len(closes) - len(done),
        )
        closes = [(pool, ref) for pool, ref in closes if ref in done]
    return sum(_get(pool.stage, ref) for pool, ref in closes)


def _wait_watched(refs: list[Any], watch: CapacityWatch) -> bool:
    """Wait until every ref is ready (``True``), or until ``watch`` gives up on the cluster (``False``)."""
    import ray

    pending = list(refs)
    while pending:
        _, pending = ray.wait(pending, num_returns=len(pending), timeout=_CAPACITY_CHECK_S)
        if pending and watch.gave_up():
            return False
    return True


def _wait_or_raise(refs: list[Any], watch: CapacityWatch) -> None:
    if not _wait_watched(refs, watch):
        raise watch.error()


def _get(stage: ProcessingStage, ref: Any) -> Any:
    """``ray.get`` a ref (or a list of refs), turning Ray's wrappers into errors that name the stage."""
    import ray

    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        failure: BaseException = exc
    except ray.exceptions.RayActorError as exc:
        raise RuntimeError(
            f"stage {stage.name!r}: a worker died and could not be restarted (max_retries exhausted): {exc}"
        ) from exc
    raise error_to_raise(failure, where=f"a Ray worker of stage {stage.name!r}", stage_name=stage.name)


def _describe(resources: dict[str, float]) -> str:
    return ", ".join(f"{amount:g} {name}" for name, amount in resources.items() if amount > 0) or "nothing"


@dataclass
class _Piece:
    """A whole output list of one upstream call, still in the object store."""

    ref: Any
    count: int


@dataclass
class _Call:
    pool: _Pool
    actor: int
    tasks_ref: Any


class _Scheduler:
    """The driver's loop: queues per stage, batches, dispatch to free actors, collect results.

    Invariants: ``queued[i]`` is the number of tasks waiting in ``queues[i]``; a stage gets a
    partial batch only when every upstream stage is drained (empty queue, nothing in flight);
    the loop ends when every queue is empty and no call is in flight, or raises
    ``ClusterShrankError`` when its actors no longer fit into the cluster (``CapacityWatch``).
    """

    def __init__(
        self,
        pools: list[_Pool],
        initial_tasks: list[Task],
        max_inflight: int,
        tracker: CompletionTracker,
        watch: CapacityWatch | None = None,
    ) -> None:
        self.pools = pools
        self.watch = watch or CapacityWatch({})
        self.max_inflight = max_inflight
        self.tracker = tracker
        self.queues: list[deque[_Piece | Task]] = [deque() for _ in pools]
        self.queued = [0] * len(pools)
        self.queues[0].extend(initial_tasks)
        self.queued[0] = len(initial_tasks)
        self.calls: dict[Any, _Call] = {}
        self.busy = [0] * len(pools)  # calls in flight per stage
        self.outputs: list[Task] = []

    def run(self) -> list[Task]:
        import ray

        while self.calls or any(self.queued):
            self._dispatch()
            if not self.calls:
                raise RuntimeError(f"ray_actor_pool scheduler stalled with queued tasks {self.queued}")
            ready, _ = ray.wait(list(self.calls), num_returns=1, timeout=_CAPACITY_CHECK_S)
            if not ready and self.watch.gave_up():
                raise self.watch.error()
            for count_ref in ready:
                self._collect(count_ref)
        return self.outputs

    def _limit(self, i: int) -> int:
        pool = self.pools[i]
        return max(1, pool.stage.batch_size) * len(pool.actors) * self.max_inflight

    def _upstream_drained(self, i: int) -> bool:
        return all(self.queued[j] == 0 and self.busy[j] == 0 for j in range(i))

    def _dispatch(self) -> None:
        last = len(self.pools) - 1
        for i in range(last, -1, -1):
            pool = self.pools[i]
            size = max(1, pool.stage.batch_size)
            while self.queued[i] > 0:
                if i < last and self.queued[i + 1] >= self._limit(i + 1):
                    break  # backpressure: the next stage has a full round waiting
                if self.queued[i] < size and not self._upstream_drained(i):
                    break  # wait for a full batch
                actor = pool.free_actor(self.max_inflight)
                if actor is None:
                    break
                parts = self._take(i, size)
                count_ref, tasks_ref = pool.actors[actor].process_batch.remote(parts)
                pool.inflight[actor] += 1
                self.busy[i] += 1
                self.calls[count_ref] = _Call(pool, actor, tasks_ref)

    def _take(self, i: int, size: int) -> list[Any]:
        """Up to ``size`` tasks from stage ``i``'s queue, whole pieces where they fit."""
        import ray

        queue = self.queues[i]
        parts: list[Any] = []
        taken = 0
        while queue and taken < size:
            head = queue[0]
            if isinstance(head, _Piece):
                if taken + head.count <= size:
                    parts.append(head.ref)
                    taken += head.count
                    queue.popleft()
                else:  # too big for this batch: fetch it once and queue its tasks singly
                    queue.popleft()
                    queue.extendleft(reversed(ray.get(head.ref)))
            else:
                parts.append(queue.popleft())
                taken += 1
        self.queued[i] -= taken
        return parts

    def _collect(self, count_ref: Any) -> None:
        call = self.calls.pop(count_ref)
        pool = call.pool
        pool.inflight[call.actor] -= 1
        self.busy[pool.index] -= 1
        if pool.index == len(self.pools) - 1:
            _, tasks = _get(pool.stage, [count_ref, call.tasks_ref])  # one round trip for both
            if tasks:
                self.tracker.on_terminal(tasks)
                self.outputs.extend(tasks)
            return
        count = _get(pool.stage, count_ref)
        if count:
            self.queues[pool.index + 1].append(_Piece(call.tasks_ref, count))
            self.queued[pool.index + 1] += count
