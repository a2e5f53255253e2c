"""``build_kura_defs``: one Kura pipeline as a ``dg.Definitions`` to merge into any Dagster project.

    defs = dg.Definitions.merge(
        dg.Definitions(assets=[raw_chats]),
        build_kura_defs("support", conversations=dg.AssetKey("raw_chats"), column_map={"chat_id": "id"}),
        build_kura_defs("sales", conversations="s3://bucket/sales/*.jsonl", formats=["jsonl", "parquet"]),
    )

Everything a call makes is namespaced by its prefix (see :class:`~kura_dagster.orchestration.names.KuraNames`): asset keys
``support/summaries`` …, group ``support``, resources ``support_kura``, ``support_source`` and
``support_io_manager``, the job ``support_job``, the schedule ``support_stale_refresh`` and the sensor
``support_conversations_changed``. Nothing is wired at import time: the factory builds on each call.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Literal, Optional, Union

import dagster as dg

from kura_dagster.orchestration.assets import build_kura_assets
from kura_dagster.orchestration.automation import (
    build_conversations_sensor,
    build_kura_job,
    build_partition_sensor,
    build_partitioned_refresh_schedule,
    build_stale_refresh_schedule,
    executor_for,
)
from kura_dagster.checkpoints.storage import resolve_location
from kura_dagster.orchestration.checks import build_kura_checks
from kura_dagster.orchestration.facets import build_facets_asset
from kura_dagster.orchestration.growth import build_growth_asset
from kura_dagster.orchestration.migration_job import build_checkpoint_jobs
from kura_dagster.orchestration.names import KuraNames
from kura_dagster.orchestration.partitions import is_day_template
from kura_dagster.orchestration.rebuild import build_rebuild_job
from kura_dagster.orchestration.resources import ConversationSource, KuraPipelineResource
from kura_dagster.orchestration.versioning import versioned_assets

ConversationsArg = Union[None, str, os.PathLike, dg.AssetKey, dg.AssetsDefinition, dg.AssetSpec, Sequence[str]]

IO_MANAGER_OPTIONS = ("parquet_compression", "hf_hub_repo", "hf_hub_token", "checkpoint_layout")
"""Keywords of the factory that go to the checkpoint IO manager rather than to the pipeline settings."""
SOURCE_SETTINGS = ("demo_size",)
"""``**settings`` that go to the ``source`` resource (:class:`ConversationSource`)."""


def default_checkpoint_root() -> str:
    """``KURA_CHECKPOINT_DIR`` (default ``./checkpoints``): a local path made absolute, or a URL as it is."""
    return resolve_location(os.environ.get("KURA_CHECKPOINT_DIR") or "checkpoints")


def join_location(root: str, *parts: str) -> str:
    if "://" in root:
        return "/".join([root.rstrip("/"), *parts])
    return os.path.join(root, *parts)


def upstream_key(conversations: ConversationsArg) -> Optional[dg.AssetKey]:
    """The project asset the conversations come from, when ``conversations`` names one."""
    if isinstance(conversations, dg.AssetKey):
        return conversations
    if isinstance(conversations, dg.AssetSpec):
        return conversations.key
    if isinstance(conversations, dg.AssetsDefinition):
        if len(conversations.keys) != 1:
            raise ValueError(
                f"conversations= was given an AssetsDefinition with {len(conversations.keys)} assets "
                f"({', '.join(k.to_user_string() for k in conversations.keys)}); pass the dg.AssetKey of the one to read"
            )
        return next(iter(conversations.keys))
    return None


def _split_settings(settings: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """``**settings`` → (``kura`` resource fields, ``source`` resource fields, IO-manager options)."""
    kura_fields = set(KuraPipelineResource.model_fields) - {"checkpoint_dir", "llm", "embeddings"}
    source_fields = set(SOURCE_SETTINGS)
    kura, source, io = {}, {}, {}
    for name, value in settings.items():
        if name in kura_fields:
            kura[name] = value
        elif name in source_fields:
            source[name] = value
        elif name in IO_MANAGER_OPTIONS:
            io[name] = value
        else:
            valid = sorted(kura_fields | source_fields | set(IO_MANAGER_OPTIONS))
            raise TypeError(f"build_kura_defs() got an unknown setting {name!r}; the settings are: {', '.join(valid)}")
    return kura, source, io


def build_kura_defs(
    key_prefix: Optional[str],
    *,
    conversations: ConversationsArg = None,
    column_map: Optional[dict[str, str]] = None,
    checkpoint_dir: Optional[str] = None,
    formats: Sequence[str] = ("jsonl",),
    save_strategy: Literal["all_enabled", "primary_only"] = "all_enabled",
    load_strategy: Literal["first_found", "priority"] = "first_found",
    llm: str = "local",
    embeddings: str = "local",
    schedule_cron: Optional[str] = None,
    partitions: Optional[Literal["daily", "files"]] = None,
    partition_start: Optional[str] = None,
    window_days: Optional[int] = None,
    on_bad_record: Literal["fail", "skip"] = "fail",
    source_format: Optional[str] = None,
    fs_options: Optional[dict[str, Any]] = None,
    executor: Union[None, str, dg.ExecutorDefinition] = None,
    sensor: Optional[bool] = None,
    allow_empty: bool = False,
    max_shrink: float = 0.5,
    configured_by: Optional[Literal["build_kura_defs", "component", "environment"]] = None,
    **settings: Any,
) -> dg.Definitions:
    """One Kura pipeline as ``dg.Definitions``.

    * ``key_prefix``: namespaces every key and name (``None`` only for the standalone location).
    * ``conversations``: a path, glob, directory or fsspec URL (format detected from the content), a
      ``dg.AssetKey`` (or asset) of a project asset holding them, or ``None`` for the built-in demo data.
    * ``column_map``: Kura field → source column. ``on_bad_record``: ``fail`` or ``skip`` (quarantine).
    * ``checkpoint_dir``: default ``<KURA_CHECKPOINT_DIR>/<key_prefix>``, in Kura's file names.
    * ``formats``, ``save_strategy``, ``load_strategy``: the checkpoint formats (several → a MultiIOManager).
    * ``llm``, ``embeddings``: ``local`` or ``openai:<model>``.
    * ``partitions``: ``daily`` (with ``partition_start``) or ``files``: partitioned ``conversations`` and
      ``summaries``; ``window_days``: ``clusters`` reads only the last N days of summaries.
    * ``schedule_cron``: a schedule that re-materializes stale assets (none when not given).
    * ``sensor``: watch a path source and run the job on each change (default: on for a path source).
    * ``executor``: ``in_process``, ``multiprocess``, ``dask``, ``k8s`` (extras ``[dask]``, ``[k8s]``; see
      :func:`~kura_dagster.orchestration.automation.executor_for`) or an ExecutorDefinition; the code location's executor, so
      give it to one call only when merging. ``in_process`` and ``multiprocess`` free the pool slots of crashed
      runs (:mod:`~kura_dagster.orchestration.recovery`; wrap an executor of your own with ``recovering_executor``).
    * ``fs_options``: fsspec options for ``s3://``-style checkpoint and source locations.
    * ``allow_empty``, ``max_shrink``: the guard of good checkpoints. A read with no conversations fails unless
      ``allow_empty=True``; one that shrank by more than ``max_shrink`` (a share, default 0.5; 1 allows any) from
      the last materialization (per partition) fails. A failed read writes nothing.
    * ``configured_by``: which configuration errors name (``build_kura_defs`` keywords by default; the Component
      and the standalone location pass their own).
    * ``**settings``: any setting of the ``kura`` resource (``clusters_per_group``, ``max_clusters``, ``seed``,
      ``embedding_dims``, ``max_concurrency`` …; ``rebuild_taxonomy=True`` rebuilds the taxonomy at every run
      instead of once with the ``<prefix>_rebuild_taxonomy`` job; ``growth_alert_factor``, ``growth_window``,
      ``growth_alert_min_conversations`` for ``cluster_growth``'s check), ``demo_size``, and ``parquet_compression``, ``hf_hub_repo``,
      ``hf_hub_token``, ``checkpoint_layout`` (``"kura"``: Parquet/HF in the layout Kura 0.5.4 reads) for the IO
      manager.
    """
    names = KuraNames(key_prefix or None)
    kura_settings, source_settings, io_options = _split_settings(settings)
    if checkpoint_dir is None:
        root = default_checkpoint_root()
        checkpoint_dir = join_location(root, names.prefix) if names.prefix else root
    else:
        checkpoint_dir = resolve_location(checkpoint_dir)

    upstream = upstream_key(conversations)
    path: Optional[str] = None
    if upstream is None and conversations is not None:
        if isinstance(conversations, (list, tuple)):
            raise TypeError("conversations= takes one path, glob, directory or URL (use a glob or a directory for "
                            "several files), or a dg.AssetKey")
        path = os.fspath(conversations)  # type: ignore[arg-type]

    from kura_dagster.io_managers.multi import io_manager_for_formats

    kura = KuraPipelineResource(checkpoint_dir=checkpoint_dir, llm=llm, embeddings=embeddings, **kura_settings)
    source = ConversationSource(
        path=path, column_map=dict(column_map or {}), on_bad_record=on_bad_record, format=source_format,
        fs_options=dict(fs_options or {}), allow_empty=allow_empty, max_shrink=max_shrink,
        configured_by=configured_by or ("environment" if key_prefix is None else "build_kura_defs"), **source_settings,
    )
    resources: dict[str, Any] = {
        names.kura: kura,
        names.source: source,
        names.io_manager: io_manager_for_formats(
            list(formats), checkpoint_dir, save_strategy=save_strategy, load_strategy=load_strategy,
            fs_options=fs_options, **io_options,
        ),
    }

    stages = build_kura_assets(names, upstream=upstream, partitions=partitions, partition_start=partition_start,
                               window_days=window_days)
    # + the facets table (orchestration/facets.py), reading summaries as ``clusters`` does
    facets = build_facets_asset(names, stages[2].node_def.input_defs[0].metadata or None,
                                user_key=None if isinstance(kura.user_key, dg.EnvVar) else kura.user_key)
    # + what is new and growing (orchestration/growth.py): conversations per cluster and period, with its check
    growth = build_growth_asset(names, stages[0].partitions_def is not None,
                                stages[2].node_def.input_defs[0].metadata or None)
    assets = versioned_assets([*stages, facets, growth], resources, names)
    job = build_kura_job(names)
    if sensor and path is None:
        raise ValueError("sensor=True needs a path source to watch (conversations= a path, glob or URL)")
    # A path source gets a sensor, running unless sensor=False; the demo source gets one too, stopped (it
    # skips until a path is configured); an asset source has Dagster's own staleness instead.
    watch = upstream is None and sensor is not False
    partitions_def = assets[0].partitions_def
    if partitions_def is None:
        schedules = [build_stale_refresh_schedule(schedule_cron, names, job)] if schedule_cron else []
        sensors = [build_conversations_sensor(path is not None, names, job)] if watch else []
    else:
        if partitions == "files" and path is None:
            raise ValueError("partitions='files' needs conversations= a directory or glob of files")
        schedules = [build_partitioned_refresh_schedule(schedule_cron, names, job, partitions)] if schedule_cron else []
        per_file = partitions == "files" or is_day_template(path)
        sensors = [build_partition_sensor(names, job, partitions, partitions_def, source)] if watch and per_file else []
    return dg.Definitions(
        assets=assets,
        asset_checks=build_kura_checks(names, partitions_def, assets[2].node_def.input_defs[0].metadata or None),
        jobs=[job, build_rebuild_job(names, kura), *build_checkpoint_jobs(names, checkpoint_dir)],
        schedules=schedules,
        sensors=sensors,
        resources=resources,
        executor=executor_for(executor, "executor") if executor is not None else None,
    )
