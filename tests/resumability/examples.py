"""Hypothesis example budgets for these tests, capped at the ``ci`` profile's counts.

The ``local`` profile raises ``max_examples`` tenfold; the tests here open real LMDB files, so
each budget is the ``ci`` count (at most) whatever profile is loaded, keeping the directory
well under three minutes on two cores.
"""

from __future__ import annotations

from typing import Any

from hypothesis import settings

#: ``max_examples`` of the ``ci`` profile in tests/conftest.py.
CI_EXAMPLES = 300


def budget(ci_examples: int = CI_EXAMPLES, **kwargs: Any) -> settings:
    """Settings with at most ``ci_examples`` examples (fewer if the loaded profile asks for fewer)."""
    return settings(max_examples=min(ci_examples, settings.default.max_examples), **kwargs)
