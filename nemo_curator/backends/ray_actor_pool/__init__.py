"""Streaming executor on pools of Ray actors: ``RayActorPoolExecutor``."""

from nemo_curator.backends.ray_actor_pool.executor import RayActorPoolExecutor

__all__ = ["RayActorPoolExecutor"]
