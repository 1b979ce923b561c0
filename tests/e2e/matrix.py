"""Which end-to-end cases run by default, and which only with ``NEMO_CURATOR_E2E_ALL=1``.

CI has 40 minutes on 2 cores. Each backend's own glue (its report channel, its retries, its
shutdown) is exercised on every executor by default; the cases that vary only what the shared,
backend-independent ledger sees (another kill point, a refused fingerprint, a lost node where
the executor needed no code of ours) run on the actor pool, the fastest, unless the full matrix
is asked for. Locally, ``NEMO_CURATOR_E2E_ALL=1 pytest tests/e2e`` runs everything (about 15
minutes more on 2 cores).
"""

from __future__ import annotations

import os

import pytest

from nemo_curator.backends import registry

FULL_MATRIX_ENV = "NEMO_CURATOR_E2E_ALL"
FULL_MATRIX = os.environ.get(FULL_MATRIX_ENV) == "1"
EXECUTORS = list(registry.EXECUTORS)
FASTEST = "ray_actor_pool"
FULL_ONLY = f"a case beyond the default matrix; set {FULL_MATRIX_ENV}=1 for it"


def executors_beyond_fastest() -> list:
    """Every executor as a pytest param; all but the fastest skip unless the full matrix is asked for."""
    return [
        pytest.param(
            name,
            marks=pytest.mark.skipif(
                name != FASTEST and not FULL_MATRIX,
                reason=f"backend-independent case: runs on {FASTEST}; set {FULL_MATRIX_ENV}=1 for all",
            ),
        )
        for name in EXECUTORS
    ]
