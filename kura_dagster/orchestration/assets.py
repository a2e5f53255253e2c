"""Layer 5: the Kura pipeline as five Dagster assets, in one group, with lineage

    conversations → summaries → clusters → meta_clusters → projected_clusters

:func:`build_kura_assets` builds them for one pipeline's :class:`~kura_dagster.orchestration.names.KuraNames` (the factory
``build_kura_defs`` calls it once per pipeline). Each asset is thin: it takes its resources by the pipeline's
resource keys, calls the stage function of layer 4 (``*_step`` below) and returns its metadata, built by the
helpers of :mod:`kura_dagster.orchestration.observability`. Checkpoint file names are Kura's: ``conversations``,
``summaries``, ``clusters``, ``meta_clusters`` and ``dimensionality`` for the projected clusters.
"""


import contextlib
import functools
import hashlib
import importlib
import math
import warnings
import statistics
import threading
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any, Optional

import dagster as dg
from pydantic import BaseModel

from kura_dagster.checkpoints.columnar import SummaryColumns
from kura_dagster.checkpoints.storage import atomic_write_bytes, remove_path, to_upath, validate_name
from kura_dagster.checkpoints.summary_cache import SummaryCache
from kura_dagster.io_managers.base import ON_DEMAND_KEY, SUMMARY_COLUMNS_KEY, WINDOW_DAYS_KEY, summary_columns_type
from kura_dagster.io_managers.typing import CHECKPOINT_NAME_KEY, model_metadata
from kura_dagster.orchestration import hints
from kura_dagster.orchestration.names import CHECKPOINT_NAMES, KuraNames
from kura_dagster.orchestration.partitions import (
    PartitionedRead,
    as_partition_map,
    build_partitions_def,
    one_or_many,
    read_partitioned,
    run_partition_keys,
    utc_day,
)
from kura_dagster.orchestration.observability import (
    ProgressReporter,
    cluster_size_metadata,
    projection_metadata,
    request_metadata,
    settings_metadata,
    tree_metadata,
)
from kura_dagster.pipeline.cluster import base_clusters_from_columns
from kura_dagster.pipeline.dimensionality import projected
from kura_dagster.pipeline.inputs import ReadResult, quarantine_jsonl
from kura_dagster.pipeline.meta_cluster import cluster_centroids, cluster_text, reduce_clusters
from kura_dagster.orchestration.taxonomy import base_member_centroids, taxonomy_base_clusters, taxonomy_meta_clusters, taxonomy_projection
from kura_dagster.pipeline.models.cached import CachedEmbeddingModel, CachedNamingModel
from kura_dagster.pipeline.privacy import ScrubbingNamer, scrubbing_summary_model
from kura_dagster.orchestration.privacy import private_base_clusters, private_meta_clusters, scrubbed_summaries
from kura_dagster.pipeline.summarise import SummaryCounts, summarise_conversations
from kura_dagster.orchestration.resources import DEMO_SOURCE, ConversationSource, KuraPipelineResource
from kura_dagster.types import Cluster, Conversation, ConversationSummary, ProjectedCluster
from kura_dagster.orchestration.versioning import effective_settings
from kura_dagster.orchestration.reuse import reuse_stored_output, shaping_settings

warnings.filterwarnings("ignore", message=r"Parameter `backfill_policy` of function `asset`", category=dg.BetaWarning)

LLM_POOL = "kura_llm"
"""The Dagster concurrency pool of every step that can call the model APIs. One pool for every pipeline
(not one per prefix): the rate limit belongs to the API key, so parallel runs, partitions and pipelines share it.
Its limit (steps at once) is the instance's (``dagster.yaml``); ``max_concurrency`` bounds requests per step."""
LLM_STAGES = frozenset({"summaries", "clusters", "meta_clusters", "projected_clusters"})
"""summaries (summaries + embeddings), clusters (names), meta_clusters (names + embeddings), projected_clusters
(embeddings of the cluster texts)."""

MODELS: dict[str, type[BaseModel]] = {
    "conversations": Conversation,
    "summaries": ConversationSummary,
    "clusters": Cluster,
    "meta_clusters": Cluster,
    "projected_clusters": ProjectedCluster,
}


