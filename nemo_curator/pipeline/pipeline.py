"""``Pipeline``: an ordered list of stages run by an executor."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nemo_curator.stages.base import CompositeStage, ProcessingStage

if TYPE_CHECKING:
    from nemo_curator.backends.base import BaseExecutor
    from nemo_curator.tasks import Task


class Pipeline:
    """``Pipeline(name, stages=[...])``; ``run(executor)`` returns the sink stage's outputs."""

    def __init__(
        self,
        name: str,
        description: str | None = None,
        stages: list[ProcessingStage | CompositeStage] | None = None,
        config: dict[str, Any] | None = None,
    ) -> None:
        self.name = name
        self.description = description
        self.stages: list[ProcessingStage | CompositeStage] = []
        self.config = dict(config or {})
        for stage in stages or []:
            self.add_stage(stage)

    def add_stage(self, stage: ProcessingStage | CompositeStage) -> Pipeline:
        """Append a stage; returns ``self`` for chaining."""
        if not isinstance(stage, ProcessingStage | CompositeStage):
            raise TypeError(
                f"pipeline {self.name!r}: stage {len(self.stages)} is a {type(stage).__name__}, "
                "not a ProcessingStage or CompositeStage"
            )
        self.stages.append(stage)
        return self

    def build(self) -> list[ProcessingStage]:
        """Expand composite stages (recursively) into the processing stages that run."""
        if not self.stages:
            raise ValueError(f"pipeline {self.name!r} has no stages; add at least one with add_stage()")
        built: list[ProcessingStage] = []
        for stage in self.stages:
            built.extend(_expand(stage))
        if not built:
            raise ValueError(f"pipeline {self.name!r}: its composite stages decomposed into no stages")
        return built

    def describe(self, checkpoint: str | None = None) -> str:
        """A readable summary: stages with resources and batch sizes (and a checkpoint's state)."""
        lines = [f"Pipeline: {self.name}"]
        if self.description:
            lines.append(f"  {self.description}")
        try:
            stages = self.build()
        except ValueError as exc:
            lines.append(f"  (cannot build: {exc})")
            return "\n".join(lines)
        for i, stage in enumerate(stages):
            r = stage.resources
            lines.append(
                f"  {i}: {stage.name} ({type(stage).__name__}) "
                f"cpus={r.cpus:g} gpus={r.gpus:g} batch_size={stage.batch_size}"
            )
        if checkpoint is not None:
            from nemo_curator.resumability.inspect import describe_checkpoint

            lines.append(describe_checkpoint(checkpoint, stages))
        return "\n".join(lines)

    def run(self, executor: BaseExecutor | None = None, initial_tasks: list[Task] | None = None) -> list[Task]:
        """Run on ``executor`` (default ``XennaExecutor()``); returns the sink's outputs.

        A pipeline with barrier stages (``ShuffleStage``) runs as segments split at them
        (``pipeline.workflow.run_pipeline_with_barriers``), each resumable on its own.
        """
        stages = self.build()
        if executor is None:
            from nemo_curator.backends.xenna import XennaExecutor

            executor = XennaExecutor()
        if any(getattr(stage, "is_barrier", False) for stage in stages):
            from nemo_curator.pipeline.workflow import run_pipeline_with_barriers

            return run_pipeline_with_barriers(self.name, stages, executor, initial_tasks)
        return executor.execute(stages, initial_tasks)

    def __repr__(self) -> str:
        return f"Pipeline(name={self.name!r}, stages={[s.name for s in self.stages]})"


def _expand(stage: ProcessingStage | CompositeStage) -> list[ProcessingStage]:
    if isinstance(stage, ProcessingStage):
        return [stage]
    parts = stage.decompose()
    if not isinstance(parts, list):
        raise TypeError(f"composite stage {stage.name!r}: decompose() must return a list of stages")
    out: list[ProcessingStage] = []
    for part in parts:
        if not isinstance(part, ProcessingStage | CompositeStage):
            raise TypeError(f"composite stage {stage.name!r} decomposed into a {type(part).__name__}")
        out.extend(_expand(part))
    return out
