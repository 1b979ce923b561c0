"""Is the process a ledger record names still running? (pure; used by the actor and by inspection).

The probe itself is ``nemo_curator.utils.processes.pid_alive``; this module knows only the
records: which host and process wrote them.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from nemo_curator.utils.processes import pid_alive, process_start_time

__all__ = ["pid_alive", "process_start_time", "recorded_process_alive", "this_process"]


def this_process() -> dict[str, Any]:
    """``host``, ``pid`` and ``pid_start`` of the calling process."""
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "pid_start": process_start_time(pid)}


def recorded_process_alive(record: dict[str, Any]) -> bool | None:
    """Liveness of a ``this_process()`` record: ``None`` when it ran on another host (unknown)."""
    if record.get("host") != socket.gethostname():
        return None
    return pid_alive(int(record.get("pid", -1)), record.get("pid_start"))
