"""Backend-independent resumability: credit, reports, ledger, store, actor, checkpoint inspection.

Nothing here is imported on the hot path when a run has ``checkpoint=None``.
"""
