"""Ray Data backend: ``RayDataExecutor`` (one streaming ``map_batches`` per stage)."""

from nemo_curator.backends.ray_data.executor import RayDataExecutor

__all__ = ["RayDataExecutor"]
