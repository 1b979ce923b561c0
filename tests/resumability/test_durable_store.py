"""The store on a local directory and on S3 (a real moto server via s3fs): the durable record is the truth."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from nemo_curator.cli import cli
from nemo_curator.resumability import CheckpointConfig
from nemo_curator.resumability.errors import CheckpointError
from nemo_curator.resumability.inspect import checkpoint_status
from nemo_curator.resumability.location import LocalLocation
from nemo_curator.resumability.report import Report
from nemo_curator.resumability.store import CheckpointStore
from nemo_curator.tasks.credit import Credit
from tests.resumability.trees import source_id
from tests.s3_server import S3Checkpoint

MakeConfig = Callable[[Path], CheckpointConfig]


@pytest.fixture(params=["local", "s3"])
def make_config(request: pytest.FixtureRequest, tmp_path: Path) -> MakeConfig:
    """``make_config(cache_dir)``: the same checkpoint location (a local dir or an S3 prefix) with that cache."""
    if request.param == "local":
        return lambda cache: CheckpointConfig(tmp_path / "ckpt", cache_dir=cache)
    s3: S3Checkpoint = request.getfixturevalue("s3_checkpoint")
    return lambda cache: s3.config(cache_dir=cache)


def split(sid: str, n: int) -> list[Report]:
    return [Report(sid, f"{sid}_{i}", c) for i, c in enumerate(Credit.one().split(n))]


def test_acknowledged_batches_survive_losing_the_cache_and_a_restart_reloads_in_flight_state_exactly(
    make_config: MakeConfig, tmp_path: Path
) -> None:
    a, b, c, d = (source_id(i) for i in range(4))
    ra, rb, rc = split(a, 3), split(b, 2), split(c, 2)
    cache_a = tmp_path / "node-a"
    store = CheckpointStore.open(make_config(cache_a), fingerprint="f", writer_id="run")
    store.apply([ra[0], rb[0], rb[1], rc[0]], sender="drv", seq=1)
    store.apply([ra[1], Report(d, d, Credit.one(), failure="ValueError: bad")], sender="drv", seq=2)
    before = (store.ledger.in_flight(), store.ledger.completed_count, store.ledger.failed_this_run_count)
    assert store.path.is_file() and store.path.parent == cache_a
    # The node is lost: no clean close, and its cache directory is gone.
    store._release()
    shutil.rmtree(cache_a)
    with CheckpointStore.open(make_config(tmp_path / "node-b"), fingerprint="f", writer_id="run") as again:
        assert (again.ledger.in_flight(), again.ledger.completed_count, again.ledger.failed_this_run_count) == before
        assert again.last_seq("drv") == 2
        assert again.apply([ra[1]], sender="drv", seq=2) is None  # a resent acknowledged batch: a no-op
        update = again.apply([ra[2], rc[1]], sender="drv", seq=3)
        assert update is not None and sorted(update.completed) == sorted([a, c]) and not update.anomalies
    # A new run elsewhere sees the union of completions, and the failure.
    with CheckpointStore.open(make_config(tmp_path / "node-c"), fingerprint="f", writer_id="run-2") as later:
        assert later.ledger.completed_among([a, b, c, d]) == [a, b, c]
        assert later.status().failed_sources == 1 and later.ledger.in_flight_count == 0


def test_a_cache_that_is_ahead_or_different_never_wins(make_config: MakeConfig, tmp_path: Path) -> None:
    a, b = source_id(10), source_id(11)
    cache = tmp_path / "cache"
    with CheckpointStore.open(make_config(cache), fingerprint="f", writer_id="run") as store:
        store.apply(split(a, 2)[:1])
        stale = store.path.read_bytes()
    # A cache left by a "different" history (here: saved, then more batches applied and made durable).
    with CheckpointStore.open(make_config(cache), fingerprint="f", writer_id="run") as store:
        store.apply([*split(a, 2)[1:], Report(b, b, Credit.one())])
        store.close(remove_cache=False)
    store_path = store.path
    store_path.write_bytes(stale)
    with CheckpointStore.open(make_config(cache), fingerprint="f", writer_id="run") as store:
        assert store.ledger.completed_among([a, b]) == [a, b] and store.ledger.in_flight_count == 0


def test_compaction_keeps_few_objects_and_readers_see_the_same(make_config: MakeConfig, tmp_path: Path) -> None:
    ids = [source_id(100 + i) for i in range(40)]
    config = make_config(tmp_path / "cache")
    with CheckpointStore.open(config, fingerprint="f", writer_id="run", compact_every=5) as store:
        for i, sid in enumerate(ids):
            store.apply(split(sid, 2)[:1], sender="d", seq=2 * i)
            store.apply(split(sid, 2)[1:] if i % 2 else [], sender="d", seq=2 * i + 1)
            if i == 20:
                mid = checkpoint_status(config)
                assert mid["completed_sources"] == 10 and mid["in_flight_sources"] == 11
        assert store._log is not None and store._log.compactions >= 5 and store._log.object_count <= 6
    status = checkpoint_status(config)
    assert status["completed"] == sorted(ids[1::2]) and status["in_flight_sources"] == 20
    assert status["writers"][0]["objects"] == 1  # the closing snapshot replaced everything
    with CheckpointStore.open(make_config(tmp_path / "cache2"), fingerprint="f", writer_id="run") as again:
        assert again.ledger.in_flight_count == 20 and again.last_seq("d") == 79


class FailingLocation(LocalLocation):
    """A real local location whose next ``fail`` writes raise (a store failing mid-run)."""

    fail = 0

    def write_once(self, path: str, data: bytes) -> None:
        if self.fail:
            self.fail -= 1
            raise OSError(5, "Input/output error (injected)")
        super().write_once(path, data)


def test_a_failed_durable_write_rebuilds_memory_from_the_record_and_raises(tmp_path: Path) -> None:
    a, b = source_id(50), source_id(51)
    ra = split(a, 2)
    with CheckpointStore.open(tmp_path / "ckpt", fingerprint="f", writer_id="run") as store:
        store.apply(ra[:1], sender="d", seq=1)
        failing = FailingLocation(store.location.root)  # type: ignore[attr-defined]
        store.location = failing
        assert store._log is not None
        store._log.location = failing
        failing.fail = 1
        with pytest.raises(CheckpointError, match="Input/output error"):
            store.apply([ra[1], Report(b, b, Credit.one())], sender="d", seq=2)
        # Nothing unacknowledged is taken as durable: memory is back to what the record holds.
        assert store.ledger.completed_among([a, b]) == [] and store.ledger.in_flight() == {a: ra[0].credit}
        assert store.last_seq("d") == 1
        assert store._log is not None
        store._log.location = failing  # (the reload made a new log on the store's location)
        update = store.apply([ra[1], Report(b, b, Credit.one())], sender="d", seq=2)  # the driver resends
        assert update is not None and sorted(update.completed) == sorted([a, b])
    assert checkpoint_status(tmp_path / "ckpt")["completed_sources"] == 2


# -- S3 only ------------------------------------------------------------------------------


def test_status_on_s3_is_read_only_works_while_a_run_writes_and_via_the_cli(
    s3_checkpoint: S3Checkpoint, tmp_path: Path
) -> None:
    a = source_id(60)
    with CheckpointStore.open(s3_checkpoint.config(), fingerprint="f", writer_id="run") as store:
        store.apply([Report(a, a, Credit.one())])
        keys = s3_checkpoint.keys()
        status = checkpoint_status(s3_checkpoint.url(), storage_options=s3_checkpoint.storage_options)
        assert status["completed"] == [a] and status["writers"][0]["closed"] is None
        assert s3_checkpoint.keys() == keys  # nothing created
    server = s3_checkpoint.server
    args = ["checkpoint", "status", s3_checkpoint.url(), "--json"]
    args += ["--storage-option", f"endpoint_url={server.endpoint_url}", "--storage-option", "key=testing"]
    args += ["--storage-option", "secret=testing", "--storage-option", "client_kwargs.region_name=us-east-1"]
    out = CliRunner().invoke(cli, args)
    assert out.exit_code == 0, out.output
    parsed = json.loads(out.stdout)
    assert (parsed["completed_sources"], parsed["failed_sources"], parsed["completed"]) == (1, 0, [a])
    missing = CliRunner().invoke(cli, [*args[:2], f"s3://{s3_checkpoint.bucket}/nothing-here", *args[4:]])
    assert missing.exit_code == 1 and "does not exist" in missing.output


def _fails_fast(call: Callable[[], Any], *patterns: str, within_s: float = 30.0) -> str:
    start = time.monotonic()
    with pytest.raises(CheckpointError) as err:
        call()
    assert time.monotonic() - start < within_s
    message = str(err.value)
    for pattern in patterns:
        assert pattern in message, message
    return message


def test_bad_locations_fail_before_any_work_naming_the_url_and_the_fix(
    s3_checkpoint: S3Checkpoint, tmp_path: Path
) -> None:
    opts = s3_checkpoint.storage_options
    cache = tmp_path / "cache"
    _fails_fast(lambda: CheckpointStore.open("nosuchproto://b/x", fingerprint="f"), "nosuchproto://b/x", "unknown")
    missing_bucket = CheckpointConfig("s3://no-such-bucket-here/ckpt", opts, cache)
    _fails_fast(
        lambda: CheckpointStore.open(missing_bucket, fingerprint="f"), "s3://no-such-bucket-here/ckpt", "bucket"
    )
    _fails_fast(lambda: checkpoint_status(missing_bucket), "s3://no-such-bucket-here/ckpt", "does not exist")
    try:
        import gcsfs  # noqa: F401
    except ImportError:
        _fails_fast(lambda: CheckpointStore.open("gs://b/x", fingerprint="f"), "gs://b/x", "pip install gcsfs")
    assert not cache.exists()  # nothing was created for a location that cannot be used


def test_an_endpoint_down_at_start_fails_in_bounded_time_and_a_resume_then_works(
    s3_checkpoint: S3Checkpoint, tmp_path: Path
) -> None:
    server = s3_checkpoint.server
    config = s3_checkpoint.config()
    server.stop()
    try:
        _fails_fast(lambda: CheckpointStore.open(config, fingerprint="f"), config.display, "cannot reach", "endpoint")
        _fails_fast(lambda: checkpoint_status(config), config.display, "cannot reach")
    finally:
        server.start()
    s3_checkpoint.server.make_bucket(s3_checkpoint.bucket)  # moto forgot everything when it was killed
    with CheckpointStore.open(config, fingerprint="f", writer_id="run") as store:
        store.apply([Report(source_id(70), "t", Credit.one())])
    assert checkpoint_status(config)["completed_sources"] == 1


def test_an_endpoint_lost_mid_run_fails_the_report_loudly(s3_checkpoint: S3Checkpoint) -> None:
    a, b = source_id(80), source_id(81)
    store = CheckpointStore.open(s3_checkpoint.config(), fingerprint="f", writer_id="run")
    store.apply([Report(a, a, Credit.one())], sender="d", seq=1)
    s3_checkpoint.server.stop()
    try:
        _fails_fast(lambda: store.apply([Report(b, b, Credit.one())], sender="d", seq=2), "cannot reach")
        _fails_fast(lambda: store.apply([Report(b, b, Credit.one())], sender="d", seq=2), "cannot record progress")
    finally:
        store.close()
        s3_checkpoint.server.start()
