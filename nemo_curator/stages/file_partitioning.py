"""``FilePartitioningStage``: turn input paths into groups of files (``FileGroupTask``).

It is normally the source stage of a pipeline: it receives the initial ``EmptyTask`` and its
outputs are the pipeline's *sources*, each identified by ``FileGroupTask.get_deterministic_id()``
(a hash of the group's sorted paths and each file's ``[size, mtime]``).

Invariants:
- without a checkpoint, the listing is sorted and the grouping depends only on the sorted listing,
  the sizes and the options, so the same inputs give the same groups, in the same order, in
  every run;
- under a checkpoint (the executor calls ``for_checkpoint`` on the source stage), groups already
  complete keep their recorded membership and are not emitted, recorded groups whose files are
  all unchanged keep theirs, and only the other files are grouped afresh, so adding or removing
  a file moves no complete group (``resumability.memberships``); the memberships of emitted
  groups are durable in the checkpoint before ``process`` returns;
- every group holds at least one file, and every listed file is in exactly one group (before
  ``limit`` drops the trailing groups);
- ``task._metadata["file_stats"]`` maps every path of ``task.data`` to ``[size, mtime]``;
- paths are returned as given to fsspec: plain absolute paths for local files, full URLs
  (``s3://bucket/key``) otherwise, so that any worker can open them.
"""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar

from loguru import logger

from nemo_curator.stages.base import ProcessingStage
from nemo_curator.stages.resources import Resources
from nemo_curator.tasks import EmptyTask, FileGroupTask

_SIZE_UNITS: dict[str, int] = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "kb": 10**3,
    "m": 10**6,
    "mb": 10**6,
    "g": 10**9,
    "gb": 10**9,
    "t": 10**12,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
#: A listed file: ``(path, size, mtime)``.
FileEntry = tuple[str, int, Any]

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*$")


def parse_size(value: int | str) -> int:
    """Bytes from an int or a string such as ``"128MB"`` (10**6) or ``"1GiB"`` (2**30)."""
    if isinstance(value, bool):
        raise TypeError(f"a size must be an int or a string like '128MB', got {value!r}")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str):
        match = _SIZE_RE.match(value)
        unit = match.group(2).lower() if match else None
        if match is None or unit not in _SIZE_UNITS:
            raise ValueError(f"cannot parse size {value!r}; use bytes or a string like '128MB' or '1GiB'")
        size = int(float(match.group(1)) * _SIZE_UNITS[unit])
    else:
        raise TypeError(f"a size must be an int or a string like '128MB', got {type(value).__name__}")
    if size <= 0:
        raise ValueError(f"a size must be positive, got {value!r}")
    return size


def _is_glob(path: str) -> bool:
    return any(ch in path for ch in "*?[")


def _glob_base(pattern: str) -> str:
    """The literal directory a glob starts from (``/a/b`` for ``/a/b/**/*.jsonl``)."""
    first_magic = min(pattern.find(c) for c in "*?[" if c in pattern)
    return pattern[:first_magic].rpartition("/")[0]


def _is_local(path: str) -> bool:
    from fsspec.core import split_protocol

    protocol, _ = split_protocol(path)
    return protocol in (None, "file", "local")


def _mtime(info: dict[str, Any]) -> float | str | None:
    """A file's modification time from an fsspec info dict (the key differs per filesystem)."""
    for key in ("mtime", "LastModified", "last_modified", "updated", "modified", "mtime_ns", "created"):
        value = info.get(key)
        if value is None:
            continue
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, int | float):
            return value
        return str(value)
    return None


def _hidden_below(path: str, root: str) -> bool:
    """Whether a path component below ``root`` starts with '.' (temp files, metadata dirs)."""
    rel = path[len(root) :].lstrip("/") if path.startswith(root) else os.path.basename(path)
    return any(part.startswith(".") for part in rel.split("/") if part)


def normalize_file_paths(file_paths: Any, owner: str) -> str | list[str]:
    """A path (``str``) or a non-empty list of paths from a str, a PathLike or a sequence of them."""
    if isinstance(file_paths, os.PathLike):
        file_paths = os.fspath(file_paths)
    if isinstance(file_paths, str):
        if not file_paths:
            raise ValueError(f"{owner}: file_paths is an empty string")
        return file_paths
    if isinstance(file_paths, list | tuple):
        paths = [os.fspath(p) for p in file_paths]
        if not paths:
            raise ValueError(f"{owner}: file_paths is an empty list")
        if not all(isinstance(p, str) and p for p in paths):
            raise TypeError(f"{owner}: file_paths must hold non-empty path strings, got {file_paths!r}")
        return paths
    raise TypeError(f"{owner}: file_paths must be a path, a glob or a list of paths, got {file_paths!r}")


