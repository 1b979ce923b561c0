"""Preemption signals: the settings, the phases, the guard with real signals, and a run without a checkpoint.

The checkpointed case (grace period, flush, resume) is the end-to-end test in
``tests/e2e/test_preemption.py``.
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import pytest

from nemo_curator.backends.preemption import (
    Phase,
    PreemptedError,
    PreemptionGuard,
    PreemptionSettings,
    on_signal,
    parse_signals,
)
from nemo_curator.backends.registry import EXECUTORS, make_executor
from nemo_curator.pipeline import Pipeline
from tests.stages import EmitNumbers, NumberStage, NumberTask

# -- settings -----------------------------------------------------------------------------------


def test_signals_are_parsed_from_names_numbers_and_comma_lists() -> None:
    assert parse_signals(["SIGTERM", "usr1", 2]) == (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
    assert parse_signals("TERM, SIGUSR1,TERM") == (signal.SIGTERM, signal.SIGUSR1)
    assert parse_signals([]) == ()


@pytest.mark.parametrize("bad", [["SIGKILL"], ["SIGNOPE"], [9999], "STOP", [1.5]])
def test_unusable_signals_are_refused(bad: Any) -> None:
    with pytest.raises(ValueError, match="preemption_signals"):
        parse_signals(bad)


@pytest.mark.parametrize("name", list(EXECUTORS))
def test_every_executor_takes_the_preemption_keys_and_checks_them(name: str) -> None:
    executor = make_executor(
        name, config={"preemption_grace_s": 5, "preemption_flush_s": 1.5, "preemption_signals": ["SIGUSR1"]}
    )
    assert executor.preemption == PreemptionSettings(grace_s=5, flush_s=1.5, signals=(signal.SIGUSR1,))
    with pytest.raises(ValueError, match="preemption_grace_s"):
        make_executor(name, config={"preemption_grace_s": -1})
    with pytest.raises(ValueError, match="preemption_signals"):
        make_executor(name, config={"preemption_signals": ["SIGKILL"]})


# -- the phases ---------------------------------------------------------------------------------


def test_a_run_is_interrupted_once_and_drains_only_when_it_may() -> None:
    assert on_signal(Phase.RUNNING, may_drain=True) == (step := on_signal(Phase.RUNNING, may_drain=True))
    assert (step.phase, step.interrupt) == (Phase.DRAINING, False)
    step = on_signal(Phase.RUNNING, may_drain=False)
    assert (step.phase, step.interrupt) == (Phase.STOPPING, True)
    step = on_signal(Phase.DRAINING, may_drain=True)
    assert (step.phase, step.interrupt) == (Phase.STOPPING, True)
    for phase in (Phase.STOPPING, Phase.CLOSED):
        step = on_signal(phase, may_drain=True)
        assert (step.phase, step.interrupt) == (phase, False)


def test_preempted_error_is_a_system_exit_with_the_conventional_code() -> None:
    error = PreemptedError(signal.SIGTERM, finished=True, checkpoint="ckpt/")
    assert isinstance(error, SystemExit) and not isinstance(error, Exception)
    assert error.code == 143 and error.signal_name == "SIGTERM"
    assert "SIGTERM" in str(error) and "ckpt/" in str(error)
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.code, copy.finished, copy.checkpoint) == (143, True, "ckpt/")


def test_an_uncaught_preempted_error_exits_with_its_code_and_no_traceback() -> None:
    code = "from nemo_curator.backends.preemption import PreemptedError; raise PreemptedError(10)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 128 + signal.SIGUSR1
    assert "Traceback" not in done.stderr


# -- the guard, with real signals --------------------------------------------------------------


def _guard(grace_s: float, checkpoint: str | None = "ckpt") -> PreemptionGuard:
    return PreemptionGuard(PreemptionSettings(grace_s=grace_s, signals=(signal.SIGUSR1,)), checkpoint=checkpoint)


def _sleep_until_interrupted(seconds: float) -> float:
    """Sleep in the main thread; return after how long the guard interrupted it."""
    start = time.monotonic()
    with pytest.raises(PreemptedError):
        time.sleep(seconds)
    return time.monotonic() - start


def test_without_a_checkpoint_the_first_signal_stops_the_run_and_handlers_are_restored() -> None:
    before = signal.getsignal(signal.SIGUSR1)
    guard = _guard(grace_s=30, checkpoint=None)
    guard.install()
    try:
        threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGUSR1)).start()
        assert _sleep_until_interrupted(10) < 5
        assert guard.signum == signal.SIGUSR1 and guard.phase is Phase.STOPPING
        guard.stopping()
        os.kill(os.getpid(), signal.SIGUSR1)  # while stopping: ignored, nothing raised
        time.sleep(0.1)
        assert guard.ignored == 1
    finally:
        guard.uninstall()
    assert signal.getsignal(signal.SIGUSR1) is before


def test_with_a_checkpoint_the_run_goes_on_for_the_grace_period_then_is_interrupted() -> None:
    guard = _guard(grace_s=1.0)
    guard.install()
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.1)
        assert guard.phase is Phase.DRAINING  # not interrupted: work in flight may finish
        waited = _sleep_until_interrupted(30)
        assert 0.5 < waited < 5 and guard.deadline_passed
    finally:
        guard.uninstall()


def test_a_second_signal_ends_the_grace_period_at_once() -> None:
    guard = _guard(grace_s=60)
    guard.install()
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.1)
        threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGUSR1)).start()
        assert _sleep_until_interrupted(30) < 5
        assert not guard.deadline_passed
    finally:
        guard.uninstall()


def test_outside_the_main_thread_no_handler_is_installed() -> None:
    before = signal.getsignal(signal.SIGUSR1)
    guard = _guard(grace_s=1)
    thread = threading.Thread(target=guard.install)
    thread.start()
    thread.join()
    assert not guard.installed and signal.getsignal(signal.SIGUSR1) is before
    guard.uninstall()


# -- a run without a checkpoint on real Ray -------------------------------------------------------


@dataclass(kw_only=True)
class SignalDriver(NumberStage):
    """Sends ``signum`` to the driver at the task numbered ``at``, and sleeps per task."""

    driver_pid: int
    signum: int
    at: int = 2
    seconds: float = 0.3
    name: str = "signal_driver"

    def process(self, task: NumberTask) -> NumberTask:
        if task.data == self.at:
            os.kill(self.driver_pid, self.signum)
        time.sleep(self.seconds)
        return task


@pytest.mark.parametrize(
    ("executor", "signum"),
    [("xenna", signal.SIGTERM), ("ray_actor_pool", signal.SIGUSR1)],
)
def test_without_a_checkpoint_a_signal_stops_the_run_at_once(ray_session: Any, executor: str, signum: int) -> None:
    """xenna's streaming mode calls ``ray.init`` on the main thread, which puts Ray's SIGTERM handler back."""
    pipeline = Pipeline(
        name="signalled",
        stages=[EmitNumbers(count=40), SignalDriver(driver_pid=os.getpid(), signum=signum)],
    )
    config: dict[str, Any] = {"preemption_signals": ["SIGTERM", "SIGUSR1"]}
    if executor == "xenna":
        config["num_workers_per_stage"] = 1
    before = signal.getsignal(signum)
    run = make_executor(executor, config=config)
    start = time.monotonic()
    with pytest.raises(PreemptedError) as caught:
        pipeline.run(run)
    assert caught.value.code == 128 + signum and not caught.value.finished
    assert run.last_summary is not None and run.last_summary.extra["preempted"] == signal.Signals(signum).name
    # The signal comes at the third task; the other 37 would take 11 s more on one worker.
    assert time.monotonic() - start < 60
    assert signal.getsignal(signum) is before
