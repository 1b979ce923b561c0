"""Preemption: what a run does when SLURM, Kubernetes or a person asks the driver to stop.

On one of the configured signals (default ``SIGTERM`` and ``SIGINT``) received by the driver
while ``executor.execute`` runs:

1. *Draining* (checkpointed runs only): the run goes on for up to ``preemption_grace_s``
   seconds, so that work in flight can finish; every output that reaches the driver in that
   time is reported as usual. A second signal, or the end of the grace period, stops it.
   Without a checkpoint nothing would record that work, so the run stops at once.
2. *Stopping*: the executor's result loop is interrupted (its workers are released as after
   any failure), the tracker sends every report it holds and waits up to
   ``preemption_flush_s`` seconds for the ledger to acknowledge them, the ledger is closed and
   a Ray started for the run is shut down. Further signals are ignored (the flush is bounded).
3. ``execute`` (and so ``pipeline.run``) raises ``PreemptedError``, a ``SystemExit`` whose
   ``code`` is 128 + the signal number (143 for SIGTERM, 130 for SIGINT, 138 for SIGUSR1).
   Uncaught, the interpreter exits with that code and prints no traceback.

Reports are never invented: a source counts as complete only from acknowledged reports of
outputs the sink wrote, so a stop at any moment can only make work be redone.

Signal handlers can only be installed from the main thread; a run started on another thread
logs a warning and runs without them. The previous handlers are restored when the run ends.
A Python signal handler runs between bytecodes of the main thread, so this module never logs
from one (loguru's lock may be held by the code it interrupted): a watcher thread does.

Nothing here imports ``nemo_curator.resumability``.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from loguru import logger

#: Config keys read here (accepted by every executor).
PREEMPTION_CONFIG_KEYS = frozenset({"preemption_grace_s", "preemption_flush_s", "preemption_signals"})

DEFAULT_GRACE_S = 30.0
DEFAULT_FLUSH_S = 10.0
DEFAULT_SIGNALS = ("SIGTERM", "SIGINT")

#: Signals a process cannot catch.
_UNCATCHABLE = frozenset({signal.SIGKILL, signal.SIGSTOP})


class PreemptedError(SystemExit):
    """A run stopped by a preemption signal (raised out of ``execute`` / ``pipeline.run``).

    ``code`` is ``128 + signum``; ``finished`` tells whether all the run's work had completed
    during the grace period anyway. A ``SystemExit``: ``except Exception`` does not catch it,
    and uncaught it ends the process with ``code`` and no traceback. Rerun the same command
    (requeue the job) to resume from the checkpoint.
    """

    def __init__(self, signum: int, *, finished: bool = False, checkpoint: str | None = None) -> None:
        super().__init__(128 + signum)
        self.signum = signum
        self.signal_name = signal_name(signum)
        self.finished = finished
        self.checkpoint = checkpoint

    def __str__(self) -> str:
        what = "the run had finished its work" if self.finished else "the run stopped before finishing"
        where = (
            f"; rerun the same command to resume from checkpoint {self.checkpoint}"
            if self.checkpoint
            else "; without a checkpoint a rerun starts from the beginning"
        )
        return f"preempted by {self.signal_name} (exit code {self.code}): {what}{where}"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_preempted, (self.signum, self.finished, self.checkpoint))


def _rebuild_preempted(signum: int, finished: bool, checkpoint: str | None) -> PreemptedError:
    return PreemptedError(signum, finished=finished, checkpoint=checkpoint)


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def parse_signals(value: Any) -> tuple[int, ...]:
    """Signal numbers from names (``"SIGTERM"``, ``"TERM"``, ``"USR1"``), numbers, or a comma list.

    Raises ``ValueError`` for an unknown signal or one that cannot be caught (SIGKILL, SIGSTOP).
    """
    items: Iterable[Any]
    if isinstance(value, str):
        items = [part for part in (p.strip() for p in value.split(",")) if part]
    elif isinstance(value, int | signal.Signals):
        items = [value]
    else:
        items = list(value)
    out: list[int] = []
    for item in items:
        if isinstance(item, int | signal.Signals):
            try:
                sig = signal.Signals(int(item))
            except ValueError:
                raise ValueError(f"preemption_signals: {item!r} is not a signal number") from None
        elif isinstance(item, str):
            name = item.strip().upper()
            name = name if name.startswith("SIG") else "SIG" + name
            try:
                sig = signal.Signals[name]
            except KeyError:
                raise ValueError(f"preemption_signals: unknown signal {item!r} (e.g. 'SIGTERM', 'SIGUSR1')") from None
        else:
            raise ValueError(f"preemption_signals: {item!r} is neither a signal name nor a number")
        if sig in _UNCATCHABLE:
            raise ValueError(f"preemption_signals: {sig.name} cannot be caught by a process")
        if int(sig) not in out:
            out.append(int(sig))
    return tuple(out)


@dataclass(frozen=True)
class PreemptionSettings:
    """``preemption_grace_s``, ``preemption_flush_s`` and ``preemption_signals``; valid once made.

    ``signals`` empty: no handler is installed (signals act as they would without us).
    """

    grace_s: float = DEFAULT_GRACE_S
    flush_s: float = DEFAULT_FLUSH_S
    signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)

    def __post_init__(self) -> None:
        for key, value in (("preemption_grace_s", self.grace_s), ("preemption_flush_s", self.flush_s)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
                raise ValueError(f"{key} must be a number of seconds >= 0, got {value!r}")

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> PreemptionSettings:
        return cls(
            grace_s=config.get("preemption_grace_s", DEFAULT_GRACE_S),
            flush_s=config.get("preemption_flush_s", DEFAULT_FLUSH_S),
            signals=parse_signals(config.get("preemption_signals", DEFAULT_SIGNALS)),
        )


# -- the state machine (pure) ------------------------------------------------------------------


class Phase(Enum):
    RUNNING = "running"  # no signal yet
    DRAINING = "draining"  # signalled; the run goes on until the grace period ends
    STOPPING = "stopping"  # the run is being stopped; reports are flushed, Ray shut down
    CLOSED = "closed"  # the run is over; handlers are being restored


@dataclass(frozen=True)
class Step:
    """What a signal does in a phase: the next phase, and whether to interrupt the run now."""

    phase: Phase
    interrupt: bool


def on_signal(phase: Phase, *, may_drain: bool) -> Step:
    """The transition for one signal (or the end of the grace period, which acts as one).

    ``may_drain`` is true for a checkpointed run with a grace period above zero. A run is
    interrupted at most once: in STOPPING and CLOSED further signals change nothing.
    """
    if phase is Phase.RUNNING:
        return Step(Phase.DRAINING, interrupt=False) if may_drain else Step(Phase.STOPPING, interrupt=True)
    if phase is Phase.DRAINING:
        return Step(Phase.STOPPING, interrupt=True)
    return Step(phase, interrupt=False)


# -- the imperative shell ------------------------------------------------------------------------


class PreemptionGuard:
    """The signal handlers of one run. ``install`` after Ray is up (``ray.init`` replaces the
    SIGTERM handler), ``stopping`` once the run's loop has ended, ``uninstall`` at the very end.

    Invariants: the handler only raises while the run's loop is running (phases RUNNING and
    DRAINING), and at most once; it never logs or blocks; ``uninstall`` restores exactly the
    handlers ``install`` replaced.
    """

    def __init__(self, settings: PreemptionSettings, *, checkpoint: str | None) -> None:
        self.settings = settings
        self.checkpoint = checkpoint
        self.may_drain = checkpoint is not None and settings.grace_s > 0
        self.phase = Phase.RUNNING
        #: The first signal received (``None``: not preempted).
        self.signum: int | None = None
        self.signalled_at: float | None = None
        self.ignored = 0
        self._previous: dict[int, Any] = {}
        self._main = threading.main_thread().ident
        self._signalled = threading.Event()
        self._cancelled = threading.Event()
        self._lock = threading.Lock()
        self._deadline_passed = False
        self._watcher: threading.Thread | None = None

    @property
    def preempted(self) -> bool:
        return self.signum is not None

    @property
    def installed(self) -> bool:
        return bool(self._previous)

    def install(self) -> None:
        """Install the handlers (main thread only; elsewhere a warning and nothing else)."""
        if not self.settings.signals or self.installed:
            return
        if threading.current_thread() is not threading.main_thread():
            logger.warning(
                "the run was started outside the main thread, where signal handlers cannot be installed: "
                "{} will not stop it gracefully (reports it holds may be lost and redone next run)",
                "/".join(signal_name(s) for s in self.settings.signals),
            )
            return
        for signum in self.settings.signals:
            self._previous[signum] = signal.signal(signum, self._handle)
        if self.may_drain:
            self._watcher = threading.Thread(target=self._watch, name="preemption-deadline", daemon=True)
            self._watcher.start()

    def stopping(self) -> None:
        """The run's loop has ended: from now on signals are ignored (the flush is bounded)."""
        with self._lock:  # after this, the watcher sends no deadline signal
            if self.phase is not Phase.CLOSED:
                self.phase = Phase.STOPPING

    def uninstall(self) -> None:
        """Restore the previous handlers and stop the watcher. Idempotent."""
        self.phase = Phase.CLOSED
        with self._lock:
            self._cancelled.set()
        self._signalled.set()  # wakes an idle watcher, which then sees the cancellation
        if self._watcher is not None:
            self._watcher.join()
            self._watcher = None
        for signum, previous in self._previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()
        if self.ignored:
            logger.info("ignored {} further signal(s) while the run was stopping", self.ignored)

    def adopt(self, exc: BaseException) -> bool:
        """Take a ``SystemExit(SIGTERM)`` from Ray's own handler as our SIGTERM (whether it was).

        ``ray.init`` called again on the main thread (cosmos-xenna's streaming mode does)
        replaces the SIGTERM handler with one that calls ``sys.exit(15)``. Such an exit is the
        signal we would have handled, without the grace period.
        """
        if self.preempted or not self.installed or signal.SIGTERM not in self.settings.signals:
            return False
        if not isinstance(exc, SystemExit) or exc.code != int(signal.SIGTERM):
            return False
        if signal.getsignal(signal.SIGTERM) == self._handle:
            return False
        self.signum = int(signal.SIGTERM)
        self.signalled_at = time.monotonic()
        self.phase = Phase.STOPPING
        return True

    def describe_stop(self) -> str:
        """Why the run's loop was interrupted (for the log)."""
        name = signal_name(self.signum) if self.signum is not None else "a signal"
        if not self.may_drain:
            saved = "saving the checkpoint" if self.checkpoint else "no checkpoint to save"
            return f"received {name}: stopping now ({saved})"
        if self._deadline_passed:
            grace = self.settings.grace_s
            return f"the grace period of {grace:g} s after {name} ended: stopping and saving the checkpoint"
        return f"signalled again after {name}: stopping now and saving the checkpoint"

    def seconds_since_signal(self) -> float:
        return time.monotonic() - self.signalled_at if self.signalled_at is not None else 0.0

    def error(self, *, finished: bool) -> PreemptedError:
        assert self.signum is not None
        return PreemptedError(self.signum, finished=finished, checkpoint=self.checkpoint)

    # -- in the main thread, between bytecodes ---------------------------------------------

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is None:
            self.signum = signum
            self.signalled_at = time.monotonic()
        step = on_signal(self.phase, may_drain=self.may_drain)
        if step.phase is self.phase and not step.interrupt:
            self.ignored += 1
            return
        self.phase = step.phase
        self._signalled.set()
        if step.interrupt:
            raise PreemptedError(self.signum, checkpoint=self.checkpoint)

    # -- the watcher thread -------------------------------------------------------------------

    def _watch(self) -> None:
        """Log the signal, then interrupt the main thread when the grace period ends."""
        self._signalled.wait()
        if self._cancelled.is_set() or self.signum is None:
            return
        if self.phase is Phase.DRAINING:
            logger.warning(
                "received {}: letting work in flight finish for up to {:g} s, then stopping and saving the "
                "checkpoint (send it again to stop now)",
                signal_name(self.signum),
                self.settings.grace_s,
            )
        if self._cancelled.wait(self.settings.grace_s):
            return
        with self._lock:
            if self._cancelled.is_set() or self.phase is not Phase.DRAINING:
                return
            self._deadline_passed = True
            # A real signal to the main thread (not ``_thread.interrupt_main``): it also ends a
            # blocking wait there. Our handler takes it as the end of the grace period.
            signal.pthread_kill(self._main, self.signum)  # type: ignore[arg-type]

    @property
    def deadline_passed(self) -> bool:
        return self._deadline_passed
