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
    "ParquetCheckpointManager",
    "HFDatasetCheckpointManager",
    "SummaryColumns",
    "load_summary_columns",
]

# Imported on first use, so that JSONL alone needs neither pyarrow nor datasets.
_LAZY = {
    "ParquetCheckpointManager": "kura_dagster.checkpoints.parquet",
    "HFDatasetCheckpointManager": "kura_dagster.checkpoints.hf",
    "SummaryColumns": "kura_dagster.checkpoints.columnar",
    "load_summary_columns": "kura_dagster.checkpoints.columnar",
}


def __getattr__(name: str):  # PEP 562
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
