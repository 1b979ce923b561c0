"""Upstream NeMo Curator's own workload on this project, side by side with upstream (``--sections upstream``).

The workload is that of ``../shared/peer/overhead_upstream.py`` (issue 13), written against this
project's API (upstream's stage code, plus a marker of the first work; the checkpoint is the
executor's argument here, ``pipeline.run``'s there):

    source   one ``EmptyTask`` -> ``n`` items with content ids ``src0007``
    work     1:1, about 2 ms of pure-Python CPU (``sum(i * i for i in range(25000))``)
    fan-out  1:3, the child ``src % 3`` filtered (a ``None`` inside the returned list)
    sink     one small file per task: ``2 n`` files

Every stage asks for ``Resources(cpus=0.25)`` on xenna (``cpu_allocation_percentage=1.0``) and
0.5 elsewhere. A cluster is started beforehand with ``ray start --head --num-cpus=2`` and every
run joins it through ``RAY_ADDRESS``; each run is a process of its own; only ``pipeline.run`` is
timed; runs without and with a checkpoint alternate (A B / B A / ...).

Each run also reports the machine's CPU seconds while it ran, the driver process's own CPU
seconds (where the tracker, and a fresh checkpoint's ledger, run), and the time from ``pipeline.run``
to the first source processed (the work stage's first call in any worker, read from a marker
file created exclusively): the fixed cost a checkpoint adds before any work starts.

With ``--upstream-serving-control`` each xenna pair gets a third run between its two: ours
without a checkpoint in xenna's SERVING mode (``execution_mode="serving"``), the mode every
checkpointed xenna run uses. It splits xenna's ratio into what the mode costs and what the
checkpoint costs beyond it.

With ``--peer-python PEER/bin/python`` (upstream's environment, see ``../shared/peer/README.md``)
upstream's script runs the same workload in the same session, executor by executor, right after
ours, from a neutral directory, and the report puts both side by side.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loguru import logger

from nemo_curator.pipeline import Pipeline
from nemo_curator.stages.base import ProcessingStage
from nemo_curator.stages.resources import Resources
from nemo_curator.tasks import EmptyTask, Task

REPO = Path(__file__).resolve().parents[1]
PEER_SCRIPT = REPO.parent / "shared" / "peer" / "overhead_upstream.py"
SPIN_K = 25000
OUTPUTS_PER_SOURCE = 2
#: Settings of the workload's executors, as upstream's script sets them.
EXECUTOR_CONFIG: dict[str, dict[str, Any]] = {"xenna": {"cpu_allocation_percentage": 1.0}}
FIRST_WORK_MARKER = "first-work"
#: The driver's settings that a cluster started with ``ray start`` does not see.
_DRIVER_ONLY = ("RAY_ADDRESS", "RAY_MAX_LIMIT_FROM_API_SERVER", "RAY_MAX_LIMIT_FROM_DATA_SOURCE")


# -- the workload (importable by Ray workers as benchmarks.upstream.X) ------------------------------


@dataclass
class Item(Task[dict]):
    @property
    def num_items(self) -> int:
        return 1

    def validate(self) -> bool:
        return True

    def get_deterministic_id(self) -> str:
        return f"src{self.data['src']:04d}"


class Source(ProcessingStage[EmptyTask, Item]):
    name = "source"

    def __init__(self, n: int, cpus: float) -> None:
        self.n = n
        self.resources = Resources(cpus=cpus)

    def process(self, task: EmptyTask) -> list[Item]:
        return [Item(dataset_name="bench", data={"src": i}) for i in range(self.n)]


class Work(ProcessingStage[Item, Item]):
    name = "work"

    def __init__(self, cpus: float, marker_dir: str) -> None:
        self.resources = Resources(cpus=cpus)
        self.marker_dir = marker_dir
        self._marked = False

    def process(self, task: Item) -> Item:
        if not self._marked:
            self._marked = True
            _mark_first(os.path.join(self.marker_dir, FIRST_WORK_MARKER))
        task.data["acc"] = sum(i * i for i in range(SPIN_K))
        return task


class FanOut(ProcessingStage[Item, Item]):
    name = "fanout"

    def __init__(self, cpus: float) -> None:
        self.resources = Resources(cpus=cpus)

    def process(self, task: Item) -> list[Item | None]:
        s = task.data["src"]
        drop = s % 3
        return [None if j == drop else Item(dataset_name="bench", data={"src": s, "j": j}) for j in range(3)]


class Sink(ProcessingStage[Item, Item]):
    name = "sink"

    def __init__(self, cpus: float, out_dir: str) -> None:
        self.resources = Resources(cpus=cpus)
        self.out_dir = out_dir

    def process(self, task: Item) -> Item:
        with open(os.path.join(self.out_dir, f"s{task.data['src']:04d}-{task.data['j']}.txt"), "w") as fh:
            fh.write(f"{task.data['src']} {task.data['j']}\n")
        return task


def _mark_first(path: str) -> None:
    """Create ``path`` holding the wall clock now, unless a worker already did (first one wins)."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return
    with os.fdopen(fd, "w") as fh:
        fh.write(repr(time.time()))


