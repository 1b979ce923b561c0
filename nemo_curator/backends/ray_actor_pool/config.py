"""``ActorPoolSettings``: the actor-pool executor's configuration, validated when the executor is made."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from nemo_curator.backends.base import ExecutorSettings


@dataclass(frozen=True)
class ActorPoolSettings(ExecutorSettings):
    """See ``RayActorPoolExecutor`` for each key. Invariant: valid.

    ``num_actors_per_stage`` is an int for every stage or a ``{stage name: int}`` mapping
    (stages it does not name get 1); a stage's own ``num_workers()`` overrides either.
    """

    owner: ClassVar[str] = "RayActorPoolExecutor"

    num_actors_per_stage: int | dict[str, int] = 1
    max_inflight_per_actor: int = 2
    max_retries: int = 3
    lost_node_grace_s: float = 60.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "max_inflight_per_actor", int(self.max_inflight_per_actor))
        object.__setattr__(self, "max_retries", int(self.max_retries))
        if self.max_inflight_per_actor < 1:
            raise ValueError(f"{self.owner}: max_inflight_per_actor must be >= 1, got {self.max_inflight_per_actor}")
        if self.max_retries < 0:
            raise ValueError(f"{self.owner}: max_retries must be >= 0, got {self.max_retries}")
        if not self.lost_node_grace_s >= 0:
            raise ValueError(f"{self.owner}: lost_node_grace_s must be >= 0, got {self.lost_node_grace_s}")
        counts = self.num_actors_per_stage
        for name, n in counts.items() if isinstance(counts, dict) else [(None, counts)]:
            if not isinstance(n, int) or n < 1:
                where = "num_actors_per_stage" if name is None else f"num_actors_per_stage[{name!r}]"
                raise ValueError(f"{self.owner}: {where}: the number of actors must be a positive int, got {n!r}")

    def actors_for(self, stage_name: str) -> int:
        """Actors of the stage called ``stage_name`` unless the stage fixes its own number."""
        counts = self.num_actors_per_stage
        return counts.get(stage_name, 1) if isinstance(counts, dict) else counts
