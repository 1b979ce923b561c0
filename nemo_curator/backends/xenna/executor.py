"""``XennaExecutor``: run a pipeline on cosmos-xenna.

Without a checkpoint the pipeline runs in xenna's STREAMING (or BATCH) mode and
``run_pipeline`` returns the last stage's outputs at the end. In every mode the last stage
returns each call's outputs as one ``OutputPack`` (xenna makes one object per stage output;
one per call instead saved about 2 s of 18 in a 2,000-source run) and the driver unpacks them.
With a checkpoint the run needs every last-stage output on the driver as it completes, so
it runs in SERVING mode (``nemo_curator.backends.xenna.resumability``, imported only then).

cosmos-xenna is imported lazily, when a run starts: importing it reconfigures loguru, so a
process whose loguru the user configured imports it with loguru's sinks frozen.
"""

from __future__ import annotations

import gc
import logging
import math
import os
import re
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Any

from loguru import logger

from nemo_curator.backends.base import BASE_CONFIG_KEYS, BaseExecutor, CompletionTracker, ExecutionPlan
from nemo_curator.backends.stage_adapter import StageError
from nemo_curator.tasks import Task

#: Keys of ``config`` read by the base class rather than by ``XennaSettings``.
_BASE_KEYS = BASE_CONFIG_KEYS

#: Set while cosmos-xenna is first imported (unless the user set ``PYTHON_LOG``): xenna's
#: loguru sink then shows only its warnings, and everything else at INFO and above.
_QUIET_PYTHON_LOG = "info,*cosmos_xenna*=warning"

_MODES = ("streaming", "batch")

#: CPUs given to a stage that asks for none (xenna needs a non-empty worker shape).
_MIN_CPUS = 0.01