def stage_cpus(executor: str) -> float:
    return 0.25 if executor == "xenna" else 0.5


def workload_pipeline(executor: str, n: int, out_dir: str, marker_dir: str) -> Pipeline:
    cpus = stage_cpus(executor)
    stages = [Source(n, cpus), Work(cpus, marker_dir), FanOut(cpus), Sink(cpus, out_dir)]
    return Pipeline(name="bench", stages=stages)


# -- one run (a process of its own) -----------------------------------------------------------------


def child(cfg: dict[str, Any]) -> dict[str, Any]:
    """One timed ``pipeline.run`` in this process, joined to the cluster at ``RAY_ADDRESS``."""
    from benchmarks.overhead import machine_cpu_seconds
    from nemo_curator.backends.registry import make_executor

    executor_name: str = cfg["executor"]
    out_dir, marker_dir = cfg["out_dir"], cfg["marker_dir"]
    pipeline = workload_pipeline(executor_name, cfg["n"], out_dir, marker_dir)
    config = {**EXECUTOR_CONFIG.get(executor_name, {}), **cfg.get("executor_config", {})}
    executor = make_executor(executor_name, checkpoint=cfg.get("checkpoint"), config=config)
    cpu_before = machine_cpu_seconds()
    driver_before = _process_cpu_seconds()
    wall_start = time.time()
    start = time.perf_counter()
    outputs = pipeline.run(executor)
    seconds = time.perf_counter() - start
    driver_cpu_s = _process_cpu_seconds() - driver_before
    cpu_after = machine_cpu_seconds()
    marker = Path(marker_dir, FIRST_WORK_MARKER)
    first_work_s = float(marker.read_text()) - wall_start if marker.exists() else None
    result: dict[str, Any] = {
        "run_s": seconds,
        "outputs": len(outputs),
        "files": len(os.listdir(out_dir)),
        "first_work_s": first_work_s,
        "driver_cpu_s": driver_cpu_s,
    }
    if cpu_before is not None and cpu_after is not None:
        result["cpu_s"] = cpu_after[0] - cpu_before[0]
    if cfg.get("checkpoint"):
        from nemo_curator.resumability.inspect import checkpoint_status

        result["completed_sources"] = checkpoint_status(cfg["checkpoint"])["completed_sources"]
    return result


