"""A checkpoint location: write-once objects on a POSIX filesystem or through fsspec.

``open_location(config, writable=...)`` returns a ``Location`` for a ``CheckpointConfig`` after
checking, before any work, that it can be used; every problem is a ``CheckpointError`` naming the
location and the fix: an unknown protocol, a missing fsspec driver (naming the package to
install), a missing bucket or path, no permission, an endpoint that does not answer (in bounded
time: without user settings, S3 gets short timeouts and few retries). A writable location is
probed by writing, reading back and deleting one small object under ``_probe/``; a read-only one
(inspection) only by listing, and nothing is created.

Write-once (``write_once``):
- POSIX (local disk, NFS, Lustre, GPFS): the bytes go to a temporary name in the target
  directory, are fsynced, renamed to the final name, and the directory is fsynced (also each
  directory created on the way). Readers skip temporary names (``.tmp-`` prefix).
- object stores: one PUT of the final name. Names are unique (see ``objects``), so nothing
  relies on rename or on overwrite semantics; listing order is never used.

A listed object may vanish before it is read (a writer compacted meanwhile): ``read`` then raises
``FileNotFoundError`` and the caller lists again.

``modified(path)`` is the object's modification time by the STORE's clock (the file server's for
a filesystem, ``LastModified`` for an object store), in seconds since the epoch; it is compared
only with other ``modified`` times of the same location, never with a host's clock (``lease``).
"""

from __future__ import annotations

import concurrent.futures
import copy
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

from nemo_curator.resumability.config import CheckpointConfig
from nemo_curator.resumability.errors import CheckpointError

TMP_PREFIX = ".tmp-"
PROBE_PREFIX = "_probe"
#: Upper bound on any start-up check of a location (seconds).
STARTUP_TIMEOUT_S = 30.0

#: The package that provides each common fsspec protocol.
DRIVER_PACKAGES = {
    "s3": "s3fs",
    "s3a": "s3fs",
    "gs": "gcsfs",
    "gcs": "gcsfs",
    "abfs": "adlfs",
    "abfss": "adlfs",
    "az": "adlfs",
    "adl": "adlfs",
    "hf": "huggingface_hub",
    "oci": "ocifs",
}

#: Defaults for S3 when the user gave none: fail in seconds, not minutes, when the endpoint is down.
#: s3fs's own retry loop (a class attribute of ``S3FileSystem``, not an option).
S3_DEFAULT_RETRIES = 2
S3_DEFAULT_CONFIG = {"connect_timeout": 5, "read_timeout": 20, "retries": {"max_attempts": 2, "mode": "standard"}}

T = TypeVar("T")


class Location(Protocol):
    """Where a checkpoint's durable record lives. Paths are relative, ``/``-separated."""

    display: str

    def list(self, prefix: str) -> list[str]:
        """Every object under ``prefix`` (recursive, relative paths; temporary names excluded)."""
        ...

    def read(self, path: str) -> bytes:
        """The object's bytes; ``FileNotFoundError`` when it does not exist."""
        ...

    def write_once(self, path: str, data: bytes) -> None:
        """Make ``data`` durable under ``path`` (a name never written before)."""
        ...

    def delete(self, paths: list[str]) -> None:
        """Delete objects (missing ones are fine)."""
        ...

    def entries(self, prefix: str) -> list[str]:
        """The direct children of ``prefix`` (names), for format checks."""
        ...

    def modified(self, path: str) -> float:
        """The object's modification time by the store's clock; ``FileNotFoundError`` when it does not exist."""
        ...


