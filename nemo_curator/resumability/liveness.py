"""Is a recorded process still running? (pure; used by the actor and by inspection)."""

from __future__ import annotations

import os
import socket
from typing import Any


def process_start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (guards against pid reuse), if known."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            stat = fh.read()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def pid_alive(pid: int, start_time: int | None = None) -> bool:
    """Whether ``pid`` runs on this host (and, if ``start_time`` is given, is the same process)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if start_time is not None:
        current = process_start_time(pid)
        if current is not None and current != start_time:
            return False
    return True


def this_process() -> dict[str, Any]:
    """``host``, ``pid`` and ``pid_start`` of the calling process."""
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "pid_start": process_start_time(pid)}


def recorded_process_alive(record: dict[str, Any]) -> bool | None:
    """Liveness of a ``this_process()`` record: ``None`` when it ran on another host (unknown)."""
    if record.get("host") != socket.gethostname():
        return None
    return pid_alive(int(record.get("pid", -1)), record.get("pid_start"))
