"""The demo: build a small sample JSONL corpus, curate it, and show a killed run resume exactly.

``run_demo`` runs ``JsonlReader -> DemoProbe (records) -> WordCountFilter -> RepeatedCharFilter
-> DemoProbe (paces) -> JsonlWriter`` once over a corpus made by ``build_sample_corpus`` and
returns a ``DemoResult``.

``run_resume_demo`` is the showcase of checkpointing (``nemo-curator demo``): it runs the same
pipeline with a checkpoint in a subprocess (``python -m nemo_curator.demo --run-job JSON``),
SIGKILLs that subprocess's whole process tree (Ray's processes included) once about half of
the sources are recorded complete, resumes in this process with the same checkpoint, runs an
uninterrupted reference without a checkpoint, and compares the two outputs byte by byte.

Invariants:
- the corpus is a pure function of ``(files, docs_per_file, seed)``; a file whose content is
  already right is left untouched (same mtime), so reruns in the same work directory see the
  same sources (and the same source ids) as the first run;
- the output is ``<workdir>/output/<task_id>.jsonl``, one file per input partition with at least
  one surviving document, identical across runs and executors; every stage before the writer
  maps one task to at most one task, so an output file is named after its source's id;
- the subprocess builds its stages from this module's importable name (never ``__main__``),
  so its pipeline fingerprint equals the resuming run's.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from nemo_curator.backends.registry import EXECUTORS, make_executor
from nemo_curator.pipeline import Pipeline
from nemo_curator.stages.base import ProcessingStage
from nemo_curator.stages.resources import Resources
from nemo_curator.stages.text.filters import RepeatedCharFilter, WordCountFilter
from nemo_curator.stages.text.io.reader import JsonlReader
from nemo_curator.stages.text.io.writer import JsonlWriter
from nemo_curator.tasks import DocumentBatch
from nemo_curator.utils.processes import kill_process_tree

#: Filter settings of the demo pipeline (``build_sample_corpus`` makes documents on both sides).
DEMO_MIN_WORDS = 8
DEMO_MAX_WORDS = 1000
DEMO_MAX_REPEAT_RATIO = 0.2
DEMO_MIN_RUN = 6

_SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "da", "pe", "gu", "fi", "ho", "ba", "tre", "sol"]
_RUN_CHARS = "!=*#a-?"


def _vocabulary(rng: random.Random, size: int = 300) -> list[str]:
    words: set[str] = set()
    while len(words) < size:
        words.add("".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 3))))
    return sorted(words)


def _document(rng: random.Random, vocab: list[str]) -> str:
    """One document: mostly ordinary prose, some too short, too long, or full of repeated characters."""
    kind = rng.random()
    if kind < 0.15:  # too short for the word-count filter
        n = rng.randint(1, DEMO_MIN_WORDS - 1)
    elif kind < 0.18:  # too long for the word-count filter
        n = rng.randint(DEMO_MAX_WORDS + 1, DEMO_MAX_WORDS + 200)
    else:
        n = rng.randint(DEMO_MIN_WORDS, 300)
    words = [rng.choice(vocab) for _ in range(n)]
    for i in range(0, n, 12):  # sentences
        words[i] = words[i].capitalize()
    text = " ".join(words) + "."
    if 0.18 <= kind < 0.30:  # repeated-character spam, long enough to exceed the ratio
        run = rng.choice(_RUN_CHARS) * rng.randint(len(text) // 2 + DEMO_MIN_RUN, len(text) + 60)
        cut = rng.randint(0, len(text))
        text = f"{text[:cut]} {run} {text[cut:]}".strip()
    return text


def build_sample_corpus(dir: str | os.PathLike, files: int = 20, docs_per_file: int = 50, seed: int = 0) -> list[str]:
    """Write ``files`` JSONL files of ``docs_per_file`` documents (``{"id", "text"}``) into ``dir``.

    Returns the sorted file paths. Deterministic in ``(files, docs_per_file, seed)``; files that
    already hold exactly this content are not rewritten.
    """
    if files < 1 or docs_per_file < 1:
        raise ValueError(f"need at least one file and one document per file, got {files} x {docs_per_file}")
    rng = random.Random(seed)
    vocab = _vocabulary(rng)
    os.makedirs(dir, exist_ok=True)
    paths: list[str] = []
    for f in range(files):
        lines = [
            json.dumps({"id": f"doc-{f:05d}-{d:05d}", "text": _document(rng, vocab)}, ensure_ascii=False)
            for d in range(docs_per_file)
        ]
        payload = ("\n".join(lines) + "\n").encode("utf-8")
        path = os.path.join(os.path.abspath(dir), f"part-{f:05d}.jsonl")
        if not _has_content(path, payload):
            tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp")
            with open(tmp, "wb") as out:
                out.write(payload)
            os.replace(tmp, path)
        paths.append(path)
    return paths


def _has_content(path: str, payload: bytes) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read() == payload
    except FileNotFoundError:
        return False


@dataclass
class DemoProbe(ProcessingStage[DocumentBatch, DocumentBatch]):
    """Identity stage of the demo pipeline: records which sources a run processes, or paces it.

    When ``log_dir`` is set it leaves an empty marker ``<log_dir>/<task_id>.<pid>.<random>`` per
    batch, one per attempt; the stages before it map one task to at most one, so a batch's id
    is its source's id. Then it waits ``seconds``, so that a kill lands mid-run on a small
    corpus; ``workers`` fixes its worker count (one worker makes the pace independent of how
    many workers an executor would start). None of these settings changes what the pipeline
    computes: they are left out of the pipeline fingerprint, so runs with different settings
    share a checkpoint.
    """

    seconds: float = 0.0
    log_dir: str | None = None
    workers: int | None = None
    name: str = "demo_probe"
    resources: Resources = field(default_factory=lambda: Resources(cpus=0.25))
    fingerprint_ignore: ClassVar[tuple[str, ...]] = ("seconds", "log_dir", "workers")

    def num_workers(self) -> int | None:
        return self.workers

    def process(self, task: DocumentBatch) -> DocumentBatch:
        if self.log_dir:
            os.makedirs(self.log_dir, exist_ok=True)
            marker = os.path.join(self.log_dir, f"{task.task_id}.{os.getpid()}.{uuid.uuid4().hex[:8]}")
            with open(marker, "wb"):
                pass
        if self.seconds > 0:
            time.sleep(self.seconds)
        return task


def build_demo_pipeline(
    input_dir: str, output_dir: str, task_delay_s: float = 0.0, log_dir: str | None = None
) -> Pipeline:
    """Partition + read the corpus, drop short/long and repeated-character documents, write JSONL.

    Two ``DemoProbe`` stages instrument it: ``demo_record`` right after the reader (every source
    passes it, so ``log_dir`` gets a marker per source processed) and ``demo_pace`` right before
    the writer (one worker sleeping ``task_delay_s`` per source there spaces out the completions
    themselves, however late the other stages' workers start).
    """
    return Pipeline(
        name="demo",
        description="Curate a sample JSONL corpus: word-count and repeated-character filters",
        stages=[
            JsonlReader(input_dir, fields=["id", "text"]),
            DemoProbe(log_dir=log_dir, name="demo_record"),
            WordCountFilter(min_words=DEMO_MIN_WORDS, max_words=DEMO_MAX_WORDS),
            RepeatedCharFilter(max_ratio=DEMO_MAX_REPEAT_RATIO, min_run=DEMO_MIN_RUN),
            DemoProbe(seconds=task_delay_s, workers=1, name="demo_pace"),
            JsonlWriter(output_dir),
        ],
    )


def processed_sources(log_dir: str | os.PathLike) -> list[str]:
    """Source ids the ``demo_record`` probe recorded in ``log_dir``, once per attempt (sorted)."""
    if not os.path.isdir(log_dir):
        return []
    return sorted(name.split(".", 1)[0] for name in os.listdir(log_dir) if "." in name)


def demo_source_ids(input_dir: str) -> list[str]:
    """The source ids of the corpus in ``input_dir``, computed in-process by the pipeline's source stage."""
    from nemo_curator.backends.base import ExecutionPlan

    plan = ExecutionPlan.from_stages(build_demo_pipeline(input_dir, os.path.join(input_dir, "unused")).build())
    tasks = plan.adapter(plan.source_index, None).process_batch(plan.initial_tasks(None))
    return sorted(task.task_id for task in tasks)


def visible_files(directory: str | os.PathLike) -> list[str]:
    """Names of the non-hidden files in ``directory`` (sorted; ``[]`` when it does not exist).

    Hidden names are skipped: an interrupted atomic write can leave a ``.<name>.tmp-*`` file.
    """
    if not os.path.isdir(directory):
        return []
    return sorted(
        n for n in os.listdir(directory) if not n.startswith(".") and os.path.isfile(os.path.join(directory, n))
    )


def compare_outputs(actual_dir: str | os.PathLike, expected_dir: str | os.PathLike) -> list[str]:
    """Differences between two output directories (visible files: names and bytes); ``[]`` when identical."""
    actual, expected = visible_files(actual_dir), visible_files(expected_dir)
    differences = [f"missing (only in the reference): {n}" for n in sorted(set(expected) - set(actual))]
    differences += [f"extra (not in the reference): {n}" for n in sorted(set(actual) - set(expected))]
    for name in sorted(set(actual) & set(expected)):
        if Path(actual_dir, name).read_bytes() != Path(expected_dir, name).read_bytes():
            differences.append(f"different content: {name}")
    return differences


@dataclass
class DemoResult:
    """What a demo run did."""

    executor: str
    workdir: str
    input_dir: str
    output_dir: str
    input_files: int
    documents_in: int
    documents_out: int
    files_written: int
    seconds: float
    output_files: list[str] = field(default_factory=list)

    def summary_lines(self) -> list[str]:
        dropped = self.documents_in - self.documents_out
        return [
            f"executor:       {self.executor}",
            f"input:          {self.input_files} files, {self.documents_in} documents in {self.input_dir}",
            f"kept:           {self.documents_out} documents ({dropped} filtered out)",
            f"files written:  {self.files_written} in {self.output_dir}",
            f"time:           {self.seconds:.1f} s",
        ]


def run_demo(
    executor: str = "xenna",
    workdir: str | os.PathLike | None = None,
    files: int = 20,
    docs_per_file: int = 50,
    seed: int = 0,
    executor_config: dict[str, Any] | None = None,
    checkpoint: str | os.PathLike | None = None,
    task_delay_s: float = 0.0,
) -> DemoResult:
    """Build the corpus in ``<workdir>/corpus`` (a new temp dir when ``workdir`` is None) and curate it.

    The output goes to ``<workdir>/output``. ``checkpoint`` is handed to the executor as is.
    """
    if executor not in EXECUTORS:
        raise ValueError(f"unknown executor {executor!r}; choose one of {sorted(EXECUTORS)}")
    root = _workdir(workdir)
    input_dir = os.path.join(root, "corpus")
    output_dir = os.path.join(root, "output")
    paths = build_sample_corpus(input_dir, files=files, docs_per_file=docs_per_file, seed=seed)
    pipeline = build_demo_pipeline(input_dir, output_dir, task_delay_s=task_delay_s)
    runner = make_executor(executor, config=executor_config, checkpoint=checkpoint)
    start = time.perf_counter()
    outputs = pipeline.run(runner)
    seconds = time.perf_counter() - start
    written = sorted(path for task in outputs for path in task.data)
    return DemoResult(
        executor=executor,
        workdir=root,
        input_dir=input_dir,
        output_dir=output_dir,
        input_files=len(paths),
        documents_in=files * docs_per_file,
        documents_out=sum(int(task._metadata.get("num_records", 0)) for task in outputs),
        files_written=len(written),
        seconds=seconds,
        output_files=written,
    )


def _workdir(workdir: str | os.PathLike | None) -> str:
    return os.path.abspath(workdir) if workdir is not None else tempfile.mkdtemp(prefix="nemo-curator-demo-")


# -- the kill-and-resume showcase ---------------------------------------------------------------

#: Seconds the ``demo_pace`` probe waits per source in the killed and the resumed run: enough for a kill at
#: about half of the sources to land mid-run (the reference run does not wait).
DEFAULT_TASK_DELAY_S = 0.5

#: Subdirectories of the work directory that ``run_resume_demo`` owns and recreates on every call.
RESUME_DEMO_DIRS = ("checkpoint", "output", "reference", "attempts")
JOB_LOG = "killed-run.log"


@dataclass
class ResumeDemoResult:
    """What ``run_resume_demo`` observed. Source ids are sorted; file lists are names.

    ``complete_before`` is what the checkpoint recorded right after the kill;
    ``processed_on_resume`` is every source the resumed run worked on (``DemoProbe`` markers),
    so ``skipped_on_resume`` are the sources it did not touch. ``output_files_at_kill`` may exceed
    ``len(complete_before)``: a file written just before the kill whose completion had not yet
    been acknowledged by the ledger is written again (same name, same bytes) on resume.
    """

    executor: str
    workdir: str
    input_dir: str
    output_dir: str
    reference_dir: str
    checkpoint_dir: str
    job_log: str
    sources: list[str]
    killed: bool
    processes_killed: int
    output_files_at_kill: int
    complete_before: list[str]
    processed_on_resume: list[str]
    complete_after: int
    failed_after: int
    output_files: list[str]
    reference_files: list[str]
    differences: list[str]
    documents_in: int
    documents_out: int
    seconds_killed_run: float
    seconds_resume: float
    seconds_reference: float
    seconds_total: float = 0.0

    @property
    def sources_total(self) -> int:
        return len(self.sources)

    @property
    def skipped_on_resume(self) -> list[str]:
        processed = set(self.processed_on_resume)
        return [s for s in self.sources if s not in processed]

    @property
    def complete_redone(self) -> list[str]:
        """Sources complete before the kill that the resumed run processed again (must be empty)."""
        return sorted(set(self.complete_before) & set(self.processed_on_resume))

    @property
    def identical(self) -> bool:
        return not self.differences and self.output_files == self.reference_files

    @property
    def ok(self) -> bool:
        """Identical output, nothing complete redone, every source complete after the resume."""
        return self.identical and not self.complete_redone and self.complete_after == self.sources_total

    def table_lines(self) -> list[str]:
        rows = [
            ("sources total", str(self.sources_total)),
            ("complete before the kill", str(len(self.complete_before))),
            ("skipped on resume", str(len(self.skipped_on_resume))),
            ("redone on resume", str(len(self.processed_on_resume))),
            ("output files", str(len(self.output_files))),
            ("output identical to an uninterrupted run", "yes" if self.identical else "no"),
        ]
        width = max(len(k) for k, _ in rows)
        lines = [f"  {key:<{width}}  {value:>5}" for key, value in rows]
        if not self.killed:
            lines.append("  (the run finished before the kill point: nothing was interrupted)")
        if self.complete_redone:
            lines.append(f"  ERROR: {len(self.complete_redone)} source(s) complete before the kill were redone")
        if self.complete_after != self.sources_total:
            lines.append(
                f"  ERROR: {self.complete_after} of {self.sources_total} sources complete after the resume "
                f"({self.failed_after} failed)"
            )
        for difference in self.differences[:10]:
            lines.append(f"  {difference}")
        if len(self.differences) > 10:
            lines.append(f"  ... and {len(self.differences) - 10} more differences")
        return lines


def run_job(cfg: dict[str, Any]) -> int:
    """Run the demo pipeline as ``cfg`` says; the subprocess's entry point. Returns the output count.

    Keys: ``executor``, ``input_dir``, ``output_dir``, and optionally ``checkpoint``,
    ``task_delay_s``, ``log_dir``, ``executor_config``.
    """
    delay = float(cfg.get("task_delay_s", 0.0))
    pipeline = build_demo_pipeline(cfg["input_dir"], cfg["output_dir"], task_delay_s=delay, log_dir=cfg.get("log_dir"))
    executor = make_executor(cfg["executor"], config=cfg.get("executor_config"), checkpoint=cfg.get("checkpoint"))
    return len(pipeline.run(executor))


def _child_environment() -> dict[str, str]:
    """The killed run's environment: it starts its own Ray unless the user pointed RAY_ADDRESS at a cluster.

    A ``RAY_ADDRESS`` naming the Ray this process is connected to (e.g. one started by a test
    session or an executor) is dropped, so that the child's Ray processes are its descendants
    and die with it. (With a user's cluster only the child's driver is killed; the actors it
    owns, the ledger's included, die with it.)
    """
    env = dict(os.environ)
    address = env.get("RAY_ADDRESS")
    if address and _is_connected_ray(address):
        del env["RAY_ADDRESS"]
    package_root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
    return env


def _is_connected_ray(address: str) -> bool:
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return False
    try:
        return address == ray.get_runtime_context().gcs_address
    except Exception:  # a half-initialized Ray: treat the address as the user's
        return False


def quiet_ray_auth_notice() -> None:
    """Hide Ray's warning that a new local cluster enables token authentication (it still does)."""
    import logging

    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)


