"""Aggregation thresholds (Clio): a cluster is shown only when it is big enough to say nothing about one person.

A base cluster is *shown* (named from its members) only when it holds at least ``min_conversations``
conversations and, with a ``user_key`` (a conversation metadata field such as ``user_id``), at least
``min_users`` distinct users. The k-means groups below the thresholds are never given to the naming model.
Kura's rule (``k = n / clusters_per_group``) often cuts a topic into pieces just under ``min_conversations``, so
first the small groups that together are as tight as the loosest group already shown are merged
(:func:`merge_small_groups`); a merged group that meets the thresholds is shown, named from its own members. Then
each member of the groups still small (:func:`place_small_members`):

1. **joins the nearest shown cluster when it is close enough to it**: within that cluster's own spread, the
   ``join_quantile`` (the taxonomy's ``assign_quantile``, 0.95) of its members' cosine distances to its
   centroid, the rule by which a new conversation joins an existing cluster (:mod:`kura_dagster.pipeline.taxonomy`);
2. otherwise goes to the **"Other requests"** cluster of its neighbourhood: the shown clusters are grouped as the
   meta step's first round groups them (k-means of their centroids, ``groups_for_round``; one neighbourhood when
   there is no round), so there is about one "Other" per parent, or a single one when the shown clusters are
   the roots. An "Other" is named and described generically, never from its members;
3. an "Other" below the thresholds is not shown: each of its members is folded into its nearest shown cluster.

A shown cluster's name was made from its own members only (before anyone joined it). Groups the privacy auditor
withholds (LLM mode, :mod:`kura_dagster.pipeline.audit`) are treated as small ones. Meta clusters are unions of
shown clusters, so they meet the thresholds whenever their children do; they are named from their children's
names without the "Other" pools (:func:`name_parents`), and a parent of pools only is an "Other requests" itself.
A meta cluster the auditor withholds keeps its place in the tree with the generic name.

Every output is an ordinary Kura ``Cluster``: Kura and its UI read the checkpoints as before.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from kura_dagster.checkpoints.columnar import SummaryColumns
from kura_dagster.pipeline.cluster import NAMING_FIELDS, _groups, cluster_id, naming_sample
from kura_dagster.pipeline.models.base import ClusterNamingModel
from kura_dagster.pipeline.settings import PipelineSettings
from kura_dagster.types import Cluster, ConversationSummary, GeneratedCluster

OTHER_NAME = "Other requests"
OTHER_DESCRIPTION = ("Conversations unlike every named cluster, from groups too small or too specific to describe "
                     "without revealing who they came from. No name or description was drawn from them.")
OTHER_SLUG = "other_requests"
OTHER = GeneratedCluster(name=OTHER_NAME, summary=OTHER_DESCRIPTION, slug=OTHER_SLUG)


class ThresholdError(ValueError):
    """The conversations cannot make even one cluster that meets the thresholds."""


@dataclass(frozen=True)
class Thresholds:
    min_conversations: int = 10
    min_users: int = 1
    user_key: str | None = None

    def __post_init__(self) -> None:
        if self.min_conversations < 1:
            raise ValueError(f"min_conversations must be at least 1, got {self.min_conversations}")
        if self.min_users < 1:
            raise ValueError(f"min_users must be at least 1, got {self.min_users}")

    def describe(self) -> str:
        users = f" and {self.min_users} distinct {self.user_key!r}" if self.user_key else ""
        return f"at least {self.min_conversations} conversations{users}"


@dataclass
class FoldReport:
    """What the thresholds did to one stage's clusters (for metadata and logs)."""

    groups: int = 0
    shown: int = 0
    small_groups: int = 0
    withheld_groups: int = 0
    """Groups the privacy auditor withheld (treated as small ones)."""
    small_groups_merged: int = 0
    """Merges of two small groups into one as tight as a shown cluster (see :func:`merge_small_groups`)."""
    conversations_joined: int = 0
    """Members of small groups close enough to the nearest shown cluster (within its spread) to join it."""
    other_clusters: int = 0
    conversations_in_other: int = 0
    conversations_folded: int = 0
    """Members of small groups far from every shown cluster whose "Other" was below the thresholds: folded into
    their nearest shown cluster."""
    without_user: int = 0
    """Conversations without ``user_key`` in their metadata (counted as no user)."""
    ratings: dict[int, int] = field(default_factory=dict)

    def as_metadata(self) -> dict[str, int]:
        return {"privacy/kmeans_groups": self.groups, "privacy/clusters_shown": self.shown,
                "privacy/small_groups": self.small_groups, "privacy/withheld_groups": self.withheld_groups,
                "privacy/small_groups_merged": self.small_groups_merged,
                "privacy/conversations_joined_nearest": self.conversations_joined,
                "privacy/other_clusters": self.other_clusters,
                "privacy/conversations_in_other": self.conversations_in_other,
                "privacy/conversations_folded_into_nearest": self.conversations_folded,
                **({"privacy/conversations_without_user": self.without_user} if self.without_user else {})}


