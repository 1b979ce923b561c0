"""End to end on S3: a checkpointed run on the actor pool, then a resume with a new cache dir (as on another node)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nemo_curator.backends.ray_actor_pool import RayActorPoolExecutor
from nemo_curator.pipeline import Pipeline
from nemo_curator.resumability.inspect import checkpoint_status
from tests.s3_server import S3Checkpoint
from tests.stages import AddOne, EmitNumbers, NumberStage, NumberTask

FAILING = (3, 7, 11)


@dataclass(kw_only=True)
class FailUntilFixed(NumberStage):
    """Raises on ``values`` until the file ``fixed`` exists (a bug fixed between two runs)."""

    fixed: str = ""
    values: tuple[int, ...] = FAILING
    name: str = "fail_until_fixed"

    def process(self, task: NumberTask) -> NumberTask:
        if task.data - 1 in self.values and not os.path.exists(self.fixed):
            raise ValueError(f"cannot handle {task.data - 1} yet")
        return task


def test_a_resume_with_a_new_cache_dir_redoes_only_the_unfinished_sources(
    ray_session: Any, s3_checkpoint: S3Checkpoint, tmp_path: Path
) -> None:
    fixed = tmp_path / "fixed"

    def pipeline() -> Pipeline:
        return Pipeline("s3_resume", stages=[EmitNumbers(count=20), AddOne(), FailUntilFixed(fixed=str(fixed))])

    node_a = tmp_path / "node-a"
    first = pipeline().run(RayActorPoolExecutor(checkpoint=s3_checkpoint.config(cache_dir=node_a)))
    assert sorted(t.data for t in first) == sorted(i + 1 for i in range(20) if i not in FAILING)
    status = checkpoint_status(s3_checkpoint.url(), storage_options=s3_checkpoint.storage_options)
    assert (status["completed_sources"], status["failed_sources"], status["in_flight_sources"]) == (17, 3, 0)
    assert not any(node_a.glob("*.lmdb"))  # the cache is only a working copy; nothing of it is needed

    fixed.touch()
    node_b = tmp_path / "node-b"
    second = pipeline().run(RayActorPoolExecutor(checkpoint=s3_checkpoint.config(cache_dir=node_b)))
    assert sorted(t.data for t in second) == [v + 1 for v in FAILING]
    final = checkpoint_status(s3_checkpoint.url(), storage_options=s3_checkpoint.storage_options)
    assert (final["completed_sources"], final["failed_sources"]) == (20, 0)
    assert [w["start_stamp"] for w in final["writers"]] == sorted(w["start_stamp"] for w in final["writers"])
    assert len(final["writers"]) == 2 and all(w["closed"] for w in final["writers"])
