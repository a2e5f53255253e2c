"""Layer 5: the Kura pipeline as five Dagster assets, in one group, with lineage

    conversations → summaries → clusters → meta_clusters → projected_clusters

Checkpoint file names are Kura's: ``conversations``, ``summaries``, ``clusters``, ``meta_clusters`` and
``dimensionality`` for the projected clusters.
"""


import hashlib
import statistics
from collections import Counter
from collections.abc import Sequence

import dagster as dg
from pydantic import BaseModel

from kura_dagster.io_managers.typing import CHECKPOINT_NAME_KEY, model_metadata
from kura_dagster.pipeline.cluster import generate_base_clusters
from kura_dagster.pipeline.dimensionality import project_clusters
from kura_dagster.pipeline.meta_cluster import reduce_clusters
from kura_dagster.pipeline.summarise import summarise_conversations
from kura_dagster.resources import ConversationSource, KuraPipelineResource
from kura_dagster.types import Cluster, Conversation, ConversationSummary, ProjectedCluster

GROUP = "kura"


def content_version(models: Sequence[BaseModel]) -> dg.DataVersion:
    """A data version from the content itself, so an unchanged output leaves downstream assets fresh."""
    h = hashlib.sha256()
    for m in models:
        h.update(m.__pydantic_serializer__.to_json(m))
        h.update(b"\n")
    return dg.DataVersion(h.hexdigest()[:24])


def _asset_metadata(model: type[BaseModel], checkpoint_name: str) -> dict[str, str]:
    return {**model_metadata(model), CHECKPOINT_NAME_KEY: checkpoint_name}


@dg.asset(
    group_name=GROUP,
    code_version="1",
    kinds={"python", "kura"},
    metadata=_asset_metadata(Conversation, "conversations"),
    description="The conversations to analyse: KURA_CONVERSATIONS (a Kura dump or JSONL) or the built-in demo set.",
)
def conversations(context: dg.AssetExecutionContext, source: ConversationSource) -> dg.MaterializeResult[list[Conversation]]:
    result = source.read()
    convs = result.conversations
    context.log.info(f"Read {len(convs)} conversations from {result.source}")
    messages = [len(c.messages) for c in convs]
    return dg.MaterializeResult(
        value=convs,
        data_version=content_version(convs),
        metadata={
            "source": result.source,
            "conversations": len(convs),
            "messages": sum(messages),
            "mean_messages_per_conversation": float(statistics.fmean(messages)) if messages else 0.0,
            "bad_records": len(result.bad_records),
        },
    )


@dg.asset(
    group_name=GROUP,
    code_version="1",
    kinds={"python", "kura"},
    metadata=_asset_metadata(ConversationSummary, "summaries"),
    description="One summary per conversation (summary model) with an embedding (embedding model).",
)
def summaries(
    context: dg.AssetExecutionContext, kura: KuraPipelineResource, conversations: list[Conversation]
) -> dg.MaterializeResult[list[ConversationSummary]]:
    def progress(done: int, total: int) -> None:
        context.log.info(f"summaries: {done}/{total} conversations")

    out = summarise_conversations(conversations, kura.summary_model(), kura.embedding_model(), progress=progress)
    languages = Counter(lang for s in out for lang in (s.languages or []))
    topics = Counter(s.topic or "(none)" for s in out)
    return dg.MaterializeResult(
        value=out,
        data_version=content_version(out),
        metadata={
            "summaries": len(out),
            "embedding_dims": len(out[0].embedding or []) if out else 0,
            "languages": dg.MetadataValue.json(dict(languages.most_common())),
            "topics": dg.MetadataValue.json(dict(topics.most_common())),
            "model": kura.summary_model().identity,
        },
    )


@dg.asset(
    group_name=GROUP,
    code_version="1",
    kinds={"python", "kura"},
    metadata=_asset_metadata(Cluster, "clusters"),
    description="Base clusters: k-means over summary embeddings, k = ceil(n / clusters_per_group), named from members.",
)
def clusters(
    context: dg.AssetExecutionContext, kura: KuraPipelineResource, summaries: list[ConversationSummary]
) -> dg.MaterializeResult[list[Cluster]]:
    out = generate_base_clusters(summaries, kura.naming_model(), kura.settings())
    sizes = sorted(len(c.chat_ids) for c in out)
    context.log.info(f"{len(out)} base clusters from {len(summaries)} summaries")
    return dg.MaterializeResult(
        value=out,
        data_version=content_version(out),
        metadata={
            "clusters": len(out),
            "min_cluster_size": sizes[0] if sizes else 0,
            "median_cluster_size": float(statistics.median(sizes)) if sizes else 0.0,
            "max_cluster_size": sizes[-1] if sizes else 0,
        },
    )


@dg.asset(
    group_name=GROUP,
    code_version="1",
    kinds={"python", "kura"},
    metadata=_asset_metadata(Cluster, "meta_clusters"),
    description="Kura's hierarchy: roots grouped until at most max_clusters remain; every cluster, parents included.",
)
def meta_clusters(
    context: dg.AssetExecutionContext, kura: KuraPipelineResource, clusters: list[Cluster]
) -> dg.MaterializeResult[list[Cluster]]:
    out = reduce_clusters(clusters, kura.naming_model(), kura.embedding_model(), kura.settings())
    roots = [c for c in out if c.parent_id is None]
    return dg.MaterializeResult(
        value=out,
        data_version=content_version(out),
        metadata={"clusters": len(out), "root_clusters": len(roots)},
    )


@dg.asset(
    group_name=GROUP,
    code_version="1",
    kinds={"python", "kura"},
    metadata=_asset_metadata(ProjectedCluster, "dimensionality"),
    description="Every meta cluster projected to 2D for the cluster map, with its level in the tree.",
)
def projected_clusters(
    context: dg.AssetExecutionContext, kura: KuraPipelineResource, meta_clusters: list[Cluster]
) -> dg.MaterializeResult[list[ProjectedCluster]]:
    out = project_clusters(meta_clusters, kura.embedding_model(), kura.settings())
    return dg.MaterializeResult(
        value=out,
        data_version=content_version(out),
        metadata={"clusters": len(out), "max_level": max((c.level for c in out), default=0)},
    )


kura_assets = [conversations, summaries, clusters, meta_clusters, projected_clusters]