def _process_cpu_seconds() -> float:
    """CPU seconds of this process (every thread: the executor's loop, the tracker, a ledger in the driver)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# -- the cluster started beforehand -----------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _user_env() -> dict[str, str]:
    """A user's shell: none of our driver's Ray settings, token auth off (its default depends on ~/.ray)."""
    env = {k: v for k, v in os.environ.items() if k not in _DRIVER_ONLY}
    env["RAY_AUTH_MODE"] = "disabled"
    return env


@contextmanager
def ray_cluster(num_cpus: int, root: Path) -> Iterator[str]:
    """``ray start --head --num-cpus=N`` as a user types it (plus the dashboard xenna needs); yields its address."""
    from nemo_curator.utils.processes import kill_process_tree

    temp_dir = tempfile.mkdtemp(prefix="rb-", dir="/tmp")  # short: Ray's socket paths have a length limit
    log_path = root / "ray-start.log"
    ray_cli = Path(sys.executable).with_name("ray")
    args = [str(ray_cli), "start", "--head", "--block", f"--num-cpus={num_cpus}", "--include-dashboard=true"]
    args += [f"--port={_free_port()}", f"--dashboard-port={_free_port()}", f"--temp-dir={temp_dir}"]
    args += ["--disable-usage-stats"]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(args, env=_user_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            text = log_path.read_text(errors="replace")
            match = re.search(r"ray start --address='([^']+)'", text)
            if match and "Ray runtime started" in text:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray start did not come up:\n{text[-3000:]}")
            time.sleep(0.5)
        yield match.group(1)
    finally:
        kill_process_tree(proc.pid)
        proc.wait(timeout=60)
        shutil.rmtree(temp_dir, ignore_errors=True)


def run_ours(
    executor: str,
    n: int,
    checkpoint: bool,
    address: str,
    work: Path,
    timeout_s: float,
    executor_config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One run of this project in a process of its own; its result, checked."""
    if work.exists():
        shutil.rmtree(work)
    (work / "out").mkdir(parents=True)
    (work / "marker").mkdir()
    cfg = {
        "executor": executor,
        "n": n,
        "out_dir": str(work / "out"),
        "marker_dir": str(work / "marker"),
        "checkpoint": str(work / "ckpt") if checkpoint else None,
        "executor_config": executor_config or {},
    }
    env = {**_user_env(), "RAY_ADDRESS": address, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.upstream", json.dumps(cfg)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    results = [line[len("RESULT ") :] for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not results:
        raise RuntimeError(f"{executor} run failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    result = json.loads(results[-1])
    expected = OUTPUTS_PER_SOURCE * n
    if result["files"] != expected or (checkpoint and result["completed_sources"] != n):
        raise RuntimeError(f"{executor}: {result} (expected {expected} files and {n} completed sources)")
    shutil.rmtree(work, ignore_errors=True)
    return result


def run_peer(peer_python: str, executor: str, n: int, reps: int, root: Path, timeout_s: float) -> list[dict[str, Any]]:
    """Upstream's script for one executor, from a neutral directory; its rows (``mode``: none / ckpt)."""
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    neutral = root / "cwd"  # not this repository: Ray workers import from the driver's directory
    neutral.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in (*_DRIVER_ONLY, "PYTHONPATH")}
    env["PATH"] = os.path.dirname(peer_python) + os.pathsep + env.get("PATH", "")
    env["RAY_AUTH_MODE"] = "disabled"
    cmd = [peer_python, str(PEER_SCRIPT), "--executors", executor, "--n", str(n), "--reps", str(reps)]
    cmd += ["--root", str(root / "peer")]
    proc = subprocess.run(cmd, cwd=neutral, env=env, capture_output=True, text=True, timeout=timeout_s)
    rows_path = root / "peer" / "results.jsonl"
    rows = [json.loads(line) for line in rows_path.read_text().splitlines()] if rows_path.exists() else []
    good = [r for r in rows if "run_s" in r and "error" not in r and r.get("files") == OUTPUTS_PER_SOURCE * n]
    if proc.returncode != 0 or len(good) != 2 * reps:
        raise RuntimeError(f"upstream {executor}: exit {proc.returncode}, rows {rows}\n{proc.stderr[-3000:]}")
    return good


# -- the section ------------------------------------------------------------------------------------


def _median_ratio(runs: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """Per pair (rep) the ratio with/without of ``key``; their median, min and max."""
    by_rep: dict[int, dict[bool, float]] = {}
    for r in runs:
        if r.get(key) is not None:
            by_rep.setdefault(r["rep"], {})[r["checkpoint"]] = r[key]
    ratios = [p[True] / p[False] for p in by_rep.values() if len(p) == 2 and p[False] > 0]
    if not ratios:
        return {}
    return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios), "ratios": ratios}


