"""Reading and writing JSONL documents: ``JsonlReader`` (partition + read) and ``JsonlWriter``."""

from nemo_curator.stages.text.io.reader import JsonlReader, JsonlReaderStage
from nemo_curator.stages.text.io.writer import JsonlWriter

__all__ = ["JsonlReader", "JsonlReaderStage", "JsonlWriter"]
