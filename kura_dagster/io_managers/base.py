"""The base IO manager: Dagster paths and partitions on top of a layer-2 checkpoint manager.

A format subclass only says which file extension it uses and how to build its checkpoint manager for a
directory (dagster-polars style). Paths, partitions, names that must not escape the base directory, model
resolution and metadata are all here.
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar, Optional

import dagster as dg
from pydantic import Field, PrivateAttr
from upath import UPath

from kura_dagster.checkpoints.base import BaseCheckpointManager
from kura_dagster.checkpoints.storage import to_upath, validate_name
from kura_dagster.io_managers.metadata import checkpoint_metadata
from kura_dagster.io_managers.typing import CHECKPOINT_NAME_KEY, input_model, output_model


def asset_checkpoint_name(context: dg.InputContext | dg.OutputContext) -> list[str]:
    """Path segments for an asset: its ``kura/checkpoint_name`` metadata (Kura's file names, e.g.
    ``dimensionality`` for projected clusters), else its asset key."""
    metadata = (
        context.definition_metadata
        if isinstance(context, dg.OutputContext)
        else (context.upstream_output.definition_metadata if context.upstream_output else None)
    ) or {}
    name = metadata.get(CHECKPOINT_NAME_KEY)
    parts = str(name).split("/") if name else list(context.asset_key.path)
    for part in parts:
        validate_name(part, what="asset key segment")
    return parts


def wants_summary_columns(context: dg.InputContext) -> bool:
    """Is the input annotated with :class:`~kura_dagster.checkpoints.columnar.SummaryColumns`?"""
    typing_type = getattr(getattr(context, "dagster_type", None), "typing_type", None)
    return getattr(typing_type, "__name__", None) == "SummaryColumns" and getattr(
        typing_type, "__module__", ""
    ) == "kura_dagster.checkpoints.columnar"


def _is_summaries_input(_context: Any, value: Any) -> bool:
    from kura_dagster.checkpoints.columnar import SummaryColumns

    return isinstance(value, (SummaryColumns, list))


@functools.cache
def summary_columns_type() -> dg.DagsterType:
    """The Dagster type of a summaries input that wants the columnar fast path: the IO managers above return
    :class:`~kura_dagster.checkpoints.columnar.SummaryColumns`; others (e.g. a multi-backend manager) may return
    a list of summaries, which ``SummaryColumns.coerce`` turns into columns."""
    from kura_dagster.checkpoints.columnar import SummaryColumns

    return dg.DagsterType(type_check_fn=_is_summaries_input, name="SummaryColumns", typing_type=SummaryColumns,
                          description="Summaries as Arrow-backed columns (chat_ids + float32 embedding matrix).")


class CheckpointIOManager(dg.ConfigurableIOManager, dg.UPathIOManager):
    """Stores ``list[pydantic model]`` outputs as Kura checkpoints under ``base_dir``."""

    extension: ClassVar[Optional[str]] = None
    base_dir: Optional[str] = Field(
        default=None,
        description="Local directory or fsspec URL (s3://…, gs://…, memory://…). Defaults to the instance's storage directory.",
    )
    enabled: bool = Field(default=True, description="When false, outputs are not persisted (Kura's enabled=False).")
    fs_options: dict[str, Any] = Field(default_factory=dict, description="fsspec storage options for base_dir.")
    _base_path: UPath = PrivateAttr()

    # --- the one thing a format implements ----------------------------------------------------------------
    def build_manager(self, directory: UPath) -> BaseCheckpointManager:  # pragma: no cover - abstract
        raise NotImplementedError

    # --- Dagster lifecycle ------------------------------------------------------------------------------
    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        base = self.base_dir or str(UPath(context.instance.storage_directory()) / "kura")  # type: ignore[union-attr]
        self._base_path = to_upath(base, self.fs_options)

    @property
    def base_path(self) -> UPath:
        return self._base_path

    @property
    def storage_options(self) -> dict[str, Any]:
        """The fsspec options of ``base_dir``. Dagster 1.13.27's own property reads ``UPath._kwargs``, which
        universal_pathlib 0.3 removed (fixed in 1.13.28); reading the UPath's public attribute works on both."""
        return dict(getattr(self._base_path, "storage_options", {}) or {})

    # --- paths -----------------------------------------------------------------------------------------
    def get_asset_relative_path(self, context: dg.InputContext | dg.OutputContext) -> UPath:
        return UPath(*asset_checkpoint_name(context))

    def make_safe_partition_path(self, base_path: UPath, partition: str) -> UPath:
        return base_path / validate_name(partition, what="partition key")

    def _manager_and_name(self, path: UPath) -> tuple[BaseCheckpointManager, str]:
        name = path.name[: -len(self.extension)] if self.extension and path.name.endswith(self.extension) else path.name
        return self.build_manager(path.parent), name

    # --- write -----------------------------------------------------------------------------------------
    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        if obj is None:
            return
        if not self.enabled:
            context.log.warning(
                f"{type(self).__name__} is disabled (enabled=False): the output of {context.asset_key.to_user_string()} "
                "is not persisted, and no later run can load it."
            )
            context.add_output_metadata({"kura/persisted": False})
            return
        super().handle_output(context, obj)

    def dump_to_path(self, context: dg.OutputContext, obj: Any, path: UPath) -> None:
        manager, name = self._manager_and_name(path)
        model = output_model(context)
        saved = manager.save_checkpoint(name, obj, model_class=model)
        context.add_output_metadata(checkpoint_metadata(obj, model or (type(obj[0]) if obj else None), saved))

    # --- read ------------------------------------------------------------------------------------------
    def load_input(self, context: dg.InputContext) -> Any:
        if not self.enabled:
            raise dg.DagsterInvariantViolationError(
                f"{type(self).__name__} is disabled (enabled=False), so it cannot load "
                f"{context.asset_key.to_user_string()}. Enable it or load through another IO manager."
            )
        return super().load_input(context)

    def load_from_path(self, context: dg.InputContext, path: UPath) -> Any:
        manager, name = self._manager_and_name(path)
        if wants_summary_columns(context):  # the columnar fast path (e.g. the clusters asset)
            from kura_dagster.checkpoints.columnar import load_summary_columns

            result = load_summary_columns(manager, name)
        else:
            result = manager.load_checkpoint(name, input_model(context))
        if result is None:
            raise FileNotFoundError(
                f"No {manager.format_name} checkpoint at {path} for asset "
                f"{context.asset_key.to_user_string()}: materialize it first (for example "
                f"`dagster asset materialize --select {context.asset_key.to_user_string()} -m kura_dagster.definitions`)."
            )
        rows = len(result) if hasattr(result, "__len__") else "streamed"
        context.log.info(f"Loaded {rows} rows of {context.asset_key.to_user_string()} from {path}")
        return result

    def path_exists(self, path: UPath) -> bool:
        manager, name = self._manager_and_name(path)
        return manager.has_checkpoint(name)