def check_local_paths_exist(file_paths: str | list[str]) -> None:
    """Raise ``FileNotFoundError`` naming the first local path (or glob) that matches nothing.

    Remote paths are not checked here (construction should not touch the network); they are
    checked when the stage runs.
    """
    import glob as globmod

    paths = [file_paths] if isinstance(file_paths, str) else list(file_paths)
    for path in paths:
        if not _is_local(path):
            continue
        local = path.removeprefix("file://").removeprefix("local://")
        if _is_glob(local):
            if not globmod.glob(local, recursive=True):
                raise FileNotFoundError(f"input glob {path!r} matches no file")
        elif not os.path.exists(local):
            raise FileNotFoundError(f"input path {path!r} does not exist")


@dataclass
class FilePartitioningStage(ProcessingStage[EmptyTask, FileGroupTask]):
    """Lists input files and groups them into ``FileGroupTask`` partitions.

    ``file_paths`` is a directory (listed recursively; files whose name or any folder below it
    starts with '.' are skipped), a glob, a single file, or a list of these; any fsspec URL.
    ``file_extensions`` (e.g. ``[".jsonl"]``) filters directory listings and glob matches;
    ``None`` keeps every file. Files named explicitly are always kept.
    Grouping: ``files_per_partition`` files per group, or ``blocksize`` (bytes or ``"128MB"``)
    of cumulative size per group (a larger file gets a group of its own), or one file per group.
    ``limit`` keeps only the first ``limit`` groups.
    """

    file_paths: str | list[str]
    files_per_partition: int | None = None
    blocksize: int | str | None = None
    file_extensions: list[str] | None = None
    storage_options: dict[str, Any] | None = None
    limit: int | None = None
    name: str = "file_partitioning"
    resources: Resources = field(default_factory=lambda: Resources(cpus=0.5))
    batch_size: int = 1

    fingerprint_ignore: ClassVar[tuple[str, ...]] = ("file_paths", "limit", "storage_options")

    def __post_init__(self) -> None:
        self.file_paths = normalize_file_paths(self.file_paths, self.name)
        if self.files_per_partition is not None and self.blocksize is not None:
            raise ValueError(f"{self.name}: give files_per_partition or blocksize, not both")
        if self.files_per_partition is not None and (
            isinstance(self.files_per_partition, bool)
            or not isinstance(self.files_per_partition, int)
            or self.files_per_partition < 1
        ):
            raise ValueError(
                f"{self.name}: files_per_partition must be a positive int, got {self.files_per_partition!r}"
            )
        if self.blocksize is not None:
            parse_size(self.blocksize)
        if self.limit is not None and (
            isinstance(self.limit, bool) or not isinstance(self.limit, int) or self.limit < 1
        ):
            raise ValueError(f"{self.name}: limit must be a positive int or None, got {self.limit!r}")
        if self.file_extensions is not None:
            if isinstance(self.file_extensions, str):
                self.file_extensions = [self.file_extensions]
            self.file_extensions = [e if e.startswith(".") else f".{e}" for e in self.file_extensions]
        check_local_paths_exist(self.file_paths)

    # -- listing ------------------------------------------------------------------------

    def _fs(self, path: str) -> tuple[Any, str]:
        from fsspec.core import url_to_fs

        return url_to_fs(path, **(self.storage_options or {}))

    def _keep_extension(self, path: str) -> bool:
        if self.file_extensions is None:
            return True
        lower = path.lower()
        return any(lower.endswith(ext.lower()) for ext in self.file_extensions)

    def list_files(self) -> list[tuple[str, int, float | str | None]]:
        """Sorted, de-duplicated ``(path, size, mtime)`` of every input file.

        Raises ``FileNotFoundError`` naming an input that does not exist or matches no file.
        """
        paths = [self.file_paths] if isinstance(self.file_paths, str) else self.file_paths
        found: dict[str, tuple[int, float | str | None]] = {}
        for given in paths:
            fs, root = self._fs(given)
            matches = self._expand(fs, given, root)
            for fs_path, info in matches:
                full = fs_path if _is_local(given) else fs.unstrip_protocol(fs_path)
                found[full] = (int(info.get("size") or 0), _mtime(info))
        return [(p, size, mtime) for p, (size, mtime) in sorted(found.items())]

    def _expand(self, fs: Any, given: str, root: str) -> list[tuple[str, dict[str, Any]]]:
        if _is_glob(root):
            matches = fs.glob(root, detail=True)
            if not matches:
                raise FileNotFoundError(f"{self.name}: input glob {given!r} matches no file")
            # Like a shell glob, a pattern matches hidden names only when it asks for them.
            base = _glob_base(root)
            show_hidden = "/." in root[len(base) :] or root[len(base) :].startswith(".")
            out: list[tuple[str, dict[str, Any]]] = []
            for path, info in sorted(matches.items()):
                if not show_hidden and _hidden_below(path, base):
                    continue
                if info.get("type") == "directory":
                    out.extend(self._walk(fs, path))
                elif self._keep_extension(path):
                    out.append((path, info))
            if not out:
                raise FileNotFoundError(
                    f"{self.name}: input glob {given!r} matches no file with extension in {self.file_extensions}"
                )
            return out
        if not fs.exists(root):
            raise FileNotFoundError(f"{self.name}: input path {given!r} does not exist")
        info = fs.info(root)
        if info.get("type") != "directory":
            return [(root, info)]
        out = self._walk(fs, root)
        if not out:
            wanted = "file" if self.file_extensions is None else f"file with extension in {self.file_extensions}"
            raise FileNotFoundError(f"{self.name}: input directory {given!r} holds no {wanted}")
        return out

    def _walk(self, fs: Any, root: str) -> list[tuple[str, dict[str, Any]]]:
        listing = fs.find(root, detail=True)
        return [
            (path, info)
            for path, info in sorted(listing.items())
            if info.get("type") != "directory" and not _hidden_below(path, root) and self._keep_extension(path)
        ]

    # -- grouping -----------------------------------------------------------------------

    def _groups(self, files: list[tuple[str, int, float | str | None]]) -> list[list[tuple[str, int, Any]]]:
        if self.files_per_partition is not None:
            n = self.files_per_partition
            return [files[i : i + n] for i in range(0, len(files), n)]
        if self.blocksize is not None:
            limit = parse_size(self.blocksize)
            groups: list[list[tuple[str, int, Any]]] = []
            current: list[tuple[str, int, Any]] = []
            total = 0
            for entry in files:
                if current and total + entry[1] > limit:
                    groups.append(current)
                    current, total = [], 0
                current.append(entry)
                total += entry[1]
            if current:
                groups.append(current)
            return groups
        return [[entry] for entry in files]

    def _dataset_name(self) -> str:
        """The input directory's name (a glob's literal base; a list's first parent folder)."""
        if isinstance(self.file_paths, str):
            path = self.file_paths.rstrip("/")
            path = _glob_base(path) if _is_glob(path) else path
        else:
            path = os.path.dirname(self.file_paths[0].rstrip("/"))
        return os.path.basename(path) or "dataset"

    def _task(self, index: int, total: int, dataset_name: str, group: Sequence[FileEntry]) -> FileGroupTask:
        paths = [p for p, _, _ in group]
        return FileGroupTask(
            dataset_name=dataset_name,
            data=paths,
            _metadata={
                "partition_index": index,
                "total_partitions": total,
                "source_files": list(paths),
                "file_stats": {p: [size, mtime] for p, size, mtime in group},
            },
        )

    def group_tasks(self, files: list[FileEntry]) -> list[FileGroupTask]:
        """The groups of ``files`` (a ``list_files`` result) as tasks, in order, ignoring ``limit``."""
        groups = self._groups(files)
        dataset_name = self._dataset_name()
        return [self._task(index, len(groups), dataset_name, group) for index, group in enumerate(groups)]

    def process(self, task: EmptyTask) -> list[FileGroupTask]:
        files = self.list_files()
        checkpoint = getattr(self, "_checkpoint", None)
        if checkpoint is not None:
            return self._process_with_checkpoint(files, checkpoint)
        groups = self._groups(files)
        total = len(groups)
        if self.limit is not None:
            groups = groups[: self.limit]
        dataset_name = self._dataset_name()
        tasks = [self._task(index, total, dataset_name, group) for index, group in enumerate(groups)]
        logger.debug(
            "{}: {} file(s) in {} partition(s){}",
            self.name,
            len(files),
            len(tasks),
            f" (limit {self.limit} of {total})" if self.limit is not None and total > self.limit else "",
        )
        return tasks

    # -- under a checkpoint: stable memberships ------------------------------------------

    def for_checkpoint(self, checkpoint: Any) -> FilePartitioningStage:
        """A copy of this stage that keeps the membership of groups already complete in a checkpoint.

        Called by the executor for the source stage of a checkpointed run, with the ledger's view
        (``resumability.actor.LedgerSourceFilter``); this stage is not changed. The copy plans its
        groups with ``resumability.memberships.plan_partitions`` and records the memberships of
        the groups it emits, durably, before it returns them. ``limit`` then counts the plan's
        groups in order of their first path, complete ones included (on unchanged input: the
        same groups as without a checkpoint).
        """
        if not (hasattr(checkpoint, "partition_history") and hasattr(checkpoint, "record_partitions")):
            return self
        bound = copy.copy(self)
        bound._checkpoint = checkpoint
        return bound

    def _grouping(self) -> str:
        """The grouping options (recorded groups of other options are not reused unless complete)."""
        blocksize = parse_size(self.blocksize) if self.blocksize is not None else None
        return json.dumps({"files_per_partition": self.files_per_partition, "blocksize": blocksize})

    def _process_with_checkpoint(self, files: list[FileEntry], checkpoint: Any) -> list[FileGroupTask]:
        from nemo_curator.backends.stage_adapter import source_id_for
        from nemo_curator.resumability.memberships import encode_record, plan_partitions

        recorded = checkpoint.partition_history(self.name)
        grouping = self._grouping()
        plan = plan_partitions(files, recorded, self._groups, grouping)
        if plan.notices:
            logger.warning(_describe_notices(self.name, str(getattr(checkpoint, "checkpoint", "")), plan.notices))
        groups = plan.groups
        total = len(groups)
        if self.limit is not None:
            groups = groups[: self.limit]
        dataset_name = self._dataset_name()
        tasks = [
            self._task(index, total, dataset_name, group.members)
            for index, group in enumerate(groups)
            if not group.complete
        ]
        if tasks:
            generation = 1 + max((g.generation for g in recorded), default=0)
            memberships = [(source_id_for(t, "", 0), _entries(t)) for t in tasks]
            checkpoint.record_partitions(
                self.name, generation, encode_record(self.name, generation, grouping, memberships)
            )
        kept = sum(1 for g in groups if g.source_id is not None and not g.complete)
        logger.debug(
            "{}: {} file(s): {} group(s) already complete, {} recorded group(s) kept, {} new group(s)",
            self.name,
            len(files),
            sum(1 for g in groups if g.complete),
            kept,
            len(tasks) - kept,
        )
        return tasks


