"""Stage 3: meta clusters — Kura's hierarchy.

Root clusters are grouped repeatedly until at most ``max_clusters`` roots remain. The output is every
cluster: the base clusters, now with ``parent_id`` set, and the new parents, whose ``chat_ids`` are the
union of their children's. Work is proportional to the number of clusters, not conversations.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from kura_dagster.pipeline.cluster import cluster_id
from kura_dagster.pipeline.kmeans import cluster_labels
from kura_dagster.pipeline.models.base import ClusterNamingModel, EmbeddingModel
from kura_dagster.pipeline.settings import PipelineSettings
from kura_dagster.types import Cluster


def cluster_text(cluster: Cluster) -> str:
    return f"{cluster.name} {cluster.slug.replace('_', ' ')} {cluster.description}"


def groups_for_round(n_roots: int, settings: PipelineSettings) -> int:
    """How many groups one round makes from ``n_roots`` roots: Kura's ``ceil(n / clusters_per_group)``, but
    never fewer than the final budget allows (so a small excess is not collapsed into one or two roots),
    and always fewer than ``n_roots`` (so every round makes progress)."""
    k = max(math.ceil(n_roots / settings.clusters_per_group), min(settings.max_clusters, math.ceil(n_roots / 2)))
    return max(1, min(k, n_roots - 1))


def _normalise(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return v / np.where(n == 0, 1, n)


def preorder(clusters: Sequence[Cluster]) -> list[Cluster]:
    """Roots first, each followed by its subtree (the order Kura's meta-cluster checkpoints use)."""
    children: dict[str | None, list[Cluster]] = {}
    for c in clusters:
        children.setdefault(c.parent_id, []).append(c)
    out: list[Cluster] = []
    stack = list(reversed(children.get(None, [])))
    while stack:
        c = stack.pop()
        out.append(c)
        stack.extend(reversed(children.get(c.id, [])))
    if len(out) != len(clusters):
        raise ValueError("the cluster tree has clusters whose parent is missing or that form a cycle")
    return out


def reduce_clusters(
    clusters: Sequence[Cluster],
    namer: ClusterNamingModel,
    embedder: EmbeddingModel,
    settings: PipelineSettings = PipelineSettings(),
) -> list[Cluster]:
    if not clusters:
        return []
    nodes: dict[str, Cluster] = {c.id: c.model_copy(update={"parent_id": None}) for c in clusters}
    if len(nodes) != len(clusters):
        raise ValueError("duplicate cluster ids in the input")
    roots = list(nodes)
    vectors = dict(zip(roots, _normalise(embedder.embed([cluster_text(nodes[r]) for r in roots]))))
    level = 0
    while len(roots) > settings.max_clusters:
        level += 1
        x = np.stack([vectors[r] for r in roots])
        labels = cluster_labels(x, groups_for_round(len(roots), settings), seed=settings.seed + level)
        order = np.argsort(labels, kind="stable")
        groups = [[roots[i] for i in idx] for idx in np.split(order, np.flatnonzero(np.diff(labels[order])) + 1)]
        # As in Kura, every root of a round gets a parent, even one alone in its group.
        names = namer.name_meta_clusters([[nodes[c] for c in g] for g in groups])
        new_roots = []
        for group, gen in zip(groups, names):
            chat_ids = [cid for c in group for cid in nodes[c].chat_ids]
            parent = Cluster(
                id=cluster_id(settings.seed, f"meta-{level}", chat_ids),
                name=gen.name, description=gen.summary, slug=gen.slug, chat_ids=chat_ids, parent_id=None,
            )
            for c in group:
                nodes[c] = nodes[c].model_copy(update={"parent_id": parent.id})
            nodes[parent.id] = parent
            weights = np.array([[len(nodes[c].chat_ids)] for c in group], dtype=np.float32)
            vectors[parent.id] = _normalise((np.stack([vectors[c] for c in group]) * weights).sum(axis=0))
            new_roots.append(parent.id)
        roots = new_roots
    return preorder(list(nodes.values()))