def content_version(models: Sequence[BaseModel]) -> dg.DataVersion:
    """A data version from the content itself, so an unchanged output leaves downstream assets fresh."""
    h = hashlib.sha256()
    for m in models:
        h.update(m.__pydantic_serializer__.to_json(m))
        h.update(b"\n")
    return dg.DataVersion(h.hexdigest()[:24])


@functools.cache
def partitioned_rows_type(stage: str) -> dg.DagsterType:
    """The value of a partitioned stage: its rows for one partition, or ``{partition key: rows}`` for a run that
    covers several. ``typing_type`` stays ``list[Model]``, from which the IO managers take the model."""
    model = MODELS[stage]

    def check(_context: Any, value: Any) -> bool:
        return isinstance(value, list) or (isinstance(value, dict) and all(isinstance(v, list) for v in value.values()))

    return dg.DagsterType(type_check_fn=check, name=f"{model.__name__}Partitions", typing_type=list[model],
                          description=f"list[{model.__name__}] for one partition, or a dict of them by partition key")


def _asset_metadata(stage: str) -> dict[str, str]:
    return {**model_metadata(MODELS[stage]), CHECKPOINT_NAME_KEY: CHECKPOINT_NAMES[stage]}


# --- the steps: what each asset does, independent of its keys ------------------------------------------


def previous_row_counts(context: dg.AssetExecutionContext, partitions: list[Optional[str]]) -> dict[Optional[str], int]:
    """How many conversations the asset's last materialization (of each partition; ``[None]``: unpartitioned)
    recorded in the instance's event log; a partition without one (a first run, an instance that keeps no
    history) is left out. Partitions are looked up together, newest first (one query for a first backfill)."""
    key = context.asset_key
    if partitions == [None]:
        event = context.instance.get_latest_materialization_event(key)
        count = _recorded_rows(event.asset_materialization, None) if event and event.asset_materialization else None
        return {} if count is None else {None: count}
    out: dict[Optional[str], int] = {}
    wanted, seen, cursor = set(partitions), set(), None
    while wanted - seen:
        page = context.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=key, asset_partitions=sorted(wanted - seen)),  # type: ignore[arg-type]
            limit=max(100, len(wanted - seen)), cursor=cursor)
        for record in page.records:
            if record.partition_key in wanted and record.partition_key not in seen and record.asset_materialization:
                seen.add(record.partition_key)
                count = _recorded_rows(record.asset_materialization, record.partition_key)
                if count is not None:
                    out[record.partition_key] = count
        if not page.has_more:
            break
        cursor = page.cursor
    return out


def _recorded_rows(materialization: dg.AssetMaterialization, partition: Optional[str]) -> Optional[int]:
    md = materialization.metadata
    per_partition = md.get("partition_rows")
    if partition is not None and per_partition is not None and partition in (per_partition.value or {}):
        return int(per_partition.value[partition])
    for name in ("conversations", "dagster/row_count"):
        if name in md and isinstance(md[name].value, int):
            return int(md[name].value)
    return None


