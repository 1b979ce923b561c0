"""Checks of local checkpoint directories and of the node-local cache directory: clear errors before any work.

``validate_checkpoint_dir(path)`` (a checkpoint on a POSIX filesystem: local disk, NFS, Lustre,
GPFS) creates the directory when missing and refuses, with a ``CheckpointError`` that names the
path and the fix: a path that is a file, or whose parent is a file; a directory that cannot be
written (permissions, read-only filesystem). A checkpoint may live on a network filesystem: it
holds only write-once objects (``objects``), written with fsync and rename.

``validate_cache_dir(path)`` checks the node-local directory of the ledger's LMDB cache and
refuses a network or FUSE filesystem (NFS, SMB/CIFS, sshfs, 9p, Ceph, GlusterFS, Lustre, ...),
detected from the mount table, where LMDB's memory map and locks are unsafe
(``NEMO_CURATOR_ALLOW_NETWORK_CACHE=1`` turns this refusal into a warning).

``existing_checkpoint_dir(path)`` is the read-only check of inspection (nothing is created).

Validation never deletes or rewrites anything already recorded.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from loguru import logger

from nemo_curator.resumability.errors import CheckpointError, FingerprintMismatchError

if TYPE_CHECKING:
    from nemo_curator.resumability.config import CheckpointConfig

__all__ = [
    "ALLOW_NETWORK_ENV",
    "NETWORK_FILESYSTEMS",
    "CheckpointError",
    "FingerprintMismatchError",
    "existing_checkpoint_dir",
    "filesystem_type",
    "network_filesystem_type",
    "parse_mount_table",
    "validate_cache_dir",
    "validate_checkpoint_dir",
]

LEDGER_DIRNAME = "ledger"

#: Set to 1 to accept a cache directory on a network/FUSE filesystem (with a warning).
ALLOW_NETWORK_ENV = "NEMO_CURATOR_ALLOW_NETWORK_CACHE"

#: Filesystem types where LMDB (shared memory map + POSIX locks) is unsafe. ``fuse.*`` is matched by prefix.
NETWORK_FILESYSTEMS = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb3",
        "smbfs",
        "sshfs",
        "9p",
        "ceph",
        "glusterfs",
        "lustre",
        "gpfs",
        "beegfs",
        "afs",
        "davfs",
        "ncpfs",
        "orangefs",
        "pvfs2",
        "ocfs2",
        "gfs2",
        "fuse",
        "fuseblk",
    }
)


def _unescape_mount_field(field: str) -> str:
    """Mount tables escape space, tab, newline and backslash as 3-digit octal (``\\040``)."""
    if "\\" not in field:
        return field
    out: list[str] = []
    i = 0
    while i < len(field):
        ch = field[i]
        if ch == "\\" and len(field) >= i + 4 and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def parse_mount_table(text: str) -> list[tuple[str, str]]:
    """``(mount point, filesystem type)`` pairs from ``/proc/self/mountinfo`` or ``/proc/mounts`` text."""
    mounts: list[tuple[str, str]] = []
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        if " - " in line and len(parts) >= 7:
            # mountinfo: id parent major:minor root mountpoint options [optional...] - fstype source superopts
            sep = parts.index("-", 6) if "-" in parts[6:] else -1
            if sep < 0 or sep + 1 >= len(parts):
                continue
            mounts.append((_unescape_mount_field(parts[4]), parts[sep + 1]))
        elif len(parts) >= 3:
            # /proc/mounts: source mountpoint fstype options dump pass
            mounts.append((_unescape_mount_field(parts[1]), parts[2]))
    return mounts


def _read_mount_table() -> str | None:
    for name in ("/proc/self/mountinfo", "/proc/mounts"):
        try:
            with open(name, encoding="utf-8", errors="replace") as fh:
                return fh.read()
        except OSError:
            continue
    return None


def filesystem_type(path: str | os.PathLike, mount_table: str | None = None) -> str | None:
    """Filesystem type of the mount holding ``path`` (longest matching mount point), or ``None``."""
    text = mount_table if mount_table is not None else _read_mount_table()
    if text is None:
        return None
    target = os.path.realpath(path) if mount_table is None else os.path.normpath(os.fspath(path))
    best: tuple[int, str] | None = None
    for mount_point, fstype in parse_mount_table(text):
        mp = mount_point.rstrip("/") or "/"
        if mp == "/" or target == mp or target.startswith(mp + "/"):
            length = len(mp)
            # Later entries stack on earlier ones at the same mount point (">=" keeps the last).
            if best is None or length >= best[0]:
                best = (length, fstype)
    return None if best is None else best[1]


def network_filesystem_type(path: str | os.PathLike, mount_table: str | None = None) -> str | None:
    """The filesystem type of ``path`` if it is a network or FUSE filesystem, else ``None``."""
    fstype = filesystem_type(path, mount_table)
    if fstype is None:
        return None
    if fstype in NETWORK_FILESYSTEMS or fstype.startswith("fuse."):
        return fstype
    return None


def _check_filesystem(path: Path, mount_table: str | None, what: str) -> None:
    fstype = network_filesystem_type(path, mount_table)
    if fstype is None:
        return
    message = (
        f"{what} {path} is on a {fstype!r} filesystem (network or FUSE). The ledger's LMDB cache relies on a "
        "shared memory map and POSIX locks that such filesystems do not provide reliably: runs can hang."
    )
    if os.environ.get(ALLOW_NETWORK_ENV, "").strip().lower() in {"1", "true", "yes"}:
        logger.warning("{} Proceeding because {}=1 is set.", message, ALLOW_NETWORK_ENV)
        return
    raise CheckpointError(
        f"{message} Fix: pass CheckpointConfig(..., cache_dir=<a node-local directory>) (e.g. node-local scratch or "
        f"/tmp; the checkpoint itself may stay on the shared filesystem), or set {ALLOW_NETWORK_ENV}=1 if you know "
        "this filesystem is safe for LMDB."
    )


def _first_file_ancestor(path: Path) -> Path | None:
    for parent in [path, *path.parents]:
        if parent.exists() and not parent.is_dir():
            return parent
    return None


def _make_dir(path: Path, what: str) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:
        blocker = _first_file_ancestor(path)
        where = f"{blocker} is a file" if blocker is not None else str(exc)
        raise CheckpointError(
            f"cannot create {what} {path}: {where}. Fix: choose a checkpoint path whose parents are directories"
        ) from exc
    except OSError as exc:
        raise CheckpointError(
            f"cannot create {what} {path}: {exc.strerror or exc}. Fix: choose a writable location for the "
            "checkpoint, or fix the permissions of its parent directory"
        ) from exc


def _probe_writable(directory: Path, checkpoint: Path, what: str = "checkpoint directory") -> None:
    probe = directory / f".write-probe-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        try:
            os.write(fd, b"ok")
        finally:
            os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise CheckpointError(
            f"{what} {checkpoint} is not writable ({exc.strerror or exc} on {directory}). "
            f"Fix: choose a writable location for the {what}, or fix its permissions"
        ) from exc


def validate_checkpoint_dir(path: str | os.PathLike) -> Path:
    """Make ``path`` a usable local checkpoint directory (created if missing) and return it resolved.

    Raises ``CheckpointError`` naming the path and the fix (see the module docstring). Nothing
    already in the directory is changed; only ``ledger/`` is created when missing.
    """
    raw = Path(os.fspath(path)).expanduser()
    checkpoint = Path(os.path.abspath(raw))
    try:
        return _validate(checkpoint)
    except CheckpointError:
        raise
    except OSError as exc:
        raise CheckpointError(
            f"cannot use checkpoint directory {checkpoint}: {exc.strerror or exc}"
            f"{f' ({exc.filename})' if exc.filename else ''}. Fix: choose a location you can read and write, "
            "or fix the permissions of its parent directories"
        ) from exc


def _validate(checkpoint: Path) -> Path:
    if checkpoint.exists() and not checkpoint.is_dir():
        raise CheckpointError(
            f"checkpoint path {checkpoint} is a file, not a directory. Fix: pass a directory path for the "
            f"checkpoint (it is created if missing), e.g. {checkpoint.with_name(checkpoint.name + '.ckpt')}"
        )
    _make_dir(checkpoint, "checkpoint directory")
    checkpoint = checkpoint.resolve()
    ledger = checkpoint / LEDGER_DIRNAME
    if ledger.exists() and not ledger.is_dir():
        raise CheckpointError(
            f"{ledger} is a file, but the checkpoint needs a directory there. Fix: move that file away, or use a "
            "new checkpoint directory"
        )
    if not ledger.exists() and any(checkpoint.iterdir()):
        logger.warning(
            "checkpoint directory {} is not empty and holds no ledger yet; a 'ledger' subdirectory is added, "
            "nothing else is touched",
            checkpoint,
        )
    _make_dir(ledger, "checkpoint ledger directory")
    _probe_writable(ledger, checkpoint)
    return checkpoint


def existing_checkpoint_dir(path: str | os.PathLike) -> Path:
    """``path`` resolved, if it is an existing directory (read-only: nothing is created)."""
    checkpoint = Path(os.fspath(path)).expanduser()
    if not checkpoint.exists():
        raise CheckpointError(
            f"checkpoint directory {checkpoint} does not exist. Fix: pass the location given as checkpoint= to the run"
        )
    if not checkpoint.is_dir():
        raise CheckpointError(f"checkpoint path {checkpoint} is a file, not a checkpoint directory")
    return checkpoint.resolve()


def validate_cache_dir(
    path: str | os.PathLike, config: CheckpointConfig | None = None, *, mount_table: str | None = None
) -> Path:
    """Create the node-local cache directory ``path`` and check it (not on a network filesystem, writable).

    ``mount_table`` replaces the text of ``/proc/self/mountinfo`` (for tests and diagnostics).
    """
    cache = Path(os.path.abspath(Path(os.fspath(path)).expanduser()))
    where = f"checkpoint cache directory (of {config.display})" if config is not None else "checkpoint cache directory"
    try:
        if cache.exists() and not cache.is_dir():
            raise CheckpointError(f"{where} {cache} is a file. Fix: pass cache_dir= a directory path")
        _make_dir(cache, where)
        cache = cache.resolve()
        _check_filesystem(cache, mount_table, where)
        _probe_writable(cache, cache, where)
    except CheckpointError:
        raise
    except OSError as exc:
        raise CheckpointError(
            f"cannot use {where} {cache}: {exc.strerror or exc}. Fix: pass cache_dir= a writable node-local directory"
        ) from exc
    return cache
