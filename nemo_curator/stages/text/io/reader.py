"""``JsonlReader``: partition JSONL files into groups and read each group into a ``DocumentBatch``.

``JsonlReader`` is a composite stage: it decomposes into ``FilePartitioningStage`` (the
pipeline's source stage when it comes first) and ``JsonlReaderStage``.

Invariants of ``JsonlReaderStage``:
- one ``FileGroupTask`` in, at most one ``DocumentBatch`` out, holding a ``pandas.DataFrame``
  with the rows of its files in file order (the group's order) then line order, index 0..n-1;
- values are read as written: no dtype guessing (``"001"`` stays a string) and exact floats,
  unless ``read_kwargs`` says otherwise;
- a group whose files hold no record is filtered (``None``): there is nothing to curate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from loguru import logger

from nemo_curator.stages.base import CompositeStage, ProcessingStage
from nemo_curator.stages.file_partitioning import (
    FilePartitioningStage,
    check_local_paths_exist,
    normalize_file_paths,
)
from nemo_curator.stages.resources import Resources
from nemo_curator.tasks import DocumentBatch, EmptyTask, FileGroupTask

#: pandas.read_json options that keep the data as written; ``read_kwargs`` overrides them.
DEFAULT_READ_KWARGS: dict[str, Any] = {"dtype": False, "precise_float": True}


def _split_read_kwargs(read_kwargs: dict[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(pandas kwargs, fsspec storage options)``; ``storage_options`` may ride in ``read_kwargs``."""
    kwargs = {**DEFAULT_READ_KWARGS, **(read_kwargs or {})}
    storage_options = kwargs.pop("storage_options", None) or {}
    kwargs.pop("lines", None)
    return kwargs, dict(storage_options)


@dataclass
class JsonlReaderStage(ProcessingStage[FileGroupTask, DocumentBatch]):
    """Reads the files of a ``FileGroupTask`` (any fsspec path, compression inferred) into one batch.

    ``fields`` keeps only these columns, in this order; a field missing from the data raises
    ``ValueError`` naming it. ``read_kwargs`` go to ``pandas.read_json`` (``lines=True`` always);
    its ``storage_options`` entry goes to fsspec.
    """

    fields: list[str] | None = None
    read_kwargs: dict[str, Any] | None = None
    name: str = "jsonl_reader"
    resources: Resources = field(default_factory=lambda: Resources(cpus=0.5))
    batch_size: int = 1

    def process(self, task: FileGroupTask) -> DocumentBatch | None:
        import fsspec
        import pandas as pd

        kwargs, storage_options = _split_read_kwargs(self.read_kwargs)
        frames = []
        for path in task.data:
            with fsspec.open(path, "rb", compression="infer", **storage_options) as f:
                frame = pd.read_json(f, lines=True, **kwargs)
            if len(frame) == 0:
                continue
            if self.fields is not None:
                missing = [c for c in self.fields if c not in frame.columns]
                if missing:
                    raise ValueError(
                        f"{self.name}: field(s) {missing} not found in {path!r}; it has {list(frame.columns)}"
                    )
                frame = frame[list(self.fields)]
            frames.append(frame)
        if not frames:
            logger.debug("{}: no records in {}", self.name, task.data)
            return None
        data = frames[0].reset_index(drop=True) if len(frames) == 1 else pd.concat(frames, ignore_index=True)
        metadata = {k: v for k, v in task._metadata.items() if k != "file_stats"}
        metadata["source_files"] = list(task.data)
        return DocumentBatch(dataset_name=task.dataset_name, data=data, _metadata=metadata)


@dataclass
class JsonlReader(CompositeStage[EmptyTask, DocumentBatch]):
    """Partition + read: ``JsonlReader(file_paths, files_per_partition=None, blocksize=None, fields=None, ...)``.

    ``file_paths`` is a directory (its ``file_extensions`` files, recursively), a glob, a file or
    a list; local paths that do not exist raise ``FileNotFoundError`` here already.
    """

    file_paths: str | list[str]
    files_per_partition: int | None = None
    blocksize: int | str | None = None
    fields: list[str] | None = None
    read_kwargs: dict[str, Any] | None = None
    file_extensions: list[str] = field(default_factory=lambda: [".jsonl", ".json"])
    limit: int | None = None
    name: str = "jsonl_reader"

    def __post_init__(self) -> None:
        self.file_paths = normalize_file_paths(self.file_paths, self.name)
        check_local_paths_exist(self.file_paths)

    def decompose(self) -> list[ProcessingStage]:
        _, storage_options = _split_read_kwargs(self.read_kwargs)
        return [
            FilePartitioningStage(
                file_paths=self.file_paths,
                files_per_partition=self.files_per_partition,
                blocksize=self.blocksize,
                file_extensions=self.file_extensions,
                storage_options=storage_options or None,
                limit=self.limit,
            ),
            JsonlReaderStage(fields=self.fields, read_kwargs=self.read_kwargs),
        ]