def guard_input_size(context: dg.AssetExecutionContext, source: ConversationSource, result: ReadResult,
                     counts: dict[Optional[str], int]) -> None:
    """Refuse, before anything is written, a read that would replace good checkpoints with empty or much smaller
    ones: no conversations (unless ``allow_empty``), or fewer than ``1 - max_shrink`` of the last
    materialization's, per partition (``counts``: partition key, or ``None`` → conversations read). A partition
    that never had rows may be empty (a quiet day); an unpartitioned source may not, unless allowed."""
    problems, shrink_needed, emptied = [], 0.0, False
    previous = previous_row_counts(context, list(counts))
    for partition, n in counts.items():
        before = previous.get(partition)
        where = f"partition {partition}: " if partition is not None else ""
        if n == 0 and not source.allow_empty and (before or partition is None):
            emptied = True
            problems.append(f"{where}0 conversations read" + (f", {before} at the last materialization"
                            if before else ", and no earlier materialization: nothing to analyse"))
        elif before and n and n < before * (1 - source.max_shrink) - 1e-9:
            shrink_needed = max(shrink_needed, 1 - n / before)
            problems.append(f"{where}{n} conversations read, {before} at the last materialization "
                            f"({1 - n / before:.0%} fewer; max_shrink={source.max_shrink:g} allows "
                            f"{source.max_shrink:.0%})")
    if not problems:
        return
    fixes = []
    if emptied:
        fixes.append(hints.setting(source.configured_by, "allow_empty", True))
    if shrink_needed:
        allow = min(1.0, math.ceil(round(shrink_needed * 100, 6)) / 100)
        fixes.append(hints.setting(source.configured_by, "max_shrink", allow)
                     + " (1 allows any shrink)")
    shown = "; ".join(problems[:5]) + (f"; … {len(problems) - 5} more partition(s)" if len(problems) > 5 else "")
    raise dg.Failure(
        description=(f"{result.source}: refusing to replace the {context.asset_key.to_user_string()} checkpoints: "
                     f"{shown}. The source looks emptied or cut short (a truncated upstream file?); nothing was "
                     f"written and the checkpoints stay as they were. If this is on purpose, set "
                     f"{' and '.join(fixes)}."),
        metadata={"source": result.source, "problems": dg.MetadataValue.json(problems)},
        allow_retries=False,
    )


def conversations_step(
    context: dg.AssetExecutionContext, kura: KuraPipelineResource, result: ReadResult,
    partitioned: Optional[PartitionedRead] = None, source: Optional[ConversationSource] = None,
) -> dg.MaterializeResult:
    convs = result.conversations
    context.log.info(f"Read {len(convs)} conversations from {result.source}")
    keys = run_partition_keys(context)
    # An emptied or cut-short source fails here, before any write (the demo set's size is demo_size: not guarded).
    if source is not None and result.source != DEMO_SOURCE:
        guard_input_size(context, source, result, {k: len(partitioned.parts.get(k, [])) for k in keys}
                         if partitioned is not None else {None: len(convs)})
    # Skipped records are never dropped silently: they go to a quarantine file beside the checkpoints.
    suffix = f"-{validate_name('_'.join(dict.fromkeys([keys[0], keys[-1]])), what='partition key')}" if keys else ""
    options = (source.fs_options or None) if source is not None and "://" in kura.checkpoint_dir else None
    quarantine = to_upath(kura.checkpoint_dir, options) / "quarantine" / f"conversations{suffix}.jsonl"
    try:
        if result.bad_records:
            atomic_write_bytes(quarantine, quarantine_jsonl(result.bad_records, result.source))
            context.log.warning(f"Skipped {len(result.bad_records)} bad record(s) of {result.source} "
                                f"(first: {result.bad_records[0].location}: {result.bad_records[0].reason}); "
                                f"they are quarantined in {quarantine}")
        else:
            remove_path(quarantine)  # a quarantine file from an earlier run no longer describes this input
    except Exception as exc:
        clear = hints.credentials_error(exc, kura.checkpoint_dir, source.configured_by if source else "build_kura_defs")
        if clear is None:
            raise
        raise clear from exc
    dropped = dict(getattr(result, "dropped", None) or {})
    partition_md: dict[str, Any] = {}
    value: Any = convs
    if partitioned is not None:
        value = one_or_many(partitioned.parts, keys)
        convs = [c for k in keys for c in partitioned.parts[k]]
        partition_md = partition_metadata(context, partitioned)
    messages = [len(c.messages) for c in convs]
    return dg.MaterializeResult(
        value=value,
        data_version=content_version(convs) if len(keys) <= 1 else None,
        metadata={
            "source": result.source,
            **({"source_format": result.format} if getattr(result, "format", "") else {}),
            "conversations": len(convs),
            "messages": sum(messages),
            "mean_messages_per_conversation": float(statistics.fmean(messages)) if messages else 0.0,
            "bad_records": len(result.bad_records),  # all of them quarantined (see quarantine_path)
            **({"dropped": dg.MetadataValue.json(dropped)} if dropped else {}),
            **{f"dropped/{k}": v for k, v in sorted(dropped.items())},
            **({"quarantine_path": dg.MetadataValue.path(str(quarantine))} if result.bad_records else {}),
            **partition_md,
        },
    )


