"""Backend-independent resumability: credit, reports, ledger, durable record, actor, checkpoint inspection.

Nothing here is imported on the hot path when a run has ``checkpoint=None``. Importing this
package itself is light: it loads only ``config`` (``CheckpointConfig``).
"""

from nemo_curator.resumability.config import CheckpointConfig, coerce_checkpoint

__all__ = ["CheckpointConfig", "coerce_checkpoint"]
