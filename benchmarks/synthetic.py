"""Synthetic checkpoint content for the benchmarks that measure loading (``remote``, ``scale``)."""

from __future__ import annotations

from typing import Any


def commit_completed(store: Any, ids: list[str]) -> None:
    """Record ``ids`` complete in ``store`` (a ``CheckpointStore``) as one update: one task of credit 1 each."""
    from nemo_curator.resumability.digests import EXP_BITS, digests_of, fingerprints
    from nemo_curator.resumability.keys import source_key
    from nemo_curator.resumability.ledger import LedgerUpdate

    fps = fingerprints([f"{sid}_0" for sid in ids], [1 << EXP_BITS] * len(ids))
    store.commit(
        LedgerUpdate(
            completed=ids,
            completed_keys=[source_key(s) for s in ids],
            completed_digests=digests_of(fps, [1] * len(ids)),
        )
    )
