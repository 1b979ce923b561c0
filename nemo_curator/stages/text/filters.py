"""Simple heuristic document filters on ``DocumentBatch``.

Each filter keeps the rows whose score passes and returns a new batch (same ``dataset_name``
and metadata, rows in their original order, index reset); when no row survives it returns
``None``, which filters the whole task. A missing text value counts as the empty string.
The scoring functions (``word_count``, ``repeated_char_ratio``) are public so that callers
and tests can compute the same decision outside a pipeline.
"""

from __future__ import annotations

import re
from abc import abstractmethod
from dataclasses import dataclass, field
from functools import lru_cache

from nemo_curator.stages.base import ProcessingStage
from nemo_curator.stages.resources import Resources
from nemo_curator.tasks import DocumentBatch


def word_count(text: str) -> int:
    """Number of whitespace-separated words."""
    return len(text.split())


@lru_cache(maxsize=16)
def _run_pattern(min_run: int) -> re.Pattern[str]:
    return re.compile(r"(\S)\1{" + str(min_run - 1) + ",}")


def repeated_char_ratio(text: str, min_run: int = 6) -> float:
    """Fraction of ``text``'s characters inside runs of one non-space character of length >= ``min_run``.

    ``"ok !!!!!!!!"`` with ``min_run=6`` is 8/11; text without such runs (or empty) scores 0.
    """
    if not text:
        return 0.0
    covered = sum(m.end() - m.start() for m in _run_pattern(min_run).finditer(text))
    return covered / len(text)


class DocumentFilter(ProcessingStage[DocumentBatch, DocumentBatch]):
    """Base of row filters: subclasses implement ``keep(text) -> bool`` and set ``text_field``."""

    text_field: str = "text"

    @abstractmethod
    def keep(self, text: str) -> bool:
        """Whether a document with this text stays."""

    def process(self, task: DocumentBatch) -> DocumentBatch | None:
        frame = task.to_pandas()
        if self.text_field not in frame.columns:
            raise ValueError(
                f"{self.name}: text field {self.text_field!r} not in the batch; it has {list(frame.columns)}"
            )
        texts = frame[self.text_field]
        mask = [self.keep(t if isinstance(t, str) else "") for t in texts]
        if not any(mask):
            return None
        kept = frame[mask].reset_index(drop=True)
        return DocumentBatch(dataset_name=task.dataset_name, data=kept, _metadata=dict(task._metadata))


@dataclass
class WordCountFilter(DocumentFilter):
    """Keeps documents with ``min_words <= word_count(text) <= max_words`` (``None``: unbounded)."""

    min_words: int | None = 50
    max_words: int | None = 100_000
    text_field: str = "text"
    name: str = "word_count_filter"
    resources: Resources = field(default_factory=lambda: Resources(cpus=0.5))
    batch_size: int = 1

    def __post_init__(self) -> None:
        if self.min_words is not None and self.max_words is not None and self.min_words > self.max_words:
            raise ValueError(f"{self.name}: min_words {self.min_words} > max_words {self.max_words}")

    def keep(self, text: str) -> bool:
        n = word_count(text)
        return (self.min_words is None or n >= self.min_words) and (self.max_words is None or n <= self.max_words)


@dataclass
class RepeatedCharFilter(DocumentFilter):
    """Drops documents where ``repeated_char_ratio(text, min_run) > max_ratio`` (e.g. ``"!!!!!!!!"`` spam)."""

    max_ratio: float = 0.2
    min_run: int = 6
    text_field: str = "text"
    name: str = "repeated_char_filter"
    resources: Resources = field(default_factory=lambda: Resources(cpus=0.5))
    batch_size: int = 1

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_ratio <= 1.0:
            raise ValueError(f"{self.name}: max_ratio must be in [0, 1], got {self.max_ratio}")
        if self.min_run < 2:
            raise ValueError(f"{self.name}: min_run must be >= 2, got {self.min_run}")

    def keep(self, text: str) -> bool:
        return repeated_char_ratio(text, self.min_run) <= self.max_ratio


__all__ = [
    "DocumentFilter",
    "RepeatedCharFilter",
    "WordCountFilter",
    "repeated_char_ratio",
    "word_count",
]