def partition_metadata(context: dg.AssetExecutionContext, read: PartitionedRead) -> dict[str, Any]:
    """Per-partition counts, and what fell outside every partition (reported, never dropped silently)."""
    md: dict[str, Any] = {
        "partitions": len(read.parts),
        "partition_rows": dg.MetadataValue.json({k: len(v) for k, v in read.parts.items()}),
        "in_other_partitions": read.other_partitions,
        "outside_partitions": len(read.outside),
    }
    if read.outside:
        days = sorted(utc_day(c.created_at) for c in read.outside)
        context.log.warning(
            f"{len(read.outside)} conversation(s) are dated outside every partition ({days[0]} … {days[-1]}; "
            f"first: {read.outside[0].chat_id!r}); they are in no partition. Move partition_start earlier to "
            "include them."
        )
        md["outside_partitions_days"] = f"{days[0]} … {days[-1]}"
    if read.missing_files:
        context.log.warning(f"No file for {len(read.missing_files)} day(s): {read.missing_files[:5]}; "
                            "those partitions are empty.")
        md["missing_day_files"] = len(read.missing_files)
    return md


def answer_cache(kura: KuraPipelineResource) -> SummaryCache:
    """The LLM and embedding answers already paid for, under the checkpoint directory. Only remote backends
    use it: the offline local models are cheaper to recompute (single flight still applies to them)."""
    return SummaryCache(kura.checkpoint_dir, summaries=kura.llm.strip() != "local",
                        embeddings=kura.embeddings.strip() != "local")


WARMED_WHILE_WAITING = ("sklearn.cluster",)
"""Modules a later stage imports (``clusters``' k-means: ~1.1 s for scikit-learn), imported on a daemon thread while
``summaries`` waits on an LLM server, so an in-process run does not pay for them after the last summary."""


def _warm_imports(modules: Sequence[str]) -> None:
    def run() -> None:
        for module in modules:
            with contextlib.suppress(ImportError):  # not installed: the stage that needs it raises, naming it
                importlib.import_module(module)

    threading.Thread(target=run, name="kura-warm-imports", daemon=True).start()