def _entries(task: FileGroupTask) -> list[FileEntry]:
    stats = task._metadata["file_stats"]
    return [(p, stats[p][0], stats[p][1]) for p in task.data]


#: At most this many lines per kind of notice in one warning.
_MAX_NOTICE_LINES = 20


def _describe_notices(stage_name: str, checkpoint: str, notices: list[Any]) -> str:
    """One loud warning for the plan's notices (``memberships.Notice``), with the fix."""
    explain = {
        "missing": "is no longer in the input; its records stay in that group's output",
        "changed": (
            "changed (size or mtime) since that group was written; its old records stay in that group's output "
            "and its new content is processed again in a new group"
        ),
        "overlap": "is in two complete groups (the pipeline's grouping changed); its records are in both outputs",
        "dissolved": (
            "is gone or changed, and was in a group of the previous run that did not complete; that group is formed "
            "anew, and if it was written before that run stopped its output stays beside the new one (delete it)"
        ),
    }
    lines = [
        f"stage {stage_name!r}: the input changed under groups recorded in checkpoint {checkpoint}. Complete "
        "groups keep their membership and are not redone, so the output can differ from a run on the current "
        "input alone:"
    ]
    for kind, text in explain.items():
        chosen = [n for n in notices if n.kind == kind]
        for notice in chosen[:_MAX_NOTICE_LINES]:
            which = "group" if kind == "dissolved" else "complete group"
            lines.append(f"  - {notice.path} {text} ({which}, source id {notice.source_id})")
        if len(chosen) > _MAX_NOTICE_LINES:
            lines.append(f"  - ... and {len(chosen) - _MAX_NOTICE_LINES} more file(s) that {text.split(';')[0]}")
    lines.append(
        "  Output files of a group are named after its source id. Fix: restore the file(s) if removing or changing "
        "them was a mistake; for an output that equals a run on the current input alone, run into a new output "
        "directory with a new checkpoint location"
    )
    return "\n".join(lines)
