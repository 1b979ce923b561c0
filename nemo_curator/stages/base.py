"""Stage base classes: ``ProcessingStage`` and ``CompositeStage``.

Stages may declare ``name``, ``resources`` and ``batch_size`` as dataclass fields or as plain
class attributes, and need not be dataclasses.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Generic, TypeVar

from nemo_curator.stages.resources import Resources
from nemo_curator.tasks import Task

X = TypeVar("X", bound=Task)
Y = TypeVar("Y", bound=Task)


class ProcessingStage(ABC, Generic[X, Y]):
    """One step of a pipeline.

    ``process(task)`` returns a task (1:1), a list (fan-out; ``[]`` or a ``None`` inside the
    list filters that slot) or ``None`` (filter). ``process_batch(tasks)`` may be overridden
    for vectorised work and may return its outputs in any order: an output belongs to the input
    it is, or whose ``_metadata`` it was built with (the same dict or a copy); never to the input
    at its position (see ``nemo_curator.backends.stage_adapter``).
    """

    name: str = "processing_stage"
    resources: Resources = Resources(cpus=1.0)
    batch_size: int = 1
    #: Mark the stage whose outputs are sources / whose outputs are terminal (defaults: first / last).
    is_source_stage: bool = False
    is_sink_stage: bool = False
    #: Configuration attributes left out of the pipeline fingerprint (e.g. input paths).
    fingerprint_ignore: tuple[str, ...] = ()

    def process(self, task: X) -> Y | list[Y] | None:
        raise TypeError(f"stage {type(self).__name__} implements neither process() nor process_batch()")

    def process_batch(self, tasks: list[X]) -> list[Y | list[Y] | None]:
        """Default: ``process`` each task (the adapter calls ``process`` itself when this is not overridden)."""
        return [self.process(task) for task in tasks]

    def setup_on_node(self, node_info: Any = None, worker_metadata: Any = None) -> None:
        """Called once per node before workers start (optional)."""

    def setup(self, worker_metadata: Any = None) -> None:
        """Called once per worker before any task (optional)."""

    def teardown(self) -> None:
        """Called once per worker after the last task (optional)."""

    def num_workers(self) -> int | None:
        """A fixed number of workers, or ``None`` to let the executor decide."""
        return None

    def overrides_process_batch(self) -> bool:
        return type(self).process_batch is not ProcessingStage.process_batch

    def has_setup(self) -> bool:
        cls = type(self)
        return cls.setup is not ProcessingStage.setup or cls.teardown is not ProcessingStage.teardown

    def with_(
        self, name: str | None = None, resources: Resources | None = None, batch_size: int | None = None
    ) -> ProcessingStage[X, Y]:
        """Override ``name`` / ``resources`` / ``batch_size`` on this instance; returns ``self``."""
        if name is not None:
            self.name = name
        if resources is not None:
            self.resources = resources
        if batch_size is not None:
            self.batch_size = batch_size
        return self

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class CompositeStage(ABC, Generic[X, Y]):
    """A user-facing stage that expands into processing stages when the pipeline is built."""

    name: str = "composite_stage"

    @abstractmethod
    def decompose(self) -> list[ProcessingStage]:
        """The processing stages this composite stands for, in order."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"
