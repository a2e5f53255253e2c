"""Stage 2: base clusters — k-means over summary embeddings, named by a cluster-naming model."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import numpy as np

from kura_dagster.checkpoints.columnar import embedding_matrix  # noqa: F401 (also importable from here)
from kura_dagster.pipeline.kmeans import cluster_labels
from kura_dagster.pipeline.models.base import ClusterNamingModel
from kura_dagster.pipeline.settings import PipelineSettings
from kura_dagster.types import Cluster, ConversationSummary


def cluster_id(seed: int, kind: str, chat_ids: Sequence[str]) -> str:
    """A deterministic 32-hex id (the shape of Kura's ``uuid4().hex``) from the members and the seed."""
    h = hashlib.sha256(f"{seed}\x00{kind}".encode())
    for cid in sorted(chat_ids):
        h.update(b"\x00" + cid.encode())
    return h.hexdigest()[:32]


def generate_base_clusters(
    summaries: Sequence[ConversationSummary],
    namer: ClusterNamingModel,
    settings: PipelineSettings = PipelineSettings(),
    embeddings: np.ndarray | None = None,
) -> list[Cluster]:
    """Kura's rule: ``k = ceil(n / clusters_per_group)`` clusters, each named from its members.

    ``embeddings`` may be passed directly (the columnar fast path); otherwise it is read off the summaries.
    """
    if not summaries:
        return []
    x = embedding_matrix(summaries) if embeddings is None else np.asarray(embeddings, dtype=np.float32)
    if len(x) != len(summaries):
        raise ValueError(f"{len(x)} embeddings for {len(summaries)} summaries")
    k = math.ceil(len(summaries) / settings.clusters_per_group)
    labels = cluster_labels(x, k, seed=settings.seed)
    order = np.argsort(labels, kind="stable")
    bounds = np.flatnonzero(np.diff(labels[order])) + 1
    groups = [[summaries[i] for i in idx] for idx in np.split(order, bounds)]
    names = namer.name_clusters(groups)
    return [
        Cluster(
            id=cluster_id(settings.seed, "base", [s.chat_id for s in group]),
            name=gen.name,
            description=gen.summary,
            slug=gen.slug,
            chat_ids=[s.chat_id for s in group],
            parent_id=None,
        )
        for group, gen in zip(groups, names)
    ]