@dataclass(frozen=True)
class XennaSettings:
    """The executor's configuration, validated; see ``XennaExecutor`` for each key."""

    execution_mode: str = "streaming"
    logging_interval_s: float = 3600.0
    autoscale_interval_s: float = 180.0
    cpu_allocation_percentage: float = 1.0
    num_workers_per_stage: int | None = None
    max_retries: int = 0
    max_setup_retries: int = 0
    slots_per_actor: int = 2
    enable_work_stealing: bool = False
    verbose: bool = False
    report_batch_size: int = 256
    report_interval_s: float = 0.0

    @staticmethod
    def from_config(config: dict[str, Any]) -> XennaSettings:
        known = {f.name for f in fields(XennaSettings)}
        unknown = sorted(set(config) - known - _BASE_KEYS)
        if unknown:
            raise ValueError(
                f"XennaExecutor: unknown config key(s) {unknown}; known keys: {sorted(known | _BASE_KEYS)}"
            )
        settings = XennaSettings(**{k: v for k, v in config.items() if k in known})
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.execution_mode not in _MODES:
            raise ValueError(f"XennaExecutor: execution_mode must be one of {_MODES}, got {self.execution_mode!r}")
        if not 0.0 < self.cpu_allocation_percentage <= 1.0:
            raise ValueError(
                f"XennaExecutor: cpu_allocation_percentage must be in (0, 1], got {self.cpu_allocation_percentage}"
            )
        if self.num_workers_per_stage is not None and self.num_workers_per_stage < 1:
            raise ValueError(f"XennaExecutor: num_workers_per_stage must be >= 1, got {self.num_workers_per_stage}")
        for key in ("max_retries", "max_setup_retries"):
            if getattr(self, key) < 0:
                raise ValueError(f"XennaExecutor: {key} must be >= 0, got {getattr(self, key)}")
        for key in ("slots_per_actor", "report_batch_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"XennaExecutor: {key} must be >= 1, got {getattr(self, key)}")
        for key in ("logging_interval_s", "autoscale_interval_s"):
            if not getattr(self, key) > 0:
                raise ValueError(f"XennaExecutor: {key} must be > 0, got {getattr(self, key)}")
        if not self.report_interval_s >= 0:
            raise ValueError(f"XennaExecutor: report_interval_s must be >= 0, got {self.report_interval_s}")


class XennaExecutor(BaseExecutor):
    """Runs pipelines on cosmos-xenna: ``XennaExecutor(config=None, checkpoint=None)``.

    Every stage becomes one xenna stage whose workers run the shared ``StageAdapter``;
    all stages are alive at once and tasks stream between them.

    ``config`` keys (all optional):

    - ``num_cpus``: logical CPUs of the local Ray started when none is running (default:
      enough for one worker per stage, at least the machine's cores).
    - ``execution_mode``: ``"streaming"`` (default; all stages at once) or ``"batch"``
      (stage after stage, everything materialized in between; each stage in turn gets as
      many workers as the cluster holds, so it starts many workers). Ignored with a
      checkpoint, which always runs in xenna's SERVING mode.
    - ``logging_interval_s``: seconds between xenna's status lines (default 3600).
    - ``autoscale_interval_s``: seconds between xenna autoscaler runs (default 180).
    - ``cpu_allocation_percentage``: share of each node's CPUs xenna may use (default
      1.0; xenna's own 0.95 rounds 2 CPUs down to 1).
    - ``num_workers_per_stage``: a fixed worker count for every stage whose
      ``stage.num_workers()`` is ``None`` (default: xenna's autoscaler decides).
    - ``max_retries``: extra attempts of a failed batch on the same worker, with xenna's
      backoff of 2, 4, 8.. s (default 0: a stage that raises fails the run at once). A retry
      sees the input objects as the failed attempt left them. With a checkpoint a stage
      exception becomes a ``FailedTask`` instead and is never retried within the run.
    - ``max_setup_retries``: extra attempts of a worker's failed ``setup`` (default 0).
    - ``slots_per_actor``: tasks queued per worker (xenna's default 2).
    - ``enable_work_stealing``: let idle workers take queued tasks (default False).
    - ``verbose``: xenna's monitoring and pool logs at INFO (default False: quiet).
    - ``report_batch_size`` / ``report_interval_s``: with a checkpoint, terminal tasks are
      handed to the tracker as they arrive (a batch goes as soon as it holds this many), or,
      with an interval > 0, after that many seconds since the first task of the batch arrived
      (defaults 256 and 0: the tracker batches the ledger calls itself).

    Invariants: a stage's CPU request is honoured unless the cluster is too small for one
    worker per stage, in which case all requests are scaled down by one factor (logged; a
    stage asking for no CPU and no GPU gets 0.01 CPU, as xenna needs a non-empty shape);
    a stage that raises fails the run with a ``StageError`` naming the stage (its
    ``__cause__`` is the original exception); xenna's workers are stopped before ``run``
    returns or raises.
    """

    name = "xenna"

    def __init__(self, config: dict[str, Any] | None = None, checkpoint: str | os.PathLike | None = None) -> None:
        super().__init__(config=config, checkpoint=checkpoint)
        self.settings = XennaSettings.from_config(self.config)

    def _needs_dashboard(self) -> bool:
        return True  # xenna's monitoring uses Ray's state API, served by the dashboard

    def _execute(self, plan: ExecutionPlan, initial_tasks: list[Task], tracker: CompletionTracker | None) -> list[Task]:
        _import_xenna_quietly(self.settings.verbose)
        from cosmos_xenna.pipelines import v1 as xenna

        with xenna_run_environment():
            stages = build_stage_specs(plan, tracker, self.settings)
            if tracker is not None:
                from nemo_curator.backends.xenna.resumability import run_serving

                return run_serving(stages, self.settings, initial_tasks, tracker)
            batch = self.settings.execution_mode == "batch"
            config = pipeline_config(
                self.settings, xenna.ExecutionMode.BATCH if batch else xenna.ExecutionMode.STREAMING
            )
            config.return_last_stage_outputs = True
            spec = xenna.PipelineSpec(input_data=list(initial_tasks), stages=stages, config=config)
            failure: BaseException | None = None
            try:
                outputs = xenna.run_pipeline(spec)
            except Exception as exc:
                failure = surface_failure(exc)
        if failure is not None:
            gc.collect()  # frees the cleared frames' cycles, and with them stray worker handles
            raise failure
        return [task for pack in outputs or [] for task in pack.tasks]


# -- building the xenna pipeline ----------------------------------------------------------


def _import_xenna_quietly(verbose: bool) -> None:
    """Import cosmos-xenna without losing the user's loguru configuration.

    On import xenna removes every loguru sink and adds its own stderr sink. A removed sink
    is closed (a log file stops for good), so it cannot be put back afterwards:
    - if the process still has only loguru's default sink, xenna may replace it, with its
      own modules at WARNING unless ``verbose`` (or ``PYTHON_LOG`` says otherwise);
    - if the user configured loguru (added or removed a sink), xenna's import runs with
      loguru's ``add`` / ``remove`` / ``configure`` disabled, so the user's sinks stay as they
      are and xenna's driver-side messages go to them at the levels the user chose.
    """
    if "cosmos_xenna.utils.python_log" in sys.modules:  # loguru was reconfigured already, or kept
        import cosmos_xenna.pipelines.v1

        return
    if _loguru_configured_by_user():
        with _loguru_sinks_frozen():
            import cosmos_xenna.pipelines.v1
        return
    if verbose or "PYTHON_LOG" in os.environ:
        import cosmos_xenna.pipelines.v1

        return
    os.environ["PYTHON_LOG"] = _QUIET_PYTHON_LOG
    try:
        import cosmos_xenna.pipelines.v1  # noqa: F401
    finally:
        os.environ.pop("PYTHON_LOG", None)


def _loguru_configured_by_user() -> bool:
    """Whether loguru's sinks differ from the single default one (handler id 0) it starts with.

    Reads loguru's private handler table; if that ever moves, the answer is ``True``, which
    keeps whatever the user has.
    """
    handlers = getattr(getattr(logger, "_core", None), "handlers", None)
    if not isinstance(handlers, dict):
        return True
    return set(handlers) != {0}


@contextmanager
def _loguru_sinks_frozen() -> Iterator[None]:
    """Make loguru's ``add``, ``remove`` and ``configure`` do nothing until the block ends."""
    names = ("add", "remove", "configure")

    def ignored(*args: Any, **kwargs: Any) -> int:
        return -1

    for name in names:
        setattr(logger, name, ignored)
    try:
        yield
    finally:
        for name in names:
            delattr(logger, name)


#: What Ray logs when xenna calls ``ray.init(ignore_reinit_error=True)`` on the connected Ray.
_REINIT_NOISE = (
    "Using address ",
    "Connecting to existing Ray cluster",
    "Calling ray.init() again",
    "SIGTERM handler is not set",
)


class _DropReinitNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(_REINIT_NOISE)


@contextmanager
def xenna_run_environment() -> Iterator[None]:
    """Point ``RAY_ADDRESS`` at the connected cluster while xenna runs, and mute Ray's re-init lines.

    xenna's monitoring calls Ray's state API, which finds the cluster through
    ``RAY_ADDRESS`` or else ``/tmp/ray/ray_current_cluster``; a stale file sends it to a
    dead cluster. The previous value is restored afterwards.
    """
    import ray

    saved = os.environ.get("RAY_ADDRESS")
    if not saved or saved in ("auto", "local"):
        os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    ray_worker_log = logging.getLogger("ray._private.worker")
    mute = _DropReinitNoise()
    ray_worker_log.addFilter(mute)
    try:
        yield
    finally:
        ray_worker_log.removeFilter(mute)
        if saved is None:
            os.environ.pop("RAY_ADDRESS", None)
        else:
            os.environ["RAY_ADDRESS"] = saved


def cluster_cpu_capacity(cpu_allocation_percentage: float) -> float:
    """CPUs xenna will plan with: per alive node, ``floor(CPU * percentage)`` (as xenna does)."""
    import ray

    total = 0.0
    for node in ray.nodes():
        if node.get("Alive", node.get("alive", False)):
            total += max(0, math.floor(float(node.get("Resources", {}).get("CPU", 0.0)) * cpu_allocation_percentage))
    return total


def fit_cpu_requests(requests: list[float], workers: list[int], capacity: float) -> tuple[list[float], float]:
    """Scale ``requests`` by one factor so that ``sum(requests[i] * workers[i]) <= capacity``.

    Returns the (possibly) scaled requests and the factor (1.0 when they already fit).
    Scaled values are rounded down to 1/1000 CPU and kept strictly positive where the
    original was.
    """
    needed = sum(r * w for r, w in zip(requests, workers, strict=True))
    if needed <= capacity or needed <= 0:
        return list(requests), 1.0
    factor = capacity / needed
    scaled = [max(math.floor(r * factor * 1000) / 1000, 0.001) if r > 0 else r for r in requests]
    return scaled, factor


def build_stage_specs(plan: ExecutionPlan, tracker: CompletionTracker | None, settings: XennaSettings) -> list[Any]:
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


# -- errors --------------------------------------------------------------------------------


def find_stage_error(exc: BaseException) -> StageError | None:
    """The ``StageError`` behind an exception raised by xenna, if any.

    xenna re-raises a worker's exception as Ray's ``RayTaskError`` (whose ``cause`` is the
    ``StageError`` from the adapter), sometimes wrapped again (``RuntimeError(...) from``
    it, for a failed ``setup``).
    """
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        cause = getattr(current, "cause", None)
        if isinstance(current, StageError) and not isinstance(cause, StageError):
            return current
        stack.extend([current.__context__, current.__cause__, cause if isinstance(cause, BaseException) else None])
    return None


def surface_failure(exc: BaseException) -> BaseException:
    """The exception to raise for a failed xenna run: the ``StageError`` it carries, if any.

    The worker's traceback (as Ray formatted it) is added to the ``StageError`` as a note.
    The frames of ``exc``'s traceback are cleared first: their locals hold xenna's actor
    pools, including handles of workers xenna failed to kill (in cosmos-xenna 0.5.12 a
    worker whose ``setup`` raised is dropped from its pool's books before the pool deletes
    it). Releasing those handles lets Ray stop the workers; raise the result outside the
    ``except`` block so that ``exc`` is not kept as its context.
    """
    clear_traceback_frames(exc)
    stage_error = find_stage_error(exc)
    if stage_error is None or stage_error is exc:
        return exc
    remote = _ANSI_ESCAPE.sub("", str(exc)).strip()
    if remote:
        stage_error.add_note(f"raised in a cosmos-xenna worker:\n{remote}")
    return stage_error


_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


def clear_traceback_frames(exc: BaseException) -> None:
    """Clear the locals of every finished frame in the tracebacks of ``exc`` and its chain."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if current.__traceback__ is not None:
            traceback.clear_frames(current.__traceback__)
        stack.extend([current.__context__, current.__cause__])
