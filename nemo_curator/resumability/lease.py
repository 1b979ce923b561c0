"""Liveness leases: is another run writing to this checkpoint right now? (rule pure, I/O in the shell)

Every running writer keeps a lease at the checkpoint location: its ledger writes a heartbeat
object ``ledger/<writer_id>/beat-<n>-<nonce>.rec`` (``objects.Beat``: the driver's host, pid and
pid start time, and the writer's shard) every ``interval_s`` seconds, each under a new name,
deleting the one before. Its final snapshot marks it closed and its heartbeats are deleted.

A starting run lists the writers and judges each other one (``lease_verdict``):

- closed (its newest snapshot says so), or without a heartbeat: not live;
- its driver ran on this host and that process is gone (pid and pid start time, ``liveness``):
  not live, however fresh its heartbeat (a resume right after a SIGKILL starts at once); a driver
  that is this very process is live only while a ledger handle of it is open here;
- otherwise live iff its newest heartbeat is fresh: ``age = now - mtime(beat) < lease_s``, where
  both times are modification times by the STORE's clock (``Location.modified``) and ``now`` is
  that of an object the starting run has just written itself. No host clock enters the rule, so
  a host whose clock is off can neither keep a dead run alive nor expire a live one. A crashed
  run on another host blocks new runs until its lease expires (``lease_s`` after its last beat).

Two live writers may share a location only with ``shard.compatible`` shards (distinct indexes of
one count); otherwise the starting run is refused before any work with a ``CheckpointError``
naming the other run (host, pid, writer id, heartbeat age) and the fixes.

Races: a starting writer writes its first heartbeat, THEN lists and judges the others (the
driver also judges them before starting its ledger, so the usual refusal comes before any
work). Of two writers that start together at least one sees the other's heartbeat, so at most
one of an incompatible pair proceeds (both may be refused: loud, never silent). A refused writer
deletes its heartbeat and writes nothing else.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from loguru import logger

from nemo_curator.resumability.errors import CheckpointError
from nemo_curator.resumability.liveness import recorded_process_alive
from nemo_curator.resumability.location import PROBE_PREFIX, Location
from nemo_curator.resumability.objects import (
    LEDGER_PREFIX,
    Beat,
    ObjectName,
    decode_beat,
    encode_beat,
    parse_object_path,
)
from nemo_curator.resumability.shard import Shard, compatible

#: Seconds between two heartbeats of a running writer.
HEARTBEAT_S = 10.0
#: A heartbeat older than this (by the store's clock) no longer keeps its writer live.
LEASE_S = 3 * HEARTBEAT_S
#: How often a reader lists a writer's heartbeats again when the newest vanished (rotated) under it.
MAX_BEAT_ATTEMPTS = 5


@dataclass(frozen=True)
class LeaseSettings:
    """How often a writer renews its lease and how long a renewal keeps it live."""

    interval_s: float = HEARTBEAT_S
    lease_s: float = LEASE_S


@dataclass(frozen=True)
class SeenWriter:
    """Another writer as a starting run sees it: its newest heartbeat and that object's store mtime."""

    writer_id: str
    closed: bool
    beat: Beat | None
    beat_mtime: float | None


@dataclass(frozen=True)
class Verdict:
    """Whether a writer is live, why, and its heartbeat's age by the store's clock (seconds)."""

    live: bool
    why: str
    age_s: float | None = None


def lease_verdict(
    *, closed: bool, beat_mtime: float | None, now: float, lease_s: float, owner_alive: bool | None
) -> Verdict:
    """The lease rule (pure). ``now`` and ``beat_mtime`` are store times; ``owner_alive`` is ``None`` off-host."""
    if closed:
        return Verdict(False, "closed")
    if beat_mtime is None:
        return Verdict(False, "no heartbeat")
    age = now - beat_mtime
    if owner_alive is False:
        return Verdict(False, "its driver process on this host is gone", age)
    if age >= lease_s:
        return Verdict(False, "lease expired", age)
    return Verdict(True, "heartbeat fresh" if owner_alive is None else "driver running on this host", age)


# -- the shell: reading leases -------------------------------------------------------------


