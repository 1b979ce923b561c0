"""Files of a shuffle: Parquet bytes in and out, and the task of one partition.

Shared by ``stages.shuffle`` (a barrier in a pipeline) and exact deduplication's hash step.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from nemo_curator.tasks import FileGroupTask


def table_bytes(table: Any) -> bytes:
    """A pyarrow table as the bytes of one Parquet file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def read_parquet(path: str, storage_options: dict[str, Any] | None, **kwargs: Any) -> Any:
    """One Parquet file (any fsspec path) as a pyarrow table; ``kwargs`` go to ``pq.read_table``."""
    import fsspec
    import pyarrow.parquet as pq

    with fsspec.open(path, "rb", **(storage_options or {})) as f:
        return pq.read_table(f, **kwargs)


@dataclass(repr=False)
class ShufflePartitionTask(FileGroupTask):
    """Partition ``partition`` of ``num_partitions``: ``data`` lists its group files, one per upstream group.

    Its id is made from the partition number, the partition count, the hash key and the ids of
    the upstream groups it holds, so another input or another count makes other sources.
    """

    partition: int = 0
    num_partitions: int = 1
    key: str = ""
    upstream: list[str] = field(default_factory=list)

    def get_deterministic_id(self) -> str | None:
        payload = json.dumps(
            [self.partition, self.num_partitions, self.key, sorted(self.upstream)], separators=(",", ":")
        )
        return hashlib.blake2b(payload.encode(), digest_size=16).hexdigest()