def summaries_step(
    context: dg.AssetExecutionContext, kura: KuraPipelineResource, conversations: Any
) -> dg.MaterializeResult:
    keys = run_partition_keys(context)
    parts: dict[str, list[Conversation]] = as_partition_map(conversations, keys) if keys else {}
    if keys:
        conversations = [c for k in keys for c in parts[k]]
    model = kura.summary_model()
    template = None
    if callable(prepare := getattr(model, "prepare", None)) and hasattr(model, "template"):
        prepare(conversations)  # the template is learnt once: a new embedding fit reads with it (requests read once)
        template = model.template
    # The offline embedding reads the stored fit (vocabulary + LSA) or fits it on this run's conversations and
    # stores it, so every later partition and rerun embeds in the same space (refit only with refit_embedding).
    embedder, embedding_fit = kura.fitted_embedding_model(conversations, template=template)
    if embedding_fit != "remote":
        context.log.info(f"Offline embedding {embedder.identity}: {embedding_fit}"
                         + (f" on {len(conversations)} conversations" if embedding_fit != "loaded" else ""))
    # LLM work is cached per conversation under the checkpoint directory and saved batch by batch, so a rerun
    # or a resumed run only pays for what is new; the offline local models are cheaper to recompute.
    remote_llm, remote_embeddings = kura.llm.strip() != "local", kura.embeddings.strip() != "local"
    if remote_llm and conversations:  # the step mostly waits on the server: use that time for later imports
        _warm_imports(WARMED_WHILE_WAITING)
    scrubbed: Counter = Counter()  # answers are scrubbed before the cache keeps them or they are embedded
    model = scrubbing_summary_model(model, scrubbed)
    cache = answer_cache(kura)
    started = time.monotonic()
    counts = SummaryCounts()  # cache hits and duplicates (single flight) of this run, for logs and metadata
    batch = kura.summary_batch() if (remote_llm or remote_embeddings) else None
    out = summarise_conversations(
        conversations, model, embedder, cache=cache, batch_size=batch, counts=counts,
        progress=ProgressReporter("summaries", "conversations", context.log.info,
                                  cached=lambda: counts.summaries.cache_hits,
                                  deduplicated=lambda: counts.summaries.deduplicated),
        embedding_batch_size=max(kura.summary_batch(), kura.embedding_batch_size * kura.max_concurrency)
        if remote_embeddings else None,
        embedding_progress=ProgressReporter("embeddings", "texts", context.log.info,
                                            cached=lambda: counts.embeddings.cache_hits,
                                            deduplicated=lambda: counts.embeddings.deduplicated),
    )
    out, privacy_md = scrubbed_summaries(context, out, scrubbed)  # personal data never leaves the summaries stage
    languages = Counter(lang for s in out for lang in (s.languages or []))
    topics = Counter(s.topic or "(none)" for s in out)
    zero = {"requests": 0, "retries": 0, "failures": 0, "prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    llm = model.usage.as_dict() if hasattr(model, "usage") else zero
    emb = embedder.usage.as_dict() if hasattr(embedder, "usage") else zero
    value: Any = out
    if keys:  # back into the run's partitions, in order (one summary per conversation, same order)
        split, at = {}, 0
        for k in keys:
            split[k], at = out[at:at + len(parts[k])], at + len(parts[k])
        value = one_or_many(split, keys)
    return dg.MaterializeResult(
        value=value,
        data_version=content_version(out) if len(keys) <= 1 else None,
        metadata={
            "summaries": len(out),
            "embedding_dims": len(out[0].embedding or []) if out else 0,
            **privacy_md,
            "languages": dg.MetadataValue.json(dict(languages.most_common())),
            "topics": dg.MetadataValue.json(dict(topics.most_common())),
            "model": model.identity,
            "embedding_model": embedder.identity,
            **({"embedding_fit": embedding_fit} if embedding_fit != "remote" else {}),
            "cache_hits": counts.summaries.cache_hits,
            "deduplicated": counts.summaries.deduplicated,
            "summaries_generated": counts.summaries.requested,
            "embedding_cache_hits": counts.embeddings.cache_hits,
            "embedding_deduplicated": counts.embeddings.deduplicated,
            "requests": llm["requests"] + emb["requests"],
            "retries": llm["retries"] + emb["retries"],
            "failures": llm["failures"] + emb["failures"],
            "tokens": llm["total_tokens"] + emb["total_tokens"],
            **{f"llm_{k}": v for k, v in llm.items()},
            **{f"embedding_{k}": v for k, v in emb.items() if k in ("requests", "retries", "failures", "total_tokens")},
            "elapsed_seconds": round(time.monotonic() - started, 3),
        },
    )


class LazyEmbedder:
    """A ``CachedEmbeddingModel`` built on the first ``embed`` (or any other use): loading the offline fit costs
    ~1.4 s, and an incremental meta_clusters or projected_clusters run usually embeds nothing."""

    def __init__(self, kura: KuraPipelineResource, cache: Any) -> None:
        self._kura, self._cache, self._model = kura, cache, None

    def model(self) -> CachedEmbeddingModel:
        if self._model is None:
            self._model = CachedEmbeddingModel(self._kura.embedding_model(), self._cache)
        return self._model

    def embed(self, texts: Sequence[str], progress: Any = None) -> Any:
        return self.model().embed(texts, progress=progress)

    @property
    def usage(self) -> Any:  # no model built: nothing was asked
        return getattr(self._model, "usage", None) if self._model is not None else None

    @property
    def counts(self) -> Any:
        return self._model.counts if self._model is not None else None

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.model(), name)


def summary_columns_of(summaries: Any) -> tuple[SummaryColumns, list[str]]:
    """The summaries' columns, one partition after another (sorted keys) when the input is by partition."""
    partitions = sorted(summaries) if isinstance(summaries, dict) else []
    columns = SummaryColumns.concat([SummaryColumns.coerce(summaries[k]) for k in partitions]) if partitions \
        else SummaryColumns.coerce(summaries)
    return columns, partitions


