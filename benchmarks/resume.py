"""Resume efficiency on workload B1: SIGKILL a checkpointed run's process tree mid-run, resume, count redo.

Per executor, with ``T`` the time of a full checkpointed run on the benchmark's (warm) Ray (the
overhead section's median, or one run here), and for each kill point ``f``:

1. a subprocess (``python -m benchmarks.resume --child SPEC``) starts its own local Ray, makes
   an untimed warm-up run (so that it is as warm as the benchmark's Ray), writes a *ready* file
   and runs B1 with a fresh checkpoint; its sink appends every write attempt to an attempt log;
2. ``f * T`` after *ready* (``kill_by="time"``, the issue's definition) or once ``f`` of the
   run's output files exist (``kill_by="outputs"``), the child's whole process tree is frozen
   (SIGSTOP, repeated until no new process appears) and SIGKILLed: driver, Ray's daemons,
   workers and the ledger actor die at once, as in a machine or scheduler kill;
3. the outputs on disk, the attempt counts and the checkpoint's completed sources are snapshot;
4. the same pipeline is resumed in this process, on the benchmark's Ray, and timed;
5. *redone* outputs are those on disk at the kill that got a new write attempt during the
   resume; ``redo_fraction = redone / outputs on disk at the kill``. An output whose source was
   already complete in the checkpoint must never be redone (counted separately: should be 0).

After every resume the output must be complete: ``2 * sources`` files and every source complete.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from loguru import logger

from benchmarks.overhead import B1Settings, counting_executor
from benchmarks.workloads import (
    OUTPUTS_PER_SOURCE,
    B1Config,
    b1_pipeline,
    read_attempts,
    written_outputs,
)
from nemo_curator.backends.registry import make_executor
from nemo_curator.utils.processes import kill_process_tree

REPO = Path(__file__).resolve().parents[1]
#: How long a child may take to start its Ray (and make its warm-up run) before it reaches the pipeline.
READY_TIMEOUT_S = 600.0
#: Kill points are fractions of ``T`` (the issue's definition) or of the run's output files.
KILL_MODES = ("time", "outputs")


@dataclass
class KillPoint:
    """One kill-and-resume measurement."""

    kill_by: str
    kill_fraction: float
    kill_after_s: float
    finished_before_kill: bool
    outputs_before: int
    progress_at_kill: float
    completed_sources_before: int
    redone: int
    redone_of_completed_sources: int
    redo_fraction: float
    resume_s: float
    resume_relative: float
    total_relative: float
    resume_ledger_open_s: float


def _child_env() -> dict[str, str]:
    """The child's environment: no ``RAY_ADDRESS`` (it starts its own Ray), the repository importable."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


def _tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


@dataclass
class ChildRun:
    """One B1 run in a subprocess with its own Ray; ``ready`` appears just before ``pipeline.run``."""

    executor: str
    cfg: B1Config
    checkpoint: str
    work_dir: Path
    tag: str
    num_cpus: int
    executor_config: dict[str, Any]
    warmup_sources: int = 0

    def __post_init__(self) -> None:
        self.ready = self.work_dir / f"{self.tag}.ready"
        self.result = self.work_dir / f"{self.tag}.result.json"
        self.log = self.work_dir / f"{self.tag}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> ChildRun:
        spec = {
            "executor": self.executor,
            "cfg": self.cfg.to_dict(),
            "checkpoint": self.checkpoint,
            "ready_file": str(self.ready),
            "result_file": str(self.result),
            "num_cpus": self.num_cpus,
            "executor_config": self.executor_config,
            "warmup_sources": self.warmup_sources,
        }
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "benchmarks.resume", "--child", json.dumps(spec)],
                cwd=REPO,
                env=_child_env(),
                start_new_session=True,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    def _check_alive(self, what: str) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None and not self.result.exists():
            raise RuntimeError(f"B1 child {self.tag} exited (rc={self.proc.returncode}) {what}:\n{_tail(self.log)}")

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> float:
        """Block until the child is about to call ``pipeline.run``; returns ``time.monotonic()`` then."""
        deadline = time.monotonic() + timeout_s
        while not self.ready.exists():
            self._check_alive("before starting its run")
            if time.monotonic() > deadline:
                raise RuntimeError(f"B1 child {self.tag} did not start within {timeout_s:.0f}s:\n{_tail(self.log)}")
            time.sleep(0.01)
        return time.monotonic()

    def kill_when(self, due: Any) -> tuple[float, bool]:
        """Kill the whole tree once ``due(seconds since ready)`` is true.

        Returns (seconds since *ready* at the kill, whether the run finished first).
        """
        assert self.proc is not None
        finished = False
        try:
            started = self.wait_ready()
            while not due(time.monotonic() - started):
                if self.proc.poll() is not None:
                    finished = True
                    break
                time.sleep(0.005)
            elapsed = time.monotonic() - started
        finally:
            killed = kill_process_tree(self.proc.pid)
            self.proc.wait(timeout=60)
        logger.debug("B1 child {}: {} process(es) killed after {:.2f}s", self.tag, killed, elapsed)
        if finished and not self.result.exists():
            raise RuntimeError(f"B1 child {self.tag} failed (rc={self.proc.returncode}):\n{_tail(self.log)}")
        return elapsed, finished


