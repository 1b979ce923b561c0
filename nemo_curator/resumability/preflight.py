"""The driver's check of a checkpoint before a run: location, cache directory, live runs, fingerprint.

It reads only the writers' headers and closed marks (``writers.read_writers``), never the ledger
itself, and imports neither LMDB nor numpy, so a run on a fresh checkpoint reaches its first
work without loading the ledger's modules (the ledger actor loads them when it starts).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from loguru import logger

from nemo_curator.resumability.config import CheckpointConfig, coerce_checkpoint
from nemo_curator.resumability.errors import CheckpointError, FingerprintMismatchError
from nemo_curator.resumability.fingerprint import diff_descriptions
from nemo_curator.resumability.lease import LeaseSettings, check_no_conflict
from nemo_curator.resumability.location import describe_access_error, open_location
from nemo_curator.resumability.objects import WriterHeader
from nemo_curator.resumability.shard import Shard
from nemo_curator.resumability.writers import current_writer, iso_time, read_writers

#: What the ledger imports when it starts, after the first work (``LedgerActor``).
LEDGER_MODULES = ("lmdb", "numpy")


def check_ledger_modules(checkpoint: str) -> None:
    """Raise ``CheckpointError`` before any work when a module the ledger needs cannot be imported.

    The ledger loads them only when it starts, after the first work; ``find_spec`` finds a missing
    one without importing it (microseconds), so a broken installation still fails before the run.
    """
    missing = [name for name in LEDGER_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        raise CheckpointError(
            f"checkpoint {checkpoint}: the ledger needs {', '.join(missing)}, which cannot be imported in this "
            f"Python ({sys.executable}). Nothing was written. Fix: pip install {' '.join(missing)} (a dependency "
            "of nemo_curator), or run without a checkpoint"
        )


def check_fingerprint(
    checkpoint: str,
    headers: Iterable[WriterHeader],
    fingerprint: str,
    description: list[dict[str, Any]] | None,
    allow_fingerprint_change: bool,
) -> str | None:
    """Raise ``FingerprintMismatchError`` if the checkpoint's current writer ran another pipeline.

    Returns the overridden fingerprint when ``allow_fingerprint_change`` accepted a mismatch
    (after logging a loud warning), else ``None``.
    """
    latest = current_writer(headers)
    if latest is None or latest.fingerprint == fingerprint:
        return None
    stored = latest.fingerprint
    diffs = diff_descriptions(latest.description, description or [])
    lines = [
        f"checkpoint {checkpoint} was written by a different pipeline.",
        f"  stored fingerprint:  {stored} (run {latest.writer_id}, started {iso_time(latest.created)})",
        f"  current fingerprint: {fingerprint}",
    ]
    if diffs:
        lines.append("  what differs:")
        lines.extend(f"    - {d}" for d in diffs)
    if allow_fingerprint_change:
        lines.append(
            "  the pipeline change is allowed (executor config allow_pipeline_change=True): reusing it anyway. "
            "Sources it records as complete are SKIPPED even though the pipeline changed; their outputs are those "
            "of the old pipeline."
        )
        logger.warning("\n".join(lines))
        return stored
    lines.append(
        "Resuming would skip sources as complete that the changed pipeline never processed. Ways out:\n"
        "  - use a new (empty) checkpoint location for the changed pipeline, or\n"
        '  - or reuse this checkpoint anyway: pass config={"allow_pipeline_change": True} to the executor '
        "(LedgerHandle.open(..., allow_fingerprint_change=True) directly); a warning is logged and the sources it "
        "records as complete are skipped."
    )
    raise FingerprintMismatchError("\n".join(lines), directory=checkpoint, stored=stored, current=fingerprint)


@dataclass(frozen=True)
class Preflight:
    """What the driver's check before a run found.

    ``fresh``: the checkpoint held no writer's record at all (a header is every writer's first
    object, so no run had recorded anything, not even a failure), hence no source was complete.
    """

    config: CheckpointConfig
    fresh: bool


def preflight(
    checkpoint: str | os.PathLike | CheckpointConfig,
    fingerprint: str,
    description: list[dict[str, Any]] | None = None,
    *,
    allow_fingerprint_change: bool = False,
    lease: LeaseSettings | None = None,
    shard: Shard | None = None,
    open_here: Callable[[str], bool] | None = None,
) -> Preflight:
    """Check the location, the cache directory and the pipeline fingerprint without writing any record.

    With ``lease``, also refuse when a live writer may not run beside one with ``shard``
    (``lease.check_no_conflict``; ``open_here(writer_id)`` tells whether a run of this very
    process is still open). Returns a ``Preflight``. Raises ``CheckpointError`` /
    ``FingerprintMismatchError``.
    """
    from nemo_curator.resumability.checkpoint import validate_cache_dir
    from nemo_curator.resumability.workflow import check_not_a_workflow

    config = coerce_checkpoint(checkpoint)
    check_ledger_modules(config.display)
    location = open_location(config, writable=True)
    validate_cache_dir(config.resolved_cache_dir(), config)
    try:
        check_not_a_workflow(location, config.display)
        # Headers and closed marks only: the ledger actor reads (and folds) the whole record.
        writers = read_writers(location)
    except CheckpointError:
        raise
    except Exception as exc:
        raise describe_access_error(config, exc, "reading the checkpoint") from exc
    if lease is not None:
        try:
            check_no_conflict(
                location,
                writers.closed,
                shard=shard,
                lease_s=lease.lease_s,
                open_here=open_here or (lambda _writer: True),
            )
        except CheckpointError:
            raise
        except Exception as exc:
            raise describe_access_error(config, exc, "reading the other runs' heartbeats") from exc
    check_fingerprint(config.display, writers.headers.values(), fingerprint, description, allow_fingerprint_change)
    return Preflight(config, fresh=not writers.headers)