def user_ids(columns: SummaryColumns, user_key: str | None) -> list[str | None] | None:
    """Each summary's ``metadata[user_key]`` (as a string; ``None`` when absent), or ``None`` without a key."""
    if not user_key or not len(columns):
        return None
    from kura_dagster.pipeline.facets import metadata_values

    return metadata_values(columns, user_key)


def meets(members: Sequence[int] | np.ndarray, users: Sequence[str | None] | None, t: Thresholds) -> bool:
    if len(members) < t.min_conversations:
        return False
    if users is None or not t.user_key:
        return True
    distinct = {users[i] for i in np.asarray(members).tolist()}
    distinct.discard(None)
    return len(distinct) >= t.min_users


def _unit_centroids(x: np.ndarray, groups: Sequence[np.ndarray]) -> np.ndarray:
    centroids = np.stack([np.asarray(x[g], dtype=np.float32).mean(axis=0) for g in groups])
    return centroids / np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)


def _neighbourhoods(centroids: np.ndarray, settings: PipelineSettings) -> np.ndarray:
    """The meta step's first round over the shown clusters (:func:`reduce_clusters`: k-means of their centroids,
    ``groups_for_round`` groups, seed + 1), or one neighbourhood when the shown clusters will be the roots."""
    from kura_dagster.pipeline.kmeans import cluster_labels
    from kura_dagster.pipeline.meta_cluster import groups_for_round

    if len(centroids) <= settings.max_clusters:
        return np.zeros(len(centroids), dtype=np.int64)
    return np.asarray(cluster_labels(centroids, groups_for_round(len(centroids), settings), seed=settings.seed + 1))


def _spread(x: np.ndarray, rows: np.ndarray, quantile: float) -> float:
    """The ``quantile`` of the rows' cosine distances to their (normalised) mean."""
    v = np.asarray(x[rows], dtype=np.float32)
    v /= np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    c = v.mean(axis=0)
    c /= max(float(np.linalg.norm(c)), 1e-12)
    return float(np.quantile(1.0 - v @ c, quantile))


MERGE_NEIGHBOURS = 16
"""How many nearest pieces each small piece considers as partners in :func:`merge_small_groups` (its own
nearest and those that have it among theirs; a merged piece inherits both pieces' candidates)."""


