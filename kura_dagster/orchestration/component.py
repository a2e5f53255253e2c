"""``KuraPipelineComponent``: one Kura pipeline as a Dagster Component, for projects laid out the ``dg`` way.

    # defs/support/defs.yaml
    type: kura_dagster.KuraPipelineComponent
    attributes:
      key_prefix: support
      conversations: {asset: raw_chats}      # or a path / glob / URL string
      column_map: {chat_id: id, created_at: ts, messages: turns}
      formats: [jsonl, parquet]
      llm: openai:gpt-4o-mini
      settings: {clusters_per_group: 20}

The attributes mirror :func:`kura_dagster.build_kura_defs`'s keywords; ``build_defs`` calls it. A relative
``checkpoint_dir`` or conversations path is taken relative to the folder of the ``defs.yaml``.
"""

from __future__ import annotations

import os
from typing import Any, Literal, Optional, Union

import dagster as dg
from pydantic import Field


class ConversationsAsset(dg.Model):
    """``{asset: raw_chats}`` (or ``{asset: a/b}`` for a key with several parts): a project asset holding the
    conversations."""

    asset: str = Field(description="The asset key, '/'-separated.")


def _settings_model() -> type[dg.Model]:
    """The ``settings:`` mapping as a strict model: exactly the factory's ``**settings`` (the ``kura`` resource's
    fields, ``demo_size`` and the IO-manager options), each optional, so ``dg check yaml`` names a misspelt key
    at its line (``cluster_per_group`` → "Additional properties are not allowed")."""
    from pydantic import create_model

    from kura_dagster.orchestration.factory import IO_MANAGER_OPTIONS, SOURCE_SETTINGS
    from kura_dagster.orchestration.resources import ConversationSource, KuraPipelineResource

    fields: dict[str, Any] = {}
    for name, info in KuraPipelineResource.model_fields.items():
        if name not in ("checkpoint_dir", "llm", "embeddings"):
            fields[name] = (Optional[info.annotation], Field(default=None, description=info.description))
    for name in SOURCE_SETTINGS:
        info = ConversationSource.model_fields[name]
        fields[name] = (Optional[info.annotation], Field(default=None, description=info.description))
    for name in IO_MANAGER_OPTIONS:
        fields[name] = (Optional[str], Field(default=None, description="Checkpoint IO manager option."))
    return create_model("KuraSettings", __base__=dg.Model, **fields)


KuraSettings = _settings_model()


class KuraPipelineComponent(dg.Component, dg.Model, dg.Resolvable):
    """A Kura pipeline: conversations → summaries → clusters → meta_clusters → projected_clusters, under its own
    key prefix, with its own checkpoints, checks, job, and (optionally) schedule and sensor."""

    key_prefix: str = Field(description="Namespaces asset keys, group, resources, jobs, schedules and sensors.")
    conversations: Union[ConversationsAsset, str, None] = Field(
        default=None, description="A path, glob, directory or fsspec URL; {asset: key} for a project asset; "
        "empty for the built-in demo data.",
    )
    column_map: Optional[dict[str, str]] = Field(default=None, description="Kura field → source column.")
    checkpoint_dir: Optional[str] = Field(default=None, description="Default <KURA_CHECKPOINT_DIR>/<key_prefix>.")
    formats: list[Literal["jsonl", "parquet", "hf"]] = Field(default_factory=lambda: ["jsonl"])
    save_strategy: Literal["all_enabled", "primary_only"] = "all_enabled"
    load_strategy: Literal["first_found", "priority"] = "first_found"
    llm: str = Field(default="local", description="'local' or 'openai:<model>'.")
    embeddings: str = Field(default="local", description="'local' or 'openai:<model>'.")
    schedule_cron: Optional[str] = Field(default=None, description="Re-materialize stale assets on this cron.")
    partitions: Optional[Literal["daily", "files"]] = None
    on_bad_record: Literal["fail", "skip"] = "fail"
    source_format: Optional[str] = None
    fs_options: Optional[dict[str, Any]] = None
    executor: Optional[str] = Field(default=None, description="in_process or multiprocess (the location's executor).")
    sensor: Optional[bool] = None
    allow_empty: bool = Field(default=False, description="Accept a source with no conversations (default: fail).")
    max_shrink: float = Field(default=0.5, ge=0.0, le=1.0, description="Fail when a re-read shrank by more than "
                              "this share from the last materialization (1: any shrink is fine).")
    settings: KuraSettings = Field(  # type: ignore[valid-type]
        default_factory=KuraSettings,
        description="Pipeline settings: clusters_per_group, max_clusters, seed, embedding_dims, max_concurrency, …",
    )

    def _relative(self, context: dg.ComponentLoadContext, location: str) -> str:
        if "://" in location or os.path.isabs(os.path.expanduser(location)):
            return location
        return str(context.path / location)

    def factory_kwargs(self, context: dg.ComponentLoadContext) -> dict[str, Any]:
        conversations: Any = self.conversations
        if isinstance(conversations, ConversationsAsset):
            conversations = dg.AssetKey(conversations.asset.split("/"))
        elif isinstance(conversations, str):
            conversations = self._relative(context, conversations)
        kwargs = self.model_dump(exclude={"settings", "key_prefix", "conversations", "checkpoint_dir"})
        return {
            **kwargs,
            "configured_by": "component",
            "conversations": conversations,
            "checkpoint_dir": self._relative(context, self.checkpoint_dir) if self.checkpoint_dir else None,
            **self.settings.model_dump(exclude_unset=True),
        }

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        from kura_dagster.orchestration.factory import build_kura_defs

        return build_kura_defs(self.key_prefix, **self.factory_kwargs(context))
