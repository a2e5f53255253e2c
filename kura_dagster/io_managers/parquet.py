"""``ParquetIOManager``: each output is ``<base_dir>/<asset>[/<partition>].parquet``, with native Arrow types
(``layout="native"``, the default) or in the layout Kura 0.5.4's own Parquet manager reads (``layout="kura"``)."""

from __future__ import annotations

from typing import ClassVar, Optional

from pydantic import Field
from upath import UPath

from kura_dagster.checkpoints.parquet import ParquetCheckpointManager
from kura_dagster.io_managers.base import CheckpointIOManager


class ParquetIOManager(CheckpointIOManager):
    extension: ClassVar[Optional[str]] = ".parquet"
    compression: str = Field(
        default="snappy", description="Parquet codec: snappy, gzip, brotli, lz4, zstd or none."
    )
    embedding_dtype: str = Field(
        default="float32", description="Embedding precision on disk: float32 (half the bytes) or float64 (exact)."
    )
    layout: str = Field(
        default="native",
        description="native: typed Arrow columns (DuckDB/Polars, fast); kura: the columns Kura 0.5.4's own "
        "ParquetCheckpointManager reads (JSON strings, float64 embeddings).",
    )

    def build_manager(self, directory: UPath) -> ParquetCheckpointManager:
        return ParquetCheckpointManager(
            directory, enabled=self.enabled, compression=self.compression, embedding_dtype=self.embedding_dtype,
            layout=self.layout,
        )
