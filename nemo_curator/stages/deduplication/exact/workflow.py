"""``ExactDeduplicationWorkflow``: exact deduplication of a JSONL corpus, resumable at every step.

::

    workflow = ExactDeduplicationWorkflow(input_path="corpus/", output_path="dedup/", text_field="text")
    result = workflow.run(RayActorPoolExecutor(checkpoint="ckpt/"))   # kill it, run it again

Three segments (``pipeline.workflow``), each a resumable pipeline with its own part of the
checkpoint:

1. ``hash``: per input group, hash each document's text and write one file per partition
   (``<cache_path>/part-<p>/group-<g>.parquet``); sources: the input groups.
2. ``identify``: per partition, find the documents with equal text and list all but the first
   (in input order) in ``<output_path>/ExactDuplicateIds/part-<p>.parquet``; sources: the
   partitions (ids from the partition number and the upstream groups they hold).
3. ``remove`` (with ``perform_removal``): per input group, write the documents not listed to
   ``<output_path>/deduplicated/<source id>.jsonl``; sources: the input groups again.

The input files are listed once and pinned: the first run records them (path, size, mtime) in
the checkpoint with every setting, and a rerun on a changed input, or with another setting, is
refused with the differences (a complete segment would otherwise be skipped although computed
from other data). Without a checkpoint the segments simply run in order.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from loguru import logger

from nemo_curator.pipeline import Pipeline
from nemo_curator.pipeline.workflow import Segment, SegmentResult, run_segments
from nemo_curator.stages.deduplication.exact.identification import (
    ExactDuplicateHashStage,
    ExactDuplicateIdentificationStage,
    group_file_name,
    ids_file_name,
    partition_dir,
)
from nemo_curator.stages.deduplication.exact.removal import ExactDuplicateRemovalStage
from nemo_curator.stages.file_partitioning import FilePartitioningStage
from nemo_curator.stages.shuffle_files import ShufflePartitionTask
from nemo_curator.stages.task_list import TaskListStage
from nemo_curator.stages.text.io.atomic import pin_path
from nemo_curator.stages.text.io.reader import JsonlReaderStage, _split_read_kwargs
from nemo_curator.stages.text.io.writer import JsonlWriter
from nemo_curator.tasks import FileGroupTask

if TYPE_CHECKING:
    from nemo_curator.backends.base import BaseExecutor

WORKFLOW_NAME = "exact_deduplication"
IDS_DIRNAME = "ExactDuplicateIds"
OUTPUT_DIRNAME = "deduplicated"
CACHE_DIRNAME = "shuffle"
#: The default partition count grows with the square root of the group count, up to this.
MAX_DEFAULT_PARTITIONS = 64


@dataclass
class ExactDeduplicationResult:
    """What a run produced: where the duplicate ids and the deduplicated output are, and how many."""

    ids_path: str
    output_path: str | None
    duplicates: int
    num_partitions: int
    segments: list[SegmentResult] = field(default_factory=list)


class ExactDeduplicationWorkflow:
    """Exact deduplication of JSONL documents by the text of ``text_field`` (see the module docstring).

    ``input_blocksize`` / ``input_files_per_partition`` group the input files as
    ``FilePartitioningStage`` does (default: one file per group). ``total_nparts`` is the
    number of hash partitions (default: the square root of the group count, at most 64).
    ``perform_removal=False`` stops after the duplicate ids. ``storage_options`` reach fsspec
    for the input, output and cache paths.
    """

    def __init__(
        self,
        output_path: str,
        input_path: str | list[str],
        input_filetype: str = "jsonl",
        input_blocksize: int | str | None = None,
        input_files_per_partition: int | None = None,
        input_file_extensions: list[str] | None = None,
        read_kwargs: dict[str, Any] | None = None,
        write_kwargs: dict[str, Any] | None = None,
        text_field: str = "text",
        perform_removal: bool = True,
        total_nparts: int | None = None,
        cache_path: str | None = None,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        if input_filetype != "jsonl":
            raise ValueError(
                f"ExactDeduplicationWorkflow: input_filetype {input_filetype!r} is not supported; use 'jsonl'"
            )
        if total_nparts is not None and (
            isinstance(total_nparts, bool) or not isinstance(total_nparts, int) or total_nparts < 1
        ):
            raise ValueError(f"ExactDeduplicationWorkflow: total_nparts must be a positive int, got {total_nparts!r}")
        self.output_path = pin_path(os.fspath(output_path))
        self.cache_path = pin_path(os.fspath(cache_path)) if cache_path else f"{self.output_path}/{CACHE_DIRNAME}"
        self.ids_path = f"{self.output_path}/{IDS_DIRNAME}"
        self.deduplicated_path = f"{self.output_path}/{OUTPUT_DIRNAME}"
        self.text_field = text_field
        self.perform_removal = perform_removal
        self.total_nparts = total_nparts
        self.read_kwargs = dict(read_kwargs or {})
        self.write_kwargs = dict(write_kwargs or {})
        self.storage_options = dict(storage_options or {})
        if self.storage_options:
            self.read_kwargs.setdefault("storage_options", self.storage_options)
            self.write_kwargs.setdefault("storage_options", self.storage_options)
        _, input_options = _split_read_kwargs(self.read_kwargs)
        self.partitioning = FilePartitioningStage(
            file_paths=input_path,
            files_per_partition=input_files_per_partition,
            blocksize=input_blocksize,
            file_extensions=input_file_extensions or [".jsonl", ".json"],
            storage_options=input_options or None,
        )

    # -- planning --------------------------------------------------------------------------

    def num_partitions(self, groups: int) -> int:
        if self.total_nparts is not None:
            return self.total_nparts
        return max(1, min(MAX_DEFAULT_PARTITIONS, math.isqrt(max(groups - 1, 0)) + 1))

    def segments(self, groups: list[FileGroupTask], num_partitions: int) -> list[Segment]:
        """The workflow's segments for the pinned ``groups`` (see the module docstring)."""
        so = self.storage_options or None
        hash_stage = ExactDuplicateHashStage(
            shuffle_path=self.cache_path,
            num_partitions=num_partitions,
            text_field=self.text_field,
            read_kwargs=self.read_kwargs or None,
            storage_options=so,
        )
        upstream = [g.get_deterministic_id() or "" for g in groups]
        key = f"md5:{self.text_field}"
        partitions = [
            ShufflePartitionTask(
                dataset_name="exact_dedup",
                data=[f"{partition_dir(self.cache_path, p)}/{group_file_name(i)}" for i in range(len(groups))],
                partition=p,
                num_partitions=num_partitions,
                key=key,
                upstream=upstream,
            )
            for p in range(num_partitions)
        ]
        segments = [
            Segment(
                "hash",
                Pipeline("exact_dedup_hash", stages=[TaskListStage(groups, name="input_groups"), hash_stage]),
                lambda: self._missing(
                    [partition_dir(self.cache_path, p) for p in range(num_partitions)],
                    [group_file_name(i) for i in range(len(groups))],
                ),
                sources=len(groups),
            ),
            Segment(
                "identify",
                Pipeline(
                    "exact_dedup_identify",
                    stages=[
                        TaskListStage(partitions, name="shuffle_partitions"),
                        ExactDuplicateIdentificationStage(ids_path=self.ids_path, storage_options=so),
                    ],
                ),
                lambda: self._missing([self.ids_path], [ids_file_name(p) for p in range(num_partitions)]),
                sources=num_partitions,
            ),
        ]
        if self.perform_removal:
            segments.append(
                Segment(
                    "remove",
                    Pipeline(
                        "exact_dedup_remove",
                        stages=[
                            TaskListStage(groups, name="input_groups"),
                            JsonlReaderStage(read_kwargs=self.read_kwargs or None),
                            ExactDuplicateRemovalStage(
                                ids_path=self.ids_path, num_partitions=num_partitions, storage_options=so
                            ),
                            JsonlWriter(self.deduplicated_path, write_kwargs=self.write_kwargs or None),
                        ],
                    ),
                    lambda: [],
                    sources=len(groups),
                )
            )
        return segments

    def _missing(self, directories: list[str], names: list[str]) -> list[str]:
        """``directory/name`` for every pair that does not exist (one listing per directory)."""
        from fsspec.core import url_to_fs

        missing: list[str] = []
        wanted = set(names)
        for directory in directories:
            fs, root = url_to_fs(directory, **self.storage_options)
            try:
                fs.invalidate_cache(root)
                present = {p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(root, detail=False)}
            except FileNotFoundError:
                present = set()
            missing.extend(f"{directory}/{n}" for n in sorted(wanted - present))
        return missing

    def input_files(self) -> list[tuple[str, int, float | str | None]]:
        """The listed input files, minus any under ``output_path`` or ``cache_path``.

        An output folder inside the input folder must not feed a rerun: its files would count as
        inputs added since the first run (refused), and without a checkpoint they would be
        deduplicated again.
        """
        own = (self.output_path, self.cache_path)
        files = self.partitioning.list_files()
        kept = [f for f in files if not any(f[0] == root or f[0].startswith(f"{root}/") for root in own)]
        if len(kept) < len(files):
            logger.info(
                "exact deduplication: {} file(s) under the output or cache path left out", len(files) - len(kept)
            )
        if not kept:
            raise FileNotFoundError(
                f"ExactDeduplicationWorkflow: no input file outside the output path {self.output_path}"
            )
        return kept

    # -- running ---------------------------------------------------------------------------

    def run(self, executor: BaseExecutor | None = None) -> ExactDeduplicationResult:
        """Run (or resume, with ``executor.checkpoint``) the deduplication; default executor: the actor pool."""
        if executor is None:
            from nemo_curator.backends.ray_actor_pool import RayActorPoolExecutor

            executor = RayActorPoolExecutor()
        files = self.input_files()
        groups = self.partitioning.group_tasks(files)
        num_partitions = self.num_partitions(len(groups))
        inputs = {
            "files": [[path, size, mtime] for path, size, mtime in files],
            "grouping": {
                "files_per_partition": self.partitioning.files_per_partition,
                "blocksize": self.partitioning.blocksize,
            },
            "num_partitions": num_partitions,
            "text_field": self.text_field,
            "perform_removal": self.perform_removal,
            "cache_path": self.cache_path,
            "output_path": self.output_path,
        }
        logger.info(
            "exact deduplication: {} file(s) in {} group(s), {} hash partition(s)",
            len(files),
            len(groups),
            num_partitions,
        )
        results = run_segments(WORKFLOW_NAME, self.segments(groups, num_partitions), executor, inputs)
        return ExactDeduplicationResult(
            ids_path=self.ids_path,
            output_path=self.deduplicated_path if self.perform_removal else None,
            duplicates=self._duplicates(num_partitions),
            num_partitions=num_partitions,
            segments=results,
        )

    def _duplicates(self, num_partitions: int) -> int:
        """How many documents the duplicate lists name (from their Parquet footers)."""
        import fsspec
        import pyarrow.parquet as pq

        total = 0
        for p in range(num_partitions):
            with fsspec.open(f"{self.ids_path}/{ids_file_name(p)}", "rb", **self.storage_options) as f:
                total += pq.ParquetFile(f).metadata.num_rows
        return total
