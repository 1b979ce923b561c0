"""An S3 endpoint that stops answering (frozen, not refusing connections) must fail a write in bounded time.

A stopped server refuses connections and fails fast; a hung one (SIGSTOP here; a stuck proxy or
load balancer in life) accepts the connection and never answers. botocore sends every PutObject
with ``Expect: 100-continue`` and aiohttp waits for the ``100 Continue`` without its read
timeout, so without a deadline of its own the write, and with it the ledger actor and the run,
hangs for ever.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from nemo_curator.resumability.config import CheckpointConfig
from nemo_curator.resumability.errors import CheckpointError
from nemo_curator.resumability.location import S3_DEFAULT_RETRIES, open_location
from nemo_curator.resumability.report import Report
from nemo_curator.resumability.store import CheckpointStore
from nemo_curator.tasks.credit import Credit
from tests.resumability.trees import source_id
from tests.s3_server import S3Checkpoint

#: Short S3 timeouts (a user setting) so that each attempt gives up in seconds.
SHORT_TIMEOUTS = {"config_kwargs": {"connect_timeout": 1, "read_timeout": 2, "retries": {"max_attempts": 1}}}
#: How long a write to a frozen endpoint may take to fail with ``SHORT_TIMEOUTS`` (and the reload after it).
FAIL_WITHIN_S = 60.0


@dataclass
class Outcome:
    error: BaseException | None = None
    finished_after_s: float | None = None


def test_s3_gets_few_s3fs_retries_by_default(s3_checkpoint: S3Checkpoint) -> None:
    location = open_location(s3_checkpoint.config(), writable=True)
    assert location.fs.retries == S3_DEFAULT_RETRIES  # type: ignore[attr-defined]


def test_a_write_to_a_frozen_endpoint_fails_in_bounded_time(s3_checkpoint: S3Checkpoint) -> None:
    server = s3_checkpoint.server
    config = s3_checkpoint.config()
    config = CheckpointConfig(config.path, {**config.storage_options, **SHORT_TIMEOUTS}, config.cache_dir)
    store = CheckpointStore.open(config, fingerprint="f", writer_id="run")
    a, b = source_id(90), source_id(91)
    store.apply([Report(a, a, Credit.one())], sender="d", seq=1)
    outcome = Outcome()
    began = time.monotonic()

    def write() -> None:
        try:
            store.apply([Report(b, b, Credit.one())], sender="d", seq=2)
        except BaseException as exc:
            outcome.error = exc
        outcome.finished_after_s = time.monotonic() - began

    server.freeze()
    writer = threading.Thread(target=write, daemon=True)
    try:
        writer.start()
        writer.join(FAIL_WITHIN_S)
    finally:
        server.thaw()
        writer.join(60)
        store.close()
    assert outcome.finished_after_s is not None and outcome.finished_after_s < FAIL_WITHIN_S, (
        f"a write to a frozen endpoint took {outcome.finished_after_s} s (None: still hanging)"
    )
    assert isinstance(outcome.error, CheckpointError), outcome.error
    assert config.display in str(outcome.error)
