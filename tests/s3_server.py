"""A real S3-protocol server for tests: moto's standalone server in a subprocess on a free localhost port.

Use the fixtures (import them into a test module or a conftest)::

    from tests.s3_server import s3_server, s3_checkpoint  # noqa: F401  (pytest fixtures)

    def test_x(s3_checkpoint: S3Checkpoint) -> None:
        config = s3_checkpoint.config()                  # CheckpointConfig("s3://<fresh bucket>/ckpt", ...)
        XennaExecutor(checkpoint=config)

``s3_server`` (session): the running server; ``stop()`` kills it (SIGKILL; its data is lost, as
moto keeps everything in memory), ``start()`` starts it again on the same port, ``freeze()`` /
``thaw()`` stop and continue it (SIGSTOP / SIGCONT: the endpoint stops answering but keeps its
data), ``ensure_running()`` restores a usable server after any of these. ``storage_options``
is what s3fs needs (endpoint, key, secret, region). ``s3_checkpoint`` (function): a fresh bucket
per test and helpers to build ``CheckpointConfig`` objects on it.

Real components only: the tests reach the server through s3fs, as a user would.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REGION = "us-east-1"
KEY = "testing"
SECRET = "testing"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class S3Server:
    """moto's server as a child process (see the module docstring)."""

    port: int
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    frozen: bool = False

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def storage_options(self) -> dict[str, Any]:
        """fsspec/s3fs options reaching this server."""
        return {
            "endpoint_url": self.endpoint_url,
            "key": KEY,
            "secret": SECRET,
            "client_kwargs": {"region_name": REGION},
        }

    def start(self, timeout_s: float = 30.0) -> None:
        """Start the server (on ``port``) and wait until it answers."""
        if self.process is not None and self.process.poll() is None:
            return
        env = {**os.environ, "AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": REGION}
        log = open(self.log_path, "ab")  # noqa: SIM115 (kept open by the child)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        log.close()
        self.frozen = False
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"moto server exited with {self.process.returncode}; see {self.log_path}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"moto server did not start within {timeout_s} s; see {self.log_path}")

    def stop(self) -> None:
        """Kill the server (SIGKILL); everything it stored is lost."""
        proc = self.process
        if proc is None:
            return
        if self.frozen:
            os.kill(proc.pid, signal.SIGCONT)
        proc.kill()
        proc.wait(timeout=30)
        self.process = None
        self.frozen = False

    def freeze(self) -> None:
        """Stop answering (SIGSTOP) while keeping the data; ``thaw`` continues."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        if self.process is not None and self.frozen:
            os.kill(self.process.pid, signal.SIGCONT)
        self.frozen = False

    def ensure_running(self) -> None:
        self.thaw()
        if self.process is None or self.process.poll() is not None:
            self.process = None
            self.start()

    def client(self) -> Any:
        """A boto3 S3 client for this server (bucket set-up in tests)."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=KEY,
            aws_secret_access_key=SECRET,
            region_name=REGION,
        )

    def make_bucket(self, name: str | None = None) -> str:
        name = name or f"ckpt-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name


@dataclass
class S3Checkpoint:
    """A fresh bucket on the test server and ``CheckpointConfig`` helpers."""

    server: S3Server
    bucket: str
    cache_root: Path
    _caches: int = field(default=0)

    @property
    def storage_options(self) -> dict[str, Any]:
        return self.server.storage_options

    def url(self, prefix: str = "ckpt") -> str:
        return f"s3://{self.bucket}/{prefix}"

    def new_cache_dir(self) -> Path:
        """A new, empty node-local cache directory (as on a new node)."""
        self._caches += 1
        return self.cache_root / f"cache-{self._caches}"

    def config(self, prefix: str = "ckpt", cache_dir: str | os.PathLike | None = None) -> Any:
        """``CheckpointConfig`` of ``s3://<bucket>/<prefix>`` (a new cache dir unless given)."""
        from nemo_curator.resumability import CheckpointConfig

        return CheckpointConfig(
            self.url(prefix), storage_options=self.storage_options, cache_dir=cache_dir or self.new_cache_dir()
        )

    def keys(self, prefix: str = "") -> list[str]:
        """Every object key in the bucket under ``prefix`` (via boto3, for assertions)."""
        client = self.server.client()
        out: list[str] = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            out.extend(o["Key"] for o in page.get("Contents", []))
        return out


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """moto's standalone S3 server for the session (a subprocess; see ``S3Server``)."""
    pytest.importorskip("moto.server", reason="moto[server] is in the test extra")
    pytest.importorskip("s3fs", reason="s3fs is in the test extra")
    server = S3Server(port=free_port(), log_path=tmp_path_factory.mktemp("moto") / "moto.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_checkpoint(s3_server: S3Server, tmp_path: Path) -> S3Checkpoint:
    """A fresh bucket per test (the server is made usable first if an earlier test stopped it)."""
    s3_server.ensure_running()
    return S3Checkpoint(server=s3_server, bucket=s3_server.make_bucket(), cache_root=tmp_path / "caches")