def _completed_count(checkpoint: str) -> int:
    """Sources the checkpoint records as complete; 0 while it is not readable yet."""
    from nemo_curator.resumability.inspect import checkpoint_status

    try:
        return int(checkpoint_status(checkpoint, include_ids=False)["completed_sources"])
    except Exception:  # the child may be creating the directory or its first LMDB file right now
        return 0


def _tail(path: str, chars: int = 4000) -> str:
    try:
        return Path(path).read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def run_resume_demo(
    executor: str = "xenna",
    workdir: str | os.PathLike | None = None,
    files: int = 20,
    docs_per_file: int = 50,
    seed: int = 0,
    task_delay_s: float | None = None,
    kill_fraction: float = 0.5,
    executor_config: dict[str, Any] | None = None,
    timeout_s: float = 600.0,
    echo: Callable[[str], None] | None = None,
) -> ResumeDemoResult:
    """Kill a checkpointed run mid-way, resume it, and compare with an uninterrupted run.

    1. build the corpus in ``<workdir>/corpus``; recreate ``checkpoint/``, ``output/``,
       ``reference/`` and ``attempts/`` under ``<workdir>`` (a new temp dir when None);
    2. run the demo pipeline with ``checkpoint=<workdir>/checkpoint`` in a subprocess and
       SIGKILL its whole process tree once the checkpoint records ``ceil(kill_fraction *
       sources)`` complete sources (at least one);
    3. read the checkpoint (``checkpoint_status``) to learn what was complete before the kill;
    4. resume in this process with the same pipeline and checkpoint, recording which sources it
       processes (``DemoProbe`` markers in ``attempts/resumed``);
    5. run the pipeline uninterrupted, without a checkpoint, into ``reference/`` and compare the
       visible files of both directories (names and bytes).

    ``task_delay_s`` (default ``DEFAULT_TASK_DELAY_S``) paces the killed and the
    resumed run. ``echo`` receives one line per step. Raises ``RuntimeError`` when the killed
    run fails on its own or does not reach the kill point within ``timeout_s``.
    """
    if executor not in EXECUTORS:
        raise ValueError(f"unknown executor {executor!r}; choose one of {sorted(EXECUTORS)}")
    if not 0.0 < kill_fraction < 1.0:
        raise ValueError(f"kill_fraction must be in (0, 1), got {kill_fraction}")
    say = echo or (lambda line: None)
    began = time.perf_counter()
    delay = DEFAULT_TASK_DELAY_S if task_delay_s is None else task_delay_s
    root = _workdir(workdir)
    input_dir = os.path.join(root, "corpus")
    output_dir, reference_dir, checkpoint_dir, attempts_dir = (
        os.path.join(root, name) for name in ("output", "reference", "checkpoint", "attempts")
    )
    for name in RESUME_DEMO_DIRS:
        shutil.rmtree(os.path.join(root, name), ignore_errors=True)
    build_sample_corpus(input_dir, files=files, docs_per_file=docs_per_file, seed=seed)
    sources = demo_source_ids(input_dir)
    kill_at = max(1, math.ceil(kill_fraction * len(sources)))
    job_log = os.path.join(root, JOB_LOG)
    job = {
        "executor": executor,
        "input_dir": input_dir,
        "output_dir": output_dir,
        "checkpoint": checkpoint_dir,
        "task_delay_s": delay,
        "log_dir": os.path.join(attempts_dir, "killed"),
        "executor_config": executor_config or {},
    }

    # 1-2: the checkpointed run, killed mid-way.
    say(f"1/3  checkpointed run in a subprocess (checkpoint {checkpoint_dir}); kill at {kill_at} complete sources")
    start = time.perf_counter()
    killed, processes_killed = _run_and_kill(job, kill_at, job_log, timeout_s)
    seconds_killed = time.perf_counter() - start
    files_at_kill = len(visible_files(output_dir))

    # 3: what the checkpoint recorded.
    from nemo_curator.resumability.inspect import checkpoint_status

    before = checkpoint_status(checkpoint_dir)
    complete_before = sorted(set(before["completed"]) & set(sources))
    if killed:
        say(
            f"     SIGKILLed {processes_killed} processes after {seconds_killed:.1f} s: the checkpoint records "
            f"{len(complete_before)} of {len(sources)} sources complete; {files_at_kill} output files exist"
        )
    else:
        say(f"     the run finished after {seconds_killed:.1f} s, before the kill point")

    # 4-5: resume, then the uninterrupted reference; both in one Ray (sized as the executor
    # sizes its own), which saves a Ray start. Each run's executor reuses the connected Ray.
    from nemo_curator.backends.base import ExecutionPlan

    resumed_log = os.path.join(attempts_dir, "resumed")
    sizing = make_executor(executor, config=executor_config)
    plan = ExecutionPlan.from_stages(build_demo_pipeline(input_dir, output_dir).build())
    say("2/3  resuming in this process with the same pipeline and checkpoint")
    start = time.perf_counter()
    with sizing._runtime(plan):
        run_job({**job, "log_dir": resumed_log})
        seconds_resume = time.perf_counter() - start
        after = checkpoint_status(checkpoint_dir, include_ids=False)
        processed = sorted(set(processed_sources(resumed_log)))
        say(f"     done in {seconds_resume:.1f} s: processed {len(processed)} sources")

        say(f"3/3  uninterrupted reference run without a checkpoint into {reference_dir}")
        start = time.perf_counter()
        reference = build_demo_pipeline(input_dir, reference_dir).run(make_executor(executor, config=executor_config))
        seconds_reference = time.perf_counter() - start
        say(f"     done in {seconds_reference:.1f} s")

    return ResumeDemoResult(
        executor=executor,
        workdir=root,
        input_dir=input_dir,
        output_dir=output_dir,
        reference_dir=reference_dir,
        checkpoint_dir=checkpoint_dir,
        job_log=job_log,
        sources=sources,
        killed=killed,
        processes_killed=processes_killed,
        output_files_at_kill=files_at_kill,
        complete_before=complete_before,
        processed_on_resume=processed,
        complete_after=int(after["completed_sources"]),
        failed_after=int(after["failed_sources"]),
        output_files=visible_files(output_dir),
        reference_files=visible_files(reference_dir),
        differences=compare_outputs(output_dir, reference_dir),
        documents_in=files * docs_per_file,
        documents_out=sum(int(task._metadata.get("num_records", 0)) for task in reference),
        seconds_killed_run=seconds_killed,
        seconds_resume=seconds_resume,
        seconds_reference=seconds_reference,
        seconds_total=time.perf_counter() - began,
    )


