"""The demo: its sample corpus, its pipeline (through adapters, no Ray) and one end-to-end run on Ray."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from nemo_curator.demo import (
    DEMO_MAX_REPEAT_RATIO,
    DEMO_MAX_WORDS,
    DEMO_MIN_RUN,
    DEMO_MIN_WORDS,
    build_demo_pipeline,
    build_sample_corpus,
    run_demo,
)
from nemo_curator.stages.text.filters import repeated_char_ratio, word_count
from tests.test_io_stages import run_chain


def read_records(paths: list[str]) -> list[dict]:
    records = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            records.extend(json.loads(line) for line in f)
    return records


def expected_ids(paths: list[str]) -> list[str]:
    """The ids the demo pipeline keeps, computed with the public scoring functions."""
    return sorted(
        r["id"]
        for r in read_records(paths)
        if DEMO_MIN_WORDS <= word_count(r["text"]) <= DEMO_MAX_WORDS
        and repeated_char_ratio(r["text"], DEMO_MIN_RUN) <= DEMO_MAX_REPEAT_RATIO
    )


def test_sample_corpus_is_deterministic_and_not_rewritten(tmp_path: Path) -> None:
    paths = build_sample_corpus(tmp_path / "a", files=4, docs_per_file=30, seed=7)
    assert [os.path.basename(p) for p in paths] == [f"part-{i:05d}.jsonl" for i in range(4)]
    other = build_sample_corpus(tmp_path / "b", files=4, docs_per_file=30, seed=7)
    assert [Path(p).read_bytes() for p in paths] == [Path(p).read_bytes() for p in other]
    mtimes = [os.stat(p).st_mtime_ns for p in paths]
    for p in paths:  # pretend the files are old, so a rewrite would be visible
        os.utime(p, ns=(0, 10**18))
    assert build_sample_corpus(tmp_path / "a", files=4, docs_per_file=30, seed=7) == paths
    assert all(os.stat(p).st_mtime_ns == 10**18 for p in paths)
    assert mtimes  # the first write happened
    reseeded = build_sample_corpus(tmp_path / "c", files=4, docs_per_file=30, seed=8)
    assert Path(reseeded[0]).read_bytes() != Path(paths[0]).read_bytes()
    assert sorted(os.listdir(tmp_path / "a")) == [os.path.basename(p) for p in paths]  # no temp files left


def test_sample_corpus_has_documents_on_both_sides_of_each_filter(tmp_path: Path) -> None:
    records = read_records(build_sample_corpus(tmp_path, files=20, docs_per_file=50, seed=0))
    assert len(records) == 1000 and len({r["id"] for r in records}) == 1000
    counts = [word_count(r["text"]) for r in records]
    ratios = [repeated_char_ratio(r["text"], DEMO_MIN_RUN) for r in records]
    assert sum(c < DEMO_MIN_WORDS for c in counts) >= 50
    assert sum(c > DEMO_MAX_WORDS for c in counts) >= 5
    assert sum(r > DEMO_MAX_REPEAT_RATIO for r, c in zip(ratios, counts, strict=True) if c >= DEMO_MIN_WORDS) >= 50
    kept = sum(
        DEMO_MIN_WORDS <= c <= DEMO_MAX_WORDS and r <= DEMO_MAX_REPEAT_RATIO
        for c, r in zip(counts, ratios, strict=True)
    )
    assert 600 <= kept < 1000


def test_demo_pipeline_keeps_exactly_the_passing_documents(tmp_path: Path) -> None:
    paths = build_sample_corpus(tmp_path / "corpus", files=5, docs_per_file=40, seed=3)
    pipeline = build_demo_pipeline(str(tmp_path / "corpus"), str(tmp_path / "output"))
    outputs = run_chain(pipeline.build())
    written = sorted(p for t in outputs for p in t.data)
    assert sorted(os.listdir(tmp_path / "output")) == sorted(os.path.basename(p) for p in written)
    assert sorted(r["id"] for r in read_records(written)) == expected_ids(paths)
    assert sum(t._metadata["num_records"] for t in outputs) == len(expected_ids(paths))


def test_run_demo_rejects_unknown_executor(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown executor 'spark'"):
        run_demo(executor="spark", workdir=str(tmp_path))
    assert not (tmp_path / "corpus").exists()


def test_run_demo_end_to_end_on_ray_actor_pool(ray_session, tmp_path: Path) -> None:
    result = run_demo(executor="ray_actor_pool", workdir=str(tmp_path), files=6, docs_per_file=40, seed=5)
    paths = sorted(str(p) for p in (tmp_path / "corpus").glob("*.jsonl"))
    kept = expected_ids(paths)
    assert (result.executor, result.workdir, result.input_files) == ("ray_actor_pool", str(tmp_path), 6)
    assert result.documents_in == 240
    assert result.documents_out == len(kept)
    assert result.files_written == 6 == len(result.output_files)
    assert sorted(r["id"] for r in read_records(result.output_files)) == kept
    assert sorted(os.listdir(result.output_dir)) == sorted(os.path.basename(p) for p in result.output_files)
    first = {p: Path(p).read_bytes() for p in result.output_files}
    again = run_demo(executor="ray_actor_pool", workdir=str(tmp_path), files=6, docs_per_file=40, seed=5)
    assert {p: Path(p).read_bytes() for p in again.output_files} == first  # same names, same bytes
    lines = result.summary_lines()
    assert any("240 documents" in line for line in lines) and any(f"{len(kept)} documents" in line for line in lines)
