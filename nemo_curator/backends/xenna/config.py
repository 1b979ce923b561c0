"""``XennaSettings``: the xenna executor's configuration, validated when the executor is made."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from loguru import logger

from nemo_curator.backends.base import ExecutorSettings

_MODES = ("streaming", "batch", "serving")


@dataclass(frozen=True)
class XennaSettings(ExecutorSettings):
    """The executor's configuration; see ``XennaExecutor`` for each key. Invariant: valid."""

    owner: ClassVar[str] = "XennaExecutor"

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

    def __post_init__(self) -> None:
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
        if self.report_interval_s > 0:
            logger.warning(
                "XennaExecutor: report_interval_s has no effect any more (terminal tasks reach the "
                "checkpoint's tracker as they arrive, and it times its ledger commits itself); drop the key"
            )
