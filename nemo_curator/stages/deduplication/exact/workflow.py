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

import hashlib
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
from nemo_curator.utils.file_changes import file_changes

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
    ``perform_removal=True`` also writes the deduplicated documents (default ``False``, as
    upstream: only the duplicate ids). ``storage_options`` reach fsspec
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
        perform_removal: bool = False,
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

    def segments(
        self, groups: list[FileGroupTask], num_partitions: int, files: list[list[Any]] | None = None
    ) -> list[Segment]:
        """The workflow's segments for the pinned ``groups`` (see the module docstring).

        ``files`` (``[path, size, mtime]``) is the pinned input: the removal segment, which reads
        the input again, refuses to start if it changed since (``InputChangedError``).
        """
        pinned = [list(f) for f in files] if files is not None else [list(f) for f in _group_files(groups)]
        so = self.storage_options or None
        hash_stage = ExactDuplicateHashStage(
            shuffle_path=self.cache_path,
            num_partitions=num_partitions,
            text_field=self.text_field,
            read_kwargs=self.read_kwargs or None,
            storage_options=so,
        )
        # One digest of the upstream groups' ids, not the list: K tasks of G ids each would make
        # the driver's plan (and the source stage's pickle) grow as K x G.
        upstream = hashlib.blake2b(
            "\n".join(g.get_deterministic_id() or "" for g in groups).encode(), digest_size=16
        ).hexdigest()
        key = f"md5:{self.text_field}"
        partitions = [
            ShufflePartitionTask(
                dataset_name="exact_dedup",
                data=[partition_dir(self.cache_path, p)],
                partition=p,
                num_partitions=num_partitions,
                key=key,
                upstream=[upstream],
                _metadata={"groups": len(groups)},
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
                    input_changes=lambda: file_changes(pinned, self.input_files()),
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

    def run(
        self, initial_tasks: list[FileGroupTask] | None = None, executor: BaseExecutor | None = None
    ) -> ExactDeduplicationResult:
        """Run (or resume, with ``executor.checkpoint``) the deduplication; default executor: the actor pool.

        As upstream: ``initial_tasks`` are file groups to use instead of listing ``input_path``
        (in input order); an executor given as the first argument is taken as ``executor``.
        """
        from nemo_curator.backends.base import BaseExecutor

        if isinstance(initial_tasks, BaseExecutor):
            initial_tasks, executor = None, initial_tasks
        if executor is None:
            from nemo_curator.backends.ray_actor_pool import RayActorPoolExecutor

            executor = RayActorPoolExecutor()
        if initial_tasks is None:
            files = self.input_files()
            groups = self.partitioning.group_tasks(files)
        else:
            groups = self._groups_of(initial_tasks)
            files = _group_files(groups)
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
        results = run_segments(WORKFLOW_NAME, self.segments(groups, num_partitions, files), executor, inputs)
        return ExactDeduplicationResult(
            ids_path=self.ids_path,
            output_path=self.deduplicated_path if self.perform_removal else None,
            duplicates=self._duplicates(num_partitions),
            num_partitions=num_partitions,
            segments=results,
        )

    def _groups_of(self, tasks: list[FileGroupTask]) -> list[FileGroupTask]:
        """Copies of the given groups numbered in order, each file's ``[size, mtime]`` recorded (ids follow content)."""
        from fsspec.core import url_to_fs

        from nemo_curator.stages.file_partitioning import _mtime

        groups = []
        for index, task in enumerate(tasks):
            if not isinstance(task, FileGroupTask):
                raise TypeError(f"ExactDeduplicationWorkflow: initial task {index} is a {type(task).__name__}")
            stats = dict(task._metadata.get("file_stats") or {})
            for path in task.data:
                if path not in stats:
                    fs, root = url_to_fs(path, **self.storage_options)
                    info = fs.info(root)
                    stats[path] = [int(info.get("size") or 0), _mtime(info)]
            metadata = {**task._metadata, "partition_index": index, "total_partitions": len(tasks)}
            metadata["file_stats"] = {p: stats[p] for p in task.data}
            groups.append(FileGroupTask(dataset_name=task.dataset_name, data=list(task.data), _metadata=metadata))
        return groups

    def _duplicates(self, num_partitions: int) -> int:
        """How many documents the duplicate lists name (from their Parquet footers)."""
        import fsspec
        import pyarrow.parquet as pq

        total = 0
        for p in range(num_partitions):
            with fsspec.open(f"{self.ids_path}/{ids_file_name(p)}", "rb", **self.storage_options) as f:
                total += pq.ParquetFile(f).metadata.num_rows
        return total


def _group_files(groups: list[FileGroupTask]) -> list[list[Any]]:
    """``[path, size, mtime]`` of every file of ``groups``, sorted by path."""
    entries = {p: [p, *g._metadata["file_stats"][p]] for g in groups for p in g.data}
    return [entries[p] for p in sorted(entries)]