def _side(runs: list[dict[str, Any]]) -> dict[str, Any]:
    without = [r["run_s"] for r in runs if not r["checkpoint"]]
    with_ = [r["run_s"] for r in runs if r["checkpoint"]]
    side: dict[str, Any] = {
        "median_without_s": statistics.median(without),
        "median_with_s": statistics.median(with_),
        # The issue's table divides the medians; the pairs' median ratio is beside it.
        "ratio_of_medians": statistics.median(with_) / statistics.median(without),
        "ratio": _median_ratio(runs, "run_s"),
        "runs": runs,
    }
    cpu = _median_ratio(runs, "cpu_s")
    if cpu:
        side["cpu_ratio"] = cpu
    first = {
        c: [r["first_work_s"] for r in runs if r["checkpoint"] is c and r.get("first_work_s") is not None]
        for c in (False, True)
    }
    driver: dict[bool, list[float]] = {False: [], True: []}
    for r in runs:
        if "driver_cpu_s" in r:
            driver[r["checkpoint"]].append(r["driver_cpu_s"])
    if driver[False] and driver[True]:
        # The driver's own CPU: where the tracker (and a fresh checkpoint's ledger) run.
        side["driver_cpu_delta_s"] = statistics.median(driver[True]) - statistics.median(driver[False])
    if first[False] and first[True]:
        side["first_work_without_s"] = statistics.median(first[False])
        side["first_work_with_s"] = statistics.median(first[True])
        side["first_work_delta_s"] = side["first_work_with_s"] - side["first_work_without_s"]
    return side


def _control(runs: list[dict[str, Any]], controls: list[dict[str, Any]]) -> dict[str, Any]:
    """The SERVING-mode control against the same pair's runs: the mode's and the checkpoint's shares."""
    by_rep = {c["rep"]: c["run_s"] for c in controls}

    def ratios(checkpoint: bool, mode_over_run: bool) -> list[float]:
        out = []
        for r in runs:
            if r["checkpoint"] is checkpoint and r["rep"] in by_rep:
                out.append(by_rep[r["rep"]] / r["run_s"] if mode_over_run else r["run_s"] / by_rep[r["rep"]])
        return out

    mode, beyond = ratios(False, True), ratios(True, False)
    return {
        "median_s": statistics.median(by_rep.values()),
        "runs_s": [c["run_s"] for c in controls],
        # SERVING without a checkpoint over STREAMING without: what the mode costs.
        "mode_ratio": statistics.median(mode) if mode else None,
        # With a checkpoint over SERVING without: what the checkpoint costs beyond its mode.
        "checkpoint_ratio": statistics.median(beyond) if beyond else None,
    }


