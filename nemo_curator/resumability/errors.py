"""Errors of the resumability layer (importable without Ray or LMDB)."""

from __future__ import annotations


class CheckpointError(Exception):
    """A checkpoint directory cannot be used; the message names the path and the fix."""


class FingerprintMismatchError(CheckpointError):
    """The checkpoint was written by a different pipeline (see ``nemo_curator.resumability.fingerprint``)."""

    def __init__(self, message: str, *, directory: str, stored: str, current: str) -> None:
        super().__init__(message)
        self.directory = directory
        self.stored = stored
        self.current = current

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_mismatch, (str(self), self.directory, self.stored, self.current))


def _rebuild_mismatch(message: str, directory: str, stored: str, current: str) -> FingerprintMismatchError:
    return FingerprintMismatchError(message, directory=directory, stored=stored, current=current)


class LedgerUnavailableError(RuntimeError):
    """The ledger actor died for good (restarts exhausted); the run cannot record progress."""