def _run_and_kill(job: dict[str, Any], kill_at: int, job_log: str, timeout_s: float) -> tuple[bool, int]:
    """Start ``job`` in a subprocess; kill its tree once ``kill_at`` sources are complete.

    Returns ``(killed, processes_killed)``; ``killed`` is False when the run ended by itself
    first (successfully; a failed run raises ``RuntimeError``).
    """
    with open(job_log, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "nemo_curator.demo", "--run-job", json.dumps(job)],
            env=_child_environment(),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: a terminal's Ctrl-C does not reach it twice
        )
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            if proc.poll() is not None:
                if proc.returncode != 0:
                    raise RuntimeError(
                        f"the checkpointed run failed on its own (exit code {proc.returncode}) before the kill; "
                        f"its log ({job_log}) ends with:\n{_tail(job_log)}"
                    )
                return False, 0
            if _completed_count(job["checkpoint"]) >= kill_at:
                return True, kill_process_tree(proc.pid)
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the checkpointed run did not reach {kill_at} complete sources within {timeout_s:.0f} s; "
                    f"its log ({job_log}) ends with:\n{_tail(job_log)}"
                )
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            kill_process_tree(proc.pid)
        proc.wait(timeout=60)


def _main(argv: list[str]) -> int:
    """``python -m nemo_curator.demo --run-job JSON``: run one demo job, print ``{"outputs": n}``."""
    if len(argv) != 2 or argv[0] != "--run-job":
        print("usage: python -m nemo_curator.demo --run-job JSON", file=sys.stderr)
        return 2
    # Run through the module's importable name, so that the stage classes are
    # ``nemo_curator.demo.DemoProbe`` (as in the resuming process) and not ``__main__.DemoProbe``:
    # the pipeline fingerprint tells them apart.
    from nemo_curator import demo as importable

    importable.quiet_ray_auth_notice()
    print(json.dumps({"outputs": importable.run_job(json.loads(argv[1]))}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
