"""The ``nemo-curator`` command line: ``demo`` and ``checkpoint status``."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from nemo_curator.backends.registry import EXECUTORS
from nemo_curator.demo import DEFAULT_TASK_DELAY_S


def _configure_logging(verbose: bool) -> None:
    """One stderr sink: DEBUG when verbose, else warnings (cosmos-xenna's own only from ERROR)."""
    from loguru import logger

    logger.remove()
    if verbose:
        logger.add(sys.stderr, level="DEBUG")
    else:
        logger.add(sys.stderr, level="WARNING", filter={"": "WARNING", "cosmos_xenna": "ERROR"})


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
    help="Directory for the corpus (corpus/), the output (output/), the uninterrupted run's output (reference/) "
    "and the checkpoint (checkpoint/); output/, reference/, checkpoint/ and attempts/ are recreated. "
    "Default: a new temporary directory.",
)
@click.option("--files", type=click.IntRange(min=1), default=20, show_default=True, help="Input files to generate.")
@click.option(
    "--docs-per-file", type=click.IntRange(min=1), default=50, show_default=True, help="Documents per input file."
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the sample corpus.")
@click.option(
    "--no-kill",
    is_flag=True,
    help="Just curate the corpus once, without a checkpoint (no kill, no resume).",
)
@click.option(
    "--task-delay",
    type=click.FloatRange(min=0.0),
    default=DEFAULT_TASK_DELAY_S,
    show_default=True,
    help="Seconds the pipeline waits per source in the killed and resumed runs, so that the kill lands mid-run.",
)
@click.option("-v", "--verbose", is_flag=True, help="Show the framework's log.")
def demo(
    executor: str,
    workdir: str | None,
    files: int,
    docs_per_file: int,
    seed: int,
    no_kill: bool,
    task_delay: float,
    verbose: bool,
) -> None:
    """Kill a checkpointed curation run mid-way, resume it, and check the output against an uninterrupted run.

    Builds a sample JSONL corpus; runs the curation pipeline (read, filter by word count and
    repeated characters, write) with a checkpoint in a subprocess and SIGKILLs that subprocess
    and all its processes (Ray's included) once about half of the sources are complete; resumes
    with the same checkpoint; runs the pipeline once more without a checkpoint; prints what the
    resumed run skipped and redid and whether both outputs are identical (exit code 1 if not).
    """
    from nemo_curator.demo import quiet_ray_auth_notice, run_demo, run_resume_demo

    if executor == "xenna":
        # Importing cosmos-xenna replaces every loguru sink with its own: import it first.
        import cosmos_xenna.pipelines.v1  # noqa: F401
    _configure_logging(verbose)
    quiet_ray_auth_notice()
    if no_kill:
        click.echo(f"Curating a sample corpus of {files} files x {docs_per_file} documents on {executor} ...")
        result = run_demo(executor=executor, workdir=workdir, files=files, docs_per_file=docs_per_file, seed=seed)
        for line in result.summary_lines():
            click.echo(line)
        return
    click.echo(f"Kill-and-resume demo on {executor}: a sample corpus of {files} files x {docs_per_file} documents")
    resumed = run_resume_demo(
        executor=executor,
        workdir=workdir,
        files=files,
        docs_per_file=docs_per_file,
        seed=seed,
        task_delay_s=task_delay,
        echo=click.echo,
    )
    click.echo("")
    for line in resumed.table_lines():
        click.echo(line)
    click.echo("")
    click.echo(f"total time: {resumed.seconds_total:.1f} s")
    click.echo(f"output:     {resumed.output_dir}")
    click.echo(f"reference:  {resumed.reference_dir}")
    click.echo(
        f"checkpoint: {resumed.checkpoint_dir}  (inspect: nemo-curator checkpoint status {resumed.checkpoint_dir})"
    )
    if not resumed.ok:
        sys.exit(1)


@cli.group()
def checkpoint() -> None:
    """Inspect checkpoints (directories or fsspec URLs)."""


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


def parse_storage_options(items: tuple[str, ...]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs as fsspec storage options.

    A value is parsed as JSON when it is valid JSON (``true``, ``5``, ``{"a": 1}``), else kept as
    text; a dotted key (``client_kwargs.region_name=us-east-1``) sets a nested entry.
    """
    options: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--storage-option")
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        target = options
        *parents, leaf = key.split(".")
        for part in parents:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise click.BadParameter(f"{key!r} nests under a non-dict value", param_hint="--storage-option")
        target[leaf] = value
    return options


@checkpoint.command("status")
@click.argument("location", metavar="DIR_OR_URL")
@click.option(
    "--storage-option",
    "storage_options",
    multiple=True,
    metavar="KEY=VALUE",
    help="An fsspec storage option for a URL (repeatable), e.g. endpoint_url=http://host:9000, key=..., "
    "client_kwargs.region_name=us-east-1. Values are JSON when they parse as JSON.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def checkpoint_status_command(location: str, storage_options: tuple[str, ...], as_json: bool) -> None:
    """Show which sources a checkpoint (a directory or an fsspec URL such as s3://bucket/prefix) records.

    Read-only: nothing is created or changed, also while a run writes the checkpoint.
    """
    from nemo_curator.resumability.errors import CheckpointError
    from nemo_curator.resumability.inspect import checkpoint_status
    from nemo_curator.resumability.workflow import read_workflow_status

    _configure_logging(False)
    options = parse_storage_options(storage_options)
    try:
        status = read_workflow_status(location, storage_options=options or None)
        if status is None:
            status = checkpoint_status(location, storage_options=options or None)
    except (CheckpointError, FileNotFoundError, NotADirectoryError) as exc:
        click.echo(f"Error: cannot read checkpoint {location!r}: {exc}", err=True)
        sys.exit(1)
    if as_json:
        click.echo(json.dumps(status, indent=2, sort_keys=True, default=str))
    elif "segments" in status:
        for line in _readable_workflow_status(status):
            click.echo(line)
    else:
        for line in _readable_status(location, status):
            click.echo(line)


def _readable_workflow_status(status: dict[str, Any]) -> list[str]:
    """One line per segment of a workflow's checkpoint: complete, or how far its sources got."""
    segments = status["segments"]
    done = sum(1 for s in segments if s["complete"])
    lines = [
        f"checkpoint: {status['checkpoint']}",
        f"workflow: {status['workflow']} ({done} of {len(segments)} segments complete)",
    ]
    for seg in segments:
        total = "?" if seg["sources"] is None else seg["sources"]
        state = "complete" if seg["complete"] else ("not started" if not seg["runs"] else "in progress")
        line = f"  {seg['index']} {seg['name']}: {state}, {seg['completed_sources']} of {total} sources complete"
        if seg["failed_sources"]:
            line += f", {seg['failed_sources']} failed (redone on the next run)"
        lines.append(line)
    return lines


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (``nemo-curator``)."""
    cli.main(args=argv, prog_name="nemo-curator")
