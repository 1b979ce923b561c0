"""The ledger actor's process gives buffers freed after a load back to the operating system (``heap``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# Buffers of 2 MB allocated and freed on four threads after one of 8 MB was freed (which raises
# glibc's dynamic mmap threshold above them), as a load's reading threads and merges do.
CHILD = """
import sys, threading
from pathlib import Path

def rss():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024

if sys.argv[1] == "set":
    from nemo_curator.resumability.heap import map_large_buffers
    assert map_large_buffers()
import numpy as np

base = rss()
big = np.ones(8 << 20, dtype=np.uint8)
del big

def work():
    kept = [np.ones(2 << 20, dtype=np.uint8) for _ in range(40)]
    kept.clear()

threads = [threading.Thread(target=work) for _ in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(rss() - base)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator, /proc")
def test_buffers_freed_on_reading_threads_leave_the_process() -> None:
    def retained(mode: str) -> int:
        out = subprocess.run(
            [sys.executable, "-c", CHILD, mode], cwd=REPO, capture_output=True, text=True, check=True, timeout=120
        )
        return int(out.stdout.strip())

    assert retained("set") < 20_000_000  # the 320 MB freed are gone
