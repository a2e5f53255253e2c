"""Stage 4: project every cluster to 2D for the map, with its depth in the tree as ``level``."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from kura_dagster.pipeline.meta_cluster import cluster_text
from kura_dagster.pipeline.models.base import EmbeddingModel
from kura_dagster.pipeline.settings import PipelineSettings
from kura_dagster.types import Cluster, ProjectedCluster


def cluster_levels(clusters: Sequence[Cluster]) -> dict[str, int]:
    """0 for roots, otherwise the depth below them. Raises on a missing parent or a cycle."""
    by_id = {c.id: c for c in clusters}
    levels: dict[str, int] = {}
    for c in clusters:
        path, node = [], c
        while node.id not in levels:
            if node.id in path:
                raise ValueError(f"cluster {node.id} is part of a parent cycle")
            path.append(node.id)
            if node.parent_id is None:
                levels[node.id] = 0
                path.pop()
                break
            if node.parent_id not in by_id:
                raise ValueError(f"cluster {node.id} names parent {node.parent_id}, which does not exist")
            node = by_id[node.parent_id]
        base = levels[node.id]
        for depth, cid in enumerate(reversed(path), start=1):
            levels[cid] = base + depth
    return levels


def project_clusters(
    clusters: Sequence[Cluster], embedder: EmbeddingModel, settings: PipelineSettings = PipelineSettings()
) -> list[ProjectedCluster]:
    if not clusters:
        return []
    x = embedder.embed([cluster_text(c) for c in clusters]).astype(np.float64)
    return projected(clusters, fit_projection(x, settings.seed)[0])


def fit_projection(x: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(xy, mean, components, sign)``: the 2D map of the rows of ``x`` and what places a new row on it
    (``(row - mean) @ components.T * sign``; components are zeros for fewer than 3 rows, laid out on a line)."""
    x = np.asarray(x, dtype=np.float64)
    if len(x) >= 3:
        from sklearn.decomposition import PCA

        pca = PCA(n_components=2, random_state=seed).fit(x)
        xy = pca.transform(x)
        # PCA's signs are arbitrary; fix them so the map does not flip between runs and versions.
        sign = np.where(xy[np.abs(xy).argmax(axis=0), [0, 1]] < 0, -1.0, 1.0)
        return xy * sign, pca.mean_, pca.components_, sign
    xy = np.zeros((len(x), 2))
    xy[:, 0] = np.arange(len(x), dtype=np.float64)
    dim = x.shape[1] if x.ndim == 2 else 0
    return xy, np.zeros(dim), np.zeros((2, dim)), np.ones(2)


def projected(clusters: Sequence[Cluster], xy: np.ndarray) -> list[ProjectedCluster]:
    """The clusters at ``xy`` (one row each), with their depth in the tree as ``level``."""
    levels = cluster_levels(clusters)
    # built from validated clusters, floats and ints: no second validation of every chat id (5M strings at 1M
    # conversations, ~2 s); the chat id lists are copied, so the two models never share one
    return [
        ProjectedCluster.model_construct(id=c.id, name=c.name, description=c.description, slug=c.slug,
                                         chat_ids=list(c.chat_ids), parent_id=c.parent_id, x_coord=float(x_),
                                         y_coord=float(y_), level=int(levels[c.id]))
        for c, (x_, y_) in zip(clusters, xy.tolist())
    ]
