"""A two-node Ray cluster on this machine, a worker node removed mid-run, then a resume.

``python -m tests.e2e.node_loss '<json config>'`` runs, in this one process (a
``ray.cluster_utils.Cluster`` cannot share a process with another Ray):

1. an uninterrupted run without a checkpoint (the reference output);
2. a checkpointed run during which the worker node is removed (all its processes killed) once
   about a third of the outputs exist; it may complete (through Ray's retries) or fail;
3. a resume with the same checkpoint on the remaining head node.

It prints one JSON line: how the interrupted run ended, whether the removal happened while
stage workers ran on that node, and whether the resumed output (file names and contents)
equals the reference. The driver (and with it the ledger actor) is on the head node.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any

#: What the job writes per source (``SplitInThree`` drops one piece of three).
OUTPUTS_PER_SOURCE = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def output_contents(output_dir: str) -> dict[str, str]:
    """Every output file by name (temp files of interrupted writes excluded)."""
    if not os.path.isdir(output_dir):
        return {}
    return {
        name: Path(output_dir, name).read_text()
        for name in sorted(os.listdir(output_dir))
        if name.endswith(".jsonl") and not name.startswith(".")
    }


def start_cluster(temp_dir: str, head_cpus: int, worker_cpus: int) -> tuple[Any, Any]:
    """A head node (with the dashboard, for cosmos-xenna) and one worker node; the driver joins the head."""
    import ray
    from ray.cluster_utils import Cluster

    from nemo_curator.backends.ray_runtime import prepare_ray_environment

    prepare_ray_environment()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # The GCS notices a lost node after a few missed health checks: ~3 s here, not Ray's ~15-30 s.
    os.environ.update(RAY_health_check_period_ms="1000", RAY_health_check_failure_threshold="3")
    common = {"temp_dir": temp_dir, "object_store_memory": 200 * 1024**2}
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            **common,
            "num_cpus": head_cpus,
            "include_dashboard": True,
            "dashboard_port": free_port(),
        },
    )
    worker = cluster.add_node(**common, num_cpus=worker_cpus)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False, logging_level="WARNING")
    os.environ["RAY_ADDRESS"] = cluster.address  # cosmos-xenna's state queries find it so
    here = ray.get_runtime_context().get_node_id()
    assert here == cluster.head_node.node_id, "the driver must be on the head node"
    return cluster, worker


def actors_on(node_id: str) -> list[str]:
    """Class names of this job's alive actors on ``node_id``."""
    import ray
    from ray._private import state

    job = ray.JobID.from_hex(ray.get_runtime_context().get_job_id())
    return sorted(
        str(a.get("ActorClassName"))
        for a in state.actors(job_id=job).values()
        if a.get("State") == "ALIVE" and (a.get("Address") or {}).get("NodeID") == node_id
    )


def wait_node_dead(node_id: str, timeout_s: float = 180.0) -> float:
    """Block until the GCS lists ``node_id`` as dead; returns ``time.monotonic()`` then."""
    import ray

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not any(n["NodeID"] == node_id and n["Alive"] for n in ray.nodes()):
            return time.monotonic()
        time.sleep(0.5)
    raise TimeoutError(f"node {node_id} still listed alive {timeout_s:.0f} s after its removal")


class NodeRemover(threading.Thread):
    """Removes ``worker`` from ``cluster`` once ``at_outputs`` output files exist."""

    def __init__(self, cluster: Any, worker: Any, output_dir: str, at_outputs: int) -> None:
        super().__init__(name="node-remover", daemon=True)
        self.cluster, self.worker, self.output_dir, self.at_outputs = cluster, worker, output_dir, at_outputs
        self.removed_at: float | None = None
        self.actors_on_node: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            if len(output_contents(self.output_dir)) >= self.at_outputs:
                self.actors_on_node = actors_on(self.worker.node_id)
                self.cluster.remove_node(self.worker, allow_graceful=False)
                self.removed_at = time.monotonic()
                return
            time.sleep(0.05)


def main(cfg: dict[str, Any]) -> dict[str, Any]:
    from tests.e2e import job

    base = Path(cfg["base_dir"])
    temp_dir = tempfile.mkdtemp(prefix="rn-", dir="/tmp")  # short: Ray's socket paths have a length limit
    # ``Cluster`` records its address in Ray's machine-wide file and deletes it at the end: put back
    # what another Ray on this machine had there.
    current = Path("/tmp/ray/ray_current_cluster")
    previous = current.read_text() if current.exists() else None
    cluster = None
    try:
        cluster, worker = start_cluster(temp_dir, cfg.get("head_cpus", 2), cfg.get("worker_cpus", 2))
        job_cfg = {
            "executor": cfg["executor"],
            "input_dir": str(base / "in"),
            "log_dir": str(base / "log"),
            "slow_s": cfg.get("slow_s", 0.2),
            "executor_config": cfg.get("executor_config") or {},
        }
        os.makedirs(job_cfg["log_dir"], exist_ok=True)
        job.write_inputs(job_cfg["input_dir"], cfg["files"], cfg["docs"])
        expected_outputs = cfg["files"] * OUTPUTS_PER_SOURCE

        reference = {**job_cfg, "output_dir": str(base / "reference"), "checkpoint": None}
        job.run(reference)

        resumable = {**job_cfg, "output_dir": str(base / "out"), "checkpoint": str(base / "ckpt")}
        remover = NodeRemover(cluster, worker, resumable["output_dir"], max(1, expected_outputs // 3))
        remover.start()
        start = time.monotonic()
        try:
            job.run(resumable)
            first_run = "completed"
        except Exception as exc:  # failing loudly is allowed; the resume must still be exact
            first_run = f"failed: {type(exc).__name__}: {str(exc)[:500]}"
            traceback.print_exc()
        first_run_s = time.monotonic() - start
        remover.stop.set()
        remover.join(timeout=60)
        outputs_after_first = len(output_contents(resumable["output_dir"]))

        # A user resumes on the cluster as it is: once Ray has noticed that the node is gone.
        dead_after_s = wait_node_dead(worker.node_id) - start if remover.removed_at else None
        job.run(resumable)  # the resume, on the head node alone
        return {
            "first_run": first_run,
            "first_run_s": round(first_run_s, 1),
            "removed": remover.removed_at is not None,
            "removed_after_s": round(remover.removed_at - start, 1) if remover.removed_at else None,
            "actors_on_removed_node": remover.actors_on_node,
            "outputs_after_first_run": outputs_after_first,
            "node_dead_after_s": round(dead_after_s, 1) if dead_after_s is not None else None,
            "expected_outputs": expected_outputs,
            "exact": output_contents(resumable["output_dir"]) == output_contents(reference["output_dir"]),
            "reference_outputs": len(output_contents(reference["output_dir"])),
        }
    finally:
        import ray

        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)
        if previous is not None:
            current.write_text(previous)


if __name__ == "__main__":
    from tests.e2e import node_loss as importable

    result = importable.main(json.loads(sys.argv[1]))
    print("RESULT " + json.dumps(result), flush=True)