class LocalLocation:
    """A directory on a POSIX filesystem (local disk or a mounted shared filesystem)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.display = str(root)

    def list(self, prefix: str) -> list[str]:
        base = self.root / prefix
        out = []
        for dirpath, _dirs, files in os.walk(base, onerror=_raise_unless_missing):
            rel = Path(dirpath).relative_to(self.root).as_posix()
            # Hidden names: temporary files of writes in progress, and the directory's write probe.
            out.extend(f"{rel}/{name}" for name in files if not name.startswith("."))
        return out

    def entries(self, prefix: str) -> list[str]:
        try:
            return sorted(os.listdir(self.root / prefix))
        except (FileNotFoundError, NotADirectoryError):
            return []

    def read(self, path: str) -> bytes:
        with open(self.root / path, "rb") as f:
            return f.read()

    def modified(self, path: str) -> float:
        return os.stat(self.root / path).st_mtime

    def write_once(self, path: str, data: bytes) -> None:
        target = self.root / path
        self._make_dirs(target.parent)
        tmp = target.with_name(f"{TMP_PREFIX}{target.name}.{uuid.uuid4().hex[:8]}")
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.rename(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(target.parent)

    def _make_dirs(self, directory: Path) -> None:
        if directory.is_dir():
            return
        missing = []
        d = directory
        while not d.exists():
            missing.append(d)
            d = d.parent
        directory.mkdir(parents=True, exist_ok=True)
        for created in reversed(missing):
            _fsync_dir(created.parent)

    def delete(self, paths: list[str]) -> None:
        for path in paths:
            (self.root / path).unlink(missing_ok=True)


def _raise_unless_missing(exc: OSError) -> None:
    """``os.walk``'s error hook: a directory that cannot be listed is an error, not an empty one.

    Skipping it (``os.walk``'s default) would drop a writer's records, revocations included,
    from the union without a word. A missing directory has no objects.
    """
    if not isinstance(exc, FileNotFoundError):
        raise exc


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


#: Deadline of one call to an object store when the driver's own timeouts cannot be read.
DEFAULT_CALL_DEADLINE_S = 60.0


def call_deadline_s(options: dict[str, Any]) -> float:
    """How long one store call may take: every attempt's connect and read timeout, plus slack.

    A hung endpoint (it accepts connections and never answers) must fail a call in bounded
    time: botocore sends a PutObject with ``Expect: 100-continue`` and waits for the
    ``100 Continue`` outside its read timeout, so the driver's timeouts alone do not bound it.
    """
    config = options.get("config_kwargs") or {}
    try:
        attempts = int((config.get("retries") or {}).get("max_attempts", 1)) or 1
        per_attempt = float(config.get("connect_timeout", 60)) + float(config.get("read_timeout", 60))
    except (TypeError, ValueError, AttributeError):
        return DEFAULT_CALL_DEADLINE_S
    return attempts * per_attempt + 10.0


class FsspecLocation:
    """A prefix of an fsspec filesystem (an object store: S3, GCS, Azure, ...).

    Every call on an asynchronous filesystem (s3fs, gcsfs, adlfs) has a deadline
    (``deadline_s``); past it the call raises ``fsspec`` 's ``FSTimeoutError`` (a ``TimeoutError``).
    """

    def __init__(self, fs: Any, root: str, display: str, deadline_s: float = DEFAULT_CALL_DEADLINE_S) -> None:
        self.fs = fs
        self.root = root.rstrip("/")
        self.display = display
        self.deadline_s = deadline_s
        #: fsspec's blocking wrappers of async filesystems take ``timeout=`` (not passed to the driver).
        self._kw: dict[str, Any] = {"timeout": deadline_s} if getattr(fs, "async_impl", False) else {}

    def _full(self, path: str) -> str:
        return f"{self.root}/{path}" if path else self.root

    def list(self, prefix: str) -> list[str]:
        base = self._full(prefix)
        self.fs.invalidate_cache(base)
        try:
            found = self.fs.find(base, **self._kw)
        except FileNotFoundError:
            return []
        cut = len(self.root) + 1
        out = []
        for full in found:
            rel = full.rstrip("/")[cut:]
            if rel and not rel.rsplit("/", 1)[-1].startswith(TMP_PREFIX):
                out.append(rel)
        return out

    def entries(self, prefix: str) -> list[str]:
        base = self._full(prefix)
        self.fs.invalidate_cache(base)
        try:
            return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(base, detail=False, **self._kw))
        except FileNotFoundError:
            return []

    def read(self, path: str) -> bytes:
        return bytes(self.fs.cat_file(self._full(path), **self._kw))

    def modified(self, path: str) -> float:
        full = self._full(path)
        self.fs.invalidate_cache(full)
        return info_mtime(self.fs.info(full), full)

    def write_once(self, path: str, data: bytes) -> None:
        self.fs.pipe_file(self._full(path), data, **self._kw)

    def delete(self, paths: list[str]) -> None:
        if paths:
            self.fs.rm([self._full(p) for p in paths], **self._kw)


#: Keys of an fsspec ``info`` dict that hold a modification time, most specific first.
MTIME_KEYS = ("LastModified", "mtime", "last_modified", "updated", "modified", "created", "creation_time")


def info_mtime(info: dict[str, Any], path: str) -> float:
    """Seconds since the epoch of an fsspec ``info`` dict's modification time (``ValueError`` if it has none)."""
    import datetime

    for key in MTIME_KEYS:
        value = info.get(key)
        if value is None:
            continue
        if isinstance(value, datetime.datetime):
            if value.tzinfo is None:
                value = value.replace(tzinfo=datetime.UTC)
            return value.timestamp()
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                parsed = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
                return (parsed if parsed.tzinfo else parsed.replace(tzinfo=datetime.UTC)).timestamp()
    raise ValueError(f"the store reports no modification time for {path} (info keys: {sorted(info)})")


def _driver_missing(config: CheckpointConfig, protocol: str, exc: BaseException) -> CheckpointError:
    package = DRIVER_PACKAGES.get(protocol)
    install = f"pip install {package}" if package else f"install the fsspec implementation of {protocol!r}"
    return CheckpointError(
        f"checkpoint location {config.display}: fsspec has no driver for {protocol}:// installed ({exc}). "
        f"Fix: {install}" + (" (or pip install 'nemo-curator-resumable[s3]')" if package == "s3fs" else "")
    )


def _filesystem(config: CheckpointConfig) -> Any:
    import fsspec

    protocol = config.protocol
    assert protocol is not None
    try:
        cls = fsspec.get_filesystem_class(protocol)
    except ValueError as exc:
        raise CheckpointError(
            f"checkpoint location {config.display}: unknown protocol {protocol!r} ({exc}). Fix: use a local path or "
            "an fsspec URL such as s3://bucket/prefix, gs://bucket/prefix or file:///path"
        ) from exc
    except ImportError as exc:
        raise _driver_missing(config, protocol, exc) from exc
    options = dict(config.storage_options or {})
    if protocol in ("s3", "s3a"):
        user_config = copy.deepcopy(dict(options.get("config_kwargs") or {}))
        for key, value in S3_DEFAULT_CONFIG.items():
            user_config.setdefault(key, copy.deepcopy(value))
        options["config_kwargs"] = user_config
    try:
        fs = cls(**options)
        if protocol in ("s3", "s3a") and "retries" not in vars(fs):
            fs.retries = S3_DEFAULT_RETRIES
        return fs
    except ImportError as exc:
        raise _driver_missing(config, protocol, exc) from exc
    except Exception as exc:
        raise CheckpointError(
            f"checkpoint location {config.display}: cannot create its {protocol}:// filesystem "
            f"({type(exc).__name__}: {exc}). Fix: check the storage_options of the CheckpointConfig"
        ) from exc


def _bounded(config: CheckpointConfig, what: str, call: Callable[[], T], timeout_s: float) -> T:
    """``call()`` on a helper thread; a ``CheckpointError`` when it takes longer than ``timeout_s``."""
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint-probe")
    try:
        future = pool.submit(call)
        try:
            return future.result(timeout=timeout_s)
        except concurrent.futures.TimeoutError as exc:
            raise CheckpointError(
                f"checkpoint location {config.display} did not answer within {timeout_s:.0f} s ({what}). "
                "Fix: check that the endpoint is up and reachable from this machine (storage_options endpoint_url, "
                "network, proxy)"
            ) from exc
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def describe_access_error(config: CheckpointConfig, exc: BaseException, what: str) -> CheckpointError:
    """A ``CheckpointError`` for a failed access to ``config``'s location, naming the likely fix."""
    where = config.display
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, CheckpointError):
        return exc
    if isinstance(exc, FileNotFoundError):
        bucket = "" if config.is_local else " (does the bucket exist?)"
        return CheckpointError(
            f"checkpoint location {where} does not exist{bucket}: {what} failed ({text}). Fix: create the bucket or "
            "container first, or correct the URL"
        )
    if isinstance(exc, PermissionError):
        return CheckpointError(
            f"no permission to use checkpoint location {where}: {what} failed ({text}). Fix: grant read, write, list "
            "and delete permission on this prefix, or pass the right credentials in storage_options"
        )
    if config.is_local:
        return CheckpointError(
            f"cannot use checkpoint directory {where}: {what} failed ({text}). Fix: choose a location you can read and "
            "write, or fix its permissions"
        )
    return CheckpointError(
        f"cannot reach checkpoint location {where}: {what} failed ({text}). Fix: check that the endpoint is up and "
        "reachable (storage_options endpoint_url, network, credentials)"
    )