def store_now(location: Location) -> float:
    """The store's clock now: the modification time of a probe object written and deleted here."""
    path = f"{PROBE_PREFIX}/lease-{uuid.uuid4().hex}"
    location.write_once(path, b"nemo_curator lease probe")
    try:
        return location.modified(path)
    finally:
        location.delete([path])


def _beats_by_writer(location: Location) -> dict[str, list[ObjectName]]:
    out: dict[str, list[ObjectName]] = {}
    for path in location.list(LEDGER_PREFIX):
        name = parse_object_path(path)
        if name is not None and name.kind == "beat":
            out.setdefault(name.writer_id, []).append(name)
    return out


def _newest_beat(location: Location, writer_id: str, beats: list[ObjectName]) -> tuple[Beat | None, float | None]:
    """The newest heartbeat of ``writer_id`` (by store mtime) and its mtime; lists again when they vanish."""
    for _ in range(MAX_BEAT_ATTEMPTS):
        try:
            stamped = [(location.modified(b.path), b) for b in beats]
            mtime, newest = max(stamped, key=lambda x: (x[0], x[1].number))
            return decode_beat(location.read(newest.path), f"{location.display}/{newest.path}"), mtime
        except FileNotFoundError:
            beats = [
                n
                for p in location.list(f"{LEDGER_PREFIX}/{writer_id}")
                if (n := parse_object_path(p)) is not None and n.kind == "beat"
            ]
            if not beats:
                return None, None
    raise CheckpointError(
        f"checkpoint {location.display}: the heartbeats of run {writer_id} kept vanishing while being read. "
        "Fix: retry; if it persists, check that no tool deletes objects there"
    )


def observe(location: Location, closed: dict[str, bool], *, exclude: str | None = None) -> list[SeenWriter]:
    """Every writer with a heartbeat at ``location`` (but ``exclude``); ``closed`` maps writers to their closed flag."""
    seen = []
    for writer_id, beats in sorted(_beats_by_writer(location).items()):
        if writer_id == exclude:
            continue
        if closed.get(writer_id, False):
            seen.append(SeenWriter(writer_id, True, None, None))
            continue
        beat, mtime = _newest_beat(location, writer_id, beats)
        seen.append(SeenWriter(writer_id, False, beat, mtime))
    return seen


def owner_alive_here(owner: dict[str, Any], open_here: Callable[[str], bool]) -> bool | None:
    """``liveness`` of a beat's driver record; in this very process, whether a handle of it is open."""
    alive = recorded_process_alive(owner)
    if alive and int(owner.get("pid", -1)) == os.getpid():
        return open_here(str(owner.get("writer_id", "")))
    return alive


@dataclass(frozen=True)
class LiveWriter:
    """A writer judged live, with what the refusal message says about it."""

    seen: SeenWriter
    verdict: Verdict

    @property
    def shard(self) -> Shard | None:
        return Shard.from_list(self.seen.beat.shard if self.seen.beat else None)

    def describe(self) -> str:
        owner = self.seen.beat.owner if self.seen.beat else {}
        age = self.verdict.age_s
        shard = self.shard
        return (
            f"run {self.seen.writer_id} (pid {owner.get('pid')} on {owner.get('host')}, "
            f"heartbeat {max(age or 0.0, 0.0):.0f} s ago{', ' + str(shard) if shard else ', not sharded'})"
        )


def live_writers(
    seen: list[SeenWriter], *, now: float, lease_s: float, open_here: Callable[[str], bool]
) -> list[LiveWriter]:
    """The live ones among ``seen`` (``lease_verdict``)."""
    out = []
    for writer in seen:
        owner = writer.beat.owner if writer.beat else {}
        alive = owner_alive_here(owner, open_here) if owner else None
        # A writer that renews less often than we assume keeps three of its own intervals.
        lease = max(lease_s, 3 * writer.beat.interval_s) if writer.beat else lease_s
        verdict = lease_verdict(
            closed=writer.closed, beat_mtime=writer.beat_mtime, now=now, lease_s=lease, owner_alive=alive
        )
        if verdict.live:
            out.append(LiveWriter(writer, verdict))
    return out


