"""nemo_curator: resumable data-curation pipelines on cosmos-xenna, Ray Data and Ray actors."""

__version__ = "0.1.0"
