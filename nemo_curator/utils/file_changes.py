"""What changed between two listings of files (``[path, size, mtime]`` entries), for messages."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

#: At most this many files of each kind of change are named.
MAX_LISTED = 10


def file_changes(before: Sequence[Sequence[Any]], after: Sequence[Sequence[Any]]) -> list[str]:
    """One line per file removed, added or changed (size or mtime), at most ``MAX_LISTED`` of each."""
    old = {str(e[0]): list(e) for e in before}
    new = {str(e[0]): list(e) for e in after}
    out: list[str] = []
    for label, paths in (
        ("removed from the input", sorted(set(old) - set(new))),
        ("added to the input", sorted(set(new) - set(old))),
        ("changed (size or mtime)", sorted(p for p in set(old) & set(new) if old[p] != new[p])),
    ):
        out.extend(f"file {p} {label}" for p in paths[:MAX_LISTED])
        if len(paths) > MAX_LISTED:
            out.append(f"... and {len(paths) - MAX_LISTED} more file(s) {label}")
    return out
