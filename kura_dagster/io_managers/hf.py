"""``HFDatasetIOManager``: each output is an HF ``save_to_disk`` directory ``<base_dir>/<asset>[/<partition>]/``,
with native Arrow types (``layout="native"``, the default) or Kura 0.5.4's features (``layout="kura"``).

Pass the Hub token as ``hub_token=dg.EnvVar("HF_TOKEN")``: it is read at run time and never shown in the UI,
logs or metadata. A failed push shows up as ``kura/hub_push`` metadata and never fails the run.
"""

from __future__ import annotations

from typing import ClassVar, Optional

from pydantic import Field
from upath import UPath

from kura_dagster.checkpoints.base import BaseCheckpointManager
from kura_dagster.io_managers.base import CheckpointIOManager


class HFDatasetIOManager(CheckpointIOManager):
    extension: ClassVar[Optional[str]] = None
    hub_repo: Optional[str] = Field(default=None, description="Push every save to this Hub dataset repo (one config per checkpoint).")
    hub_token: Optional[str] = Field(default=None, description='Hub token; pass dg.EnvVar("HF_TOKEN").')
    streaming: bool = Field(default=False, description="Load inputs as iterators of models instead of lists.")
    compression: Optional[str] = Field(default=None, description="Accepted like Kura's (gzip, lz4, zstd); local Arrow stays uncompressed for memory mapping.")
    embedding_dtype: str = Field(default="float32", description="Embedding precision on disk: float32 or float64.")
    layout: str = Field(
        default="native",
        description="native: typed Arrow columns (DuckDB/Polars, fast); kura: Kura 0.5.4's features (datasets 3.x "
        "vocabulary), which Kura's own HFDatasetCheckpointManager loads.",
    )

    def build_manager(self, directory: UPath) -> BaseCheckpointManager:
        from kura_dagster.checkpoints.hf import HFDatasetCheckpointManager  # datasets is imported on first use

        return HFDatasetCheckpointManager(
            directory,
            enabled=self.enabled,
            hub_repo=self.hub_repo,
            hub_token=self.hub_token,
            streaming=self.streaming,
            compression=self.compression,
            embedding_dtype=self.embedding_dtype,
            layout=self.layout,
            storage_options=self.fs_options or None,
        )
