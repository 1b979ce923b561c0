"""The demo: build a small sample JSONL corpus and curate it on one of the three executors.

``run_demo`` runs ``JsonlReader -> WordCountFilter -> RepeatedCharFilter -> JsonlWriter`` over a
corpus made by ``build_sample_corpus`` and returns a ``DemoResult``; ``nemo-curator demo``
prints its summary.

Invariants:
- the corpus is a pure function of ``(files, docs_per_file, seed)``; a file whose content is
  already right is left untouched (same mtime), so reruns in the same work directory see the
  same sources (and the same source ids) as the first run;
- the output is ``<workdir>/output/<task_id>.jsonl``, one file per input partition with at least
  one surviving document, identical across runs and executors.
"""

from __future__ import annotations

import importlib
import json
import os
import random
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

from nemo_curator.backends.base import BaseExecutor
from nemo_curator.pipeline import Pipeline
from nemo_curator.stages.text.filters import RepeatedCharFilter, WordCountFilter
from nemo_curator.stages.text.io.reader import JsonlReader
from nemo_curator.stages.text.io.writer import JsonlWriter

#: Executor name -> (module, class), imported only when chosen.
EXECUTORS: dict[str, tuple[str, str]] = {
    "xenna": ("nemo_curator.backends.xenna", "XennaExecutor"),
    "ray_data": ("nemo_curator.backends.ray_data", "RayDataExecutor"),
    "ray_actor_pool": ("nemo_curator.backends.ray_actor_pool", "RayActorPoolExecutor"),
}

#: Filter settings of the demo pipeline (``build_sample_corpus`` makes documents on both sides).
DEMO_MIN_WORDS = 8
DEMO_MAX_WORDS = 1000
DEMO_MAX_REPEAT_RATIO = 0.2
DEMO_MIN_RUN = 6

_SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "da", "pe", "gu", "fi", "ho", "ba", "tre", "sol"]
_RUN_CHARS = "!=*#a-?"


def make_executor(
    name: str, config: dict[str, Any] | None = None, checkpoint: str | os.PathLike | None = None
) -> BaseExecutor:
    """An executor by name (``xenna``, ``ray_data``, ``ray_actor_pool``); raises ``ValueError`` otherwise."""
    if name not in EXECUTORS:
        raise ValueError(f"unknown executor {name!r}; choose one of {sorted(EXECUTORS)}")
    module_name, class_name = EXECUTORS[name]
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(config=config, checkpoint=checkpoint)


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


def build_demo_pipeline(input_dir: str, output_dir: str) -> Pipeline:
    """Partition + read the corpus, drop short/long and repeated-character documents, write JSONL."""
    return Pipeline(
        name="demo",
        description="Curate a sample JSONL corpus: word-count and repeated-character filters",
        stages=[
            JsonlReader(input_dir, fields=["id", "text"]),
            WordCountFilter(min_words=DEMO_MIN_WORDS, max_words=DEMO_MAX_WORDS),
            RepeatedCharFilter(max_ratio=DEMO_MAX_REPEAT_RATIO, min_run=DEMO_MIN_RUN),
            JsonlWriter(output_dir),
        ],
    )


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
) -> DemoResult:
    """Build the corpus in ``<workdir>/corpus`` (a new temp dir when ``workdir`` is None) and curate it.

    The output goes to ``<workdir>/output``. ``checkpoint`` is handed to the executor as is.
    """
    if executor not in EXECUTORS:
        raise ValueError(f"unknown executor {executor!r}; choose one of {sorted(EXECUTORS)}")
    root = os.path.abspath(workdir) if workdir is not None else tempfile.mkdtemp(prefix="nemo-curator-demo-")
    input_dir = os.path.join(root, "corpus")
    output_dir = os.path.join(root, "output")
    paths = build_sample_corpus(input_dir, files=files, docs_per_file=docs_per_file, seed=seed)
    pipeline = build_demo_pipeline(input_dir, output_dir)
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