def _b1_config(work_dir: Path, sources: int, settings: B1Settings) -> B1Config:
    return B1Config(
        sources=sources,
        out_dir=str(work_dir / "out"),
        attempts_dir=str(work_dir / "attempts"),
        work_ms=settings.work_ms,
        fsync=settings.fsync,
        batch_size=settings.batch_size,
    )


def _check_complete(executor_name: str, cfg: B1Config, checkpoint: str) -> None:
    from nemo_curator.resumability.inspect import checkpoint_status

    outputs = written_outputs(cfg.out_dir)
    status = checkpoint_status(checkpoint, include_ids=False)
    expected = OUTPUTS_PER_SOURCE * cfg.sources
    if len(outputs) != expected or status.get("completed_sources") != cfg.sources:
        raise RuntimeError(
            f"{executor_name}: {len(outputs)} outputs and {status.get('completed_sources')} complete sources "
            f"after the run; expected {expected} and {cfg.sources}"
        )


@dataclass
class ResumeSettings:
    """How the resume section runs: kill points and their meaning(s), the killed children's Ray and warm-up."""

    fractions: list[float]
    kill_by: tuple[str, ...] = ("time",)
    num_cpus: int = 4
    warmup_sources: int = 0
    #: ``T`` from elsewhere (e.g. the overhead section's in-process median); ``None``: a full run here.
    full_run_s: float | None = None

    def __post_init__(self) -> None:
        if not self.kill_by or any(mode not in KILL_MODES for mode in self.kill_by):
            raise ValueError(f"kill_by must name some of {KILL_MODES}, got {self.kill_by!r}")
        if any(not 0.0 < f < 1.0 for f in self.fractions):
            raise ValueError(f"kill points must be fractions strictly between 0 and 1, got {self.fractions}")


def _fresh(work_dir: Path) -> Path:
    if work_dir.exists():
        shutil.rmtree(work_dir)
    work_dir.mkdir(parents=True)
    return work_dir


def kill_and_resume(
    executor_name: str,
    sources: int,
    full_s: float,
    fraction: float,
    kill_by: str,
    work_dir: Path,
    settings: B1Settings,
    resume: ResumeSettings,
) -> KillPoint:
    """One kill point (see the module docstring); ``work_dir`` is created fresh and removed afterwards."""
    from nemo_curator.resumability.inspect import checkpoint_status

    cfg = _b1_config(_fresh(work_dir), sources, settings)
    checkpoint = str(work_dir / "ckpt")
    config = settings.executor_config.get(executor_name) or {}
    child = ChildRun(executor_name, cfg, checkpoint, work_dir, "killed", resume.num_cpus, config, resume.warmup_sources)
    child.start()
    if kill_by == "time":
        elapsed, finished = child.kill_when(lambda seconds: seconds >= fraction * full_s)
    else:
        wanted = fraction * OUTPUTS_PER_SOURCE * sources
        elapsed, finished = child.kill_when(lambda _: len(written_outputs(cfg.out_dir)) >= wanted)

    outputs_before = written_outputs(cfg.out_dir)
    attempts_before = read_attempts(cfg.attempts_dir or "")
    status = checkpoint_status(checkpoint, include_ids=True)
    completed_before = set(status.get("completed", []))

    executor, stats = counting_executor(executor_name, checkpoint, config)
    pipeline = b1_pipeline(cfg)
    start = time.perf_counter()
    pipeline.run(executor)
    resume_s = time.perf_counter() - start
    _check_complete(executor_name, cfg, checkpoint)

    new_attempts: Counter[str] = read_attempts(cfg.attempts_dir or "") - attempts_before
    redone = {tid for tid in new_attempts if tid in outputs_before}
    redone_of_completed = {tid for tid in redone if tid.split("_", 1)[0] in completed_before}
    shutil.rmtree(work_dir, ignore_errors=True)
    point = KillPoint(
        kill_by=kill_by,
        kill_fraction=fraction,
        kill_after_s=elapsed,
        finished_before_kill=finished,
        outputs_before=len(outputs_before),
        progress_at_kill=len(outputs_before) / (OUTPUTS_PER_SOURCE * sources),
        completed_sources_before=len(completed_before),
        redone=len(redone),
        redone_of_completed_sources=len(redone_of_completed),
        redo_fraction=len(redone) / len(outputs_before) if outputs_before else 0.0,
        resume_s=resume_s,
        resume_relative=resume_s / full_s,
        total_relative=(elapsed + resume_s) / full_s,
        resume_ledger_open_s=stats.open_s,
    )
    logger.info(
        "resume {} kill at {:.0%} {} ({:.2f}s after start): {} outputs on disk ({} sources complete), "
        "{} redone ({:.2%}); resume {:.2f}s = {:.2f} T",
        executor_name,
        fraction,
        "of T" if kill_by == "time" else "of the outputs",
        elapsed,
        point.outputs_before,
        point.completed_sources_before,
        point.redone,
        point.redo_fraction,
        resume_s,
        point.resume_relative,
    )
    return point


