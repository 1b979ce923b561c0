"""Stages: the steps of a pipeline."""