def clusters_step(
    context: dg.AssetExecutionContext, kura: KuraPipelineResource, summaries: SummaryColumns
) -> dg.MaterializeResult:
    columns, partitions = summary_columns_of(summaries)
    if partitions:
        context.log.info(f"Read {len(columns)} summaries from {len(partitions)} partition(s) "
                         f"({partitions[0]} … {partitions[-1]})")
    namer = CachedNamingModel(kura.naming_model(), answer_cache(kura))
    # k-means on the matrix; summary models only for the few rows each cluster's naming reads; groups below the
    # privacy thresholds (or withheld by the auditor) are never named from their members
    # a stored taxonomy is updated (new conversations join the nearest cluster; README "A taxonomy that stays
    # put"); the first run, a requested rebuild or drift builds it anew
    out, privacy_md = taxonomy_base_clusters(
        context, kura, columns, namer, answer_cache(kura),
        lambda: private_base_clusters(context, kura, columns, namer, answer_cache(kura)))
    context.log.info(f"{len(out)} base clusters from {len(columns)} summaries ({columns.format} columns)")
    return dg.MaterializeResult(
        value=out,
        data_version=content_version(out),
        metadata={**cluster_size_metadata(out), **request_metadata(naming=namer), **privacy_md,
                  **settings_metadata(effective_settings(kura)), "summaries_read": len(columns),
                  **({"partitions_read": len(partitions), "first_partition": partitions[0],
                      "last_partition": partitions[-1]} if partitions else {})},
    )


def meta_clusters_step(
    context: dg.AssetExecutionContext, kura: KuraPipelineResource, clusters: list[Cluster],
    summaries: Any = None,
) -> dg.MaterializeResult:
    cache = answer_cache(kura)
    namer = ScrubbingNamer(CachedNamingModel(kura.naming_model(), cache))  # parents' names scrubbed too
    embedder = LazyEmbedder(kura, cache)
    centroids = None
    if summaries is not None:  # group in the base clusters' own space: their members' mean embeddings, stored
        # by the clusters step beside its checkpoint (the summaries input is chat ids only: reading every
        # embedding again cost ~1 s per 100k conversations)
        columns, _ = summary_columns_of(summaries)
        centroids = cluster_centroids(clusters, columns.chat_ids, columns.embeddings) if columns.dim \
            else base_member_centroids(kura, clusters)
        del columns
    build = lambda: reduce_clusters(clusters, namer, embedder, kura.settings(), centroids=centroids)  # noqa: E731
    taxonomy_md: dict[str, Any] = {}
    if centroids is not None:  # the stored hierarchy updated, or built anew (orchestration/taxonomy.py)
        out, taxonomy_md = taxonomy_meta_clusters(context, kura, clusters, centroids, namer, build)
    else:
        out = build()
    out, privacy_md = private_meta_clusters(context, kura, clusters, out, namer.scrubbed, cache)
    return dg.MaterializeResult(
        value=out,
        data_version=content_version(out),
        metadata={**tree_metadata(out), **request_metadata(naming=namer, embedding=embedder), **privacy_md,
                  **taxonomy_md, **settings_metadata(effective_settings(kura))},
    )


def projected_clusters_step(
    context: dg.AssetExecutionContext, kura: KuraPipelineResource, meta_clusters: list[Cluster]
) -> dg.MaterializeResult:
    embedder = LazyEmbedder(kura, answer_cache(kura))
    # clusters already on the map keep their place; new ones go through the stored fitted projection
    xy, taxonomy_md = taxonomy_projection(
        context, kura, meta_clusters,
        lambda cs: embedder.embed([cluster_text(c) for c in cs]).astype("float64"))
    out = projected(meta_clusters, xy)
    return dg.MaterializeResult(
        value=out,
        data_version=content_version(out),
        metadata={**projection_metadata(out), **request_metadata(embedding=embedder), **taxonomy_md,
                  **settings_metadata(effective_settings(kura))},
    )


