"""Processes of this machine: is one still running, and killing a whole tree of them.

``pid_alive`` is the one liveness probe of the package (recorded ledger writers, temp files
of atomic writes, the actor processes a Ray Data run waits for).
"""

from __future__ import annotations

import contextlib
import os
import signal


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the parenthesised command name (state first)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            stat = fh.read()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()


def process_start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (guards against pid reuse), if known."""
    fields = _stat_fields(pid)
    try:
        return int(fields[19]) if fields is not None else None
    except (IndexError, ValueError):
        return None


def _zombie(pid: int) -> bool:
    """Whether ``pid`` has finished but not been reaped (``False`` when ``/proc`` cannot tell)."""
    fields = _stat_fields(pid)
    return bool(fields) and fields[0] in ("Z", "X")


def pid_alive(pid: int, start_time: int | None = None) -> bool:
    """Whether process ``pid`` still runs on this machine.

    With ``start_time`` (from ``process_start_time``) a process that reused the pid is not it.
    A zombie has finished: not running. A process of another user runs. Off POSIX the answer
    is always ``True``: there ``os.kill(pid, 0)`` does not probe but terminates the process,
    so callers err on the side of "still running".
    """
    if pid <= 0:
        return False
    if os.name != "posix":
        return True
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        pass
    if _zombie(pid):
        return False
    if start_time is not None:
        current = process_start_time(pid)
        if current is not None and current != start_time:
            return False
    return True


def kill_process_tree(pid: int) -> int:
    """SIGKILL ``pid`` and all its descendants (Ray's processes included); returns how many were killed.

    The tree is frozen first (SIGSTOP, repeated until no new descendant appears), so no process
    can start another one or react to its parent's death; then every frozen process gets SIGKILL.
    """
    import psutil

    try:
        root = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return 0
    frozen: dict[int, psutil.Process] = {}
    for _ in range(50):
        try:
            tree = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            tree = []
        fresh = [p for p in tree if p.pid not in frozen]
        if not fresh:
            break
        for proc in fresh:
            try:
                proc.send_signal(signal.SIGSTOP)
                frozen[proc.pid] = proc
            except psutil.NoSuchProcess:
                pass
    for proc in frozen.values():
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.send_signal(signal.SIGKILL)
    psutil.wait_procs(list(frozen.values()), timeout=30)
    return len(frozen)
