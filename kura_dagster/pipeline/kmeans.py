"""k-means that stays sub-quadratic when k grows with n (Kura's ``k = ceil(n / clusters_per_group)``).

Identical rows are merged first (one weighted point each), so duplicates always share a cluster and cost
nothing extra. For small k it is plain scikit-learn k-means. For large k it splits the points into
``max(sqrt(k), k / FINE_K)`` coarse groups first and then runs k-means inside each group with a share of k
proportional to the group's weight, so the cost is about ``n * min(sqrt(k), FINE_K)`` distance computations
instead of ``n * k`` (at 1M conversations, k = 100k: ``n * 128`` rather than ``n * 317``).
The points stay float32 (what the embedding checkpoints hold; scikit-learn's k-means runs in float32 too), so
a 1M × 256 matrix is 1 GB, not a 2 GB float64 copy. Given the same input and seed the labels are always the same.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np

DIRECT_LIMIT = 256
"""Up to this k, one k-means over all points; above it, the two-level path."""
MINIBATCH_ABOVE = 50_000
"""Above this many distinct points, the (coarse or direct) k-means is mini-batch."""
FINE_K = 128
"""Above ``FINE_K ** 2`` clusters, the coarse groups are made smaller so that no group's k-means has much more
than this many clusters: the per-group cost grows with the group's k, and k grows with n."""


def _kmeans(x: np.ndarray, k: int, seed: int, weights: np.ndarray | None = None) -> np.ndarray:
    """Labels for the rows of ``x`` from k-means with at most ``k`` clusters (float32 or float64 as given, seeded)."""
    from sklearn.cluster import KMeans, MiniBatchKMeans  # imported here: sklearn costs ~2 s at start-up

    if k <= 1 or len(x) <= 1:
        return np.zeros(len(x), dtype=np.int64)
    k = min(k, len(x))
    if len(x) > MINIBATCH_ABOVE and k <= DIRECT_LIMIT:
        model = MiniBatchKMeans(n_clusters=k, random_state=seed, n_init=3, batch_size=4096)
    else:
        # one k-means++-seeded run (scikit-learn's own default); more restarts triple the cost for little gain
        model = KMeans(n_clusters=k, random_state=seed, n_init=1)
    return model.fit_predict(x, sample_weight=weights).astype(np.int64)


def allocate(weights: np.ndarray, caps: np.ndarray, k: int) -> np.ndarray:
    """Split ``k`` across groups in proportion to ``weights`` (largest remainder), each share at least 1
    and at most its cap. The shares sum to ``min(k, caps.sum())`` as long as ``k >= len(weights)``."""
    weights = np.asarray(weights, dtype=np.float64)
    caps = np.asarray(caps, dtype=np.int64)
    k = int(min(k, caps.sum()))
    raw = weights / weights.sum() * k
    share = np.clip(np.floor(raw).astype(np.int64), 1, caps)
    remainder = raw - np.floor(raw)
    # hand out what is left by largest remainder (ties: lower index), skipping groups at their cap
    while share.sum() < k:
        room = share < caps
        order = np.lexsort((np.arange(len(share)), -remainder))
        order = order[room[order]]
        share[order[: k - share.sum()]] += 1
        remainder[order] = -1.0
        if not room.any():
            break
    # the floor of 1 can overshoot k when there are many tiny groups: take back from the largest shares
    while share.sum() > k:
        j = int(np.lexsort((np.arange(len(share)), -share))[0])
        if share[j] <= 1:
            break
        share[j] -= 1
    return share


def distinct_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(first, inverse, counts)``: the first index of each distinct row (in order of appearance), each
    row's distinct id, and how often each distinct row occurs. Linear time: rows are told apart by a 128-bit
    BLAKE2b digest of their bytes (a collision among 10^9 rows has odds below 10^-20), so the table holds
    16 bytes per row instead of a copy of every row."""
    x = np.ascontiguousarray(x)
    ids: dict[bytes, int] = {}
    digest = hashlib.blake2b
    inverse = np.fromiter((ids.setdefault(digest(row, digest_size=16).digest(), len(ids)) for row in x),
                          dtype=np.int64, count=len(x))
    first = np.full(len(ids), len(x), dtype=np.int64)
    np.minimum.at(first, inverse, np.arange(len(x)))
    return first, inverse, np.bincount(inverse, minlength=len(ids))


def cluster_labels(x: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """Labels ``0..k'-1`` (``k' <= k``, every label used) for the rows of ``x``.

    Identical rows always share a cluster: when there are fewer distinct rows than ``k``, each distinct row
    becomes its own cluster instead of k-means splitting duplicates arbitrarily. With at least ``k``
    distinct rows, ``k' == k`` (plain k-means never leaves a cluster empty; the two-level path gives each
    coarse group no more clusters than it has distinct points).
    """
    from threadpoolctl import threadpool_limits

    x = np.asarray(x)
    x = x if x.dtype in (np.float32, np.float64) else x.astype(np.float64)
    if len(x) == 0:
        return np.zeros(0, dtype=np.int64)
    first, inverse, counts = distinct_rows(x)
    k = max(1, int(k))
    if len(first) <= k:
        return _dense(inverse)
    # Measured on two cores: BLAS/OpenMP threads make these mostly small k-means 2-5x *slower*, so each
    # k-means is single-threaded and the two-level path runs two groups at a time instead.
    with threadpool_limits(1):
        return _labels(x[first], counts.astype(np.float64), k, seed)[inverse]


def _labels(u: np.ndarray, w: np.ndarray, k: int, seed: int) -> np.ndarray:
    if k <= DIRECT_LIMIT:
        labels = _kmeans(u, k, seed, w)
    else:
        coarse_k = coarse_groups(k)
        coarse = _dense(_kmeans(u, coarse_k, seed, w))
        groups = np.split(np.argsort(coarse, kind="stable"), np.flatnonzero(np.diff(np.sort(coarse))) + 1)
        shares = allocate(np.array([w[g].sum() for g in groups]), np.array([len(g) for g in groups]), k)
        labels = np.empty(len(u), dtype=np.int64)
        offsets = np.concatenate(([0], np.cumsum(shares)[:-1]))
        for members, sub in zip(groups, _per_group(u, w, groups, shares, seed)):
            labels[members] = sub
        labels += offsets[coarse]
    return _dense(labels)


def coarse_groups(k: int) -> int:
    """How many coarse groups the two-level path makes for ``k`` clusters: ``ceil(sqrt(k))``, or more when
    that would leave groups with more than about ``FINE_K`` clusters each."""
    return max(int(math.ceil(math.sqrt(k))), int(math.ceil(k / FINE_K)))


def _per_group(u: np.ndarray, w: np.ndarray, groups: list[np.ndarray], shares: np.ndarray, seed: int) -> list[np.ndarray]:
    """k-means inside each coarse group, two groups at a time (each group's k-means is seeded on its own,
    so the result does not depend on which finishes first)."""
    from concurrent.futures import ThreadPoolExecutor

    def one(i: int) -> np.ndarray:
        return _kmeans(u[groups[i]], int(shares[i]), seed, w[groups[i]])

    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(one, range(len(groups))))


def _dense(labels: np.ndarray) -> np.ndarray:
    """Renumber labels 0..m-1 in order of first appearance (stable across equal inputs)."""
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    return rank[inverse.reshape(-1)]
