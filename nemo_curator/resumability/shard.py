"""Shards: an explicit split of a pipeline's sources between writers that share one checkpoint (pure).

Executor config ``shard=(index, count)`` makes a run process only the sources whose id hashes
into ``index`` of ``count`` shards (``shard_of``: BLAKE2b of the id, so every host and Python
process agrees). ``shard="slurm"`` takes them from a SLURM job array:
``index = (SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN) // SLURM_ARRAY_TASK_STEP`` and
``count = SLURM_ARRAY_TASK_COUNT``; an array with gaps (``--array=1,4,9``) is refused, since
its ids do not map onto ``0..count-1``. Sharding is opt-in only: the SLURM variables are read
only when ``shard="slurm"`` is given.

Invariants: ``Shard`` is immutable and picklable; for a fixed ``count`` every source id is owned
by exactly one ``index``; two writers may run side by side on one checkpoint only when their
shards are ``compatible`` (both given, the same count, different indexes).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["SLURM_VARIABLES", "Shard", "compatible", "parse_shard", "shard_of"]

SLURM_VARIABLES = ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_COUNT")


def shard_of(source_id: str, count: int) -> int:
    """The shard (``0..count-1``) that owns ``source_id``: a stable hash, the same everywhere."""
    digest = hashlib.blake2b(source_id.encode("utf-8", errors="surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % count


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (``0 <= index < count``)."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if isinstance(self.index, bool) or isinstance(self.count, bool):
            raise ValueError(f"shard must be two integers (index, count), got {(self.index, self.count)!r}")
        if not (isinstance(self.index, int) and isinstance(self.count, int)):
            raise ValueError(f"shard must be two integers (index, count), got {(self.index, self.count)!r}")
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(f"shard (index, count) needs 0 <= index < count, got ({self.index}, {self.count})")

    def owns(self, source_id: str) -> bool:
        return self.count == 1 or shard_of(source_id, self.count) == self.index

    def to_list(self) -> list[int]:
        """The JSON form kept in lease objects."""
        return [self.index, self.count]

    @staticmethod
    def from_list(value: Any) -> Shard | None:
        """The inverse of ``to_list`` (``None`` for ``None`` or anything malformed)."""
        if not isinstance(value, list | tuple) or len(value) != 2:
            return None
        try:
            return Shard(int(value[0]), int(value[1]))
        except (TypeError, ValueError):
            return None

    def __str__(self) -> str:
        return f"shard {self.index} of {self.count}"


def compatible(a: Shard | None, b: Shard | None) -> bool:
    """Whether two live writers may share a checkpoint: distinct shards of the same count."""
    return a is not None and b is not None and a.count == b.count and a.index != b.index


def _slurm_shard(env: Mapping[str, str]) -> Shard:
    missing = [name for name in SLURM_VARIABLES if not env.get(name)]
    if missing:
        raise ValueError(
            f'shard="slurm" needs the job array variables {", ".join(SLURM_VARIABLES)}, but {", ".join(missing)} '
            "is not set (is this a task of a SLURM job array, sbatch --array=0-N?). Fix: run it as an array task, "
            "or give the shard explicitly: config={'shard': (index, count)}"
        )
    try:
        task, first, count = (int(env[name]) for name in SLURM_VARIABLES)
        step = int(env.get("SLURM_ARRAY_TASK_STEP") or 1)
    except ValueError as exc:
        raise ValueError(f'shard="slurm": a SLURM array variable is not an integer ({exc})') from exc
    offset, rest = divmod(task - first, max(step, 1))
    if rest or not 0 <= offset < count:
        raise ValueError(
            f'shard="slurm": array task {task} is not task number 0..{count - 1} of a contiguous array starting at '
            f"{first} (step {step}); an array with gaps (--array=1,4,9) cannot be mapped onto shards. Fix: use a "
            "contiguous array (--array=0-N), or give the shard explicitly: config={'shard': (index, count)}"
        )
    return Shard(offset, count)


def parse_shard(value: Any, env: Mapping[str, str] | None = None) -> Shard | None:
    """The ``Shard`` of an executor's ``shard`` config value (``None``: not sharded).

    Accepts ``(index, count)`` (a tuple or list), a ``Shard``, ``"slurm"`` (read from ``env``,
    default ``os.environ``) or ``None``. Raises ``ValueError`` naming the fix otherwise.
    """
    if value is None or isinstance(value, Shard):
        return value
    if isinstance(value, str):
        if value.lower() == "slurm":
            return _slurm_shard(os.environ if env is None else env)
        raise ValueError(f'shard must be (index, count) or "slurm", got the string {value!r}')
    if isinstance(value, list | tuple) and len(value) == 2:
        return Shard(*value)
    raise ValueError(f'shard must be (index, count) or "slurm", got {value!r}')
