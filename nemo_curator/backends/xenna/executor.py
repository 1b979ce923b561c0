"""``XennaExecutor``: run a pipeline on cosmos-xenna.

Without a checkpoint the pipeline runs in xenna's STREAMING (or BATCH) mode and
``run_pipeline`` returns the last stage's outputs at the end. In every mode the last stage
returns each call's outputs as one ``OutputPack`` (xenna makes one object per stage output;
one per call instead is cheaper) and the driver unpacks them. With a checkpoint the run needs
every last-stage output on the driver as it completes, so it runs in SERVING mode
(``serving``). The stage specs and xenna's pipeline config are built in ``pipeline``, the
settings validated in ``config``.

cosmos-xenna is imported lazily, when a run starts: importing it reconfigures loguru, so a
process whose loguru the user configured imports it with loguru's sinks frozen.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from loguru import logger

from nemo_curator.backends.base import BaseExecutor, CompletionTracker, ExecutionPlan, is_tracking
from nemo_curator.backends.errors import error_to_raise, find_stage_error
from nemo_curator.backends.xenna.config import XennaSettings
from nemo_curator.backends.xenna.pipeline import build_stage_specs, fit_cpu_requests, pipeline_config
from nemo_curator.backends.xenna.state_api import fitted_state_api_limit
from nemo_curator.tasks import Task

if TYPE_CHECKING:
    from nemo_curator.resumability.config import CheckpointConfig

# Importable from here as before the split into ``config``, ``pipeline`` and ``errors``.
__all__ = ["XennaExecutor", "XennaSettings", "build_stage_specs", "find_stage_error", "fit_cpu_requests"]

#: Set while cosmos-xenna is first imported (unless the user set ``PYTHON_LOG``): xenna's
#: loguru sink then shows only its warnings, and everything else at INFO and above.
_QUIET_PYTHON_LOG = "info,*cosmos_xenna*=warning"


class XennaExecutor(BaseExecutor):
    """Runs pipelines on cosmos-xenna: ``XennaExecutor(config=None, checkpoint=None)``.

    Every stage becomes one xenna stage whose workers run the shared ``StageAdapter``;
    all stages are alive at once and tasks stream between them.

    ``config`` keys (all optional):

    - ``num_cpus``: logical CPUs of the local Ray started when none is running (default:
      enough for one worker per stage, at least the machine's cores).
    - ``execution_mode``: ``"streaming"`` (default; all stages at once), ``"batch"``
      (stage after stage, everything materialized in between; each stage in turn gets as
      many workers as the cluster holds, so it starts many workers) or ``"serving"``
      (as streaming, but the last stage's outputs reach the driver as they complete; the
      mode a checkpointed run uses, so it measures what a checkpoint costs beyond its mode).
      Ignored with a checkpoint, which always runs in xenna's SERVING mode.
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
    - ``report_batch_size``: with a checkpoint, terminal tasks go to the tracker as they
      arrive, what has arrived together in one call; a call gathers the outputs of further
      last-stage calls only while it holds fewer than this many tasks (default 256).
    - ``report_interval_s``: accepted and validated (>= 0) for compatibility; it has no effect
      any more: terminal tasks go to the tracker at once, and the tracker times its ledger
      commits itself.

    On a cluster the user started (``RAY_ADDRESS``), cosmos-xenna's state-API queries are
    fitted to the limit the cluster's dashboard accepts (see ``state_api``); a cluster without
    a reachable dashboard is refused before any stage runs.

    Invariants: a stage's CPU request is honoured unless the cluster is too small for one
    worker per stage, in which case all requests are scaled down by one factor (logged; a
    stage asking for no CPU and no GPU gets 0.01 CPU, as xenna needs a non-empty shape);
    a stage that raises fails the run with a ``StageError`` naming the stage (its
    ``__cause__`` is the original exception); xenna's workers are stopped before ``run``
    returns or raises.
    """

    name = "xenna"

    def __init__(
        self, config: dict[str, Any] | None = None, checkpoint: str | os.PathLike | CheckpointConfig | None = None
    ) -> None:
        super().__init__(config=config, checkpoint=checkpoint)
        self.settings = XennaSettings.from_config(self.config)

    def _needs_dashboard(self) -> bool:
        return True  # xenna's monitoring uses Ray's state API, served by the dashboard

    def _execute(self, plan: ExecutionPlan, initial_tasks: list[Task], tracker: CompletionTracker) -> list[Task]:
        _import_xenna_quietly(self.settings.verbose)
        from cosmos_xenna.pipelines import v1 as xenna

        with xenna_run_environment(), fitted_state_api_limit():
            stages = build_stage_specs(plan, tracker, self.settings)
            # Only SERVING mode hands outputs over while the run goes on.
            if is_tracking(tracker) or self.settings.execution_mode == "serving":
                from nemo_curator.backends.xenna.serving import run_serving

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
                failure = error_to_raise(exc, where="a cosmos-xenna worker", unwrap_remote=False)
        if failure is not None:
            gc.collect()  # frees the cleared frames' cycles, and with them stray worker handles
            raise failure
        return [task for pack in outputs or [] for task in pack.tasks]


# -- the run's environment: cosmos-xenna imported quietly, Ray found, re-init noise muted ------------


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
