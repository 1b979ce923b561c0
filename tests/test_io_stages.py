"""File partitioning, JSONL reading and writing, and the document filters, called without Ray.

Stages run through ``StageAdapter`` (as every backend runs them) or through plain ``process``.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import signal
import string
import subprocess
import sys
import time
from pathlib import Path

import fsspec
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from nemo_curator.backends.stage_adapter import StageAdapter, StageError, StageRole
from nemo_curator.stages.base import ProcessingStage
from nemo_curator.stages.file_partitioning import FilePartitioningStage, parse_size
from nemo_curator.stages.text.filters import (
    RepeatedCharFilter,
    WordCountFilter,
    repeated_char_ratio,
    word_count,
)
from nemo_curator.stages.text.io.reader import JsonlReader, JsonlReaderStage
from nemo_curator.stages.text.io.temp_files import is_stale, sweep_stale_temp_files, temp_name, writer_identity
from nemo_curator.stages.text.io.writer import JsonlWriter
from nemo_curator.tasks import DocumentBatch, EmptyTask, FileGroupTask, Task

# -- helpers ------------------------------------------------------------------------------


def run_chain(stages: list[ProcessingStage], tasks: list[Task] | None = None) -> list[Task]:
    """Run stages one after the other through adapters; the first is the source, the last the sink."""
    current: list[Task] = tasks if tasks is not None else [EmptyTask(task_id="init0")]
    for i, stage in enumerate(stages):
        role = StageRole(index=i, is_source=i == 0, is_sink=i == len(stages) - 1, tracked=True)
        current = StageAdapter(stage, role).process_batch(current)
    return current


def partition(stage: FilePartitioningStage) -> list[FileGroupTask]:
    out = run_chain([stage])
    assert all(isinstance(t, FileGroupTask) for t in out)
    return out  # type: ignore[return-value]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def make_tree(root: Path) -> list[Path]:
    """Five JSONL files across two folders, plus files the JSONL listing must skip."""
    files = [
        write_jsonl(root / "b.jsonl", [{"id": "b0", "text": "bee"}]),
        write_jsonl(root / "a.jsonl", [{"id": "a0", "text": "ay"}, {"id": "a1", "text": "ay ay"}]),
        write_jsonl(root / "sub" / "c.json", [{"id": "c0", "text": "see"}]),
        write_jsonl(root / "sub" / "d.jsonl", [{"id": "d0", "text": "dee"}]),
        write_jsonl(root / "sub" / "deeper" / "e.jsonl", [{"id": "e0", "text": "ee"}]),
    ]
    (root / "notes.txt").write_text("not data")
    write_jsonl(root / ".hidden.jsonl", [{"id": "h", "text": "hidden"}])
    write_jsonl(root / ".meta" / "x.jsonl", [{"id": "m", "text": "metadata dir"}])
    return sorted(files)


def batch(records: list[dict], task_id: str = "t0", dataset_name: str = "ds") -> DocumentBatch:
    task = DocumentBatch(dataset_name=dataset_name, data=pd.DataFrame(records))
    task.task_id = task_id
    return task


# -- FilePartitioningStage ----------------------------------------------------------------


def test_directory_is_listed_recursively_sorted_with_extension_filter(tmp_path: Path) -> None:
    files = make_tree(tmp_path)
    tasks = partition(FilePartitioningStage(str(tmp_path), file_extensions=[".jsonl", ".json"]))
    assert [t.data for t in tasks] == [[str(p)] for p in files]
    assert all(t.dataset_name == tmp_path.name for t in tasks)
    for task in tasks:
        (path,) = task.data
        st_ = os.stat(path)
        assert task._metadata["file_stats"] == {path: [st_.st_size, st_.st_mtime]}


def test_default_extensions_keep_every_visible_file(tmp_path: Path) -> None:
    files = make_tree(tmp_path)
    tasks = partition(FilePartitioningStage(tmp_path))  # a PathLike is accepted too
    listed = [p for t in tasks for p in t.data]
    assert listed == sorted([*map(str, files), str(tmp_path / "notes.txt")])


def test_glob_and_list_inputs(tmp_path: Path) -> None:
    files = make_tree(tmp_path)
    globbed = partition(FilePartitioningStage(str(tmp_path / "sub" / "*.json*")))
    assert [t.data for t in globbed] == [[str(tmp_path / "sub" / "c.json")], [str(tmp_path / "sub" / "d.jsonl")]]
    recursive = partition(FilePartitioningStage(str(tmp_path / "**" / "*.jsonl")))
    assert [p for t in recursive for p in t.data] == [str(p) for p in files if p.suffix == ".jsonl"]
    listed = partition(FilePartitioningStage([str(files[3]), str(files[0]), str(tmp_path / "sub"), str(files[0])]))
    # A list is expanded, de-duplicated and sorted; a directory in it is listed (all files).
    assert [p for t in listed for p in t.data] == sorted({str(files[0]), *(str(p) for p in files if "sub" in str(p))})


def test_files_per_partition_groups_in_sorted_order(tmp_path: Path) -> None:
    files = [write_jsonl(tmp_path / f"f{i}.jsonl", [{"i": i}]) for i in range(7)]
    tasks = partition(FilePartitioningStage(str(tmp_path), files_per_partition=3))
    assert [t.data for t in tasks] == [[str(p) for p in files[i : i + 3]] for i in (0, 3, 6)]
    assert [t._metadata["partition_index"] for t in tasks] == [0, 1, 2]
    assert all(set(t._metadata["file_stats"]) == set(t.data) for t in tasks)


def test_blocksize_groups_by_cumulative_size(tmp_path: Path) -> None:
    sizes = [400, 500, 200, 1500, 300, 300]
    for i, size in enumerate(sizes):
        (tmp_path / f"f{i}.bin").write_bytes(b"x" * size)
    tasks = partition(FilePartitioningStage(str(tmp_path), blocksize="1kB"))
    groups = [[os.path.basename(p) for p in t.data] for t in tasks]
    # 400+500 fits 1000; +200 would not. 1500 alone exceeds it and gets its own group.
    assert groups == [["f0.bin", "f1.bin"], ["f2.bin"], ["f3.bin"], ["f4.bin", "f5.bin"]]
    assert [len(t.data) for t in partition(FilePartitioningStage(str(tmp_path), blocksize=10**6))] == [6]


def test_parse_size() -> None:
    assert parse_size(123) == 123
    assert parse_size("128MB") == 128 * 10**6
    assert parse_size("1GiB") == 2**30
    assert parse_size("1.5kb") == 1500
    assert parse_size(" 64 KiB ") == 64 * 1024
    for bad in ("", "12 parsecs", "-5MB", "0", "MB"):
        with pytest.raises(ValueError):
            parse_size(bad)
    with pytest.raises(TypeError):
        parse_size(True)


def test_limit_caps_partitions(tmp_path: Path) -> None:
    files = [write_jsonl(tmp_path / f"f{i}.jsonl", [{"i": i}]) for i in range(5)]
    tasks = partition(FilePartitioningStage(str(tmp_path), files_per_partition=2, limit=2))
    assert [t.data for t in tasks] == [[str(files[0]), str(files[1])], [str(files[2]), str(files[3])]]
    assert tasks[0]._metadata["total_partitions"] == 3


def test_missing_local_paths_raise_at_construction(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="nope"):
        FilePartitioningStage(str(missing))
    write_jsonl(tmp_path / "a.jsonl", [{"x": 1}])
    with pytest.raises(FileNotFoundError, match=r"gone\.jsonl"):
        FilePartitioningStage([str(tmp_path / "a.jsonl"), str(tmp_path / "gone.jsonl")])
    with pytest.raises(FileNotFoundError, match=r"\*\.parquet"):
        FilePartitioningStage(str(tmp_path / "*.parquet"))
    with pytest.raises(FileNotFoundError, match="nope"):
        JsonlReader(str(missing))


def test_missing_path_at_process_time_names_stage_and_path(tmp_path: Path) -> None:
    target = tmp_path / "data"
    write_jsonl(target / "a.jsonl", [{"x": 1}])
    stage = FilePartitioningStage(str(target))
    (target / "a.jsonl").unlink()
    target.rmdir()
    with pytest.raises(StageError, match="file_partitioning") as info:
        partition(stage)
    assert isinstance(info.value.__cause__, FileNotFoundError)
    assert str(target) in str(info.value.__cause__)
    # Remote paths are only checked when the stage runs.
    remote = FilePartitioningStage("memory://no/such/dir")
    with pytest.raises(StageError) as info:
        partition(remote)
    assert isinstance(info.value.__cause__, FileNotFoundError)
    assert "memory://no/such/dir" in str(info.value.__cause__)


def test_directory_without_matching_files_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("x")
    write_jsonl(tmp_path / ".hidden" / "a.jsonl", [{"x": 1}])
    with pytest.raises(FileNotFoundError, match=r"holds no file with extension in \['\.jsonl'\]"):
        FilePartitioningStage(str(tmp_path), file_extensions=["jsonl"]).list_files()


def test_invalid_options_are_rejected(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "a.jsonl", [{"x": 1}])
    with pytest.raises(ValueError, match="not both"):
        FilePartitioningStage(str(tmp_path), files_per_partition=2, blocksize="1MB")
    with pytest.raises(ValueError, match="files_per_partition"):
        FilePartitioningStage(str(tmp_path), files_per_partition=0)
    with pytest.raises(ValueError, match="limit"):
        FilePartitioningStage(str(tmp_path), limit=0)
    with pytest.raises(ValueError, match="empty list"):
        FilePartitioningStage([])
    with pytest.raises(TypeError):
        FilePartitioningStage(42)  # type: ignore[arg-type]


def test_stage_declaration(tmp_path: Path) -> None:
    stage = FilePartitioningStage(str(tmp_path))
    assert stage.fingerprint_ignore == ("file_paths", "limit", "storage_options")
    assert "fingerprint_ignore" not in {f.name for f in dataclasses.fields(stage)}
    assert (stage.name, stage.resources.cpus, stage.batch_size) == ("file_partitioning", 0.5, 1)
    assert isinstance(stage, ProcessingStage) and not stage.has_setup()


def test_source_ids_are_stable_and_follow_file_content(tmp_path: Path) -> None:
    files = [write_jsonl(tmp_path / f"f{i}.jsonl", [{"i": i}]) for i in range(3)]
    first = {t.data[0]: t.task_id for t in partition(FilePartitioningStage(str(tmp_path)))}
    again = {t.data[0]: t.task_id for t in partition(FilePartitioningStage([str(p) for p in reversed(files)]))}
    assert first == again
    assert len(set(first.values())) == 3 and all(len(i) == 32 for i in first.values())
    # Rewrite one file in place with the same size: only the modification time differs.
    files[1].write_text(files[1].read_text().replace("1", "7"))
    st_ = os.stat(files[1])
    os.utime(files[1], ns=(st_.st_atime_ns, st_.st_mtime_ns + 5_000_000_000))
    after = {t.data[0]: t.task_id for t in partition(FilePartitioningStage(str(tmp_path)))}
    assert after[str(files[1])] != first[str(files[1])]
    assert {k: v for k, v in after.items() if k != str(files[1])} == {
        k: v for k, v in first.items() if k != str(files[1])
    }


def test_fsspec_memory_filesystem_roundtrip() -> None:
    fs = fsspec.filesystem("memory")
    root = "/io-stages-test"
    fs.pipe(f"{root}/in/a.jsonl", b'{"id": "a", "text": "one two"}\n')
    fs.pipe(f"{root}/in/b.jsonl", b'{"id": "b", "text": "three"}\n')
    try:
        reader = JsonlReader(f"memory://{root}/in", files_per_partition=2)
        writer = JsonlWriter(f"memory://{root}/out")
        out = run_chain([*reader.decompose(), writer])
        assert len(out) == 1
        (written,) = out[0].data
        assert written == f"memory://{root}/out/{out[0].task_id}.jsonl"
        with fsspec.open(written, "rb") as f:
            assert f.read() == b'{"id":"a","text":"one two"}\n{"id":"b","text":"three"}\n'
        assert fs.ls(f"{root}/out", detail=False) == [f"{root}/out/{out[0].task_id}.jsonl"]
    finally:
        fs.rm(root, recursive=True)


# -- JsonlReader --------------------------------------------------------------------------


def test_reader_reads_a_group_into_one_batch_exactly(tmp_path: Path) -> None:
    a = write_jsonl(tmp_path / "a.jsonl", [{"id": "001", "v": 0.1234567890123456, "text": "ü"}, {"id": "002"}])
    b = tmp_path / "b.jsonl.gz"
    with gzip.open(b, "wt", encoding="utf-8") as f:
        f.write(json.dumps({"id": "003", "v": 2.5, "text": "gz"}) + "\n")
    task = FileGroupTask(dataset_name="mine", data=[str(a), str(b)], _metadata={"file_stats": {"x": [1, 2]}})
    out = JsonlReaderStage().process(task)
    assert isinstance(out, DocumentBatch)
    assert out.dataset_name == "mine"
    frame = out.to_pandas()
    assert list(frame["id"]) == ["001", "002", "003"]  # strings stay strings
    assert frame["v"].iloc[0] == 0.1234567890123456
    assert list(frame.index) == [0, 1, 2]
    assert out._metadata["source_files"] == [str(a), str(b)]
    assert "file_stats" not in out._metadata


def test_reader_fields_and_empty_groups(tmp_path: Path) -> None:
    a = write_jsonl(tmp_path / "a.jsonl", [{"id": "1", "text": "t", "extra": 5}])
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    out = JsonlReaderStage(fields=["text", "id"]).process(FileGroupTask("d", [str(empty), str(a)]))
    assert isinstance(out, DocumentBatch)
    assert list(out.to_pandas().columns) == ["text", "id"]
    assert JsonlReaderStage().process(FileGroupTask("d", [str(empty)])) is None
    with pytest.raises(ValueError, match=r"\['missing'\] not found"):
        JsonlReaderStage(fields=["missing"]).process(FileGroupTask("d", [str(a)]))


def test_jsonl_reader_decomposes_into_partitioning_and_reading(tmp_path: Path) -> None:
    make_tree(tmp_path)
    reader = JsonlReader(str(tmp_path), files_per_partition=2, fields=["id"], limit=2)
    part, read = reader.decompose()
    assert isinstance(part, FilePartitioningStage) and isinstance(read, JsonlReaderStage)
    assert part.file_extensions == [".jsonl", ".json"]
    assert (part.files_per_partition, part.limit, read.fields) == (2, 2, ["id"])
    out = run_chain([part, read])
    assert [list(t.to_pandas()["id"]) for t in out] == [["a0", "a1", "b0"], ["c0", "d0"]]


# -- JsonlWriter --------------------------------------------------------------------------


def test_writer_names_files_from_task_ids_and_leaves_no_temp_files(tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    writer = JsonlWriter(str(out_dir))
    results = [
        writer.process(batch([{"id": 1, "text": "héllo"}], task_id="abc", dataset_name="ds")),
        writer.process(batch([{"id": 2, "text": "x"}, {"id": 3, "text": "y"}], task_id="def_1")),
    ]
    assert sorted(os.listdir(out_dir)) == ["abc.jsonl", "def_1.jsonl"]  # nothing hidden left behind
    assert [r.data for r in results] == [[str(out_dir / "abc.jsonl")], [str(out_dir / "def_1.jsonl")]]
    assert [r._metadata["num_records"] for r in results] == [1, 2]
    assert results[0].dataset_name == "ds" and isinstance(results[0], FileGroupTask)
    assert (out_dir / "abc.jsonl").read_bytes() == '{"id":1,"text":"héllo"}\n'.encode()


def test_writer_output_is_byte_identical_on_rewrite(tmp_path: Path) -> None:
    records = [{"id": f"{i:03d}", "score": i / 7, "text": f"doc {i}", "tags": ["a", "b"][: i % 3]} for i in range(50)]
    writer = JsonlWriter(str(tmp_path))
    writer.process(batch(records, task_id="same"))
    first = (tmp_path / "same.jsonl").read_bytes()
    JsonlWriter(str(tmp_path)).process(batch(records, task_id="same"))
    assert (tmp_path / "same.jsonl").read_bytes() == first
    assert os.listdir(tmp_path) == ["same.jsonl"]
    back = [json.loads(line) for line in first.decode().splitlines()]
    assert [r["id"] for r in back] == [r["id"] for r in records]
    assert list(back[0]) == ["id", "score", "text", "tags"]  # column order as in the batch


def test_writer_failure_leaves_no_temp_file(tmp_path: Path) -> None:
    (tmp_path / "t0.jsonl").mkdir()  # the final name is taken by a directory: the rename fails
    with pytest.raises(OSError):
        JsonlWriter(str(tmp_path)).process(batch([{"text": "x"}], task_id="t0"))
    assert os.listdir(tmp_path) == ["t0.jsonl"]


_KILLED_WRITER = """
import os, signal, sys
from nemo_curator.stages.text.io.temp_files import temp_name
path = os.path.join(sys.argv[1], temp_name("killed.jsonl"))
with open(path, "wb") as f:
    f.write(b"half a reco")
