"""Two runs on one checkpoint: liveness leases across Ray instances and hosts, shards side by side.

Pure tests of the lease rule (store clock only) and of shards; a busy ledger actor that is never
killed; and real drivers: separate Ray instances on one host, a SIGKILLed driver, two shards at
the same time.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import ray

from nemo_curator.resumability import actor as actor_module
from nemo_curator.resumability.actor import NAMESPACE, LedgerHandle, ledger_actor_name
from nemo_curator.resumability.errors import CheckpointError
from nemo_curator.resumability.inspect import checkpoint_status
from nemo_curator.resumability.lease import (
    Heartbeat,
    LeaseSettings,
    SeenWriter,
    check_no_conflict,
    lease_verdict,
    live_writers,
    store_now,
)
from nemo_curator.resumability.liveness import this_process
from nemo_curator.resumability.location import LocalLocation
from nemo_curator.resumability.objects import Beat
from nemo_curator.resumability.shard import Shard, compatible, parse_shard, shard_of
from nemo_curator.resumability.store import CheckpointStore
from nemo_curator.utils.processes import kill_process_tree
from tests.e2e import job

REPO = Path(__file__).resolve().parents[2]
HOUR = 3600.0


# -- the lease rule (pure) -------------------------------------------------------------------


def _seen(beat_mtime: float | None, *, host: str = "another-host", host_clock: float = 0.0, closed: bool = False):
    owner = {"host": host, "pid": 1, "pid_start": 1, "writer_id": "w"}
    beat = Beat("w", owner=owner, shard=None, interval_s=10.0, time=host_clock)
    return SeenWriter("w", closed, None if beat_mtime is None else beat, beat_mtime)


@pytest.mark.parametrize("host_clock_offset", [-HOUR, 0.0, 7 * HOUR])
def test_lease_freshness_uses_the_store_clock_never_a_host_clock(host_clock_offset: float) -> None:
    store = 1_700_000_000.0  # the store's clock now (the starting run's own probe object)
    writer_clock = store + host_clock_offset  # what the other host believes the time is

    def live(age: float) -> bool:
        seen = _seen(store - age, host_clock=writer_clock)
        return bool(live_writers([seen], now=store, lease_s=30.0, open_here=lambda _w: True))

    assert live(0.0) and live(29.0)  # renewed within the lease: live, whatever its host's clock says
    assert live(-5.0)  # renewed after our probe
    assert not live(30.0) and not live(HOUR)  # expired by the store's clock, whatever its host's clock says


def test_lease_rule_closed_no_heartbeat_dead_driver() -> None:
    now = 1000.0
    assert not lease_verdict(closed=True, beat_mtime=now, now=now, lease_s=30, owner_alive=True).live
    assert not lease_verdict(closed=False, beat_mtime=None, now=now, lease_s=30, owner_alive=True).live
    dead = lease_verdict(closed=False, beat_mtime=now, now=now, lease_s=30, owner_alive=False)
    assert not dead.live and "gone" in dead.why  # a fresh heartbeat of a dead driver on this host
    assert lease_verdict(closed=False, beat_mtime=now - 29, now=now, lease_s=30, owner_alive=None).live
    assert not lease_verdict(closed=False, beat_mtime=now - 31, now=now, lease_s=30, owner_alive=True).live


def test_a_lease_written_at_a_location_is_judged_by_its_mtime(tmp_path: Path) -> None:
    """On a real directory: a fresh lease blocks, the same lease aged (by mtime) does not."""
    location = LocalLocation(tmp_path)
    owner = {"host": "another-host", "pid": 1, "pid_start": 1, "writer_id": "other"}
    heartbeat = Heartbeat(location, Beat("other", owner=owner), LeaseSettings())
    heartbeat.beat_now()
    with pytest.raises(CheckpointError, match=r"(?s)run other \(pid 1 on another-host.*lease expires in \d+ s"):
        check_no_conflict(location, {}, shard=None, lease_s=30.0, open_here=lambda _w: True)
    (beat,) = glob.glob(str(tmp_path / "ledger" / "other" / "beat-*.rec"))
    now = store_now(location)
    os.utime(beat, (now - 31, now - 31))
    check_no_conflict(location, {}, shard=None, lease_s=30.0, open_here=lambda _w: True)
    os.utime(beat, (now, now))
    check_no_conflict(location, {"other": True}, shard=None, lease_s=30.0, open_here=lambda _w: True)  # closed
    heartbeat.stop(delete=True)
    assert not glob.glob(str(tmp_path / "ledger" / "other" / "beat-*.rec"))


# -- shards (pure) -----------------------------------------------------------------------------


def test_shards_partition_the_sources_and_parse_explicitly() -> None:
    ids = [f"{i:032x}" for i in range(2000)]
    for count in (1, 2, 7):
        owners = Counter(sum(Shard(k, count).owns(sid) for k in range(count)) for sid in ids)
        assert owners == {1: len(ids)}  # every id in exactly one shard
    assert shard_of("abc", 5) == shard_of("abc", 5)
    assert parse_shard(None) is None and parse_shard([1, 4]) == Shard(1, 4) == parse_shard((1, 4))
    env = {"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_MIN": "5", "SLURM_ARRAY_TASK_COUNT": "4"}
    assert parse_shard("slurm", env) == Shard(2, 4)
    assert parse_shard("slurm", {**env, "SLURM_ARRAY_TASK_ID": "9", "SLURM_ARRAY_TASK_STEP": "2"}) == Shard(2, 4)
    with pytest.raises(ValueError, match="SLURM_ARRAY_TASK_COUNT"):
        parse_shard("slurm", {"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_MIN": "0"})
    with pytest.raises(ValueError, match="contiguous"):
        parse_shard("slurm", {**env, "SLURM_ARRAY_TASK_ID": "20"})
    for bad in ((2, 2), (-1, 2), (0, 0), "yes", (1.5, 2)):
        with pytest.raises(ValueError):
            parse_shard(bad)
    assert compatible(Shard(0, 2), Shard(1, 2))
    assert not compatible(Shard(0, 2), Shard(0, 2)) and not compatible(Shard(0, 2), Shard(1, 3))
    assert not compatible(None, Shard(1, 2)) and not compatible(None, None)


def test_an_executor_never_shards_on_its_own_and_refuses_a_shard_without_checkpoint(monkeypatch) -> None:
    from nemo_curator.backends.ray_actor_pool import RayActorPoolExecutor

    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "1")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "0")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "2")
    assert RayActorPoolExecutor(checkpoint="unused").config.get("shard") is None
    with pytest.raises(ValueError, match="needs a checkpoint"):
        RayActorPoolExecutor(config={"shard": (0, 2)})
    with pytest.raises(ValueError, match="index < count"):
        RayActorPoolExecutor(config={"shard": (2, 2)}, checkpoint="unused")


# -- the ledger on a real Ray -------------------------------------------------------------------


def test_shards_share_a_checkpoint_an_unsharded_run_is_refused_meanwhile(ray_session: Any, tmp_path: Path) -> None:
    ids = [f"{i:032x}" for i in range(40)]
    with (
        LedgerHandle.open(tmp_path, "fp-shards", shard=Shard(0, 2)) as first,
        LedgerHandle.open(tmp_path, "fp-shards", shard=Shard(1, 2)) as second,
    ):
        assert first.name != second.name  # one actor per shard, side by side in one Ray
        for bad in (None, Shard(0, 2), Shard(1, 3)):
            with pytest.raises(CheckpointError, match=r"in use by another run: run .* shard \d of 2"):
                LedgerHandle.open(tmp_path, "fp-shards", shard=bad)
        # The source stage keeps only its shard: the others are answered as complete (dropped).
        kept = [sid for sid in ids if sid not in first.source_filter().completed(ids)]
        assert kept == [sid for sid in ids if Shard(0, 2).owns(sid)] and 0 < len(kept) < len(ids)
    LedgerHandle.open(tmp_path, "fp-shards").close()  # both closed: free again


@ray.remote(num_cpus=0)
class BusyLedger:
    """Stands in for a ledger actor busy with a long call: ``owner()`` does not answer in time."""

    def owner(self) -> dict[str, Any]:
        time.sleep(3600)
        return {}

    def ping(self) -> str:
        return "alive"


def test_a_busy_ledger_actor_is_never_killed_as_stale(ray_session: Any, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(actor_module, "OWNER_TIMEOUT_S", 2.0)
    busy = BusyLedger.options(
        name=ledger_actor_name(tmp_path), namespace=NAMESPACE, max_concurrency=2, lifetime=None
    ).remote()
    assert ray.get(busy.ping.remote(), timeout=60) == "alive"
    try:
        with pytest.raises(CheckpointError, match="did not say which run it belongs to within 2 s"):
            LedgerHandle.open(tmp_path, "fp-busy")
        assert ray.get(busy.ping.remote(), timeout=30) == "alive"  # left alone
    finally:
        ray.kill(busy, no_restart=True)


# -- real drivers ----------------------------------------------------------------------------------


def _cfg(tmp_path: Path, shard: list[int] | None = None, **extra: Any) -> dict[str, Any]:
    # A ledger actor, not one in the driver: the gate holds every task before its first report, and
    # a fresh checkpoint's in-driver ledger (and its heartbeat, which the test waits for) would only
    # open 30 s later (``defer_ledger_s``).
    executor_config: dict[str, Any] = {"ledger_in_driver": False}
    if shard is not None:
        executor_config["shard"] = shard
    cfg = {
        "executor": "ray_actor_pool",
        "input_dir": str(tmp_path / "in"),
        "output_dir": str(tmp_path / "out"),
        "log_dir": str(tmp_path / "log"),
        "checkpoint": str(tmp_path / "ckpt"),
        "slow_s": 0.0,
        "wait_for": str(tmp_path / "go"),
        "executor_config": executor_config,
        **extra,
    }
    os.makedirs(cfg["log_dir"], exist_ok=True)
    if not os.path.isdir(cfg["input_dir"]):
        job.write_inputs(cfg["input_dir"], 8, 6)
    return cfg


def _start_driver(cfg: dict[str, Any], *, join_ray: bool) -> subprocess.Popen:
    """A driver process: with its own Ray (``join_ray=False``) or joined to this session's."""
    env = dict(os.environ)
    if not join_ray:
        env.pop("RAY_ADDRESS", None)
    env["PYTHONPATH"] = str(REPO)
    return subprocess.Popen(
        [sys.executable, "-m", "tests.e2e.job", json.dumps(cfg)],
        cwd=REPO,
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def _wait_until_running(cfg: dict[str, Any], count: int, drivers: list[subprocess.Popen]) -> None:
    """Until ``count`` runs have started their ledgers and work has begun (the gate then holds them)."""
    deadline = time.monotonic() + 300
    while len(glob.glob(f"{cfg['checkpoint']}/ledger/*/header-*.rec")) < count or not job.processed_sources(
        cfg["log_dir"]
    ):
        for proc in drivers:
            if proc.poll() is not None:
                out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
                pytest.fail(f"driver ended (rc={proc.returncode}) before it was running:\n{out[-4000:]}")
        assert time.monotonic() < deadline, "the drivers were not running in time"
        time.sleep(0.1)


@pytest.mark.slow
def test_a_run_in_another_ray_instance_is_refused_and_a_killed_one_is_not(ray_session: Any, tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    first = _start_driver(cfg, join_ray=False)  # its own Ray instance, held mid-run by the gate
    try:
        _wait_until_running(cfg, 1, [first])
        with pytest.raises(CheckpointError, match=rf"in use by another run: run \S+ \(pid {first.pid} on "):
            job.run({**cfg, "wait_for": ""})  # this process, the session's (separate) Ray instance; never held
        assert not os.path.exists(cfg["output_dir"]) or not os.listdir(cfg["output_dir"])
    finally:
        kill_process_tree(first.pid)
        first.wait(timeout=60)
    # The killed run's heartbeat is still fresh, but its driver is gone: a new run starts at once.
    began = time.monotonic()
    Path(cfg["wait_for"]).touch()
    job.run(cfg)
    assert time.monotonic() - began < 120
    assert checkpoint_status(cfg["checkpoint"])["completed_sources"] == 8
    assert job.written_records(cfg["output_dir"]) == job.expected_records(cfg["input_dir"])


@pytest.mark.slow
def test_two_shards_run_side_by_side_and_an_unsharded_run_is_refused(ray_session: Any, tmp_path: Path) -> None:
    shards = [_cfg(tmp_path, shard=[k, 2]) for k in range(2)]
    drivers = [_start_driver(shards[0], join_ray=False)]  # its own Ray instance
    try:
        _wait_until_running(shards[0], 1, drivers)  # one Ray start at a time: a loaded machine times them out
        drivers.append(_start_driver(shards[1], join_ray=True))  # the session's Ray instance
        _wait_until_running(shards[0], 2, drivers)  # both are running at once
        # A third, unsharded driver (on the session's Ray; never held by the gate: were it admitted, it would
        # run through, or wait for the CPUs that the held shard occupies).
        third = _start_driver(_cfg(tmp_path, wait_for=""), join_ray=True)
        drivers.append(third)
        try:
            out = third.communicate(timeout=180)[0].decode(errors="replace")
        except subprocess.TimeoutExpired:
            pytest.fail("an unsharded run was admitted beside two live shards (it is still running)")
        assert third.returncode != 0 and "CheckpointError: checkpoint" in out and "in use by another run" in out, out
        assert "shard 0 of 2" in out and "shard 1 of 2" in out
        Path(shards[0]["wait_for"]).touch()
        for proc in drivers[:2]:
            out = proc.communicate(timeout=300)[0].decode(errors="replace")
            assert proc.returncode == 0, out[-4000:]
    finally:
        for proc in drivers:
            if proc.poll() is None:
                kill_process_tree(proc.pid)
    status = checkpoint_status(shards[0]["checkpoint"])
    assert status["completed_sources"] == 8 and len(status["writers"]) == 2
    processed = job.processed_sources(shards[0]["log_dir"])
    assert len(processed) == len(set(processed)) == 8  # each source read by exactly one shard
    assert job.written_records(shards[0]["output_dir"]) == job.expected_records(shards[0]["input_dir"])


def test_leases_on_an_object_store(s3_checkpoint: Any) -> None:
    """On S3 (moto): the store's LastModified times decide; shards share, an unsharded writer is refused."""
    lease = LeaseSettings()
    config = s3_checkpoint.config()
    owner = {**this_process(), "writer_id": "x"}
    with CheckpointStore.open(config, fingerprint="f", writer_id="a", lease=lease, shard=Shard(0, 2), owner=owner):
        with pytest.raises(CheckpointError, match=r"run a \(pid \d+ on .*shard 0 of 2"):
            CheckpointStore.open(config, fingerprint="f", writer_id="b", lease=lease)
        with CheckpointStore.open(config, fingerprint="f", writer_id="c", lease=lease, shard=Shard(1, 2)):
            pass
    assert not [k for k in s3_checkpoint.keys("ckpt/") if "/beat-" in k]  # closed: no lease left
    CheckpointStore.open(config, fingerprint="f", writer_id="d", lease=lease).close()