def open_location(config: CheckpointConfig, *, writable: bool, timeout_s: float = STARTUP_TIMEOUT_S) -> Location:
    """A ``Location`` for ``config``, checked as the module docstring says (``CheckpointError`` otherwise).

    A local location must exist when ``writable`` is false; ``checkpoint.validate_checkpoint_dir``
    creates and checks it when writable.
    """
    if config.is_local:
        from nemo_curator.resumability.checkpoint import existing_checkpoint_dir, validate_checkpoint_dir

        root = validate_checkpoint_dir(config.local_path) if writable else existing_checkpoint_dir(config.local_path)
        return LocalLocation(root)
    fs = _filesystem(config)
    _, rest = config.location_id.split("://", 1)
    options = dict(config.storage_options or {})
    if config.protocol in ("s3", "s3a"):
        options["config_kwargs"] = {**S3_DEFAULT_CONFIG, **(options.get("config_kwargs") or {})}
    location = FsspecLocation(
        fs, fs._strip_protocol(config.location_id) or rest, config.location_id, call_deadline_s(options)
    )
    if writable:
        _bounded(config, "a probe write, read and delete", lambda: _probe(config, location), timeout_s)
    else:
        _bounded(config, "a listing", lambda: _check_listing(config, location), timeout_s)
    return location


def _probe(config: CheckpointConfig, location: FsspecLocation) -> None:
    path = f"{PROBE_PREFIX}/{uuid.uuid4().hex}"
    payload = b"nemo_curator checkpoint probe"
    try:
        location.write_once(path, payload)
    except Exception as exc:
        raise describe_access_error(config, exc, "writing a probe object") from exc
    try:
        if location.read(path) != payload:
            raise CheckpointError(
                f"checkpoint location {config.display} returned different bytes for an object just written. "
                "Fix: use a store with read-after-write consistency"
            )
    except CheckpointError:
        raise
    except Exception as exc:
        raise describe_access_error(config, exc, "reading back a probe object") from exc
    finally:
        try:
            location.delete([path])
        except Exception as exc:  # a store that lets us write but not delete cannot compact
            raise describe_access_error(config, exc, "deleting a probe object") from exc


def _check_listing(config: CheckpointConfig, location: FsspecLocation) -> None:
    try:
        location.fs.invalidate_cache()
        if not location.fs.exists(location.root):
            raise FileNotFoundError(location.root)
    except Exception as exc:
        raise describe_access_error(config, exc, "listing") from exc
