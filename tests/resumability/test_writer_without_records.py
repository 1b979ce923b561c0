"""A run that records nothing (a rerun of a complete checkpoint) still leaves a readable record.

Such a run writes its header and, at close, a snapshot marking it closed. That snapshot must be an
object every reader understands: not an "unexpected object" warned about on every later start.
"""

from __future__ import annotations

from pathlib import Path

from nemo_curator.resumability.inspect import checkpoint_status, read_durable
from nemo_curator.resumability.report import Report
from nemo_curator.resumability.store import CheckpointStore
from nemo_curator.tasks.credit import Credit
from tests.resumability.trees import source_id


def test_a_run_that_recorded_nothing_closes_with_a_snapshot_readers_understand(tmp_path: Path) -> None:
    checkpoint = tmp_path / "ckpt"
    with CheckpointStore.open(checkpoint, fingerprint="f", writer_id="first") as store:
        store.apply([Report(source_id(1), "t", Credit.one())])
    CheckpointStore.open(checkpoint, fingerprint="f", writer_id="idle").close()

    read = read_durable(checkpoint)
    assert read.unexpected == []
    assert read.states["idle"].closed, "the idle run's close should be recorded"
    assert checkpoint_status(checkpoint)["completed_sources"] == 1


def test_a_snapshot_before_any_segment_does_not_hide_later_segments(tmp_path: Path) -> None:
    """A snapshot written before this writer's first segment must not cover (and so hide) that segment."""
    checkpoint = tmp_path / "ckpt"
    store = CheckpointStore.open(checkpoint, fingerprint="f", writer_id="w")
    store.compact()
    store.apply([Report(source_id(2), "t", Credit.one())])
    store._release()  # the process dies here: no closing snapshot
    assert checkpoint_status(checkpoint)["completed_sources"] == 1
