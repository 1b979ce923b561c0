"""Read-only inspection of a checkpoint directory (no Ray; safe while a run is writing it).

``read_checkpoint_status(path)`` returns a ``CheckpointStatus``, ``checkpoint_status(path)`` its
JSON-serialisable dict; ``describe_checkpoint(path)`` a few human lines. They read consistent
LMDB snapshots of every writer file and never write a record (LMDB may create a writer file's
``-lock`` file if it is missing).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nemo_curator.resumability.errors import CheckpointError
from nemo_curator.resumability.fingerprint import (
    describe_fingerprint,
    diff_descriptions,
    fingerprint_of_description,
)
from nemo_curator.resumability.keys import source_id_from_key
from nemo_curator.resumability.layout import (
    FORMAT_VERSION,
    LEDGER_DIRNAME,
)
from nemo_curator.resumability.liveness import recorded_process_alive
from nemo_curator.resumability.scan import WriterCounts, current_writer, iso_time, scan_checkpoint, writer_infos
from nemo_curator.resumability.status import CheckpointStatus


def _existing_checkpoint(path: str | os.PathLike) -> Path:
    checkpoint = Path(os.fspath(path)).expanduser()
    if not checkpoint.exists():
        raise CheckpointError(
            f"checkpoint directory {checkpoint} does not exist. Fix: pass the directory given as checkpoint= to the run"
        )
    if not checkpoint.is_dir():
        raise CheckpointError(f"checkpoint path {checkpoint} is a file, not a checkpoint directory")
    return checkpoint.resolve()


def _writer_summary(counts: WriterCounts) -> dict[str, Any]:
    info = counts.info
    meta = info.meta
    owner = meta.get("owner") or meta.get("process") or {}
    closed = meta.get("closed")
    alive: bool | None = False
    if not closed and owner:
        # The run is alive while its driver (the owner) is; the writing process may be restarting.
        alive = recorded_process_alive(owner)
    try:
        size = info.path.stat().st_size
    except OSError:
        size = 0
    return {
        "writer_id": info.writer_id,
        "file": info.path.name,
        "host": owner.get("host", meta.get("host")),
        "pid": owner.get("pid", meta.get("pid")),
        "created": iso_time(info.created),
        "updated": iso_time(info.updated),
        "closed": iso_time(closed) if closed else None,
        "alive": alive,
        "fingerprint": info.fingerprint,
        "overrode_fingerprint": meta.get("overrode_fingerprint"),
        "format_version": meta.get("format_version"),
        "completed": counts.completed,
        "failed": counts.failed,
        "in_flight": counts.in_flight,
        "size_bytes": size,
    }


def checkpoint_status(path: str | os.PathLike, *, include_ids: bool = True) -> dict[str, Any]:
    """What ``path`` records, as one JSON-serialisable dict: ``read_checkpoint_status(...).to_dict()``.

    Keys: ``checkpoint``, ``completed_sources``, ``failed_sources``, ``in_flight_sources``,
    ``revoked_sources`` (ints); ``completed`` (sorted ids) and ``failed`` ({id: reason}) unless
    ``include_ids`` is false; ``writers`` (one dict per run, oldest first); ``fingerprint`` (the
    most recent run's), ``format_version``, ``created`` / ``updated`` (ISO times or ``None``).
    """
    return read_checkpoint_status(path, include_ids=include_ids).to_dict()


def read_checkpoint_status(path: str | os.PathLike, *, include_ids: bool = True) -> CheckpointStatus:
    """What ``path`` records (see ``CheckpointStatus``).

    A source completed by any writer is complete (unless a later anomaly revoked it); failures
    of complete sources are not listed; in-flight sources are those with partial credit recorded
    and neither complete nor failed. Raises ``CheckpointError`` when the directory is missing or
    holds a corrupt/foreign file.
    """
    checkpoint = _existing_checkpoint(path)
    scan = scan_checkpoint(checkpoint, in_flight=True)
    infos = [w.info for w in scan.writers]
    latest = current_writer(infos)
    return CheckpointStatus(
        checkpoint=str(checkpoint),
        format_version=max((int(i.meta.get("format_version", 0)) for i in infos), default=FORMAT_VERSION),
        fingerprint=latest.fingerprint if latest is not None else None,
        created=iso_time(min((i.created for i in infos), default=None)),
        updated=iso_time(max((i.updated for i in infos), default=None)),
        completed_sources=len(scan.completed),
        failed_sources=len(scan.failed),
        in_flight_sources=len(scan.in_flight),
        revoked_sources=len(scan.revoked),
        # Sorted on the exact float start time: ISO strings have one-second resolution.
        writers=[_writer_summary(w) for w in sorted(scan.writers, key=lambda w: (w.info.created, w.info.writer_id))],
        completed=sorted(source_id_from_key(k) for k in scan.completed) if include_ids else None,
        failed=(
            {source_id_from_key(k): reason for k, (_, reason) in sorted(scan.failed.items())} if include_ids else None
        ),
    )


def describe_checkpoint(path: str | os.PathLike, stages: Sequence[Any] | None = None, *, max_failed: int = 5) -> str:
    """A few human lines about ``path``; with ``stages``, whether their fingerprint matches it."""
    status = read_checkpoint_status(path)
    checkpoint = Path(status.checkpoint)
    lines = [
        f"checkpoint {checkpoint}: {status.completed_sources} source(s) complete, "
        f"{status.failed_sources} failed, {status.in_flight_sources} in flight"
    ]
    if not status.writers:
        lines.append(f"  no runs recorded yet (no ledger files in {checkpoint / LEDGER_DIRNAME})")
        return "\n".join(lines)
    stored = status.fingerprint
    if stages is None:
        lines.append(f"  pipeline fingerprint: {stored}")
    else:
        description = describe_fingerprint(list(stages))
        current = fingerprint_of_description(description)
        if current == stored:
            lines.append(f"  pipeline fingerprint: {stored} (matches this pipeline)")
        else:
            lines.append(f"  pipeline fingerprint: {stored} (DIFFERS from this pipeline's {current})")
            latest = current_writer(writer_infos(checkpoint))
            stored_description = None if latest is None else latest.meta.get("fingerprint_description")
            for diff in diff_descriptions(stored_description, description):
                lines.append(f"    - {diff}")
    alive = sum(1 for w in status.writers if w["alive"])
    lines.append(
        f"  runs: {len(status.writers)} ({alive} running); first started {status.created}, "
        f"last updated {status.updated}"
    )
    for w in status.writers[-3:]:
        state = "running" if w["alive"] else ("closed" if w["closed"] else "ended without closing")
        lines.append(
            f"    {w['writer_id']}: {state}, {w['completed']} completed, {w['failed']} failed, "
            f"{w['in_flight']} in flight, updated {w['updated']}"
        )
    failed = status.failed or {}
    for sid, reason in list(failed.items())[:max_failed]:
        lines.append(f"  failed {sid}: {reason[:160]}")
    if len(failed) > max_failed:
        lines.append(f"  ... and {len(failed) - max_failed} more failed source(s)")
    return "\n".join(lines)