def conflicts(live: list[LiveWriter], shard: Shard | None) -> list[LiveWriter]:
    """The live writers a run with ``shard`` may not run beside."""
    return [w for w in live if not compatible(shard, w.shard)]


def refusal(display: str, blocking: list[LiveWriter], shard: Shard | None, lease_s: float) -> CheckpointError:
    """The ``CheckpointError`` of a run refused because of ``blocking`` live writers."""
    here = socket.gethostname()
    lines = [
        f"checkpoint {display} is in use by another run: "
        + "; ".join(w.describe() for w in blocking)
        + f". This run ({shard or 'not sharded'}) was refused before doing any work."
    ]
    remote = [w for w in blocking if (w.seen.beat.owner if w.seen.beat else {}).get("host") != here]
    for w in remote:
        left = max(lease_s - (w.verdict.age_s or 0.0), 0.0)
        lines.append(
            f"  run {w.seen.writer_id} runs on another host: if it crashed, its lease expires in {left:.0f} s "
            f"(it renews it every few seconds while it runs; a lease lasts {lease_s:.0f} s)."
        )
    lines.append(
        "Fix: wait for that run to finish (or stop it), or use another checkpoint location; to run several "
        "writers side by side, give each a distinct shard of the same count: executor config "
        'shard=(index, count), or shard="slurm" in a SLURM job array'
    )
    return CheckpointError("\n".join(lines))


def check_no_conflict(
    location: Location,
    closed: dict[str, bool],
    *,
    shard: Shard | None,
    lease_s: float,
    open_here: Callable[[str], bool],
    me: str | None = None,
    now: float | None = None,
) -> None:
    """Raise the ``refusal`` when a live writer (other than ``me``) may not run beside a run with ``shard``.

    ``now`` is the store time of an object the caller has just written (default: a new probe).
    """
    seen = observe(location, closed, exclude=me)
    if not seen:
        return
    if now is None:
        now = store_now(location)
    blocking = conflicts(live_writers(seen, now=now, lease_s=lease_s, open_here=open_here), shard)
    if blocking:
        raise refusal(location.display, blocking, shard, lease_s)


# -- the shell: writing a lease ------------------------------------------------------------


class Heartbeat:
    """Renews one writer's lease: a new beat object every ``interval_s`` seconds, the previous one deleted.

    ``beat_now()`` writes one synchronously (returns its store mtime); ``start()`` renews on a
    daemon thread until ``stop()``. A failed write is logged and retried at the next beat (the
    lease lapses only if the store stays unwritable for ``lease_s``). Thread-safe.
    """

    def __init__(self, location: Location, beat: Beat, settings: LeaseSettings) -> None:
        self.location = location
        self.beat = beat
        self.settings = settings
        self.nonce = uuid.uuid4().hex[:16]
        self._number = 0
        self._current: ObjectName | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def beat_now(self) -> float:
        """Write a new beat, delete the previous one; the new beat's store mtime."""
        with self._lock:
            name = ObjectName(self.beat.writer_id, "beat", self._number, self.nonce)
            self._number += 1
            self.beat.time = time.time()
            self.location.write_once(name.path, encode_beat(self.beat))
            previous, self._current = self._current, name
            if previous is not None:
                self.location.delete([previous.path])
            return self.location.modified(name.path)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="checkpoint-lease", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.settings.interval_s):
            try:
                self.beat_now()
            except Exception as exc:
                logger.warning("checkpoint {}: could not renew this run's lease ({})", self.location.display, exc)

    def stop(self, *, delete: bool) -> None:
        """Stop renewing; with ``delete``, remove every beat of this writer at the location."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
        if not delete:
            return
        with self._lock:
            try:
                paths = [
                    p
                    for p in self.location.list(f"{LEDGER_PREFIX}/{self.beat.writer_id}")
                    if (n := parse_object_path(p)) is not None and n.kind == "beat"
                ]
                self.location.delete(paths)
            except Exception as exc:
                logger.warning("checkpoint {}: could not delete this run's heartbeats ({})", self.location.display, exc)
