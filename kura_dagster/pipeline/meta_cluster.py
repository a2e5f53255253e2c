"""Stage 3: meta clusters — Kura's hierarchy.

Root clusters are grouped repeatedly until at most ``max_clusters`` roots remain. The output is every
cluster: the base clusters, now with ``parent_id`` set, and the new parents, whose ``chat_ids`` are the
union of their children's (Kura's meta-cluster file format). Work is proportional to the number of clusters,
not conversations.

* **The same space as the base clusters.** Given ``centroids`` (each base cluster's mean member embedding, from
  :func:`cluster_centroids`), groups are formed there, where the conversations were clustered; a parent's vector
  is its children's size-weighted mean. Without them the cluster texts (name, slug, description) are embedded,
  as before.
* **Nothing big swallows the rest** (:func:`balance`). A group that holds more than :data:`MAX_GROUP_FACTOR` times
  its round's mean share of conversations (or of the final ``max_clusters`` roots', if larger) is split in two (2-means over its children) until none does or
  the big one is a single child (a base cluster, whose members justify its size); the closest small groups
  are then merged back so that a round makes no more groups than its budget allows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

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


MAX_GROUP_FACTOR = 2.5
"""A group may hold at most this many times the mean share of its round (total / groups) of the conversations,
unless it is a single cluster: with the final 10 roots, at most 25% of the corpus."""


def cluster_centroids(clusters: Sequence[Cluster], chat_ids: Sequence[str], embeddings: np.ndarray
                      ) -> dict[str, np.ndarray]:
    """Each cluster's mean member embedding, L2-normalised, from the summaries' ``chat_ids`` and embedding matrix
    (rows in the same order). Raises if a member has no embedding."""
    row = {cid: i for i, cid in enumerate(chat_ids)}
    out = {}
    for c in clusters:
        try:
            idx = np.fromiter((row[cid] for cid in c.chat_ids), dtype=np.int64, count=len(c.chat_ids))
        except KeyError as exc:
            raise ValueError(f"cluster {c.id} ({c.name!r}) has member {exc.args[0]!r}, which has no summary") from None
        out[c.id] = _normalise(np.asarray(embeddings[idx], dtype=np.float32).mean(axis=0))
    return out


def _two_means(x: np.ndarray, w: np.ndarray, seed: int) -> np.ndarray:
    from sklearn.cluster import KMeans

    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):  # (as in kmeans.py: small k-means are faster single-threaded on busy cores)
        labels = KMeans(2, n_init=3, random_state=seed).fit_predict(x, sample_weight=w)
    if labels.min() == labels.max():  # identical vectors: split by size instead, largest first alternating
        labels = np.zeros(len(x), dtype=np.int64)
        labels[np.argsort(-w, kind="stable")[1::2]] = 1
    return labels


def balance(groups: list[list[int]], x: np.ndarray, w: np.ndarray, k: int, seed: int,
            factor: float = MAX_GROUP_FACTOR, cap_groups: int | None = None) -> list[list[int]]:
    """Split groups (lists of row numbers of ``x``, weights ``w``) heavier than ``factor * w.sum() / cap_groups``
    (``cap_groups`` defaults to ``k``) in two until none is (or the heavy one has a single member), then merge the
    closest pairs of groups whose merge stays under that cap while there are more than ``k`` groups.
    Deterministic for a seed."""
    cap = factor * float(w.sum()) / max(cap_groups or k, 1)
    out: list[np.ndarray] = []
    todo = [np.asarray(g, dtype=np.int64) for g in reversed(groups)]
    while todo:  # depth first, so the halves of a split stay next to each other in the output
        g = todo.pop()
        if len(g) < 2 or float(w[g].sum()) <= cap:
            out.append(g)
            continue
        labels = _two_means(x[g], w[g], seed)
        todo.extend([g[labels == 1], g[labels == 0]])
    if len(out) > k:
        weights = np.array([float(w[g].sum()) for g in out])
        sums = np.stack([(x[g] * w[g][:, None]).sum(axis=0) for g in out])
        cents = _normalise(sums)
        alive = np.ones(len(out), dtype=bool)
        sim = cents @ cents.T
        np.fill_diagonal(sim, -np.inf)
        sim[weights[:, None] + weights[None, :] > cap] = -np.inf
        for _ in range(len(out) - k):
            i, j = np.unravel_index(int(np.argmax(sim)), sim.shape)
            if not np.isfinite(sim[i, j]):
                break  # every merge would make a group too big: keep more groups this round
            i, j = min(i, j), max(i, j)
            out[i] = np.sort(np.concatenate([out[i], out[j]]))
            weights[i] += weights[j]
            sums[i] += sums[j]
            cents[i] = _normalise(sums[i])
            alive[j] = False
            sim[j, :] = sim[:, j] = -np.inf
            row = cents @ cents[i]
            row[~alive | (weights + weights[i] > cap)] = -np.inf
            row[i] = -np.inf
            sim[i, :] = sim[:, i] = row
        out = [g for g, keep in zip(out, alive) if keep]
    return [g.tolist() for g in out]


def reduce_clusters(
    clusters: Sequence[Cluster],
    namer: ClusterNamingModel,
    embedder: EmbeddingModel | None,
    settings: PipelineSettings = PipelineSettings(),
    centroids: Mapping[str, np.ndarray] | None = None,
) -> list[Cluster]:
    """Kura's meta clusters. ``centroids`` (by cluster id, e.g. :func:`cluster_centroids`): group in the base
    clusters' own embedding space; without them the ``embedder`` embeds each cluster's text."""
    if not clusters:
        return []
    nodes: dict[str, Cluster] = {c.id: c.model_copy(update={"parent_id": None}) for c in clusters}
    if len(nodes) != len(clusters):
        raise ValueError("duplicate cluster ids in the input")
    roots = list(nodes)
    if centroids is not None:
        missing = [r for r in roots if r not in centroids]
        if missing:
            raise ValueError(f"no centroid for {len(missing)} cluster(s), e.g. {missing[0]}")
        vectors = {r: _normalise(np.asarray(centroids[r], dtype=np.float32)) for r in roots}
    elif embedder is None:
        raise ValueError("reduce_clusters needs centroids or an embedder")
    else:
        vectors = dict(zip(roots, _normalise(embedder.embed([cluster_text(nodes[r]) for r in roots]))))
    level = 0
    while len(roots) > settings.max_clusters:
        level += 1
        x = np.stack([vectors[r] for r in roots])
        k = groups_for_round(len(roots), settings)
        labels = cluster_labels(x, k, seed=settings.seed + level)
        order = np.argsort(labels, kind="stable")
        rows = [idx.tolist() for idx in np.split(order, np.flatnonzero(np.diff(labels[order])) + 1)]
        w = np.array([len(nodes[r].chat_ids) for r in roots], dtype=np.float64)
        # the cap is the final budget's (max_clusters roots) even when a late round makes fewer groups
        balanced = balance(rows, x, w, k, settings.seed + level, cap_groups=max(k, settings.max_clusters))
        if len(balanced) < len(roots):  # (a round must make progress; else keep k-means' groups)
            rows = balanced
        groups = [[roots[i] for i in idx] for idx in rows]
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
