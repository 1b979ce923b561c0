"""Exact deduplication, resumable at every step: ``ExactDeduplicationWorkflow``."""

from nemo_curator.stages.deduplication.exact.identification import (
    ExactDuplicateHashStage,
    ExactDuplicateIdentificationStage,
)
from nemo_curator.stages.deduplication.exact.removal import ExactDuplicateRemovalStage
from nemo_curator.stages.deduplication.exact.workflow import ExactDeduplicationResult, ExactDeduplicationWorkflow
from nemo_curator.stages.shuffle_files import ShufflePartitionTask

__all__ = [
    "ExactDeduplicationResult",
    "ExactDeduplicationWorkflow",
    "ExactDuplicateHashStage",
    "ExactDuplicateIdentificationStage",
    "ExactDuplicateRemovalStage",
    "ShufflePartitionTask",
]
