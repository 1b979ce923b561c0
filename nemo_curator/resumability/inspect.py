"""Read-only inspection of a checkpoint location (no Ray; safe while a run is writing it).

``read_checkpoint_status(location)`` returns a ``CheckpointStatus``, ``checkpoint_status(location)``
its JSON-serialisable dict; ``describe_checkpoint(location)`` a few human lines. ``location`` is a
local path, an fsspec URL or a ``CheckpointConfig`` (``storage_options=`` adds fsspec options).
They list and read the durable record (``durable.read_checkpoint``) and never create, write or
delete anything.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from nemo_curator.resumability.config import CheckpointConfig, coerce_checkpoint
from nemo_curator.resumability.durable import CheckpointRead, read_checkpoint
from nemo_curator.resumability.errors import CheckpointError
from nemo_curator.resumability.fingerprint import (
    describe_fingerprint,
    diff_descriptions,
    fingerprint_of_description,
)
from nemo_curator.resumability.keys import source_id_from_key
from nemo_curator.resumability.layout import FORMAT_VERSION
from nemo_curator.resumability.ledger import DEFAULT_RECENT_LIMIT
from nemo_curator.resumability.liveness import recorded_process_alive
from nemo_curator.resumability.location import describe_access_error, open_location
from nemo_curator.resumability.objects import WriterHeader
from nemo_curator.resumability.records import WriterState
from nemo_curator.resumability.status import CheckpointStatus
from nemo_curator.resumability.writers import current_writer, iso_time

Checkpoint = str | os.PathLike | CheckpointConfig


def _config(checkpoint: Checkpoint, storage_options: dict[str, Any] | None) -> CheckpointConfig:
    config = coerce_checkpoint(checkpoint)
    if storage_options:
        config = CheckpointConfig(config.path, {**(config.storage_options or {}), **storage_options}, config.cache_dir)
    return config


def read_durable(checkpoint: Checkpoint, storage_options: dict[str, Any] | None = None) -> CheckpointRead:
    """The whole durable record of ``checkpoint`` (read-only; ``CheckpointError`` when it cannot be read)."""
    config = _config(checkpoint, storage_options)
    location = open_location(config, writable=False)
    try:
        return read_checkpoint(location, recent_limit=DEFAULT_RECENT_LIMIT)
    except CheckpointError:
        raise
    except Exception as exc:
        raise describe_access_error(config, exc, "reading the checkpoint") from exc


def _writer_summary(header: WriterHeader, state: WriterState, objects: int, failed_open: set[bytes]) -> dict[str, Any]:
    info = header.info
    owner = info.get("owner") or info.get("process") or {}
    closed = state.closed
    alive: bool | None = False
    if not closed and owner:
        # The run is alive while its driver (the owner) is; the writing process may be restarting.
        alive = recorded_process_alive(owner)
    return {
        "writer_id": header.writer_id,
        "host": owner.get("host", info.get("host")),
        "pid": owner.get("pid", info.get("pid")),
        "created": iso_time(header.created),
        "updated": iso_time(max(state.updated, header.created)),
        "closed": iso_time(closed) if closed else None,
        "alive": alive,
        "fingerprint": header.fingerprint,
        "overrode_fingerprint": info.get("overrode_fingerprint"),
        "format_version": info.get("format_version"),
        "start_stamp": header.start_stamp,
        "last_stamp": state.stamp,
        "completed": len(state.completed),
        "failed": sum(1 for k in state.failed if k in failed_open),
        "in_flight": len(state.inflight),
        "objects": objects,
    }


def checkpoint_status(
    checkpoint: Checkpoint, *, include_ids: bool = True, storage_options: dict[str, Any] | None = None
) -> dict[str, Any]:
    """What ``checkpoint`` records, as one JSON-serialisable dict: ``read_checkpoint_status(...).to_dict()``.

    Keys: ``checkpoint``, ``completed_sources``, ``failed_sources``, ``in_flight_sources``,
    ``revoked_sources`` (ints); ``completed`` (sorted ids) and ``failed`` ({id: reason}) unless
    ``include_ids`` is false; ``writers`` (one dict per run, oldest first by logical start);
    ``fingerprint`` (the current writer's), ``format_version``, ``created`` / ``updated`` (ISO
    times or ``None``).
    """
    return read_checkpoint_status(checkpoint, include_ids=include_ids, storage_options=storage_options).to_dict()


def read_checkpoint_status(
    checkpoint: Checkpoint, *, include_ids: bool = True, storage_options: dict[str, Any] | None = None
) -> CheckpointStatus:
    """What ``checkpoint`` records (see ``CheckpointStatus`` and the union rules in ``scan``).

    Raises ``CheckpointError`` when the location is missing, unreachable, or holds a corrupt object.
    """
    config = _config(checkpoint, storage_options)
    read = read_durable(config)
    headers = sorted(read.headers.values(), key=lambda h: (h.start_stamp, h.writer_id))
    latest = current_writer(headers)
    u = read.union
    failed_open = set(u.failed)
    updated = [max(read.states[h.writer_id].updated, h.created) for h in headers]
    return CheckpointStatus(
        checkpoint=config.display,
        format_version=FORMAT_VERSION,
        fingerprint=latest.fingerprint if latest is not None else None,
        created=iso_time(min((h.created for h in headers), default=None)),
        updated=iso_time(max(updated, default=None)),
        completed_sources=len(u.completed),
        failed_sources=len(u.failed),
        in_flight_sources=len(u.in_flight),
        revoked_sources=len(u.revoked),
        writers=[
            _writer_summary(
                h,
                read.states[h.writer_id],
                len(read.objects[h.writer_id].snapshots) + len(read.objects[h.writer_id].segments),
                failed_open,
            )
            for h in headers
        ],
        completed=sorted(source_id_from_key(k) for k in u.completed) if include_ids else None,
        failed=(
            {source_id_from_key(k): reason for k, (_, reason) in sorted(u.failed.items())} if include_ids else None
        ),
    )


def describe_checkpoint(
    checkpoint: Checkpoint,
    stages: Sequence[Any] | None = None,
    *,
    max_failed: int = 5,
    storage_options: dict[str, Any] | None = None,
) -> str:
    """A few human lines about ``checkpoint``; with ``stages``, whether their fingerprint matches it."""
    status = read_checkpoint_status(checkpoint, storage_options=storage_options)
    lines = [
        f"checkpoint {status.checkpoint}: {status.completed_sources} source(s) complete, "
        f"{status.failed_sources} failed, {status.in_flight_sources} in flight"
    ]
    if not status.writers:
        lines.append(f"  no runs recorded yet (no ledger objects under {status.checkpoint}/ledger/)")
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
            latest = current_writer(read_durable(checkpoint, storage_options).headers.values())
            stored_description = None if latest is None else latest.description
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
