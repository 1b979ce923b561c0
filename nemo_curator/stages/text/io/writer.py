"""``JsonlWriter``: write each ``DocumentBatch`` to ``<path>/<task_id>.jsonl``, atomically.

Invariants:
- the file name is the task's deterministic id, so a rerun on the same inputs writes the same
  names and a retried or resumed task overwrites its own file instead of adding a new one;
- the content is a pure function of the batch (records in row order, columns in frame order,
  fixed pandas options), so the same batch gives byte-identical files;
- the file appears whole or not at all: the bytes go to a hidden temp file in the same
  directory, are flushed and fsynced, then renamed over the final name (``os.replace``
  locally, then the directory is fsynced; ``fs.mv`` on other filesystems). When ``process``
  returns, the file is durable, so a completion report sent afterwards never outruns it.
- a crash can leave a hidden ``.<name>.tmp-*`` file behind (readers skip hidden files); the
  next run's ``setup_on_node`` removes those whose writer is gone (``temp_files``), so a
  resumed run leaves the same directory as an uninterrupted one. Only local directories are
  swept: listing an object store prefix of millions of files would cost more than it saves.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any

from nemo_curator.stages.base import ProcessingStage
from nemo_curator.stages.resources import Resources
from nemo_curator.stages.text.io.atomic import is_local_path, sweep_interrupted_writes, write_atomically
from nemo_curator.tasks import DocumentBatch, FileGroupTask

#: pandas.DataFrame.to_json options for stable, readable output; ``write_kwargs`` overrides them.
DEFAULT_WRITE_KWARGS: dict[str, Any] = {"force_ascii": False, "date_format": "iso", "double_precision": 15}

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass
class JsonlWriter(ProcessingStage[DocumentBatch, FileGroupTask]):
    """Writes each batch to ``<path>/<task_id>.<file_extension>`` (JSON lines, UTF-8).

    Returns a ``FileGroupTask`` with ``data=[written_path]`` and ``_metadata["num_records"]``.
    ``fields`` writes only these columns, in this order. ``write_kwargs`` go to
    ``DataFrame.to_json`` (``orient="records", lines=True`` always); its ``storage_options``
    entry goes to fsspec.
    """

    path: str
    fields: list[str] | None = None
    write_kwargs: dict[str, Any] | None = None
    file_extension: str = "jsonl"
    name: str = "jsonl_writer"
    resources: Resources = field(default_factory=lambda: Resources(cpus=0.5))
    batch_size: int = 1

    def __post_init__(self) -> None:
        path = os.fspath(self.path)
        if not isinstance(path, str) or not path:
            raise ValueError(f"{self.name}: path must be a non-empty directory path, got {self.path!r}")
        if is_local_path(path):
            # Workers may run in another directory than the driver: pin relative paths now.
            path = os.path.abspath(path.removeprefix("file://").removeprefix("local://"))
        self.path = path.rstrip("/") or "/"
        self.file_extension = self.file_extension.lstrip(".")

    def _options(self) -> tuple[dict[str, Any], dict[str, Any]]:
        kwargs = {**DEFAULT_WRITE_KWARGS, **(self.write_kwargs or {})}
        storage_options = dict(kwargs.pop("storage_options", None) or {})
        kwargs.pop("orient", None)
        kwargs.pop("lines", None)
        return kwargs, storage_options

    def file_name(self, task_id: str) -> str:
        """The output file name of a task; raises ``ValueError`` for ids unfit as file names."""
        if not task_id or not _SAFE_NAME.match(task_id):
            raise ValueError(
                f"{self.name}: task id {task_id!r} cannot name an output file; "
                "task ids are set by the framework, run this stage in a pipeline"
            )
        return f"{task_id}.{self.file_extension}"

    def serialize(self, task: DocumentBatch) -> tuple[bytes, int]:
        """The file content of ``task`` and its record count."""
        frame = task.to_pandas()
        if self.fields is not None:
            missing = [c for c in self.fields if c not in frame.columns]
            if missing:
                raise ValueError(f"{self.name}: field(s) {missing} not in the batch; it has {list(frame.columns)}")
            frame = frame[list(self.fields)]
        kwargs, _ = self._options()
        text = frame.to_json(orient="records", lines=True, **kwargs) if len(frame) else ""
        return text.encode("utf-8"), len(frame)

    def setup_on_node(self, node_info: Any = None, worker_metadata: Any = None) -> None:
        """Remove the temp files that interrupted writes of an earlier run left in ``path``."""
        sweep_interrupted_writes([self.path], self.name)

    def process(self, task: DocumentBatch) -> FileGroupTask:
        name = self.file_name(task.task_id)
        payload, records = self.serialize(task)
        _, storage_options = self._options()
        written = write_atomically(self.path, name, payload, storage_options)
        metadata = {k: v for k, v in task._metadata.items() if k != "file_stats"}
        metadata.update({"format": "jsonl", "num_records": records, "num_bytes": len(payload)})
        return FileGroupTask(dataset_name=task.dataset_name, data=[written], _metadata=metadata)
