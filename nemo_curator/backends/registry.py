"""The executors by name, imported only when one is chosen.

Importing this module imports no backend (and no Ray): the command line lists the names
from here without paying for any of them.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nemo_curator.backends.base import BaseExecutor

#: Executor name -> (module, class).
EXECUTORS: dict[str, tuple[str, str]] = {
    "xenna": ("nemo_curator.backends.xenna", "XennaExecutor"),
    "ray_data": ("nemo_curator.backends.ray_data", "RayDataExecutor"),
    "ray_actor_pool": ("nemo_curator.backends.ray_actor_pool", "RayActorPoolExecutor"),
}


def executor_class(name: str) -> type[BaseExecutor]:
    """The executor class called ``name``; raises ``ValueError`` for an unknown name."""
    if name not in EXECUTORS:
        raise ValueError(f"unknown executor {name!r}; choose one of {sorted(EXECUTORS)}")
    module_name, class_name = EXECUTORS[name]
    return getattr(importlib.import_module(module_name), class_name)


def make_executor(
    name: str, config: dict[str, Any] | None = None, checkpoint: str | os.PathLike | None = None
) -> BaseExecutor:
    """An executor by name with this config and checkpoint."""
    return executor_class(name)(config=config, checkpoint=checkpoint)
