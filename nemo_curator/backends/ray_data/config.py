"""``RayDataSettings``: the Ray Data executor's configuration, validated when the executor is made."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from nemo_curator.backends.base import ExecutorSettings


@dataclass(frozen=True)
class RayDataSettings(ExecutorSettings):
    """See ``RayDataExecutor`` for each key. Invariant: valid; ``actor_pool_size`` is ``(min, max)``."""

    owner: ClassVar[str] = "RayDataExecutor"

    actor_pool_size: int | tuple[int, int] = (1, 1)
    show_progress: bool = False
    preserve_order: bool = False
    actor_exit_timeout_s: float = 30.0
    target_max_block_size: int = 1
    max_tasks_per_block: int = 32
    max_bytes_per_block: int = 128 * 1024**2

    def __post_init__(self) -> None:
        object.__setattr__(self, "actor_pool_size", _pool_size(self.actor_pool_size))
        timeout = self.actor_exit_timeout_s
        if not isinstance(timeout, int | float) or isinstance(timeout, bool) or timeout < 0:
            raise ValueError(f"RayDataExecutor: actor_exit_timeout_s must be a number >= 0, got {timeout!r}")
        object.__setattr__(self, "actor_exit_timeout_s", float(timeout))
        block = self.target_max_block_size
        if not isinstance(block, int) or isinstance(block, bool) or block < 1:
            raise ValueError(f"RayDataExecutor: target_max_block_size must be an int >= 1 (bytes), got {block!r}")
        most = self.max_tasks_per_block
        if not isinstance(most, int) or isinstance(most, bool) or most < 1:
            raise ValueError(f"RayDataExecutor: max_tasks_per_block must be an int >= 1, got {most!r}")
        limit = self.max_bytes_per_block
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise ValueError(f"RayDataExecutor: max_bytes_per_block must be an int >= 1 (bytes), got {limit!r}")
        object.__setattr__(self, "show_progress", bool(self.show_progress))
        object.__setattr__(self, "preserve_order", bool(self.preserve_order))


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
