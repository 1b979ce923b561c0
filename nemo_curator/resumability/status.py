"""Typed status of a checkpoint's ledger: live (from the store and the actor) and on disk (inspection).

``CheckpointStore.status()`` builds a ``LedgerStatus``; the ledger actor adds its own counters
(``sources_seen``, ``sources_skipped``, ``actor_restarted``, ``actor_pid``) and returns it from
``status()`` and ``close()``; ``report()`` returns a ``LedgerAck``: the status after the batch
was committed plus what that batch did. Ray pickles both across the actor boundary.

``CheckpointStatus`` is what a checkpoint directory records, read without Ray by
``inspect.read_checkpoint_status``; ``inspect.checkpoint_status`` and ``nemo-curator checkpoint
status --json`` give its ``to_dict()``.

Readers use attributes; ``to_dict()`` is the JSON form (one key per field).

Invariants:
- every count is a non-negative int; ``load_seconds`` a non-negative float;
- the value is immutable: a newer status replaces an older one, it is never updated in place;
- ``LedgerStatus.to_dict()`` holds exactly the dataclass fields, each a JSON-serialisable scalar;
  ``CheckpointStatus.to_dict()`` holds its fields, without ``completed`` / ``failed`` when those
  were not read.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nemo_curator.resumability.ledger import LedgerUpdate


@dataclass(frozen=True, slots=True)
class LedgerStatus:
    """Counters of one run's ledger (one writer file of a checkpoint directory).

    ``completed_sources`` counts the sources complete in the whole checkpoint (every writer's
    file); ``failed_sources`` those recorded failed and not complete; ``in_flight_sources`` those
    with partial credit returned in this run. ``reports`` .. ``anomalies`` count what the ledger
    object applied since it was built (a restarted actor starts again at 0). The last four fields
    are filled by the ledger actor; a bare ``CheckpointStore`` leaves their defaults.
    """

    checkpoint: str
    writer_id: str
    fingerprint: str
    completed_sources: int
    completed_this_run: int
    failed_sources: int
    failed_this_run: int
    in_flight_sources: int
    reports: int
    applied: int
    duplicates: int
    ignored: int
    anomalies: int
    commits: int
    load_seconds: float
    other_writers: int
    sources_seen: int = 0
    sources_skipped: int = 0
    actor_restarted: bool = False
    actor_pid: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: one key per field."""
        return asdict(self)


@dataclass(frozen=True, slots=True)
class LedgerAck(LedgerStatus):
    """The actor's answer to one ``report`` call: the status once the batch is committed, and the batch's effect.

    ``duplicate_batch`` is true when the store had already committed this ``(sender, seq)``; the
    batch then changed nothing and the ``newly_*`` / ``batch_anomalies`` counts are 0.
    """

    seq: int = 0
    duplicate_batch: bool = False
    newly_completed: int = 0
    newly_failed: int = 0
    batch_anomalies: int = 0

    @classmethod
    def of(cls, status: LedgerStatus, *, seq: int, update: LedgerUpdate | None) -> LedgerAck:
        """The acknowledgement of batch ``seq``: ``update`` is what it changed, ``None`` for a duplicate batch."""
        base = {f.name: getattr(status, f.name) for f in fields(LedgerStatus)}
        if update is None:
            return cls(**base, seq=seq, duplicate_batch=True)
        return cls(
            **base,
            seq=seq,
            duplicate_batch=False,
            newly_completed=len(update.completed),
            newly_failed=len(update.failed),
            batch_anomalies=len(update.anomalies),
        )


@dataclass(frozen=True, slots=True)
class CheckpointStatus:
    """What a checkpoint directory records, over all its writer files (see ``inspect.checkpoint_status``).

    ``completed_sources`` .. ``revoked_sources`` count sources; ``writers`` holds one summary dict
    per run, oldest first; ``fingerprint`` is the most recent run's; ``created`` / ``updated`` are
    ISO times (``None`` without runs). ``completed`` (sorted ids) and ``failed`` ({id: reason})
    are ``None`` when the ids were not read.
    """

    checkpoint: str
    format_version: int
    fingerprint: str | None
    created: str | None
    updated: str | None
    completed_sources: int
    failed_sources: int
    in_flight_sources: int
    revoked_sources: int
    writers: list[dict[str, Any]]
    completed: list[str] | None = None
    failed: dict[str, str] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: one key per field, ``completed`` and ``failed`` only when they were read."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        for key in ("completed", "failed"):
            if out[key] is None:
                del out[key]
        return out
