"""cosmos-xenna backend: ``XennaExecutor``."""

from nemo_curator.backends.xenna.executor import XennaExecutor

__all__ = ["XennaExecutor"]
