"""Checkpoint location and cache validation: clear errors naming the path and the fix, nothing deleted."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from loguru import logger

from nemo_curator.resumability.checkpoint import (
    ALLOW_NETWORK_ENV,
    filesystem_type,
    network_filesystem_type,
    parse_mount_table,
    validate_cache_dir,
    validate_checkpoint_dir,
)
from nemo_curator.resumability.errors import CheckpointError
from nemo_curator.resumability.inspect import checkpoint_status
from nemo_curator.resumability.objects import DIGEST_SIZE, RECORD_FORMAT
from nemo_curator.resumability.report import Report
from nemo_curator.resumability.store import CheckpointStore
from nemo_curator.tasks.credit import Credit

MOUNTINFO = r"""22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard
30 27 0:27 / /dev/shm rw,relatime - tmpfs tmpfs rw,size=24683652k
51 27 0:45 / /mnt/data rw,relatime shared:12 - nfs4 server:/export rw,vers=4.2
52 51 0:46 / /mnt/data/local rw,relatime - ext4 /dev/vdb rw
53 27 0:47 / /home/user/remote rw,nosuid,nodev,relatime - fuse.sshfs user@host:/ rw,user_id=0
54 27 0:48 / /srv/with\040space rw,relatime - cifs //nas/share rw
55 27 0:49 / /scratch rw,relatime master:3 - lustre 10.0.0.1@tcp:/fs rw
56 27 0:50 / /var/lib/docker/overlay rw,relatime - overlay overlay rw,lowerdir=/a
"""

PROC_MOUNTS = """/dev/vda / ext4 rw,relatime 0 0
server:/export /mnt/nfs nfs rw,vers=3 0 0
ceph-mon:/ /mnt/ceph ceph rw,name=admin 0 0
"""


def test_mount_table_parsing_handles_both_formats_and_escapes() -> None:
    mounts = dict(parse_mount_table(MOUNTINFO))
    assert mounts["/mnt/data"] == "nfs4"
    assert mounts["/srv/with space"] == "cifs"
    assert dict(parse_mount_table(PROC_MOUNTS))["/mnt/ceph"] == "ceph"


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/mnt/data/ckpt", "nfs4"),
        ("/mnt/data", "nfs4"),
        ("/mnt/data/local/ckpt", None),  # a local disk mounted inside the NFS tree (longest prefix wins)
        ("/mnt/database/ckpt", None),  # a prefix of the name is not a parent directory
        ("/home/user/remote/x", "fuse.sshfs"),
        ("/srv/with space/ckpt", "cifs"),
        ("/scratch/run1", "lustre"),
        ("/var/lib/docker/overlay/ckpt", None),
        ("/dev/shm/ckpt", None),
        ("/tmp/ckpt", None),
    ],
)
def test_network_filesystem_detection(path: str, expected: str | None) -> None:
    assert network_filesystem_type(path, MOUNTINFO) == expected


def test_network_filesystem_detection_in_proc_mounts_format() -> None:
    assert network_filesystem_type("/mnt/nfs/a/b", PROC_MOUNTS) == "nfs"
    assert network_filesystem_type("/mnt/ceph", PROC_MOUNTS) == "ceph"
    assert filesystem_type("/home", PROC_MOUNTS) == "ext4"


def test_this_machines_temporary_directory_is_local(tmp_path: Path) -> None:
    assert filesystem_type(tmp_path) is not None
    assert network_filesystem_type(tmp_path) is None


def _nfs_table_for(path: Path) -> str:
    return f"1 0 0:1 / / rw - ext4 /dev/vda rw\n2 1 0:2 / {path} rw - nfs4 srv:/x rw\n"


def test_a_network_cache_dir_is_refused_unless_explicitly_allowed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ALLOW_NETWORK_ENV, raising=False)
    with pytest.raises(CheckpointError) as err:
        validate_cache_dir(tmp_path, mount_table=_nfs_table_for(tmp_path))
    message = str(err.value)
    assert str(tmp_path) in message and "'nfs4'" in message
    assert "cache_dir=" in message and f"{ALLOW_NETWORK_ENV}=1" in message
    monkeypatch.setenv(ALLOW_NETWORK_ENV, "1")
    warnings: list[str] = []
    sink = logger.add(lambda m: warnings.append(str(m)), level="WARNING")
    try:
        assert validate_cache_dir(tmp_path, mount_table=_nfs_table_for(tmp_path)) == tmp_path.resolve()
    finally:
        logger.remove(sink)
    assert any("nfs4" in w and ALLOW_NETWORK_ENV in w for w in warnings)


def test_a_checkpoint_on_a_network_filesystem_is_accepted(tmp_path: Path) -> None:
    """The checkpoint holds only write-once objects (fsync + rename): NFS/Lustre are fine; only the cache is local."""
    assert "mount_table" not in validate_checkpoint_dir.__code__.co_varnames
    assert validate_checkpoint_dir(tmp_path) == tmp_path.resolve()


def test_missing_directory_is_created(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "ckpt"
    assert validate_checkpoint_dir(target) == target.resolve()
    assert (target / "ledger").is_dir()
    assert list((target / "ledger").iterdir()) == []  # the write probe leaves nothing behind


def test_a_file_is_not_a_checkpoint_directory(tmp_path: Path) -> None:
    target = tmp_path / "ckpt"
    target.write_text("my notes")
    with pytest.raises(CheckpointError) as err:
        validate_checkpoint_dir(target)
    assert str(target) in str(err.value) and "is a file" in str(err.value) and "directory path" in str(err.value)
    assert target.read_text() == "my notes"


def test_a_parent_that_is_a_file_is_reported(tmp_path: Path) -> None:
    blocker = tmp_path / "data.jsonl"
    blocker.write_text("{}\n")
    with pytest.raises(CheckpointError) as err:
        validate_checkpoint_dir(blocker / "ckpt")
    assert f"{blocker} is a file" in str(err.value)
    assert blocker.read_text() == "{}\n"


def _validate(path: Path) -> str:
    try:
        validate_checkpoint_dir(path)
    except CheckpointError as exc:
        return str(exc)
    return ""


def _validate_as_unprivileged_user(path: Path) -> str:
    """Run the validation where permissions apply (as ``nobody`` when we are root); returns the error."""
    return _as_unprivileged_user(lambda: _validate(path))


def _as_unprivileged_user(fn: Callable[[], str]) -> str:
    """``fn()`` in a forked child that dropped root privileges (directly when we are not root)."""
    if os.geteuid() != 0:
        return fn()
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: drop privileges, validate, report through the pipe, exit without cleanup
        code = 0
        try:
            os.close(read_fd)
            os.setgid(65534)
            os.setuid(65534)
            os.write(write_fd, fn().encode())
        except BaseException as exc:  # report anything unexpected to the parent instead of hanging
            os.write(write_fd, f"UNEXPECTED {type(exc).__name__}: {exc}".encode())
            code = 1
        finally:
            os.close(write_fd)
            os._exit(code)
    os.close(write_fd)
    chunks = []
    while chunk := os.read(read_fd, 65536):
        chunks.append(chunk)
    os.close(read_fd)
    os.waitpid(pid, 0)
    return b"".join(chunks).decode()


@pytest.fixture
def open_base() -> Iterator[Path]:
    """A directory every user may enter (pytest's own temporary root is private to its owner)."""
    base = Path(tempfile.mkdtemp(prefix="ckpt-perm-"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        for path in [base, *base.rglob("*")]:
            if path.is_dir():
                path.chmod(0o755)
        shutil.rmtree(base)


def test_a_directory_that_cannot_be_created_is_reported(open_base: Path) -> None:
    locked = open_base / "locked"
    locked.mkdir(mode=0o555)
    locked.chmod(0o555)
    message = _validate_as_unprivileged_user(locked / "ckpt")
    assert str(locked / "ckpt") in message and "fix the permissions" in message, message
    assert not (locked / "ckpt").exists()


def test_an_existing_unwritable_directory_is_reported(open_base: Path) -> None:
    existing = open_base / "existing"
    (existing / "ledger").mkdir(parents=True)
    existing.chmod(0o555)
    (existing / "ledger").chmod(0o555)
    message = _validate_as_unprivileged_user(existing)
    assert "is not writable" in message and str(existing) in message, message


def test_a_directory_that_cannot_be_entered_is_reported(open_base: Path) -> None:
    private = open_base / "private"
    private.mkdir()
    private.chmod(0o700)
    message = _validate_as_unprivileged_user(private / "ckpt")
    assert str(private / "ckpt") in message and "Permission denied" in message, message


def _one_segment_checkpoint(tmp_path: Path) -> Path:
    sid = "ef" * 16
    with CheckpointStore.open(tmp_path, fingerprint="f", writer_id="run", compact_every=10**6) as store:
        store.apply([Report(sid, "half", Credit.make(1, 1))])
        segment = next((tmp_path / "ledger" / "run").glob("seg-*.rec"))
        store._log = None  # no closing snapshot: keep the segment as the only record of the batch
    return segment


@pytest.mark.parametrize("damage", ["garbage", "truncated", "flipped"])
def test_a_corrupt_object_is_refused_naming_it_and_kept(tmp_path: Path, damage: str) -> None:
    segment = _one_segment_checkpoint(tmp_path)
    data = segment.read_bytes()
    payload = {
        "garbage": os.urandom(2000),
        "truncated": data[: len(data) // 2],
        "flipped": data[:20] + bytes([data[20] ^ 1]) + data[21:],
    }[damage]
    segment.write_bytes(payload)
    for call in (lambda: CheckpointStore.open(tmp_path, fingerprint="f"), lambda: checkpoint_status(tmp_path)):
        with pytest.raises(CheckpointError) as err:
            call()
        message = str(err.value)
        assert str(segment) in message and "corrupt" in message and "Fix:" in message
    assert segment.read_bytes() == payload


def test_an_object_from_a_newer_version_is_refused(tmp_path: Path) -> None:
    segment = _one_segment_checkpoint(tmp_path)
    body = bytearray(segment.read_bytes()[:-DIGEST_SIZE])
    body[4] = RECORD_FORMAT + 1
    segment.write_bytes(bytes(body) + hashlib.blake2b(bytes(body), digest_size=DIGEST_SIZE).digest())
    with pytest.raises(CheckpointError, match="upgrade nemo_curator"):
        checkpoint_status(tmp_path)


def test_the_ledger_path_being_a_file_is_reported(tmp_path: Path) -> None:
    (tmp_path / "ledger").write_text("")
    with pytest.raises(CheckpointError, match="ledger is a file"):
        validate_checkpoint_dir(tmp_path)


def test_unexpected_files_are_left_alone_with_a_warning(tmp_path: Path) -> None:
    (tmp_path / "outputs.jsonl").write_text("{}\n")
    validate_checkpoint_dir(tmp_path)
    (tmp_path / "ledger" / "README").write_text("notes")
    warnings: list[str] = []
    sink = logger.add(lambda m: warnings.append(str(m)), level="WARNING")
    try:
        CheckpointStore.open(tmp_path, fingerprint="f").close()
    finally:
        logger.remove(sink)
    assert any("README" in w for w in warnings)
    assert (tmp_path / "outputs.jsonl").read_text() == "{}\n" and (tmp_path / "ledger" / "README").exists()


def test_validation_keeps_everything_recorded(tmp_path: Path) -> None:
    sid = "ab" * 16
    with CheckpointStore.open(tmp_path, fingerprint="f", writer_id="run") as store:
        store.apply([Report(sid, sid, Credit.one())])
    before = sorted((p.name, p.stat().st_size) for p in (tmp_path / "ledger").iterdir())
    for _ in range(3):
        validate_checkpoint_dir(tmp_path)
    assert sorted((p.name, p.stat().st_size) for p in (tmp_path / "ledger").iterdir()) == before
    assert checkpoint_status(tmp_path)["completed"] == [sid]


def test_status_of_a_read_only_checkpoint_can_be_read(open_base: Path) -> None:
    ckpt = open_base / "ckpt"
    sid = "cd" * 16
    with CheckpointStore.open(ckpt, fingerprint="f", writer_id="run") as store:
        store.apply([Report(sid, sid, Credit.one())])
    for lock in (ckpt / "ledger").glob("*-lock"):
        lock.unlink()
    ckpt.chmod(0o555)
    (ckpt / "ledger").chmod(0o555)
    output = _as_unprivileged_user(lambda: ",".join(checkpoint_status(ckpt)["completed"]))
    assert output == sid


def test_a_missing_ledger_module_fails_the_check_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ledger imports LMDB only when it starts, after the first work: a Python without it must still
    fail in the driver's check, naming the module and the fix, and write nothing."""
    import sys

    from nemo_curator.resumability.preflight import preflight

    monkeypatch.setitem(sys.modules, "lmdb", None)  # how Python marks a module that cannot be imported
    with pytest.raises(CheckpointError, match=r"the ledger needs lmdb.*pip install lmdb"):
        preflight(tmp_path / "ckpt", "fingerprint")
    assert not (tmp_path / "ckpt").exists() or not any((tmp_path / "ckpt").iterdir())
