"""Names of the hidden temp files of atomic writes, and the sweep of those a crash left behind.

An atomic write puts its bytes in ``.<final name>.tmp-<writer>-<pid>-<random>`` next to the
final file and renames it over the final name. A writer killed between the two (SIGKILL,
preemption, a dead node) leaves the temp file behind. Readers skip hidden files, but the
output directory then holds files an uninterrupted run never makes, so the writer stage
sweeps them when it is set up on a node (``sweep_stale_temp_files``).

Invariant: a temp file is removed only when its writer cannot still be writing it:
- it names this process's *writer identity* (host name, boot and PID namespace: the
  places where a PID means the same process) and a PID that no longer runs here; or
- it is older than ``max_age_s`` (default one day), whoever wrote it: no single file write
  takes that long. This also covers other hosts and temp files of older versions.
A temp file whose PID runs (or was reused by another process) is kept: the sweep errs on
the side of leaving a hidden file, never on breaking a write in progress.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import re
import socket
import time
import uuid
from pathlib import Path

from nemo_curator.utils.processes import pid_alive

#: Temp files older than this are removed whoever wrote them.
DEFAULT_MAX_AGE_S = 24 * 3600.0

_TEMP_NAME = re.compile(r"^\.(?P<final>.+)\.tmp-(?:(?P<writer>[0-9a-f]{12})-(?P<pid>\d+)-)?[0-9a-f]+$")


@functools.cache
def writer_identity() -> str:
    """12 hex digits naming the space in which this process's PID is meaningful.

    Host name, kernel boot id and PID namespace: two processes with the same identity and the
    same PID are the same process (or a later one that reused the PID).
    """
    parts = [socket.gethostname()]
    with contextlib.suppress(OSError):
        parts.append(Path("/proc/sys/kernel/random/boot_id").read_text().strip())
    with contextlib.suppress(OSError):
        parts.append(str(os.stat("/proc/self/ns/pid").st_ino))
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:12]


def temp_name(final_name: str) -> str:
    """The hidden temp file name for writing ``final_name`` from this process."""
    return f".{final_name}.tmp-{writer_identity()}-{os.getpid()}-{uuid.uuid4().hex[:16]}"


def is_stale(name: str, age_s: float, max_age_s: float = DEFAULT_MAX_AGE_S) -> bool:
    """Whether the temp file ``name``, ``age_s`` seconds old, can no longer be written by anyone.

    ``False`` for names that are not temp files of this scheme.
    """
    match = _TEMP_NAME.match(name)
    if match is None:
        return False
    if age_s > max_age_s:
        return True
    return match["writer"] == writer_identity() and not pid_alive(int(match["pid"]))


def sweep_stale_temp_files(directory: str, max_age_s: float = DEFAULT_MAX_AGE_S) -> list[str]:
    """Remove the stale temp files directly in ``directory`` (see the module doc); return their names.

    A missing directory holds none. Files that vanish meanwhile (another node's sweep) are skipped.
    """
    removed: list[str] = []
    now = time.time()
    try:
        entries = os.scandir(directory)
    except FileNotFoundError:
        return removed
    with entries:
        for entry in entries:
            if not entry.name.startswith(".") or ".tmp-" not in entry.name:
                continue
            try:
                if not entry.is_file(follow_symlinks=False):
                    continue
                age_s = now - entry.stat(follow_symlinks=False).st_mtime
            except FileNotFoundError:
                continue
            if is_stale(entry.name, age_s, max_age_s):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    removed.append(entry.name)
    return sorted(removed)