def merge_small_groups(x: np.ndarray, groups: list[np.ndarray], users: Sequence[str | None] | None,
                       thresholds: Thresholds, quantile: float, report: FoldReport,
                       neighbours: int = MERGE_NEIGHBOURS, brute_up_to: int | None = None) -> list[np.ndarray]:
    """Small k-means groups that together are as tight as a cluster already shown become one group (Kura's
    ``k = n / clusters_per_group`` often cuts a topic into pieces just under ``min_conversations``).

    Greedy, closest pair first (cosine of centroids): a piece and its nearest piece are merged when their union's
    spread (``quantile`` of the members' distances to their centroid) is no larger than that of the loosest group
    that meets the thresholds (no cluster looser than one already shown is made); when it is larger, the piece
    stops looking (a farther piece would make a looser union). A merged group that meets the thresholds is
    shown, named from its own members like any other, and takes no more pieces; one that does not stays small.

    A piece's partners are looked for among its ``neighbours`` nearest pieces (scikit-learn's
    ``NearestNeighbors`` on the centroids, made symmetric; a merged piece keeps both pieces' candidates), not
    among all pieces: each merge then costs O(neighbours), not O(pieces), so the merging is about linear in the
    number of pieces instead of quadratic (with ``neighbours >= pieces - 1`` it is the exhaustive search). Above
    ``brute_up_to`` pieces the nearest ones are looked for within buckets (:func:`_candidate_sets`)."""
    small_at = [i for i, g in enumerate(groups) if not meets(g, users, thresholds)]
    big = [g for g in groups if meets(g, users, thresholds)]
    if len(small_at) < 2 or not big:
        return groups
    if neighbours < 1:
        raise ValueError(f"neighbours must be at least 1, got {neighbours}")
    brute_up_to = BRUTE_NEIGHBOURS_UP_TO if brute_up_to is None else brute_up_to
    limit = max(_spread(x, g, quantile) for g in big)
    pieces = [groups[i] for i in small_at]
    m = len(pieces)
    cents = _unit_centroids(x, pieces)
    nbr = _candidate_sets(cents, min(neighbours, m - 1), brute_up_to)
    partner = np.ones(m, dtype=bool)  # may still be merged with (alive and below the thresholds)
    looking = np.ones(m, dtype=bool)  # may still look for a partner
    alive = np.ones(m, dtype=bool)
    refused: dict[int, set[int]] = {}
    best_val = np.full(m, -np.inf, dtype=np.float32)
    best_col = np.full(m, -1, dtype=np.int64)

    def refresh(rows: Sequence[int]) -> None:
        for r in rows:
            if not looking[r]:
                continue
            no = refused.get(r, ())
            cand = sorted(c for c in nbr[r] if partner[c] and c not in no)  # ascending: ties go to the lowest
            if not cand:
                best_val[r], best_col[r] = -np.inf, -1
                continue
            sims = cents[cand] @ cents[r]
            b = int(np.argmax(sims))
            best_val[r], best_col[r] = sims[b], cand[b]

    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):  # many small products: faster single-threaded on busy cores (as kmeans.py)
        refresh(range(m))
        while True:
            r = int(np.argmax(best_val))
            if not np.isfinite(best_val[r]):
                break
            c = int(best_col[r])
            union = np.sort(np.concatenate([pieces[r], pieces[c]]))
            if _spread(x, union, quantile) > limit:
                looking[r], best_val[r] = False, -np.inf
                refused.setdefault(r, set()).add(c)
                refused.setdefault(c, set()).add(r)
                if best_col[c] == r:
                    refresh([c])
                continue
            i, j = min(r, c), max(r, c)
            pieces[i], alive[j], partner[j], looking[j], best_val[j] = union, False, False, False, -np.inf
            refused.pop(i, None)  # a new piece: what the old one refused says nothing about it
            report.small_groups_merged += 1
            # the merged piece's candidates: both pieces' (whoever had j as a candidate now has i)
            for t in nbr[j]:
                nbr[t].discard(j)
                if t != i:
                    nbr[t].add(i)
            nbr[i] |= nbr[j]
            nbr[i] -= {i, j}
            nbr[j] = set()
            if meets(union, users, thresholds):  # shown from now on: it takes no more pieces
                partner[i], looking[i], best_val[i] = False, False, -np.inf
            else:
                cents[i] = _unit_centroids(x, [union])[0]
                looking[i] = True
            near = np.fromiter(nbr[i], dtype=np.int64, count=len(nbr[i]))
            stale = near[looking[near] & ((best_col[near] == i) | (best_col[near] == j))]
            refresh([*stale.tolist(), i])
            if partner[i] and len(near):  # the new piece may now be a candidate's nearest
                others = near[looking[near]]
                sims = cents[others] @ cents[i]
                closer = sims > best_val[others]
                best_val[others[closer]], best_col[others[closer]] = sims[closer], i
    at = {g: p for p, g in enumerate(small_at)}  # k-means' order kept: a merged group where its first piece was
    return [groups[g] if g not in at else pieces[at[g]] for g in range(len(groups)) if g not in at or alive[at[g]]]


BRUTE_NEIGHBOURS_UP_TO = 16_384
"""Up to this many pieces their nearest neighbours are exact (every pair compared); above it, within buckets."""
BUCKET_PIECES = 512
"""Above :data:`BRUTE_NEIGHBOURS_UP_TO`: about this many pieces per bucket (k-means of the pieces' centroids)."""
BUCKET_PROBES = 3
"""Above :data:`BRUTE_NEIGHBOURS_UP_TO`: a piece's neighbours are looked for in its this many nearest buckets."""


