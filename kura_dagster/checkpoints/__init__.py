"""Layer 2: checkpoint backends with Kura's API. No Dagster import here: they work in a notebook too.

    from kura_dagster.checkpoints import JSONLCheckpointManager
    mgr = JSONLCheckpointManager("./checkpoints")
    mgr.save_checkpoint("summaries", summaries)
    mgr.load_checkpoint("summaries", ConversationSummary)
"""

from kura_dagster.checkpoints.base import BaseCheckpointManager, SavedCheckpoint
from kura_dagster.checkpoints.errors import (
    CheckpointCorruptError,
    CheckpointError,
    CheckpointSaveError,
    InvalidCheckpointName,
)
from kura_dagster.checkpoints.jsonl import CheckpointManager, JSONLCheckpointManager
from kura_dagster.checkpoints.multi import MultiCheckpointManager, MultiSaveError, MultiSaveResult, NoReadableCopyError

__all__ = [
    "BaseCheckpointManager",
    "CheckpointCorruptError",
    "CheckpointError",
    "CheckpointManager",
    "CheckpointSaveError",
    "InvalidCheckpointName",
    "JSONLCheckpointManager",
    "MultiCheckpointManager",
    "MultiSaveError",
    "MultiSaveResult",
    "NoReadableCopyError",
    "SavedCheckpoint",
]
