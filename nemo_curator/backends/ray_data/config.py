"""``RayDataSettings``: the Ray Data executor's configuration, validated when the executor is made."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from nemo_curator.backends.base import check_config_keys


@dataclass(frozen=True)
class RayDataSettings:
    """See ``RayDataExecutor`` for each key. Invariant: a constructed value is valid."""

    actor_pool_size: tuple[int, int] = (1, 1)
    show_progress: bool = False
    preserve_order: bool = False
    actor_exit_timeout_s: float = 30.0
    target_max_block_size: int = 1

    @staticmethod
    def from_config(config: dict[str, Any]) -> RayDataSettings:
        """Validate ``config`` (unknown keys included); ``ValueError`` names what is wrong."""
        known = {f.name for f in fields(RayDataSettings)}
        check_config_keys("RayDataExecutor", config, known)
        pool_size = _pool_size(config.get("actor_pool_size", 1))
        timeout = config.get("actor_exit_timeout_s", 30.0)
        if not isinstance(timeout, int | float) or isinstance(timeout, bool) or timeout < 0:
            raise ValueError(f"RayDataExecutor: actor_exit_timeout_s must be a number >= 0, got {timeout!r}")
        block = config.get("target_max_block_size", 1)
        if not isinstance(block, int) or isinstance(block, bool) or block < 1:
            raise ValueError(f"RayDataExecutor: target_max_block_size must be an int >= 1 (bytes), got {block!r}")
        return RayDataSettings(
            actor_pool_size=pool_size,
            show_progress=bool(config.get("show_progress", False)),
            preserve_order=bool(config.get("preserve_order", False)),
            actor_exit_timeout_s=float(timeout),
            target_max_block_size=block,
        )


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
