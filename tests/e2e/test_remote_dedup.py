"""Exact deduplication with its checkpoint and its files on object storage (a real S3 server on localhost).

The workflow writes its shuffle, its duplicate lists and its output to ``s3://`` and keeps its
checkpoint there; a second run with a new cache directory (another node) skips every segment.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from nemo_curator.backends.ray_actor_pool import RayActorPoolExecutor
from nemo_curator.resumability import CheckpointConfig
from nemo_curator.resumability.workflow import read_workflow_status
from nemo_curator.stages.deduplication.exact import ExactDeduplicationWorkflow
from tests.s3_server import S3Checkpoint
from tests.test_exact_dedup import first_occurrences, random_corpus, write_corpus


def test_dedup_on_object_storage_resumes_on_another_node(ray_session, s3_checkpoint: S3Checkpoint, tmp_path: Path):
    import fsspec

    docs = write_corpus(tmp_path / "in", random_corpus(random.Random(3), 5, 12, distinct=20))
    options = s3_checkpoint.storage_options
    output = s3_checkpoint.url("dedup")

    def workflow() -> ExactDeduplicationWorkflow:
        return ExactDeduplicationWorkflow(
            input_path=str(tmp_path / "in"),
            output_path=output,
            total_nparts=3,
            storage_options=options,
            perform_removal=True,
        )

    first = workflow().run(RayActorPoolExecutor(checkpoint=s3_checkpoint.config("ckpt", s3_checkpoint.new_cache_dir())))
    fs = fsspec.filesystem("s3", **options)
    kept = []
    for path in sorted(fs.ls(first.output_path, detail=False)):
        assert not path.rsplit("/", 1)[-1].startswith("."), path
        kept.extend(json.loads(line)["id"] for line in fs.cat_file(path).decode().splitlines())
    assert sorted(kept) == sorted(first_occurrences(docs))
    assert first.duplicates == len(docs) - len(kept)

    config = s3_checkpoint.config("ckpt", s3_checkpoint.new_cache_dir())
    status = read_workflow_status(CheckpointConfig(config.path, options))
    assert status is not None and all(s["complete"] for s in status["segments"]), status
    again = workflow().run(RayActorPoolExecutor(checkpoint=config))
    assert [s.skipped for s in again.segments] == [True, True, True]
    assert again.duplicates == first.duplicates
