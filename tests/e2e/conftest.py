"""Fixtures of the end-to-end tests: the S3 test server (see ``tests/s3_server.py``)."""

from tests.s3_server import s3_checkpoint, s3_server

__all__ = ["s3_checkpoint", "s3_server"]
