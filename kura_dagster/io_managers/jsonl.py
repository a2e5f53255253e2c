"""``JSONLIOManager``: each output is ``<base_dir>/<asset>[/<partition>].jsonl``, a file Kura reads."""

from __future__ import annotations

from typing import ClassVar, Optional

from upath import UPath

from kura_dagster.checkpoints.jsonl import JSONLCheckpointManager
from kura_dagster.io_managers.base import CheckpointIOManager


class JSONLIOManager(CheckpointIOManager):
    extension: ClassVar[Optional[str]] = ".jsonl"

    def build_manager(self, directory: UPath) -> JSONLCheckpointManager:
        return JSONLCheckpointManager(directory, enabled=self.enabled)
