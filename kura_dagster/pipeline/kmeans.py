"""k-means that stays sub-quadratic when k grows with n (Kura's ``k = ceil(n / clusters_per_group)``).

For small k it is plain scikit-learn k-means. For large k it splits the points into ``~sqrt(k)`` coarse
groups first and then runs k-means inside each group with a proportional share of k, so the cost is about
``n * sqrt(k)`` distance computations instead of ``n * k``.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.cluster import KMeans, MiniBatchKMeans

DIRECT_LIMIT = 256


def _kmeans(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    if k <= 1 or len(x) <= 1:
        return np.zeros(len(x), dtype=np.int64)
    k = min(k, len(x))
    if len(x) > 50_000 and k <= DIRECT_LIMIT:
        model = MiniBatchKMeans(n_clusters=k, random_state=seed, n_init=3, batch_size=4096)
    else:
        model = KMeans(n_clusters=k, random_state=seed, n_init=3 if len(x) * k < 5_000_000 else 1)
    return model.fit_predict(x).astype(np.int64)


def _allocate(sizes: np.ndarray, k: int) -> np.ndarray:
    """Split k across groups in proportion to their sizes (largest remainder), at least 1 and at most size."""
    raw = sizes / sizes.sum() * k
    share = np.clip(np.floor(raw).astype(np.int64), 1, sizes)
    order = np.argsort(-(raw - np.floor(raw)), kind="stable")
    i = 0
    while share.sum() < k and i < 10 * len(order):
        j = order[i % len(order)]
        if share[j] < sizes[j]:
            share[j] += 1
        i += 1
    return share


def cluster_labels(x: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """Labels ``0..k'-1`` (``k' <= k``, every label used) for the rows of ``x``.

    Identical rows always share a cluster: when there are fewer distinct rows than ``k``, each distinct row
    becomes its own cluster instead of k-means splitting duplicates arbitrarily.
    """
    uniq, inverse = np.unique(x, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    if len(uniq) <= k:
        return _dense(inverse)
    n = len(x)
    k = max(1, min(k, n))
    if k <= DIRECT_LIMIT:
        labels = _kmeans(x, k, seed)
    else:
        coarse_k = int(math.ceil(math.sqrt(k)))
        coarse = _kmeans(x, coarse_k, seed)
        groups = [np.flatnonzero(coarse == g) for g in range(coarse_k)]
        groups = [g for g in groups if len(g)]
        shares = _allocate(np.array([len(g) for g in groups]), k)
        labels = np.empty(n, dtype=np.int64)
        offset = 0
        for members, share in zip(groups, shares):
            labels[members] = _kmeans(x[members], int(share), seed) + offset
            offset += int(share)
    return _dense(labels)


def _dense(labels: np.ndarray) -> np.ndarray:
    """Renumber labels 0..m-1 in order of first appearance (stable across equal inputs)."""
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    return rank[inverse.reshape(-1)]
