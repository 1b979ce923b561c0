"""``ExactDuplicateRemovalStage``: drop from a group's batch the documents listed by the identification step.

It reads, from each ``<ids_path>/part-<p>.parquet``, the rows whose ``ordinal`` is the batch's
group (``_metadata["partition_index"]``), so that a batch sees only its own duplicates whichever
partition found them. A batch left empty is filtered (no output file).

Invariant: the batch must be the one ``JsonlReaderStage`` reads for that group with the same
options as the hash step (its rows are ``0..n-1`` in file then line order), so ``row`` means the
same document in both steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from nemo_curator.stages.base import ProcessingStage
from nemo_curator.stages.deduplication.exact.identification import ids_file_name
from nemo_curator.stages.resources import Resources
from nemo_curator.stages.shuffle_files import read_parquet
from nemo_curator.tasks import DocumentBatch


@dataclass
class ExactDuplicateRemovalStage(ProcessingStage[DocumentBatch, DocumentBatch]):
    """Removes the listed duplicates from each batch (see the module docstring)."""

    ids_path: str
    num_partitions: int
    storage_options: dict[str, Any] | None = None
    name: str = "exact_dedup_remove"
    resources: Resources = field(default_factory=lambda: Resources(cpus=0.5))
    batch_size: int = 1

    def removed_rows(self, ordinal: int) -> set[int]:
        """The rows of group ``ordinal`` listed for removal, from every partition."""
        rows: set[int] = set()
        for p in range(self.num_partitions):
            path = f"{self.ids_path.rstrip('/')}/{ids_file_name(p)}"
            table = read_parquet(path, self.storage_options, columns=["row"], filters=[("ordinal", "=", ordinal)])
            rows.update(table.column("row").to_pylist())
        return rows

    def process(self, task: DocumentBatch) -> DocumentBatch | None:
        import numpy as np

        ordinal = int(task._metadata["partition_index"])
        rows = self.removed_rows(ordinal)
        frame = task.to_pandas()
        if not rows:
            return task
        if max(rows) >= len(frame):
            raise ValueError(
                f"{self.name}: group {ordinal} has {len(frame)} documents, but the duplicate list names row "
                f"{max(rows)}; the input changed since its hashes were computed"
            )
        keep = np.ones(len(frame), dtype=bool)
        keep[sorted(rows)] = False
        if not keep.any():
            return None
        return DocumentBatch(
            dataset_name=task.dataset_name, data=frame[keep].reset_index(drop=True), _metadata=dict(task._metadata)
        )
