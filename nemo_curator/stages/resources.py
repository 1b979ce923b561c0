"""Resources a stage's worker asks for."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Resources:
    """CPUs (may be fractional) and GPUs per worker."""

    cpus: float = 1.0
    gpus: float = 0.0
    gpu_memory_gb: float = 0.0

    def __post_init__(self) -> None:
        if self.cpus < 0 or self.gpus < 0 or self.gpu_memory_gb < 0:
            raise ValueError(f"resources must be non-negative, got {self}")
