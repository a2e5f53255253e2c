"""Layer 3: thin Dagster IO managers over the checkpoint backends."""

from kura_dagster.io_managers.base import CheckpointIOManager
from kura_dagster.io_managers.jsonl import JSONLIOManager

__all__ = ["CheckpointIOManager", "JSONLIOManager"]
