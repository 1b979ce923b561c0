"""The demo: sample corpus, pipeline (through adapters, no Ray), one run on Ray, and the kill-and-resume showcase."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nemo_curator.demo import (
    DEMO_MAX_REPEAT_RATIO,
    DEMO_MAX_WORDS,
    DEMO_MIN_RUN,
    DEMO_MIN_WORDS,
    DemoProbe,
    ResumeDemoResult,
    build_demo_pipeline,
    build_sample_corpus,
    compare_outputs,
    demo_source_ids,
    processed_sources,
    run_demo,
    run_resume_demo,
)
from nemo_curator.resumability.fingerprint import pipeline_fingerprint
from nemo_curator.resumability.inspect import checkpoint_status
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


def test_demo_probe_records_sources_and_is_left_out_of_the_fingerprint(tmp_path: Path) -> None:
    paths = build_sample_corpus(tmp_path / "corpus", files=3, docs_per_file=10, seed=1)
    log_dir = tmp_path / "log"
    paced = build_demo_pipeline(
        str(tmp_path / "corpus"), str(tmp_path / "out"), task_delay_s=0.01, log_dir=str(log_dir)
    )
    plain = build_demo_pipeline(str(tmp_path / "corpus"), str(tmp_path / "out"))
    assert pipeline_fingerprint(paced.build()) == pipeline_fingerprint(plain.build())
    assert pipeline_fingerprint(plain.build()) != pipeline_fingerprint(
        build_demo_pipeline(str(tmp_path / "corpus"), str(tmp_path / "elsewhere")).build()
    )  # the output directory is part of what the pipeline computes
    assert [s.name for s in paced.build() if isinstance(s, DemoProbe)] == ["demo_record", "demo_pace"]
    outputs = run_chain(paced.build())
    sources = demo_source_ids(str(tmp_path / "corpus"))
    assert len(sources) == len(paths) == 3
    assert processed_sources(log_dir) == sources  # one marker per source, named by its id
    assert sorted(os.path.basename(p)[: -len(".jsonl")] for t in outputs for p in t.data) == sources
    run_chain(paced.build())
    assert processed_sources(log_dir) == sorted(sources * 2)  # one marker per attempt
    assert processed_sources(tmp_path / "missing") == []


def test_job_entry_point_needs_its_arguments() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "nemo_curator.demo"], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 2 and "usage: python -m nemo_curator.demo --run-job JSON" in proc.stderr


def test_compare_outputs_reports_names_and_bytes(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        d.mkdir()
        (d / "same.jsonl").write_text("x\n")
    (a / ".same.jsonl.tmp-123").write_text("partial")  # an interrupted atomic write is not output
    assert compare_outputs(a, b) == []
    (a / "extra.jsonl").write_text("1")
    (b / "missing.jsonl").write_text("2")
    (b / "same.jsonl").write_text("y\n")
    assert compare_outputs(a, b) == [
        "missing (only in the reference): missing.jsonl",
        "extra (not in the reference): extra.jsonl",
        "different content: same.jsonl",
    ]


def _result(**changes: object) -> ResumeDemoResult:
    fields = dict(
        executor="ray_actor_pool",
        workdir="/w",
        input_dir="/w/corpus",
        output_dir="/w/output",
        reference_dir="/w/reference",
        checkpoint_dir="/w/checkpoint",
        job_log="/w/killed-run.log",
        sources=["a", "b", "c", "d"],
        killed=True,
        processes_killed=12,
        output_files_at_kill=3,
        complete_before=["a", "c"],
        processed_on_resume=["b", "d"],
        complete_after=4,
        failed_after=0,
        output_files=["a.jsonl", "b.jsonl", "c.jsonl", "d.jsonl"],
        reference_files=["a.jsonl", "b.jsonl", "c.jsonl", "d.jsonl"],
        differences=[],
        documents_in=40,
        documents_out=30,
        seconds_killed_run=1.0,
        seconds_resume=1.0,
        seconds_reference=1.0,
    )
    fields.update(changes)
    return ResumeDemoResult(**fields)  # type: ignore[arg-type]


def test_resume_demo_table_and_verdict() -> None:
    good = _result()
    assert good.ok and good.skipped_on_resume == ["a", "c"] and good.complete_redone == []
    table = [" ".join(line.split()) for line in good.table_lines()]
    assert table == [
        "sources total 4",
        "complete before the kill 2",
        "skipped on resume 2",
        "redone on resume 2",
        "output files 4",
        "output identical to an uninterrupted run yes",
    ]
    redone = _result(processed_on_resume=["a", "b", "d"])
    assert not redone.ok and redone.identical and redone.complete_redone == ["a"]
    assert any("ERROR: 1 source(s) complete before the kill were redone" in line for line in redone.table_lines())
    differing = _result(differences=["different content: b.jsonl"])
    assert not differing.ok
    assert "output identical to an uninterrupted run no" in [" ".join(x.split()) for x in differing.table_lines()]
    incomplete = _result(complete_after=3, failed_after=1)
    assert not incomplete.ok and any("3 of 4 sources complete" in line for line in incomplete.table_lines())
    assert any("finished before the kill point" in line for line in _result(killed=False).table_lines())


@pytest.mark.slow
def test_resume_demo_kills_midway_and_resumes_exactly_on_ray_actor_pool(ray_session, tmp_path: Path) -> None:
    """The showcase on the actor pool: a real SIGKILL of the run's process tree, a resume, an exact output."""
    lines: list[str] = []
    result = run_resume_demo(
        executor="ray_actor_pool",
        workdir=str(tmp_path),
        files=12,
        docs_per_file=30,
        seed=4,
        task_delay_s=0.3,
        echo=lines.append,
    )
    sources = demo_source_ids(str(tmp_path / "corpus"))
    assert result.sources == sources and result.sources_total == 12

    # The kill landed mid-way, and took the child's Ray processes with it.
    assert result.killed, "the run finished before the kill point"
    assert 0 < len(result.complete_before) < 12, result.complete_before
    assert result.processes_killed > 3  # the driver, Ray's GCS and raylet, the workers
    assert any("SIGKILLed" in line for line in lines)
    assert set(result.complete_before) <= set(processed_sources(tmp_path / "attempts" / "killed"))

    # Nothing complete before the kill was redone; everything else was.
    assert result.complete_redone == []
    assert result.skipped_on_resume == result.complete_before
    assert result.processed_on_resume == sorted(set(sources) - set(result.complete_before))
    status = checkpoint_status(result.checkpoint_dir)
    assert (status["completed_sources"], status["failed_sources"]) == (12, 0)
    assert status["completed"] == sources and result.complete_after == 12

    # The output equals the uninterrupted run's, and holds exactly the documents that pass the filters.
    assert result.identical and result.ok
    assert result.output_files == result.reference_files != []
    written = [str(tmp_path / "output" / name) for name in result.output_files]
    corpus = sorted(str(p) for p in (tmp_path / "corpus").glob("*.jsonl"))
    assert sorted(r["id"] for r in read_records(written)) == expected_ids(corpus)
    assert result.documents_out == len(expected_ids(corpus))
    table = [" ".join(line.split()) for line in result.table_lines()]
    assert f"complete before the kill {len(result.complete_before)}" in table
    assert "output identical to an uninterrupted run yes" in table
