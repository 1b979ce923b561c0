"""``ActorPoolSettings``: the actor-pool executor's configuration, validated when the executor is made."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from nemo_curator.backends.base import check_config_keys


@dataclass(frozen=True)
class ActorPoolSettings:
    """See ``RayActorPoolExecutor`` for each key. Invariant: a constructed value is valid.

    ``num_actors_per_stage`` is an int for every stage or a ``{stage name: int}`` mapping
    (stages it does not name get 1); a stage's own ``num_workers()`` overrides either.
    """

    num_actors_per_stage: int | dict[str, int] = 1
    max_inflight_per_actor: int = 2
    max_retries: int = 3

    @staticmethod
    def from_config(config: dict[str, Any]) -> ActorPoolSettings:
        """Validate ``config`` (unknown keys included); ``ValueError`` names what is wrong."""
        check_config_keys("RayActorPoolExecutor", config, {f.name for f in fields(ActorPoolSettings)})
        settings = ActorPoolSettings(
            num_actors_per_stage=config.get("num_actors_per_stage", 1),
            max_inflight_per_actor=int(config.get("max_inflight_per_actor", 2)),
            max_retries=int(config.get("max_retries", 3)),
        )
        if settings.max_inflight_per_actor < 1:
            raise ValueError(f"max_inflight_per_actor must be >= 1, got {settings.max_inflight_per_actor}")
        if settings.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {settings.max_retries}")
        counts = settings.num_actors_per_stage
        for name, n in counts.items() if isinstance(counts, dict) else [(None, counts)]:
            if not isinstance(n, int) or n < 1:
                where = "num_actors_per_stage" if name is None else f"num_actors_per_stage[{name!r}]"
                raise ValueError(f"{where}: the number of actors must be a positive int, got {n!r}")
        return settings

    def actors_for(self, stage_name: str) -> int:
        """Actors of the stage called ``stage_name`` unless the stage fixes its own number."""
        counts = self.num_actors_per_stage
        return counts.get(stage_name, 1) if isinstance(counts, dict) else counts