def run_upstream_benchmark(
    executors: list[str],
    n: int,
    reps: int,
    work_root: Path,
    num_cpus: int = 2,
    peer_python: str | None = None,
    timeout_s: float = 900.0,
    serving_control: bool = False,
) -> dict[str, Any]:
    """The section: per executor, ``reps`` alternating pairs of ours (and of upstream's, if given).

    ``serving_control``: on xenna, a run without a checkpoint in SERVING mode between each pair's two.
    """
    work_root.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"sources": n, "reps": reps, "num_cpus": num_cpus, "executors": {}}
    if peer_python and not PEER_SCRIPT.exists():
        raise FileNotFoundError(f"upstream's script is not at {PEER_SCRIPT}")
    for executor in executors:
        entry: dict[str, Any] = {}
        with ray_cluster(num_cpus, work_root) as address:
            runs: list[dict[str, Any]] = []
            controls: list[dict[str, Any]] = []
            control = serving_control and executor == "xenna"
            for rep in range(reps):
                order: list[bool | None] = [False, None, True] if control else [False, True]
                for checkpoint in order if rep % 2 == 0 else order[::-1]:
                    config = {"execution_mode": "serving"} if checkpoint is None else None
                    run = run_ours(executor, n, bool(checkpoint), address, work_root / "run", timeout_s, config)
                    run.update(rep=rep, checkpoint=checkpoint)
                    logger.info(
                        "upstream workload, ours {} {}: {:.2f}s (first work at {})",
                        executor,
                        {False: "without", True: "with checkpoint", None: "serving control"}[checkpoint],
                        run["run_s"],
                        "-" if run["first_work_s"] is None else f"{run['first_work_s']:.2f}s",
                    )
                    (controls if checkpoint is None else runs).append(run)
        entry["ours"] = _side(runs)
        if controls:
            entry["ours"]["serving_control"] = _control(runs, controls)
        if peer_python:
            rows = run_peer(peer_python, executor, n, reps, work_root / "peer", timeout_s * 2 * reps)
            peer_runs = [{"run_s": r["run_s"], "rep": r["rep"], "checkpoint": r["mode"] == "ckpt"} for r in rows]
            for r in peer_runs:
                logger.info(
                    "upstream workload, upstream {} {}: {:.2f}s",
                    executor,
                    "with checkpoint" if r["checkpoint"] else "without",
                    r["run_s"],
                )
            entry["upstream"] = _side(peer_runs)
        result["executors"][executor] = entry
    return result


def markdown_lines(section: dict[str, Any] | None) -> list[str]:
    """The section's table: upstream's and this project's times and ratios per executor."""
    if not section or "executors" not in section:
        return []
    lines = [
        "## Upstream's workload, side by side",
        "",
        f"{section['sources']} sources; median of {section['reps']} alternating pairs; a {section['num_cpus']}-CPU "
        "cluster started beforehand (ours) or by upstream's `RayClient` (upstream); only `pipeline.run` timed.",
        "",
        "| executor | upstream without | upstream with | upstream ratio | ours without | ours with | ours ratio "
        "| ours CPU ratio | ours driver CPU +s | first work +s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, entry in section["executors"].items():
        if "error" in entry:
            lines.append(f"| {name} | error: {entry['error']} |")
            continue
        ours, up = entry["ours"], entry.get("upstream")
        cells = [name]
        if up:
            cells += [f"{up['median_without_s']:.1f} s", f"{up['median_with_s']:.1f} s", f"{up['ratio']['median']:.3f}"]
        else:
            cells += ["-", "-", "-"]
        cells += [
            f"{ours['median_without_s']:.1f} s",
            f"{ours['median_with_s']:.1f} s",
            f"{ours['ratio']['median']:.3f}",
        ]
        cells.append(f"{ours['cpu_ratio']['median']:.3f}" if "cpu_ratio" in ours else "-")
        cells.append(f"{ours['driver_cpu_delta_s']:+.2f}" if "driver_cpu_delta_s" in ours else "-")
        cells.append(f"{ours['first_work_delta_s']:+.2f}" if "first_work_delta_s" in ours else "-")
        lines.append("| " + " | ".join(cells) + " |")
    for name, entry in section["executors"].items():
        control = entry.get("ours", {}).get("serving_control")
        if control:
            lines.append("")
            lines.append(
                f"{name}, SERVING-mode control (ours without a checkpoint in the mode checkpointed runs use): "
                f"median {control['median_s']:.1f} s; SERVING / STREAMING {control['mode_ratio']:.3f}; "
                f"with a checkpoint / SERVING {control['checkpoint_ratio']:.3f} (medians of the pairs' ratios)."
            )
    lines.append("")
    return lines


if __name__ == "__main__":
    print("RESULT " + json.dumps(child(json.loads(sys.argv[1]))), flush=True)
    sys.stdout.flush()
    os._exit(0)  # the executor's workers are the cluster's; nothing of this process needs a clean exit
