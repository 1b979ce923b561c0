"""Building a cosmos-xenna pipeline from an ``ExecutionPlan``: stage specs and pipeline config.

Shared by both ways the executor runs xenna (``executor`` without a tracker, ``serving`` with
one). cosmos-xenna is imported inside the functions, when a run starts.
"""

from __future__ import annotations

import math
from typing import Any

from loguru import logger

from nemo_curator.backends.base import CompletionTracker, ExecutionPlan
from nemo_curator.backends.resources import scale_cpu_requests
from nemo_curator.backends.xenna.config import XennaSettings

#: CPUs given to a stage that asks for none (xenna needs a non-empty worker shape).
_MIN_CPUS = 0.01
#: The finest CPU quantity the scaled requests are rounded to.
_XENNA_CPU_STEP = 1e-3


def cluster_cpu_capacity(cpu_allocation_percentage: float) -> float:
    """CPUs xenna will plan with: per alive node, ``floor(CPU * percentage)`` (as xenna does)."""
    import ray

    total = 0.0
    for node in ray.nodes():
        if node.get("Alive", node.get("alive", False)):
            total += max(0, math.floor(float(node.get("Resources", {}).get("CPU", 0.0)) * cpu_allocation_percentage))
    return total


def fit_cpu_requests(requests: list[float], workers: list[int], capacity: float) -> tuple[list[float], float]:
    """``scale_cpu_requests`` in xenna's step of 1/1000 CPU (a scaled request stays positive)."""
    return scale_cpu_requests(requests, workers, capacity, step=_XENNA_CPU_STEP)


def build_stage_specs(plan: ExecutionPlan, tracker: CompletionTracker, settings: XennaSettings) -> list[Any]:
    """One ``xenna.StageSpec`` per stage, each wrapping ``plan.adapter(i, tracker)``."""
    from cosmos_xenna.pipelines import v1 as xenna

    from nemo_curator.backends.xenna.adapter import named_stage_class

    fixed: list[int | None] = []
    for stage in plan.stages:
        n = stage.num_workers()
        fixed.append(n if n is not None else settings.num_workers_per_stage)
    # xenna rejects a worker shape with no resources at all: a stage asking for nothing gets a sliver.
    requests = [
        max(float(s.resources.cpus), _MIN_CPUS) if s.resources.gpus == 0 else float(s.resources.cpus)
        for s in plan.stages
    ]
    capacity = cluster_cpu_capacity(settings.cpu_allocation_percentage)
    cpus, factor = fit_cpu_requests(requests, [n or 1 for n in fixed], capacity)
    if factor < 1.0:
        logger.info(
            "xenna: the stages ask for {:g} CPUs for one worker each but the cluster offers {:g}; "
            "scaling every stage's CPU request by {:.3f} so that each stage gets a worker",
            sum(r * (n or 1) for r, n in zip(requests, fixed, strict=True)),
            capacity,
            factor,
        )
    specs = []
    last = len(plan.stages) - 1
    for i, stage in enumerate(plan.stages):
        wrapper = named_stage_class(stage.name)
        wrapped = wrapper(
            plan.adapter(i, tracker),
            cpus=cpus[i],
            gpus=float(stage.resources.gpus),
            pack_outputs=i == last,
        )
        specs.append(xenna.StageSpec(wrapped, num_workers=fixed[i]))
    return specs


def pipeline_config(settings: XennaSettings, mode: Any) -> Any:
    """A ``xenna.PipelineConfig`` for ``mode`` from ``settings`` (quiet unless verbose)."""
    from cosmos_xenna.pipelines import v1 as xenna

    level = xenna.VerbosityLevel.INFO if settings.verbose else xenna.VerbosityLevel.NONE
    return xenna.PipelineConfig(
        execution_mode=mode,
        logging_interval_s=settings.logging_interval_s,
        cpu_allocation_percentage=settings.cpu_allocation_percentage,
        num_run_attempts_python=1 + settings.max_retries,
        num_setup_attempts_python=1 + settings.max_setup_retries,
        slots_per_actor=settings.slots_per_actor,
        enable_work_stealing=settings.enable_work_stealing,
        ignore_failures=False,
        failures_return_nones=False,
        monitoring_verbosity_level=level,
        actor_pool_verbosity_level=level,
        mode_specific=xenna.StreamingSpecificSpec(
            autoscale_interval_s=settings.autoscale_interval_s,
            executor_verbosity_level=level,
            autoscaler_verbosity_level=xenna.VerbosityLevel.NONE,
        ),
    )
