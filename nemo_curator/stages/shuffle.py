"""``ShuffleStage``: a barrier in a pipeline; every document with the same key meets in one partition.

``Pipeline([reader, ..., ShuffleStage(key="url", num_partitions=K, path="shuffle/"), per_partition, ...,
writer])`` runs as two segments (``pipeline.workflow.run_pipeline_with_barriers``):

1. the stages before the shuffle, then ``ShuffleWriteStage``: each batch's rows go to the
   partition of their key's hash, one Parquet file per (task, partition) at
   ``<path>/<run>/part-<p>/<task id>.parquet``, empty ones included, written atomically (a
   resumed write stage first removes the temp files of writes a crash interrupted);
   ``<run>`` names the checkpoint (the same for all its resumes) or, without one, the run, so
   that a partition never holds files of another run;
2. ``ShufflePartitionsStage`` (the source stage: one ``ShufflePartitionTask`` per partition,
   listing its files once the first segment is complete, with an id from the partition number,
   the count and the file names), ``ShuffleReadStage`` (the partition as one ``DocumentBatch``,
   rows in file-name then row order, so the same files give the same batch), then the stages
   after the shuffle.

Keys are hashed with MD5 of their text (``str(value)``), so the partition of a key is the same on
every host and in every run. Several shuffles in one pipeline make more segments.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, ClassVar

from nemo_curator.stages.base import ProcessingStage
from nemo_curator.stages.resources import Resources
from nemo_curator.stages.shuffle_files import ShufflePartitionTask, read_parquet, table_bytes
from nemo_curator.stages.text.io.atomic import pin_path, sweep_interrupted_writes, write_atomically
from nemo_curator.tasks import DocumentBatch, EmptyTask, FileGroupTask

_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def partition_path(path: str, partition: int) -> str:
    return f"{path.rstrip('/')}/part-{partition:05d}"


def key_partition(value: Any, num_partitions: int) -> int:
    digest = hashlib.md5(str(value).encode("utf-8"), usedforsecurity=False).digest()
    return int.from_bytes(digest[:8], "big") % num_partitions


@dataclass
class ShuffleStage(ProcessingStage[DocumentBatch, DocumentBatch]):
    """A barrier (see the module docstring): ``key`` is a column, ``path`` a directory or fsspec URL."""

    key: str
    num_partitions: int
    path: str
    storage_options: dict[str, Any] | None = None
    name: str = "shuffle"
    resources: Resources = field(default_factory=lambda: Resources(cpus=0.5))
    batch_size: int = 1

    #: ``Pipeline.run`` splits the pipeline here (``pipeline.workflow``).
    is_barrier: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if isinstance(self.num_partitions, bool) or not isinstance(self.num_partitions, int) or self.num_partitions < 1:
            raise ValueError(f"{self.name}: num_partitions must be a positive int, got {self.num_partitions!r}")
        self.path = pin_path(str(self.path))

    def process(self, task: DocumentBatch) -> DocumentBatch:
        raise TypeError(
            f"{self.name}: a ShuffleStage is a barrier; run its pipeline with Pipeline.run, which splits it into "
            "segments, not with executor.execute"
        )

    def run_path(self, run_token: str) -> str:
        """Where one run's (or one checkpoint's) partitions go: ``<path>/<run_token>``."""
        return f"{self.path}/{run_token}" if run_token else self.path

    def write_stage(self, run_token: str = "") -> ShuffleWriteStage:
        return ShuffleWriteStage(
            key=self.key,
            num_partitions=self.num_partitions,
            path=self.run_path(run_token),
            storage_options=self.storage_options,
            name=f"{self.name}_write",
            resources=self.resources,
        )

    def read_stages(self, run_token: str = "") -> list[ProcessingStage]:
        return [
            ShufflePartitionsStage(
                num_partitions=self.num_partitions,
                path=self.run_path(run_token),
                key=self.key,
                storage_options=self.storage_options,
                name=f"{self.name}_partitions",
            ),
            ShuffleReadStage(storage_options=self.storage_options, name=f"{self.name}_read", resources=self.resources),
        ]


@dataclass
class ShuffleWriteStage(ProcessingStage[DocumentBatch, FileGroupTask]):
    """Writes a batch's rows to ``<path>/part-<p>/<task id>.parquet`` by their key's partition (all K files)."""

    key: str
    num_partitions: int
    path: str
    storage_options: dict[str, Any] | None = None
    name: str = "shuffle_write"
    resources: Resources = field(default_factory=lambda: Resources(cpus=0.5))
    batch_size: int = 1

    def setup_on_node(self, node_info: Any = None, worker_metadata: Any = None) -> None:
        """Remove the temp files that writes interrupted by a crash left in the partition directories."""
        sweep_interrupted_writes((partition_path(self.path, p) for p in range(self.num_partitions)), self.name)

    def process(self, task: DocumentBatch) -> FileGroupTask:
        import numpy as np
        import pyarrow as pa

        if not task.task_id or not set(task.task_id) <= _SAFE:
            raise ValueError(f"{self.name}: task id {task.task_id!r} cannot name a file; run this stage in a pipeline")
        table = task.to_pyarrow()
        if self.key not in table.column_names:
            raise ValueError(f"{self.name}: key {self.key!r} is not a column of the batch ({table.column_names})")
        parts = np.fromiter(
            (key_partition(v, self.num_partitions) for v in table.column(self.key).to_pylist()),
            dtype=np.int64,
            count=table.num_rows,
        )
        written = []
        for p in range(self.num_partitions):
            (rows,) = np.nonzero(parts == p)
            piece = table.take(pa.array(rows, type=pa.int64()))
            written.append(
                write_atomically(
                    partition_path(self.path, p), f"{task.task_id}.parquet", table_bytes(piece), self.storage_options
                )
            )
        return FileGroupTask(dataset_name=task.dataset_name, data=written, _metadata={"rows": table.num_rows})


@dataclass
class ShufflePartitionsStage(ProcessingStage[EmptyTask, FileGroupTask]):
    """The source stage after a barrier: one ``ShufflePartitionTask`` per partition, listing its files."""

    num_partitions: int
    path: str
    key: str = ""
    storage_options: dict[str, Any] | None = None
    name: str = "shuffle_partitions"
    resources: Resources = field(default_factory=lambda: Resources(cpus=0.5))
    batch_size: int = 1

    def process(self, task: EmptyTask) -> list[FileGroupTask]:
        from fsspec.core import url_to_fs

        fs, root = url_to_fs(self.path, **(self.storage_options or {}))
        out = []
        for p in range(self.num_partitions):
            directory = partition_path(root, p)
            fs.invalidate_cache(directory)
            try:
                listed = fs.ls(directory, detail=False)
            except FileNotFoundError:
                listed = []
            names = sorted(n.rsplit("/", 1)[-1] for n in listed)
            names = [n for n in names if n.endswith(".parquet") and not n.startswith(".")]
            files = [f"{partition_path(self.path, p)}/{n}" for n in names]
            out.append(
                ShufflePartitionTask(
                    dataset_name="shuffle",
                    data=files,
                    partition=p,
                    num_partitions=self.num_partitions,
                    key=self.key,
                    upstream=names,
                )
            )
        return out


@dataclass
class ShuffleReadStage(ProcessingStage[FileGroupTask, DocumentBatch]):
    """Reads a partition's files, in name order, into one batch (``None`` when it holds no row)."""

    storage_options: dict[str, Any] | None = None
    name: str = "shuffle_read"
    resources: Resources = field(default_factory=lambda: Resources(cpus=0.5))
    batch_size: int = 1

    def process(self, task: FileGroupTask) -> DocumentBatch | None:
        import pyarrow as pa

        tables = [t for t in (read_parquet(path, self.storage_options) for path in task.data) if t.num_rows]
        if not tables:
            return None
        table = pa.concat_tables(tables, promote_options="default")
        metadata = {"partition": getattr(task, "partition", None)}
        return DocumentBatch(dataset_name=task.dataset_name, data=table.to_pandas(), _metadata=metadata)
