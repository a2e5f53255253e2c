"""Format names → checkpoint manager classes, imported on first use (so JSONL needs neither pyarrow nor datasets)."""

from __future__ import annotations

import importlib
from typing import Any

from kura_dagster.checkpoints.base import BaseCheckpointManager

FORMATS: dict[str, str] = {
    "jsonl": "kura_dagster.checkpoints.jsonl:JSONLCheckpointManager",
    "parquet": "kura_dagster.checkpoints.parquet:ParquetCheckpointManager",
    "hf": "kura_dagster.checkpoints.hf:HFDatasetCheckpointManager",
}


def manager_class(fmt: str) -> type[BaseCheckpointManager]:
    try:
        target = FORMATS[fmt]
    except KeyError:
        raise ValueError(f"Unknown checkpoint format {fmt!r}; choose from {', '.join(FORMATS)}") from None
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def build_manager(fmt: str, checkpoint_dir: Any, **options: Any) -> BaseCheckpointManager:
    """``build_manager("parquet", "./checkpoints", compression="zstd")``; options a format does not take are refused."""
    return manager_class(fmt)(checkpoint_dir, **options)
