"""Where a checkpoint lives: ``CheckpointConfig`` and its coercion (light: standard library only).

``CheckpointConfig(path, storage_options=None, cache_dir=None)``:

``path``
    A local path, a path on a shared filesystem (NFS, Lustre, GPFS), a ``file://`` URL or any
    fsspec URL (``s3://bucket/prefix``, ``gs://...``, ``abfs://...``). The durable record of
    the checkpoint lives there.
``storage_options``
    Keyword arguments for the fsspec filesystem (e.g. ``{"endpoint_url": ..., "key": ...,
    "secret": ...}`` for S3). Never logged (they may hold secrets).
``cache_dir``
    The node-local directory of the ledger's working copy (an LMDB file per run). Default:
    ``$TMPDIR`` (or ``/tmp``) ``/nemo_curator-<uid>/ckpt-<hash of the location>``. It must not be
    on a network filesystem; it may be lost at any time (a resume rebuilds it from ``path``).

Executors accept ``checkpoint=`` as ``str | os.PathLike | CheckpointConfig | None``;
``coerce_checkpoint`` turns the first two into a ``CheckpointConfig`` with the defaults.

Invariants: a ``CheckpointConfig`` is immutable and picklable; ``location_id`` is the same for
every spelling of one local directory (it is resolved) and for one URL with or without a
trailing slash, so two runs on one location find each other.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["CheckpointConfig", "coerce_checkpoint", "split_protocol"]


def split_protocol(path: str) -> tuple[str | None, str]:
    """``("s3", "bucket/prefix")`` for ``"s3://bucket/prefix"``; ``(None, path)`` without a protocol.

    A Windows drive letter is not a protocol (``C:/x`` has no ``://``).
    """
    protocol, sep, rest = path.partition("://")
    if not sep or not protocol or "/" in protocol:
        return None, path
    return protocol.lower(), rest


@dataclass(frozen=True)
class CheckpointConfig:
    """Where a checkpoint lives and how to reach it (see the module docstring)."""

    path: str | os.PathLike[str]
    storage_options: dict[str, Any] | None = field(default=None, compare=False)
    cache_dir: str | os.PathLike[str] | None = None

    def __post_init__(self) -> None:
        raw = os.fspath(self.path)
        if not isinstance(raw, str) or not raw.strip():
            raise ValueError(f"CheckpointConfig.path must be a non-empty path or URL, got {self.path!r}")
        if self.storage_options is not None and not isinstance(self.storage_options, dict):
            raise TypeError(
                f"CheckpointConfig.storage_options must be a dict or None, got {type(self.storage_options).__name__}"
            )
        object.__setattr__(self, "path", raw)
        object.__setattr__(self, "storage_options", dict(self.storage_options or {}))
        if self.cache_dir is not None:
            object.__setattr__(self, "cache_dir", os.fspath(self.cache_dir))

    @property
    def protocol(self) -> str | None:
        """The URL's protocol (``"s3"``), or ``None`` for a local path and ``file://``."""
        protocol, _ = split_protocol(str(self.path))
        return None if protocol in (None, "file", "local") else protocol

    @property
    def is_local(self) -> bool:
        """A POSIX path (local disk or a mounted shared filesystem), written with fsync + rename."""
        return self.protocol is None

    @property
    def local_path(self) -> Path:
        """The absolute local path (only for ``is_local`` locations)."""
        protocol, rest = split_protocol(str(self.path))
        raw = rest if protocol in ("file", "local") else str(self.path)
        return Path(os.path.abspath(Path(raw).expanduser()))

    @property
    def location_id(self) -> str:
        """A canonical name of the location (resolved path, or URL without a trailing slash)."""
        if self.is_local:
            return str(self.local_path.resolve())
        protocol, rest = split_protocol(str(self.path))
        return f"{protocol}://{rest.rstrip('/')}"

    @property
    def display(self) -> str:
        """The location as shown in messages (no storage options: they may hold secrets)."""
        return str(self.local_path) if self.is_local else self.location_id

    def resolved_cache_dir(self) -> Path:
        """``cache_dir``, or the node-local default for this location."""
        if self.cache_dir is not None:
            return Path(os.path.abspath(Path(str(self.cache_dir)).expanduser()))
        digest = hashlib.blake2b(self.location_id.encode(), digest_size=8).hexdigest()
        uid = os.getuid() if hasattr(os, "getuid") else 0
        return Path(tempfile.gettempdir()) / f"nemo_curator-{uid}" / f"ckpt-{digest}"

    def __str__(self) -> str:
        return self.display


def coerce_checkpoint(value: str | os.PathLike[str] | CheckpointConfig) -> CheckpointConfig:
    """``value`` as a ``CheckpointConfig`` (a path or URL gets no storage options and the default cache)."""
    if isinstance(value, CheckpointConfig):
        return value
    if isinstance(value, str | os.PathLike):
        return CheckpointConfig(value)
    raise TypeError(
        f"checkpoint must be a path, a URL or a nemo_curator.resumability.CheckpointConfig, got {type(value).__name__}"
    )