def measure_resume(
    executor_name: str, sources: int, work_root: Path, settings: B1Settings, resume: ResumeSettings
) -> dict[str, Any]:
    """``T`` and all kill points for one executor; ``redo_fraction`` pools the points."""
    from benchmarks.overhead import timed_run

    full_s = resume.full_run_s
    if full_s is None:
        full_s = timed_run(executor_name, sources, True, work_root / f"{executor_name}-resume-T", settings, 0).seconds
    points = [
        kill_and_resume(
            executor_name,
            sources,
            full_s,
            f,
            mode,
            work_root / f"{executor_name}-resume-{mode}-{round(f * 100)}",
            settings,
            resume,
        )
        for mode in resume.kill_by
        for f in resume.fractions
    ]
    before = sum(p.outputs_before for p in points)
    redone = sum(p.redone for p in points)
    return {
        "sources": sources,
        "full_run_s": full_s,
        "full_run_from": "measured here" if resume.full_run_s is None else "overhead section (median with checkpoint)",
        "kill_by": list(resume.kill_by),
        "child_warmup_sources": resume.warmup_sources,
        "redo_fraction": redone / before if before else 0.0,
        "max_redo_fraction": max((p.redo_fraction for p in points), default=0.0),
        "redone_of_completed_sources": sum(p.redone_of_completed_sources for p in points),
        "points": [asdict(p) for p in points],
    }


# -- the child ------------------------------------------------------------------------------


def child_main(spec: dict[str, Any]) -> None:
    """Start a local Ray, signal readiness, run B1 with a checkpoint, write the result file."""
    from nemo_curator.backends.ray_runtime import start_local_ray

    executor_name = spec["executor"]
    if executor_name == "xenna":
        import cosmos_xenna.pipelines.v1  # noqa: F401 - imported before the clock starts
    elif executor_name == "ray_data":
        import ray.data
    start_local_ray(num_cpus=int(spec["num_cpus"]), dashboard=True)
    cfg = B1Config.from_dict(spec["cfg"])
    warmup = int(spec.get("warmup_sources") or 0)
    if warmup:
        # An untimed run first, so that the timed one meets a warm Ray (worker processes
        # started, modules imported), as the benchmark's own in-process runs do.
        scratch = Path(spec["ready_file"]).with_suffix(".warmup")
        warm_cfg = B1Config(sources=warmup, out_dir=str(scratch), work_ms=cfg.work_ms, batch_size=cfg.batch_size)
        b1_pipeline(warm_cfg).run(make_executor(executor_name, checkpoint=None, config=spec.get("executor_config")))
        shutil.rmtree(scratch, ignore_errors=True)
    pipeline = b1_pipeline(cfg)
    executor, stats = counting_executor(executor_name, spec["checkpoint"], spec.get("executor_config"))
    Path(spec["ready_file"]).write_text(str(time.time()))
    start = time.perf_counter()
    outputs = pipeline.run(executor)
    seconds = time.perf_counter() - start
    result = Path(spec["result_file"])
    tmp = result.with_name(result.name + ".tmp")
    tmp.write_text(json.dumps({"outputs": len(outputs), "seconds": seconds, "tracker": asdict(stats)}))
    os.replace(tmp, result)
    import ray

    ray.shutdown()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        # Run through the importable module, so that stage classes are ``benchmarks.workloads.X``.
        from benchmarks import resume as importable

        importable.child_main(json.loads(sys.argv[2]))
    else:
        sys.exit("usage: python -m benchmarks.resume --child '<json spec>' (used by python -m benchmarks)")
