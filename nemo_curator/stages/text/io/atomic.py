"""Atomic file writes on a local directory or any fsspec URL: the file appears whole or not at all.

``write_atomically(directory, name, payload, storage_options)`` writes ``payload`` to a hidden
temp file beside the final name (``temp_files.temp_name``) and renames it over ``name``:
- locally, the temp file is fsynced, ``os.replace``-d, and the directory fsynced, so the file is
  durable when the call returns (a completion report sent afterwards never outruns it);
- elsewhere, the temp object is written and moved with ``fs.mv`` (on object stores a copy: the
  final name is still only ever made from a complete temp object).
A crash can leave the hidden temp file behind; a stage that writes with ``write_atomically``
calls ``sweep_interrupted_writes`` on its output directories in ``setup_on_node``, so a resumed
run leaves the same files as an uninterrupted one (``temp_files`` says which temp files go).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from typing import Any

from loguru import logger

from nemo_curator.stages.text.io.temp_files import sweep_stale_temp_files, temp_name


def is_local_path(path: str) -> bool:
    """A path without protocol, or ``file://`` / ``local://``."""
    from fsspec.core import split_protocol

    return split_protocol(path)[0] in (None, "file", "local")


def pin_path(path: str) -> str:
    """Local paths absolute (workers may run in another directory), URLs as given; no trailing slash."""
    if is_local_path(path):
        path = os.path.abspath(path.removeprefix("file://").removeprefix("local://"))
    return path.rstrip("/") or "/"


def fsync_dir(directory: str) -> None:
    """fsync a directory (so a rename in it is durable); platforms that refuse it are ignored."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError as exc:  # e.g. platforms without directory fds
        logger.debug("cannot open {} to fsync it: {}", directory, exc)
        return
    try:
        os.fsync(fd)
    except OSError as exc:  # some filesystems refuse fsync on directories
        logger.debug("fsync of directory {} failed: {}", directory, exc)
    finally:
        os.close(fd)


def write_atomically(directory: str, name: str, payload: bytes, storage_options: dict[str, Any] | None = None) -> str:
    """Write ``payload`` to ``directory/name`` atomically (see the module docstring); return the final path.

    Local paths are returned as plain absolute paths, others as full URLs.
    """
    if is_local_path(directory):
        local = os.path.abspath(directory.removeprefix("file://").removeprefix("local://"))
        return _write_local(local, name, payload)
    return _write_remote(directory, name, payload, storage_options or {})


def _write_local(directory: str, name: str, payload: bytes) -> str:
    os.makedirs(directory, exist_ok=True)
    final = os.path.join(directory, name)
    tmp = os.path.join(directory, temp_name(name))
    try:
        with open(tmp, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(directory)
    return final


def _write_remote(directory: str, name: str, payload: bytes, storage_options: dict[str, Any]) -> str:
    from fsspec.core import url_to_fs

    fs, root = url_to_fs(directory, **storage_options)
    fs.makedirs(root, exist_ok=True)
    final = f"{root.rstrip('/')}/{name}"
    tmp = f"{root.rstrip('/')}/{temp_name(name)}"
    try:
        with fs.open(tmp, "wb") as f:
            f.write(payload)
            f.flush()
        fs.mv(tmp, final)
    except BaseException:
        try:
            if fs.exists(tmp):
                fs.rm(tmp)
        except Exception as exc:  # keep the original error; the temp file is hidden anyway
            logger.debug("could not remove temp file {}: {}", tmp, exc)
        raise
    return fs.unstrip_protocol(final)


def sweep_interrupted_writes(directories: Iterable[str], owner: str) -> int:
    """Remove the stale temp files that crashed writes left in ``directories`` (``temp_files`` rules).

    Only local directories are swept: listing an object store prefix of millions of files would
    cost more than it saves (hidden objects are skipped by readers). ``owner`` names the stage
    in the log line. Returns how many files were removed.
    """
    removed = 0
    for directory in directories:
        if not is_local_path(directory):
            continue
        local = os.path.abspath(directory.removeprefix("file://").removeprefix("local://"))
        names = sweep_stale_temp_files(local)
        if names:
            removed += len(names)
            logger.info(
                "{}: removed {} temp file(s) left in {} by interrupted writes (e.g. {})",
                owner,
                len(names),
                local,
                names[0],
            )
    return removed