print(os.path.basename(path), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_setup_on_node_sweeps_only_temp_files_whose_writer_is_gone(tmp_path: Path) -> None:
    """A writer SIGKILLed between its temp write and its rename leaves a hidden file; the next run removes it.

    Kept: temp files of a live writer (this process, or another host's that is still young),
    outputs, other hidden files, directories. Removed: the killed writer's, and any temp file
    older than a day (another host's, or a name from an earlier version).
    """
    killed = subprocess.run(
        [sys.executable, "-c", _KILLED_WRITER, str(tmp_path)], capture_output=True, text=True, check=False
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    killed_name = killed.stdout.strip()
    assert is_stale(killed_name, age_s=0.0)
    live = temp_name("live.jsonl")  # this process is alive: its write may be in progress
    other_host = f".b.jsonl.tmp-{'0' * 12}-1-{'a' * 16}"
    other_host_old = f".c.jsonl.tmp-{'0' * 12}-1-{'b' * 16}"
    legacy_old = f".d.jsonl.tmp-{'c' * 32}"
    legacy_young = f".e.jsonl.tmp-{'d' * 32}"
    kept_hidden = ".keep"
    for name in (live, other_host, other_host_old, legacy_old, legacy_young, kept_hidden, "out.jsonl"):
        (tmp_path / name).write_text("x")
    (tmp_path / f".dir.tmp-{'e' * 32}").mkdir()
    two_days_ago = time.time() - 2 * 24 * 3600
    for name in (other_host_old, legacy_old, f".dir.tmp-{'e' * 32}"):
        os.utime(tmp_path / name, (two_days_ago, two_days_ago))

    JsonlWriter(str(tmp_path)).setup_on_node()
    assert sorted(os.listdir(tmp_path)) == sorted(
        [live, other_host, legacy_young, kept_hidden, "out.jsonl", f".dir.tmp-{'e' * 32}"]
    )
    assert sweep_stale_temp_files(str(tmp_path / "missing")) == []
    assert not is_stale("out.jsonl", age_s=10**9) and not is_stale(".keep", age_s=10**9)


def _atomic_writers(root: Path) -> list[tuple[ProcessingStage, list[Path]]]:
    """Each stage that writes with ``write_atomically``, with the directories it writes to."""
    from nemo_curator.stages.deduplication.exact import ExactDuplicateHashStage, ExactDuplicateIdentificationStage
    from nemo_curator.stages.shuffle import ShuffleWriteStage

    return [
        (JsonlWriter(str(root / "out")), [root / "out"]),
        (
            ExactDuplicateHashStage(shuffle_path=str(root / "shuffle"), num_partitions=3),
            [root / "shuffle" / f"part-{p:05d}" for p in range(3)],
        ),
        (ExactDuplicateIdentificationStage(ids_path=str(root / "ids")), [root / "ids"]),
        (
            ShuffleWriteStage(key="url", num_partitions=2, path=str(root / "barrier")),
            [root / "barrier" / f"part-{p:05d}" for p in range(2)],
        ),
    ]


@pytest.mark.parametrize("which", ["jsonl_writer", "exact_dedup_hash", "exact_dedup_identify", "shuffle_write"])
def test_every_atomic_writer_sweeps_its_directories_on_setup(tmp_path: Path, which: str) -> None:
    """A resumed stage removes what its killed predecessor's interrupted writes left, in every directory it writes."""
    exited = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(exited.stdout)
    (stage, directories) = next((s, d) for s, d in _atomic_writers(tmp_path) if s.name == which)
    planted, live = [], []
    for directory in directories:
        directory.mkdir(parents=True)
        planted.append(directory / f".x.parquet.tmp-{writer_identity()}-{dead_pid}-{'0' * 16}")
        live.append(directory / temp_name("y.parquet"))  # this process's: a write in progress
        for path in (planted[-1], live[-1]):
            path.write_bytes(b"half")
    stage.setup_on_node()
    assert not any(p.exists() for p in planted)
    assert all(p.exists() for p in live)


def test_writer_rejects_tasks_without_usable_ids(tmp_path: Path) -> None:
    writer = JsonlWriter(str(tmp_path))
    for bad in ("", "../escape", "a/b"):
        with pytest.raises(ValueError, match="cannot name an output file"):
            writer.process(batch([{"text": "x"}], task_id=bad))
    assert os.listdir(tmp_path) == []


def test_writer_fields_and_relative_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    writer = JsonlWriter("rel/out", fields=["text"])
    assert writer.path == str(tmp_path / "rel" / "out")
    assert "path" not in JsonlWriter.fingerprint_ignore
    writer.process(batch([{"id": 1, "text": "a"}], task_id="t"))
    assert (tmp_path / "rel" / "out" / "t.jsonl").read_text() == '{"text":"a"}\n'


def test_pipeline_chain_writes_one_file_per_source(tmp_path: Path) -> None:
    make_tree(tmp_path / "in")
    out = run_chain([*JsonlReader(str(tmp_path / "in")).decompose(), JsonlWriter(str(tmp_path / "out"))])
    sources = run_chain([FilePartitioningStage(str(tmp_path / "in"), file_extensions=[".jsonl", ".json"])])
    assert sorted(t.task_id for t in out) == sorted(t.task_id for t in sources)
    assert sorted(os.listdir(tmp_path / "out")) == sorted(f"{t.task_id}.jsonl" for t in sources)
    assert sum(t._metadata["num_records"] for t in out) == 6


# -- filters ------------------------------------------------------------------------------


def test_scores() -> None:
    assert word_count("  one two\tthree\nfour ") == 4
    assert word_count("") == 0
    assert repeated_char_ratio("ok !!!!!!!!") == 8 / 11
    assert repeated_char_ratio("ok !!!!!", min_run=6) == 0.0
    assert repeated_char_ratio("aaaaaa") == 1.0
    assert repeated_char_ratio("") == 0.0
    assert repeated_char_ratio("      spaces are not runs") == 0.0


def test_word_count_filter_keeps_rows_in_order_and_filters_empty_tasks() -> None:
    stage = WordCountFilter(min_words=2, max_words=3)
    task = batch([{"text": "one"}, {"text": "one two"}, {"text": None}, {"text": "a b c d"}, {"text": "x y z"}])
    task._metadata["source_files"] = ["f"]
    out = stage.process(task)
    assert isinstance(out, DocumentBatch)
    assert list(out.to_pandas()["text"]) == ["one two", "x y z"]
    assert list(out.to_pandas().index) == [0, 1]
    assert out.dataset_name == "ds" and out._metadata == {"source_files": ["f"]}
    assert stage.process(batch([{"text": "one"}, {"text": ""}])) is None
    with pytest.raises(ValueError, match="min_words"):
        WordCountFilter(min_words=5, max_words=2)


def test_repeated_char_filter() -> None:
    stage = RepeatedCharFilter(max_ratio=0.2)
    texts = ["a normal sentence here", "spam " + "!" * 40, "mostly fine text ====== here and more words"]
    out = stage.process(batch([{"text": t} for t in texts]))
    assert isinstance(out, DocumentBatch)
    assert list(out.to_pandas()["text"]) == [texts[0], texts[2]]
    assert stage.process(batch([{"text": "?" * 10}])) is None
    with pytest.raises(ValueError, match="text field 'body'"):
        RepeatedCharFilter(text_field="body").process(batch([{"text": "x"}]))


@given(
    texts=st.lists(st.text(alphabet=string.ascii_letters[:3] + " !\n", max_size=40), min_size=1, max_size=20),
    bounds=st.tuples(st.integers(0, 6), st.integers(0, 6)).map(sorted),
    max_ratio=st.floats(0.0, 1.0),
)
def test_filters_agree_with_their_scores(texts: list[str], bounds: list[int], max_ratio: float) -> None:
    task = batch([{"text": t} for t in texts])
    words = WordCountFilter(min_words=bounds[0], max_words=bounds[1]).process(task)
    expected = [t for t in texts if bounds[0] <= word_count(t) <= bounds[1]]
    assert (list(words.to_pandas()["text"]) if words is not None else []) == expected
    rep = RepeatedCharFilter(max_ratio=max_ratio).process(task)
    expected = [t for t in texts if repeated_char_ratio(t) <= max_ratio]
    assert (list(rep.to_pandas()["text"]) if rep is not None else []) == expected
    assert all(0.0 <= repeated_char_ratio(t) <= 1.0 for t in texts)