# --- the assets of one pipeline ---------------------------------------------------------------------------


def build_kura_assets(
    names: KuraNames = KuraNames(),
    *,
    upstream: Optional[dg.AssetKey] = None,
    partitions: Optional[str] = None,
    partition_start: Optional[str] = None,
    window_days: Optional[int] = None,
) -> list[dg.AssetsDefinition]:
    """The five assets of one pipeline. ``upstream``: the key of a project asset whose value holds the
    conversations (it then appears upstream of ``conversations`` in the lineage). ``partitions``: ``daily`` or
    ``files`` partitions of ``conversations`` and ``summaries`` (see :mod:`kura_dagster.orchestration.partitions`);
    ``clusters`` then reads every materialized summaries partition, or the last ``window_days`` of them."""
    kura_key, source_key = names.kura, names.source
    partitions_def = build_partitions_def(partitions, names, partition_start)
    # A single-run backfill policy lets `--partition-range` (and UI backfills) run many days in one run; the IO
    # managers store each partition on its own. (Dagster 1.13 marks the parameter beta: the warning is noise here.)
    def partitioned(stage: str) -> dict[str, Any]:
        if partitions_def is None:
            return {}
        return dict(partitions_def=partitions_def, backfill_policy=dg.BackfillPolicy.single_run(),
                    dagster_type=partitioned_rows_type(stage))
    summaries_in_metadata: dict[str, Any] = {}
    if partitions_def is not None:  # an unpartitioned clusters reads the partitions that exist
        summaries_in_metadata = {"allow_missing_partitions": True,
                                 **({WINDOW_DAYS_KEY: int(window_days)} if window_days else {})}
    elif window_days:
        raise ValueError("window_days= needs partitions='daily' (it picks the last days of summaries)")

    def spec(stage: str, description: str, **kwargs: Any) -> dict[str, Any]:
        return dict(
            key=names.key(stage),
            group_name=names.group,
            code_version="1",
            kinds={"python", "kura"},
            metadata=_asset_metadata(stage),
            io_manager_key=names.io_manager,
            description=description,
            pool=LLM_POOL if stage in LLM_STAGES else None,
            **kwargs,
        )

    def resources(context: dg.AssetExecutionContext, *keys: str) -> list[Any]:
        return [getattr(context.resources, k) for k in keys]

    def reusing(context: dg.AssetExecutionContext, kura: KuraPipelineResource, stage: str,
                step: Any) -> dg.MaterializeResult:
        """The step's result, or its stored output when inputs and settings are unchanged (orchestration/reuse.py)."""
        def computed() -> dg.MaterializeResult:
            # (no importing of later stages' modules on a thread while the requests run: that thread holds the GIL
            # the event loop needs, and the LLM run took ~2 s longer with it; benchmarks/results/fixed_costs.md)
            return step()

        # a requested taxonomy rebuild (rebuild_taxonomy, not in the fingerprint) computes: never the stored output
        if partitions_def is not None or (stage != "summaries" and kura.rebuild_taxonomy):
            return computed()
        return reuse_stored_output(context, names.io_manager, shaping_settings(kura, stage), computed)

    if upstream is None:

        @dg.asset(
            **spec("conversations", "The conversations to analyse, read from the pipeline's source (a path, glob, "
                   "URL or the built-in demo set).", **partitioned("conversations")),
            required_resource_keys={kura_key, source_key},
        )
        def conversations(context: dg.AssetExecutionContext) -> dg.MaterializeResult[list[Conversation]]:
            kura, source = resources(context, kura_key, source_key)
            if partitions_def is None:
                return conversations_step(context, kura, source.read(), source=source)  # "fail" raises in read
            read = read_partitioned(context, source, partitions, partitions_def)
            return conversations_step(context, kura, read.result, read, source=source)

    else:

        @dg.asset(
            **spec("conversations", f"The conversations to analyse, from the project's asset "
                   f"{upstream.to_user_string()!r}.", **partitioned("conversations")),
            ins={"records": dg.AssetIn(key=upstream)},
            required_resource_keys={kura_key, source_key},
        )
        def conversations(context: dg.AssetExecutionContext, records: Any) -> dg.MaterializeResult[list[Conversation]]:
            kura, source = resources(context, kura_key, source_key)
            if partitions_def is None:
                return conversations_step(context, kura, source.from_value(records, upstream.to_user_string()),
                                          source=source)
            read = read_partitioned(context, source, partitions, partitions_def, records, upstream.to_user_string())
            return conversations_step(context, kura, read.result, read, source=source)

    @dg.asset(
        **spec("summaries", "One summary per conversation (summary model) with an embedding (embedding model).",
               **partitioned("summaries")),
        ins={"conversations": dg.AssetIn(key=names.key("conversations"), **(
            {"dagster_type": partitioned_rows_type("conversations")} if partitions_def is not None else {}))},
        required_resource_keys={kura_key},
    )
    def summaries(
        context: dg.AssetExecutionContext, conversations: list[Conversation]
    ) -> dg.MaterializeResult[list[ConversationSummary]]:
        (kura,) = resources(context, kura_key)
        return reusing(context, kura, "summaries", lambda: summaries_step(context, kura, conversations))

    @dg.asset(
        **spec("clusters", "Base clusters: k-means over summary embeddings, k = ceil(n / clusters_per_group), "
               "named from members."),
        # The columnar fast path: the IO manager hands over the embedding matrix (zero-copy from HF, one buffer
        # from Parquet) plus the other columns, instead of building every summary's embedding as Python floats.
        ins={"summaries": dg.AssetIn(key=names.key("summaries"), dagster_type=summary_columns_type(),
                                     # partitions' vectors read on demand: a new day's update reads its own
                                     metadata={**summaries_in_metadata, ON_DEMAND_KEY: True})},
        required_resource_keys={kura_key},
    )
    def clusters(context: dg.AssetExecutionContext, summaries: SummaryColumns) -> dg.MaterializeResult[list[Cluster]]:
        (kura,) = resources(context, kura_key)
        return reusing(context, kura, "clusters", lambda: clusters_step(context, kura, summaries))

    @dg.asset(
        **spec("meta_clusters", "Kura's hierarchy: roots grouped until at most max_clusters remain; every "
               "cluster, parents included."),
        ins={"clusters": dg.AssetIn(key=names.key("clusters")),
             # the summaries (chat ids only): meta clusters form in the base clusters' space, from the mean
             # member embeddings the clusters step stores (orchestration/taxonomy.py base_member_centroids)
             "summaries": dg.AssetIn(key=names.key("summaries"), dagster_type=summary_columns_type(),
                                     metadata={**summaries_in_metadata, SUMMARY_COLUMNS_KEY: []})},
        required_resource_keys={kura_key},
    )
    def meta_clusters(context: dg.AssetExecutionContext, clusters: list[Cluster],
                      summaries: SummaryColumns) -> dg.MaterializeResult[list[Cluster]]:
        (kura,) = resources(context, kura_key)
        return reusing(context, kura, "meta_clusters", lambda: meta_clusters_step(context, kura, clusters, summaries))

    @dg.asset(
        **spec("projected_clusters", "Every meta cluster projected to 2D for the cluster map, with its level "
               "in the tree."),
        ins={"meta_clusters": dg.AssetIn(key=names.key("meta_clusters"))},
        required_resource_keys={kura_key},
    )
    def projected_clusters(
        context: dg.AssetExecutionContext, meta_clusters: list[Cluster]
    ) -> dg.MaterializeResult[list[ProjectedCluster]]:
        (kura,) = resources(context, kura_key)
        return reusing(context, kura, "projected_clusters", lambda: projected_clusters_step(context, kura, meta_clusters))

    return [conversations, summaries, clusters, meta_clusters, projected_clusters]


kura_assets = build_kura_assets()
"""The standalone pipeline's assets (unprefixed keys, resources ``kura``, ``source`` and ``io_manager``), for
code and tests that build their own ``Definitions`` or call ``dg.materialize`` directly."""
conversations, summaries, clusters, meta_clusters, projected_clusters = kura_assets