def _candidate_sets(cents: np.ndarray, k: int, brute_up_to: int = BRUTE_NEIGHBOURS_UP_TO) -> list[set[int]]:
    """Each unit row's ``k`` nearest other rows (Euclidean on unit vectors ranks as cosine), made symmetric.

    Exact (scikit-learn's brute-force ``NearestNeighbors``) up to ``brute_up_to`` rows; above it every pair would
    cost O(rows²) (65k pieces at 1M conversations: ~30 s on two cores), so the rows are bucketed by k-means of
    the centroids (about :data:`BUCKET_PIECES` per bucket) and each row's neighbours are the nearest among the
    rows of its :data:`BUCKET_PROBES` nearest buckets (O(rows × bucket size))."""
    m = len(cents)
    out: list[set[int]] = [set() for _ in range(m)]
    if k >= m - 1:
        return [set(range(m)) - {r} for r in range(m)]
    if m <= brute_up_to:
        from sklearn.neighbors import NearestNeighbors

        _, idx = NearestNeighbors(n_neighbors=k + 1, algorithm="brute").fit(cents).kneighbors(cents)
    else:
        idx = _bucketed_neighbours(cents, k)
    for r, row in enumerate(idx.tolist()):
        for c in row:
            if c != r and c >= 0:
                out[r].add(c)
                out[c].add(r)
    return out


def _bucketed_neighbours(cents: np.ndarray, k: int) -> np.ndarray:
    """``(rows, k)`` indices of each row's nearest other rows among its nearest buckets' rows (-1: none)."""
    from kura_dagster.pipeline.kmeans import cluster_labels

    m = len(cents)
    buckets = max(2, math.ceil(m / BUCKET_PIECES))
    lab = np.asarray(cluster_labels(cents, buckets, seed=0), dtype=np.int64)
    buckets = int(lab.max()) + 1
    centres = np.zeros((buckets, cents.shape[1]), dtype=np.float64)
    np.add.at(centres, lab, cents.astype(np.float64))
    centres = (centres / np.maximum(np.linalg.norm(centres, axis=1, keepdims=True), 1e-12)).astype(np.float32)
    probes = min(BUCKET_PROBES, buckets)
    near = np.argpartition(-(cents @ centres.T), probes - 1, axis=1)[:, :probes]
    order = np.argsort(lab, kind="stable")
    bounds = np.searchsorted(lab[order], np.arange(buckets + 1))
    best_sim = np.full((m, k), -np.inf, dtype=np.float32)
    best_idx = np.full((m, k), -1, dtype=np.int64)
    for h in range(buckets):
        members = order[bounds[h]:bounds[h + 1]]
        queries = np.flatnonzero((near == h).any(axis=1))
        if not len(members) or not len(queries):
            continue
        sims = cents[queries] @ cents[members].T
        sims[queries[:, None] == members[None, :]] = -np.inf  # not its own neighbour
        top = min(k, len(members))
        pick = np.argpartition(-sims, top - 1, axis=1)[:, :top]
        cand_sim = np.concatenate([best_sim[queries], np.take_along_axis(sims, pick, axis=1)], axis=1)
        cand_idx = np.concatenate([best_idx[queries], members[pick]], axis=1)
        keep = np.argsort(-cand_sim, axis=1, kind="stable")[:, :k]
        best_sim[queries] = np.take_along_axis(cand_sim, keep, axis=1)
        best_idx[queries] = np.take_along_axis(cand_idx, keep, axis=1)
    best_idx[~np.isfinite(best_sim)] = -1
    return best_idx


