"""Deduplication: exact (``nemo_curator.stages.deduplication.exact``)."""
