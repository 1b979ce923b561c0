"""The ``nemo-curator`` command line: ``demo`` and ``checkpoint status``."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from nemo_curator.demo import EXECUTORS


def _configure_logging(verbose: bool) -> None:
    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level="DEBUG" if verbose else "WARNING")


@click.group(name="nemo-curator", context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Resumable data-curation pipelines on cosmos-xenna, Ray Data and Ray actors."""


@cli.command()
@click.option(
    "--executor",
    type=click.Choice(sorted(EXECUTORS)),
    default="xenna",
    show_default=True,
    help="Which executor runs the pipeline.",
)
@click.option(
    "--workdir",
    type=click.Path(file_okay=False),
    default=None,
    help="Directory for the corpus (corpus/) and the output (output/); default: a new temporary directory.",
)
@click.option("--files", type=click.IntRange(min=1), default=20, show_default=True, help="Input files to generate.")
@click.option(
    "--docs-per-file", type=click.IntRange(min=1), default=50, show_default=True, help="Documents per input file."
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the sample corpus.")
@click.option("-v", "--verbose", is_flag=True, help="Show the framework's log.")
def demo(executor: str, workdir: str | None, files: int, docs_per_file: int, seed: int, verbose: bool) -> None:
    """Build a sample JSONL corpus and curate it: read, filter by word count and repeated characters, write."""
    from nemo_curator.demo import run_demo

    _configure_logging(verbose)
    click.echo(f"Curating a sample corpus of {files} files x {docs_per_file} documents on {executor} ...")
    result = run_demo(executor=executor, workdir=workdir, files=files, docs_per_file=docs_per_file, seed=seed)
    for line in result.summary_lines():
        click.echo(line)


@cli.group()
def checkpoint() -> None:
    """Inspect checkpoint directories."""


#: Scalar entries of ``checkpoint_status`` shown by ``checkpoint status`` (in this order, when present).
_STATUS_KEYS = (
    "completed_sources",
    "failed_sources",
    "in_flight_sources",
    "revoked_sources",
    "fingerprint",
    "created",
    "updated",
)
_MAX_FAILURES_SHOWN = 5


def _readable_status(directory: str, status: dict[str, Any]) -> list[str]:
    """A few lines: the counts, the fingerprint and times, and the first failure reasons."""
    lines = [f"checkpoint: {status.get('checkpoint', directory)}"]
    lines.extend(f"{key.replace('_', ' ')}: {status[key]}" for key in _STATUS_KEYS if key in status)
    writers = status.get("writers")
    if isinstance(writers, list):
        lines.append(f"writers: {len(writers)}")
    failed = status.get("failed")
    if isinstance(failed, dict) and failed:
        lines.append("failures (redone on the next run):")
        for source_id, reason in sorted(failed.items())[:_MAX_FAILURES_SHOWN]:
            lines.append(f"  {source_id}: {reason}")
        if len(failed) > _MAX_FAILURES_SHOWN:
            lines.append(f"  ... and {len(failed) - _MAX_FAILURES_SHOWN} more")
    return lines


@checkpoint.command("status")
@click.argument("directory", metavar="DIR", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def checkpoint_status_command(directory: str, as_json: bool) -> None:
    """Show which sources a checkpoint directory records as complete or failed."""
    from nemo_curator.resumability.checkpoint import CheckpointError
    from nemo_curator.resumability.inspect import checkpoint_status

    _configure_logging(False)
    try:
        status = checkpoint_status(directory)
    except (CheckpointError, FileNotFoundError, NotADirectoryError) as exc:
        click.echo(f"Error: cannot read checkpoint {directory!r}: {exc}", err=True)
        sys.exit(1)
    if as_json:
        click.echo(json.dumps(status, indent=2, sort_keys=True, default=str))
    else:
        for line in _readable_status(directory, status):
            click.echo(line)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (``nemo-curator``)."""
    cli.main(args=argv, prog_name="nemo-curator")
