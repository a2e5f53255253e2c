"""Layer 3: thin Dagster IO managers over the checkpoint backends."""

from kura_dagster.io_managers.base import CheckpointIOManager
from kura_dagster.io_managers.hf import HFDatasetIOManager
from kura_dagster.io_managers.jsonl import JSONLIOManager
from kura_dagster.io_managers.multi import Backend, MultiIOManager
from kura_dagster.io_managers.parquet import ParquetIOManager

__all__ = ["Backend", "CheckpointIOManager", "HFDatasetIOManager", "JSONLIOManager", "MultiIOManager", "ParquetIOManager"]
