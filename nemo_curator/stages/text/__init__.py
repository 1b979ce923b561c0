"""Text curation stages: JSONL IO (``nemo_curator.stages.text.io``) and document filters."""
