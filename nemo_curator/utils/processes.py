"""Process-tree helpers (used to simulate a preempted or crashed run)."""

from __future__ import annotations

import contextlib
import signal


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
