"""Pipelines: ordered stages run by an executor."""

from nemo_curator.pipeline.pipeline import Pipeline

__all__ = ["Pipeline"]