def place_small_members(
    x: np.ndarray, shown: Sequence[np.ndarray], rest: np.ndarray, users: Sequence[str | None] | None,
    thresholds: Thresholds, settings: PipelineSettings, join_quantile: float, report: FoldReport,
) -> tuple[list[list[int]], list[np.ndarray]]:
    """Where the members ``rest`` (rows of ``x``) of the small groups go: ``(shown groups with the members that
    joined or were folded into them, "Other" pools)``. See the module's docstring."""
    from kura_dagster.pipeline.taxonomy import radii

    if not 0 < join_quantile <= 1:
        raise ValueError(f"join_quantile must be in (0, 1], got {join_quantile}")
    final = [list(g.tolist()) for g in shown]
    if not len(rest):
        return final, []
    centroids = _unit_centroids(x, shown)
    own = np.concatenate(shown)
    labels = np.concatenate([np.full(len(g), j, dtype=np.int64) for j, g in enumerate(shown)])
    rows = np.asarray(x[own], dtype=np.float32)
    rows /= np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
    spread = radii(1.0 - np.einsum("ij,ij->i", rows, centroids[labels]), labels, len(shown), join_quantile)
    nearest = np.empty(len(rest), dtype=np.int64)
    distance = np.empty(len(rest), dtype=np.float32)
    # in blocks of at most 2^25 (member, cluster) cells (128 MB): never a (members × clusters) matrix at once (4,096
    # members against the ~50k shown clusters of 1M conversations were 800 MB)
    block = max(1, min(4096, (1 << 25) // max(len(centroids), 1)))
    for at in range(0, len(rest), block):
        r = np.asarray(x[rest[at:at + block]], dtype=np.float32)
        sims = (r / np.maximum(np.linalg.norm(r, axis=1, keepdims=True), 1e-12)) @ centroids.T
        nearest[at:at + block] = sims.argmax(axis=1)
        distance[at:at + block] = 1.0 - sims[np.arange(len(r)), nearest[at:at + block]]
    near = distance <= spread[nearest]
    for row, j in zip(rest[near].tolist(), nearest[near].tolist()):
        final[j].append(row)
    report.conversations_joined += int(near.sum())
    far, far_nearest = rest[~near], nearest[~near]
    hood = _neighbourhoods(centroids, settings)[far_nearest] if len(far) else far_nearest
    pools = []
    for h in np.unique(hood).tolist():
        pool = far[hood == h]
        if meets(pool, users, thresholds):
            pools.append(np.sort(pool))
            report.conversations_in_other += len(pool)
        else:  # too few even together: each one into its nearest shown cluster
            for row, j in zip(pool.tolist(), far_nearest[hood == h].tolist()):
                final[j].append(row)
            report.conversations_folded += len(pool)
    report.other_clusters += len(pools)
    return final, pools


def is_other(cluster: Cluster) -> bool:
    """An "Other requests" cluster (a pool of small groups' members, or a withheld meta cluster)."""
    return cluster.name == OTHER_NAME and cluster.slug == OTHER_SLUG


def name_parents(name_meta_clusters: Callable[[list[list[Cluster]]], Sequence[GeneratedCluster]],
                 groups: Sequence[Sequence[Cluster]]) -> list[GeneratedCluster]:
    """Parents named from their children without the "Other requests" ones (the model never sees a pool, not
    even its generic text: a parent of a pool alone was once named 'Counted' after its description); a parent of
    pools only is an "Other requests" itself."""
    kept = [[c for c in g if not is_other(c)] for g in groups]
    named = iter(name_meta_clusters([g for g in kept if g]) if any(kept) else [])
    out = [next(named) if g else OTHER for g in kept]
    if next(named, None) is not None:
        raise ValueError("the naming model returned more names than meta clusters")
    return out


Auditor = Callable[[Sequence[GeneratedCluster]], list[int]]
"""``ratings(names)``: Clio's 1-5 identifiability rating of each name + description (5: identifies nobody)."""


def base_clusters_with_thresholds(
    columns: SummaryColumns,
    namer: ClusterNamingModel,
    settings: PipelineSettings = PipelineSettings(),
    thresholds: Thresholds = Thresholds(),
    *,
    auditor: Auditor | None = None,
    min_rating: int = 3,
    report: FoldReport | None = None,
    join_quantile: float = 0.95,
) -> list[Cluster]:
    """Kura's base clusters (``pipeline.cluster``'s k-means and naming sample), with the thresholds applied
    before any naming: only groups that meet them are given to ``namer``; the small groups' members join a
    shown cluster within its ``join_quantile`` spread, or an "Other requests". See the module's docstring."""
    report = report if report is not None else FoldReport()
    n = len(columns)
    if not n:
        return []
    if len(columns.embeddings) != n:
        raise ValueError(f"{len(columns.embeddings)} embeddings for {n} summaries")
    x = columns.embeddings
    users = user_ids(columns, thresholds.user_key)
    if users is not None:
        report.without_user = sum(u is None for u in users)
    groups = _groups(x, settings)
    report.groups = len(groups)
    groups = merge_small_groups(x, groups, users, thresholds, join_quantile, report)
    shown = [g for g in groups if meets(g, users, thresholds)]
    small = [g for g in groups if not meets(g, users, thresholds)]
    report.small_groups = len(small)

    names: list[GeneratedCluster] = []
    if shown:
        picked = [naming_sample(columns.chat_ids, g, settings.seed) for g in shown]
        models = columns.models_for(np.concatenate(picked), fields=NAMING_FIELDS)
        bounds = np.cumsum([len(p) for p in picked]).tolist()
        samples: list[list[ConversationSummary]] = [models[a:b] for a, b in zip([0, *bounds[:-1]], bounds)]
        del models
        names = list(namer.name_clusters(samples))
        if len(names) != len(shown):
            raise ValueError(f"the naming model returned {len(names)} names for {len(shown)} clusters")
        if auditor is not None:
            ratings = auditor(names)
            for r in ratings:
                report.ratings[r] = report.ratings.get(r, 0) + 1
            keep = [r >= min_rating for r in ratings]
            report.withheld_groups = keep.count(False)
            small += [g for g, k in zip(shown, keep) if not k]
            shown, names = [g for g, k in zip(shown, keep) if k], [nm for nm, k in zip(names, keep) if k]

    final: list[list[int]] = [list(g.tolist()) for g in shown]
    final_names = list(names)
    if small:
        rest = np.sort(np.concatenate(small))
        if shown:
            final, pools = place_small_members(x, shown, rest, users, thresholds, settings, join_quantile, report)
            final += [p.tolist() for p in pools]
            final_names += [OTHER] * len(pools)
        elif meets(rest, users, thresholds):
            final.append(rest.tolist())
            final_names.append(OTHER)
            report.conversations_in_other, report.other_clusters = len(rest), 1
        else:
            count = f"{n} conversations" + (f" from {len({u for u in users if u})} users" if users else "")
            raise ThresholdError(f"{count} cannot make one cluster of {thresholds.describe()}: nothing can be "
                                 "shown. Lower min_conversations/min_users or add conversations.")
    report.shown = len(final)
    out = []
    for rows, gen in zip(final, final_names):
        members = [columns.chat_ids[i] for i in sorted(rows)]
        out.append(Cluster(id=cluster_id(settings.seed, "base", members), name=gen.name, description=gen.summary,
                           slug=gen.slug, chat_ids=members, parent_id=None))
    return out


def cluster_users(clusters: Sequence[Cluster], users_by_chat: dict[str, str | None]) -> list[int]:
    """Distinct users of each cluster (conversations without a user count as none)."""
    out = []
    for c in clusters:
        distinct = {users_by_chat.get(cid) for cid in c.chat_ids}
        distinct.discard(None)
        out.append(len(distinct))
    return out


def threshold_problems(clusters: Sequence[Cluster], thresholds: Thresholds,
                       users_by_chat: dict[str, str | None] | None = None) -> list[str]:
    """Each cluster below the thresholds (every cluster of a checkpoint is shown by Kura's UI)."""
    problems = []
    users = cluster_users(clusters, users_by_chat) if thresholds.user_key and users_by_chat is not None else None
    for i, c in enumerate(clusters):
        if len(c.chat_ids) < thresholds.min_conversations:
            problems.append(f"cluster {c.id!r} ({c.name!r}) holds {len(c.chat_ids)} conversation(s), fewer than "
                            f"min_conversations={thresholds.min_conversations}")
        if users is not None and users[i] < thresholds.min_users:
            problems.append(f"cluster {c.id!r} ({c.name!r}) holds {users[i]} distinct {thresholds.user_key!r}, "
                            f"fewer than min_users={thresholds.min_users}")
    return problems


def withhold(clusters: Sequence[Cluster], ratings: Sequence[int], min_rating: int) -> tuple[list[Cluster], int]:
    """Meta clusters rated below ``min_rating`` keep their place in the tree under the generic name."""
    out, n = [], 0
    for c, r in zip(clusters, ratings, strict=True):
        if r < min_rating:
            out.append(c.model_copy(update={"name": OTHER_NAME, "description": OTHER_DESCRIPTION, "slug": OTHER_SLUG}))
            n += 1
        else:
            out.append(c)
    return out, n
