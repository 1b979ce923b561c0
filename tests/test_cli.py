"""The ``nemo-curator`` command line (click's CliRunner; Ray only where a test takes ``ray_session``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from nemo_curator.cli import _readable_status, cli
from nemo_curator.demo import build_demo_pipeline, demo_source_ids, run_demo
from nemo_curator.resumability.fingerprint import pipeline_fingerprint


def test_help_lists_the_commands() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0, result.output
    assert "Usage: nemo-curator" in result.output
    assert "demo" in result.output and "checkpoint" in result.output


def test_demo_help_shows_options_and_defaults() -> None:
    result = CliRunner().invoke(cli, ["demo", "--help"])
    assert result.exit_code == 0, result.output
    for option in ("--executor", "--workdir", "--files", "--docs-per-file", "--seed", "--no-kill", "--task-delay"):
        assert option in result.output
    assert "ray_actor_pool|ray_data|xenna" in result.output
    assert "[default: xenna]" in " ".join(result.output.split())  # click may wrap the line


def test_demo_rejects_unknown_executor_and_bad_sizes() -> None:
    result = CliRunner().invoke(cli, ["demo", "--executor", "spark"])
    assert result.exit_code == 2
    assert "'spark' is not one of" in result.output
    result = CliRunner().invoke(cli, ["demo", "--files", "0"])
    assert result.exit_code == 2
    assert "--files" in result.output
    result = CliRunner().invoke(cli, ["demo", "--task-delay", "-1"])
    assert result.exit_code == 2
    assert "--task-delay" in result.output


def test_checkpoint_status_help() -> None:
    result = CliRunner().invoke(cli, ["checkpoint", "status", "--help"])
    assert result.exit_code == 0, result.output
    assert "DIR" in result.output and "--json" in result.output


def test_checkpoint_status_on_missing_dir_fails_clearly(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-checkpoint"
    for extra in ([], ["--json"]):
        result = CliRunner().invoke(cli, ["checkpoint", "status", str(missing), *extra])
        assert result.exit_code == 1, result.output
        assert "Traceback" not in result.output
        assert f"Error: cannot read checkpoint {str(missing)!r}" in result.stderr


def test_python_dash_m_runs_the_cli() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "nemo_curator", "--help"], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert "Usage: nemo-curator" in proc.stdout


def test_checkpoint_status_of_an_empty_checkpoint(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["checkpoint", "status", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    status = json.loads(result.stdout)
    assert (status["completed_sources"], status["failed_sources"], status["completed"]) == (0, 0, [])
    result = CliRunner().invoke(cli, ["checkpoint", "status", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert f"checkpoint: {tmp_path}" in result.stdout
    assert "completed sources: 0" in result.stdout and "failed sources: 0" in result.stdout


def test_checkpoint_status_on_a_file_fails_clearly(tmp_path: Path) -> None:
    path = tmp_path / "not-a-dir"
    path.write_text("x")
    result = CliRunner().invoke(cli, ["checkpoint", "status", str(path)])
    assert result.exit_code == 1
    assert "Error: cannot read checkpoint" in result.stderr and "Traceback" not in result.output


def test_readable_status_lists_first_failures() -> None:
    status = {
        "checkpoint": "/ck",
        "completed_sources": 3,
        "failed_sources": 7,
        "failed": {f"s{i}": f"ValueError: bad {i}" for i in range(7)},
        "writers": [{}, {}],
    }
    lines = _readable_status("/ck", status)
    assert lines[:3] == ["checkpoint: /ck", "completed sources: 3", "failed sources: 7"]
    assert "writers: 2" in lines
    assert "  s0: ValueError: bad 0" in lines and "  ... and 2 more" in lines
    assert not any("s6" in line for line in lines)


def test_checkpoint_status_of_a_real_checkpoint(ray_session, tmp_path: Path) -> None:
    """A checkpointed run on the actor pool, one input unreadable: the status shows both outcomes."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "part-99999.jsonl").write_text("this is not JSON\n")
    checkpoint = tmp_path / "checkpoint"
    result = run_demo(
        executor="ray_actor_pool", workdir=str(tmp_path), files=3, docs_per_file=10, seed=2, checkpoint=checkpoint
    )
    assert result.files_written == 3
    sources = demo_source_ids(str(corpus))
    assert len(sources) == 4
    bad = sorted(set(sources) - {Path(p).name.removesuffix(".jsonl") for p in result.output_files})
    assert len(bad) == 1

    runner = CliRunner()
    out = runner.invoke(cli, ["checkpoint", "status", str(checkpoint), "--json"])
    assert out.exit_code == 0, out.output
    status = json.loads(out.stdout)
    assert (status["completed_sources"], status["failed_sources"], status["in_flight_sources"]) == (3, 1, 0)
    assert status["completed"] == sorted(set(sources) - set(bad))
    assert list(status["failed"]) == bad and "ValueError" in status["failed"][bad[0]]
    stages = build_demo_pipeline(str(corpus), str(tmp_path / "output")).build()
    assert status["fingerprint"] == pipeline_fingerprint(stages)
    assert status["checkpoint"] == str(checkpoint.resolve())
    [writer] = status["writers"]
    assert (writer["completed"], writer["failed"], writer["in_flight"]) == (3, 1, 0)
    assert writer["fingerprint"] == status["fingerprint"]
    assert writer["closed"] is not None and writer["alive"] is False
    assert writer["objects"] >= 1 and writer["start_stamp"] >= 1

    text = runner.invoke(cli, ["checkpoint", "status", str(checkpoint)])
    assert text.exit_code == 0, text.output
    lines = text.stdout.splitlines()
    assert "completed sources: 3" in lines and "failed sources: 1" in lines and "writers: 1" in lines
    assert f"fingerprint: {status['fingerprint']}" in lines
    assert "failures (redone on the next run):" in lines
    assert any(line.startswith(f"  {bad[0]}: ValueError") for line in lines)


def test_demo_no_kill_curates_once(ray_session, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli, ["demo", "--no-kill", "--executor", "ray_actor_pool", "--workdir", str(tmp_path), "--files", "2"]
    )
    assert result.exit_code == 0, result.output
    assert "executor:       ray_actor_pool" in result.stdout
    assert "100 documents" in result.stdout and f"files written:  2 in {tmp_path / 'output'}" in result.stdout
    assert not (tmp_path / "checkpoint").exists()
