"""Exact duplicates, the two steps before removal: hash + shuffle per input group, identify per partition.

Files (all written atomically, under deterministic names)::

    <shuffle_path>/part-<p>/group-<g>.parquet   the documents of input group g whose text hash falls
                                                in partition p: columns hash (16 bytes), ordinal, row
    <ids_path>/part-<p>.parquet                 the documents to remove found in partition p:
                                                columns ordinal, row (sorted)

``p`` has 5 digits and ``g`` 8. A document is identified by ``(ordinal, row)``: its group's
position in the workflow's pinned plan (``_metadata["partition_index"]``) and its row in the
batch ``JsonlReaderStage`` reads for that group (file order, then line order).

Invariants:
- a crash can leave hidden temp files of these atomic writes; each stage's ``setup_on_node``
  removes those of writers that are gone (``atomic.sweep_interrupted_writes``), so a resumed
  run leaves the same files as an uninterrupted one;
- the hash stage writes all ``num_partitions`` files of a group, empty ones included, so partition
  ``p`` holds every document whose hash falls in it exactly when all its group files exist;
- a partition is assigned by the hash alone (its first 8 bytes modulo ``num_partitions``), so
  documents with equal text always meet in one partition;
- of each set of documents with equal text, the one with the smallest ``(ordinal, row)`` is kept
  (the first in input order) and every other one is listed for removal: the result does not
  depend on the order in which groups were hashed, retried or resumed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from nemo_curator.stages.base import ProcessingStage
from nemo_curator.stages.resources import Resources
from nemo_curator.stages.shuffle_files import ShufflePartitionTask, read_parquet, table_bytes
from nemo_curator.stages.text.io.atomic import sweep_interrupted_writes, write_atomically
from nemo_curator.stages.text.io.reader import JsonlReaderStage
from nemo_curator.tasks import FileGroupTask

HASH_BYTES = 16


def partition_dir(shuffle_path: str, partition: int) -> str:
    return f"{shuffle_path.rstrip('/')}/part-{partition:05d}"


def group_file_name(ordinal: int) -> str:
    return f"group-{ordinal:08d}.parquet"


def ids_file_name(partition: int) -> str:
    return f"part-{partition:05d}.parquet"


def text_hash(text: str) -> bytes:
    """The 16-byte hash of a document's text (MD5, as upstream; not used for security)."""
    return hashlib.md5(text.encode("utf-8"), usedforsecurity=False).digest()


def partition_of(digest: bytes, num_partitions: int) -> int:
    return int.from_bytes(digest[:8], "big") % num_partitions


@dataclass
class ExactDuplicateHashStage(ProcessingStage[FileGroupTask, FileGroupTask]):
    """Reads an input group, hashes each document's ``text_field`` and writes one file per partition.

    Returns a ``FileGroupTask`` listing the ``num_partitions`` files written, with
    ``_metadata["documents"]``. A document whose text is not a string fails the group (loudly).
    """

    shuffle_path: str
    num_partitions: int
    text_field: str = "text"
    read_kwargs: dict[str, Any] | None = None
    storage_options: dict[str, Any] | None = None
    name: str = "exact_dedup_hash"
    resources: Resources = field(default_factory=lambda: Resources(cpus=1.0))
    batch_size: int = 1

    def setup_on_node(self, node_info: Any = None, worker_metadata: Any = None) -> None:
        """Remove the temp files that writes interrupted by a crash left in the partition directories."""
        sweep_interrupted_writes((partition_dir(self.shuffle_path, p) for p in range(self.num_partitions)), self.name)

    def process(self, task: FileGroupTask) -> FileGroupTask:
        import numpy as np
        import pyarrow as pa

        ordinal = int(task._metadata["partition_index"])
        batch = JsonlReaderStage(fields=[self.text_field], read_kwargs=self.read_kwargs).process(task)
        texts = [] if batch is None else batch.to_pandas()[self.text_field].tolist()
        digests: list[bytes] = []
        for row, text in enumerate(texts):
            if not isinstance(text, str):
                raise ValueError(
                    f"{self.name}: document {row} of {task.data} has a {type(text).__name__} in field "
                    f"{self.text_field!r}, not a string"
                )
            digests.append(text_hash(text))
        parts = np.fromiter((partition_of(d, self.num_partitions) for d in digests), dtype=np.int64, count=len(digests))
        rows = np.arange(len(digests), dtype=np.int64)
        hashes = pa.array(digests, type=pa.binary(HASH_BYTES))
        written = []
        for p in range(self.num_partitions):
            (index,) = np.nonzero(parts == p)
            table = pa.table(
                {
                    "hash": hashes.take(pa.array(index)),
                    "ordinal": pa.array(np.full(len(index), ordinal, dtype=np.int64)),
                    "row": pa.array(rows[index]),
                }
            )
            written.append(
                write_atomically(
                    partition_dir(self.shuffle_path, p),
                    group_file_name(ordinal),
                    table_bytes(table),
                    self.storage_options,
                )
            )
        metadata = {"partition_index": ordinal, "documents": len(digests)}
        return FileGroupTask(dataset_name=task.dataset_name, data=written, _metadata=metadata)


@dataclass
class ExactDuplicateIdentificationStage(ProcessingStage[ShufflePartitionTask, FileGroupTask]):
    """Reads every group file of one partition and writes the ``(ordinal, row)`` of the duplicates to remove.

    The task's ``data`` is the partition's folder and ``_metadata["groups"]`` the number of
    input groups: it reads ``group-0`` to ``group-<groups - 1>`` there.

    Returns a ``FileGroupTask`` naming the ids file, with ``_metadata`` ``documents`` and ``duplicates``.
    """

    ids_path: str
    storage_options: dict[str, Any] | None = None
    name: str = "exact_dedup_identify"
    resources: Resources = field(default_factory=lambda: Resources(cpus=1.0))
    batch_size: int = 1

    def setup_on_node(self, node_info: Any = None, worker_metadata: Any = None) -> None:
        """Remove the temp files that writes interrupted by a crash left in ``ids_path``."""
        sweep_interrupted_writes([self.ids_path], self.name)

    def process(self, task: ShufflePartitionTask) -> FileGroupTask:
        import pyarrow as pa

        directory = task.data[0]
        paths = [f"{directory}/{group_file_name(i)}" for i in range(int(task._metadata["groups"]))]
        tables = [read_parquet(path, self.storage_options) for path in paths]
        schema = pa.schema([("hash", pa.binary(HASH_BYTES)), ("ordinal", pa.int64()), ("row", pa.int64())])
        table = (
            pa.concat_tables([t.select(schema.names).cast(schema) for t in tables]) if tables else schema.empty_table()
        )
        frame = table.to_pandas()
        frame = frame.sort_values(["hash", "ordinal", "row"], kind="stable")
        removed = frame.loc[frame.duplicated("hash", keep="first"), ["ordinal", "row"]]
        removed = removed.sort_values(["ordinal", "row"], kind="stable")
        out = pa.table(
            {
                "ordinal": pa.array(removed["ordinal"].to_numpy(), type=pa.int64()),
                "row": pa.array(removed["row"].to_numpy(), type=pa.int64()),
            }
        )
        path = write_atomically(self.ids_path, ids_file_name(task.partition), table_bytes(out), self.storage_options)
        metadata = {"partition": task.partition, "documents": len(frame), "duplicates": len(removed)}
        return FileGroupTask(dataset_name=task.dataset_name, data=[path], _metadata=metadata)
