"""Keep large buffers out of the C heap in the ledger actor's process (glibc; elsewhere nothing).

Loading a large checkpoint allocates and frees many buffers of 0.1-100 MB (objects read, decoded
keys, merge temporaries) on several reading threads. glibc raises its mmap threshold after each
large free (up to 32 MB), so later buffers of that size come from per-thread heaps that are not
given back to the operating system: after loading 3,000,000 completed sources the process kept
about 100 MB more than the 48 MB its ledger uses. A fixed threshold (which also stops the raising)
maps every buffer of ``MMAP_THRESHOLD_BYTES`` or more on its own and unmaps it when it is freed.
"""

from __future__ import annotations

import ctypes
import sys

#: ``M_MMAP_THRESHOLD`` of glibc's ``mallopt``.
_M_MMAP_THRESHOLD = -3
#: glibc's initial threshold, kept fixed.
MMAP_THRESHOLD_BYTES = 128 * 1024


def map_large_buffers() -> bool:
    """Fix this process's mmap threshold at ``MMAP_THRESHOLD_BYTES``; whether it was set (not off glibc)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # no mallopt (e.g. musl)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
