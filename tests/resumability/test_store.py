"""The checkpoint store on a local directory: persistence, restarts, writers, batch tags, cache growth, inspection."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import lmdb
import pytest
from hypothesis import given
from hypothesis import strategies as st

from nemo_curator.resumability.digests import floor_cost
from nemo_curator.resumability.durable import read_checkpoint
from nemo_curator.resumability.errors import CheckpointError, FingerprintMismatchError
from nemo_curator.resumability.inspect import checkpoint_status, describe_checkpoint
from nemo_curator.resumability.keys import (
    completion_record_size,
    decode_completion_record,
    decode_recent_record,
    encode_completion_records,
    encode_recent_record,
    source_id_from_key,
    source_key,
)
from nemo_curator.resumability.location import LocalLocation
from nemo_curator.resumability.report import Report
from nemo_curator.resumability.store import CheckpointStore
from nemo_curator.tasks.credit import Credit
from tests.resumability.examples import budget
from tests.resumability.trees import source_id


def split_reports(sid: str, n: int) -> list[Report]:
    return [Report(sid, f"{sid}_{i}", c) for i, c in enumerate(Credit.one().split(n))]


def test_reopened_writer_resumes_in_flight_state_exactly(tmp_path: Path) -> None:
    a, b = source_id(1), source_id(2)
    ra, rb = split_reports(a, 3), split_reports(b, 4)
    with CheckpointStore.open(tmp_path, fingerprint="f", writer_id="run") as store:
        store.apply([ra[0], rb[0], rb[1]], sender="d", seq=1)
        before = store.ledger.in_flight()
    with CheckpointStore.open(tmp_path, fingerprint="f", writer_id="run") as store:
        assert store.ledger.in_flight() == before == {a: ra[0].credit, b: rb[0].credit + rb[1].credit}
        update = store.apply([ra[0], ra[1], ra[2], rb[2]], sender="d", seq=2)
        assert update is not None and update.completed == [a] and update.duplicates == 1
        assert store.ledger.in_flight() == {b: rb[0].credit + rb[1].credit + rb[2].credit}
    status = checkpoint_status(tmp_path)
    assert status["completed"] == [a] and status["in_flight_sources"] == 1


def test_batch_tags_make_resent_batches_no_ops_also_after_a_restart(tmp_path: Path) -> None:
    a = source_id(3)
    reports = split_reports(a, 2)
    with CheckpointStore.open(tmp_path, fingerprint="f", writer_id="run") as store:
        assert store.apply(reports[:1], sender="d", seq=7) is not None
        assert store.apply(reports[:1], sender="d", seq=7) is None
        assert store.apply(reports[:1], sender="d", seq=6) is None
        assert store.last_seq("d") == 7
    with CheckpointStore.open(tmp_path, fingerprint="f", writer_id="run") as store:
        assert store.last_seq("d") == 7
        assert store.apply(reports[:1], sender="d", seq=7) is None
        assert store.ledger.stats.reports == 0
        update = store.apply(reports[1:], sender="d", seq=8)
        assert update is not None and update.completed == [a]


def test_new_run_sees_union_of_completions_but_not_in_flight_state(tmp_path: Path) -> None:
    a, b, c = source_id(4), source_id(5), source_id(6)
    with CheckpointStore.open(tmp_path, fingerprint="f", writer_id="run-1") as first:
        first.apply([Report(a, a, Credit.one()), Report(c, c, Credit.one(), failure="disk full")])
        first.apply(split_reports(b, 2)[:1])
    with CheckpointStore.open(tmp_path, fingerprint="f", writer_id="run-2") as second:
        assert second.ledger.is_completed(a)
        assert not second.ledger.is_completed(b) and second.ledger.in_flight_count == 0
        assert not second.ledger.is_failed_this_run(c)  # failed earlier: redone in this run
        assert second.status().failed_sources == 1
        second.apply([Report(c, c, Credit.one())])  # now it completes
        assert second.status().failed_sources == 0
    status = checkpoint_status(tmp_path)
    assert status["completed"] == sorted([a, c])
    assert status["failed"] == {}  # failures of sources completed anywhere are not listed
    assert status["in_flight_sources"] == 1  # b: partial credit in run-1, neither complete nor failed
    assert [w["writer_id"] for w in status["writers"]] == ["run-1", "run-2"]
    assert json.loads(json.dumps(status)) == status


def test_map_grows_when_full_and_nothing_is_lost(tmp_path: Path) -> None:
    ids = [source_id(10_000 + i) for i in range(3000)]
    with CheckpointStore.open(tmp_path, fingerprint="f", writer_id="run", map_size=64 << 10) as store:
        for start in range(0, len(ids), 500):
            store.apply([Report(s, f"{s}_0", Credit.make(1, 1)) for s in ids[start : start + 500]])
            store.apply([Report(s, f"{s}_1", Credit.make(1, 1)) for s in ids[start : start + 250]])
        env = store._require_env()
        assert env.info()["map_size"] > 64 << 10
    with CheckpointStore.open(tmp_path, fingerprint="f", writer_id="run") as store:
        assert store.ledger.completed_count == 1500
        assert store.ledger.in_flight_count == 1500


def test_reload_rebuilds_memory_from_disk(tmp_path: Path) -> None:
    a = source_id(7)
    reports = split_reports(a, 2)
    with CheckpointStore.open(tmp_path, fingerprint="f", writer_id="run") as store:
        store.apply(reports[:1])
        store.ledger.apply(reports[1:])  # applied in memory only (as if the commit had failed)
        assert store.ledger.is_completed(a)
        store.reload()
        assert not store.ledger.is_completed(a)
        assert store.ledger.in_flight() == {a: reports[0].credit}


def test_fingerprint_is_checked_against_the_latest_run(tmp_path: Path) -> None:
    description = [{"index": 0, "class": "m.A", "name": "a", "config": {"x": 1}, "digest": "0"}]
    with CheckpointStore.open(tmp_path, fingerprint="old", description=description, writer_id="run-1"):
        pass
    changed = [{"index": 0, "class": "m.A", "name": "a", "config": {"x": 2}, "digest": "1"}]
    with pytest.raises(FingerprintMismatchError) as err:
        CheckpointStore.open(tmp_path, fingerprint="new", description=changed, writer_id="run-2")
    message = str(err.value)
    assert str(tmp_path) in message and "old" in message and "new" in message
    assert "stage 0 ('a'): x: 1 -> 2" in message
    assert "allow_fingerprint_change=True" in message and "new (empty) checkpoint location" in message
    assert not (tmp_path / "ledger" / "run-2").exists()
    with CheckpointStore.open(
        tmp_path, fingerprint="new", description=changed, writer_id="run-2", allow_fingerprint_change=True
    ) as store:
        assert store.meta["overrode_fingerprint"] == "old"
    # The checkpoint now belongs to the new pipeline: no override needed any more, the old one is refused.
    CheckpointStore.open(tmp_path, fingerprint="new", writer_id="run-3").close()
    with pytest.raises(FingerprintMismatchError):
        CheckpointStore.open(tmp_path, fingerprint="old", writer_id="run-4")


def test_a_run_cannot_reopen_its_file_with_another_pipeline(tmp_path: Path) -> None:
    CheckpointStore.open(tmp_path, fingerprint="a", writer_id="run").close()
    with pytest.raises(FingerprintMismatchError, match="cannot change while it runs"):
        CheckpointStore.open(tmp_path, fingerprint="b", writer_id="run", verify_fingerprint=False)


def test_recent_completion_log_is_pruned_to_the_digest_budget(tmp_path: Path) -> None:
    budget = 5 * floor_cost(1)  # the 5 newest one-task digests at their narrowest width
    with CheckpointStore.open(tmp_path, fingerprint="f", writer_id="run", digest_budget=budget) as store:
        for i in range(60):
            sid = source_id(500 + i)
            store.apply([Report(sid, sid, Credit.one())])
        assert 1 <= store.ledger.recent_count <= 5 and store.ledger.digests.bytes_used <= budget
    recent = read_checkpoint(LocalLocation(tmp_path), recent_limit=10**6).states["run"].recent
    kept = [source_id_from_key(k) for k in recent]
    assert kept[-1] == source_id(559)
    with CheckpointStore.open(tmp_path, fingerprint="f", writer_id="run", digest_budget=budget) as store:
        assert 1 <= store.ledger.recent_count <= 5
        sid = source_id(559)
        update = store.apply([Report(sid, sid, Credit.one())])
        assert update is not None and update.duplicates == 1 and not update.anomalies


def test_a_checkpoint_in_the_old_lmdb_format_is_refused_naming_the_fix(tmp_path: Path) -> None:
    (tmp_path / "ledger").mkdir()
    env = lmdb.open(str(tmp_path / "ledger" / "host-1-abc.lmdb"), subdir=False)
    env.close()
    for call in (
        lambda: CheckpointStore.open(tmp_path, fingerprint="f", writer_id="run"),
        lambda: checkpoint_status(tmp_path),
    ):
        with pytest.raises(CheckpointError, match="older version") as err:
            call()
        assert str(tmp_path) in str(err.value) and "new checkpoint location" in str(err.value)
    assert sorted(p.name for p in (tmp_path / "ledger").iterdir()) == ["host-1-abc.lmdb", "host-1-abc.lmdb-lock"]


def test_temporary_objects_are_ignored(tmp_path: Path) -> None:
    a = source_id(30)
    with CheckpointStore.open(tmp_path, fingerprint="f", writer_id="run") as store:
        store.apply([Report(a, a, Credit.one())])
    (tmp_path / "ledger" / "run" / ".tmp-seg-000000000009-0123456789abcdef.rec.1234").write_bytes(b"torn")
    status = checkpoint_status(tmp_path)
    assert [w["writer_id"] for w in status["writers"]] == ["run"] and status["completed"] == [a]
    with CheckpointStore.open(tmp_path, fingerprint="f", writer_id="run-2") as store:
        assert store.ledger.completed_among([a]) == [a]


def test_status_can_be_read_while_the_store_is_open(tmp_path: Path) -> None:
    a = source_id(8)
    with CheckpointStore.open(tmp_path, fingerprint="f", writer_id="run", owner={"host": "elsewhere", "pid": 1}) as s:
        s.apply([Report(a, a, Credit.one())])
        status = checkpoint_status(tmp_path)
        assert status["completed"] == [a]
        assert status["writers"][0]["alive"] is None  # another host: unknown
        assert status["writers"][0]["closed"] is None
    closed = checkpoint_status(tmp_path)["writers"][0]
    assert closed["closed"] is not None and closed["alive"] is False


def test_describe_checkpoint(tmp_path: Path) -> None:
    a, b = source_id(20), source_id(21)
    with CheckpointStore.open(tmp_path, fingerprint="f", writer_id="run") as store:
        store.apply([Report(a, a, Credit.one()), Report(b, b, Credit.one(), failure="ValueError: bad row")])
    text = describe_checkpoint(tmp_path)
    assert "1 source(s) complete, 1 failed, 0 in flight" in text
    assert "pipeline fingerprint: f" in text and f"failed {b}: ValueError: bad row" in text


def test_inspecting_a_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        checkpoint_status(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="is a file"):
        checkpoint_status(tmp_path / "file")
    assert not (tmp_path / "nope").exists()


source_ids = st.one_of(
    st.binary(min_size=16, max_size=16).map(bytes.hex),
    st.text(min_size=1, max_size=150),
    st.text(alphabet="0123456789abcdefABCDEF ", min_size=32, max_size=32),
)


@budget()
@given(st.lists(source_ids, min_size=1, max_size=40, unique=True))
def test_source_keys_are_injective_and_round_trip(ids: list[str]) -> None:
    keys = [source_key(s) for s in ids]
    assert len(set(keys)) == len(ids)
    for sid, key in zip(ids, keys, strict=True):
        if len(sid.encode()) <= 100:
            assert source_id_from_key(key) == sid


@budget(30)
@given(st.lists(source_ids, min_size=1, max_size=20, unique=True))
def test_any_source_id_survives_the_store(ids: list[str]) -> None:
    short = [s for s in ids if len(s.encode()) <= 100]
    with tempfile.TemporaryDirectory() as tmp:
        with CheckpointStore.open(tmp, fingerprint="f", writer_id="run") as store:
            store.apply([Report(s, "t", Credit.one()) for s in ids])
        with CheckpointStore.open(tmp, fingerprint="f", writer_id="run-2") as store:
            assert store.ledger.completed_among(ids) == ids
        listed = checkpoint_status(tmp)["completed"]
        assert len(listed) == len(ids) and set(short) <= set(listed)


@st.composite
def recent_entries(draw: st.DrawFn) -> tuple[bytes, bytes]:
    sid = draw(source_ids)
    digest = draw(st.lists(st.integers(0, 2**64 - 1), max_size=6))
    return source_key(sid), b"".join(v.to_bytes(8, "little") for v in sorted(digest))


@budget()
@given(st.lists(recent_entries(), max_size=8))
def test_recent_completion_records_round_trip(entries: list[tuple[bytes, bytes]]) -> None:
    assert decode_recent_record(encode_recent_record(entries)) == entries


@budget()
@given(st.lists(st.one_of(st.binary(min_size=16, max_size=16), st.binary(min_size=1, max_size=40)), max_size=30))
def test_completion_records_round_trip(keys: list[bytes]) -> None:
    records = encode_completion_records(123, keys)
    decoded = [decode_completion_record(r) for r in records]
    assert all(when == 123 for when, _ in decoded)
    assert sorted(k for _, ks in decoded for k in ks) == sorted(keys)
    assert sum(completion_record_size(r) for r in records) == len(keys)


def test_the_ledger_is_pure_and_inspection_needs_no_ray() -> None:
    code = (
        "import sys\n"
        "import nemo_curator.resumability.ledger\n"
        "assert 'lmdb' not in sys.modules and 'ray' not in sys.modules, sorted(sys.modules)\n"
        "import nemo_curator.resumability.inspect, nemo_curator.resumability.store\n"
        "assert 'ray' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
