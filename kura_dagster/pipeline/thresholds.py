"""Aggregation thresholds (Clio): a cluster is shown only when it is big enough to say nothing about one person.

A base cluster is *shown* (named from its members) only when it holds at least ``min_conversations``
conversations and, with a ``user_key`` (a conversation metadata field such as ``user_id``), at least
``min_users`` distinct users. The k-means groups below the thresholds are never given to the naming model:

1. their members go to one **"Other requests"** cluster, named and described generically (never from its
   members), when that cluster itself meets the thresholds;
2. otherwise (too few of them even together) each of them is folded into the shown cluster whose centroid is
   nearest to it. The shown cluster's name was made from its own members only.

Groups the privacy auditor withholds (LLM mode, :mod:`kura_dagster.pipeline.audit`) are treated as small ones.
Meta clusters are unions of shown clusters, so they meet the thresholds whenever their children do; a meta
cluster the auditor withholds keeps its place in the tree with the generic name.

Every output is an ordinary Kura ``Cluster``: Kura and its UI read the checkpoints as before.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from kura_dagster.checkpoints.columnar import SummaryColumns
from kura_dagster.pipeline.cluster import NAMING_FIELDS, _groups, cluster_id, naming_sample
from kura_dagster.pipeline.models.base import ClusterNamingModel
from kura_dagster.pipeline.settings import PipelineSettings
from kura_dagster.types import Cluster, ConversationSummary, GeneratedCluster

OTHER_NAME = "Other requests"
OTHER_DESCRIPTION = ("Conversations from groups too small or too specific to describe without revealing who they "
                     "came from. They are counted here, and no name or description was drawn from them.")
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
    conversations_in_other: int = 0
    conversations_folded: int = 0
    """Members of small groups folded into the nearest shown cluster (too few for an "Other" cluster)."""
    without_user: int = 0
    """Conversations without ``user_key`` in their metadata (counted as no user)."""
    ratings: dict[int, int] = field(default_factory=dict)

    def as_metadata(self) -> dict[str, int]:
        return {"privacy/kmeans_groups": self.groups, "privacy/clusters_shown": self.shown,
                "privacy/small_groups": self.small_groups, "privacy/withheld_groups": self.withheld_groups,
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


def _nearest(x: np.ndarray, rows: np.ndarray, groups: Sequence[np.ndarray]) -> np.ndarray:
    """For each of ``rows``, the index of the group whose (normalised) centroid is nearest by cosine."""
    centroids = np.stack([x[g].mean(axis=0) for g in groups]).astype(np.float32)
    centroids /= np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
    return np.asarray((x[rows] @ centroids.T).argmax(axis=1)).reshape(-1)


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
) -> list[Cluster]:
    """Kura's base clusters (``pipeline.cluster``'s k-means and naming sample), with the thresholds applied
    before any naming: only groups that meet them are given to ``namer``. See the module's docstring."""
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

    final = [list(g.tolist()) for g in shown]
    final_names = list(names)
    if small:
        rest = np.sort(np.concatenate(small))
        if meets(rest, users, thresholds):
            final.append(rest.tolist())
            final_names.append(OTHER)
            report.conversations_in_other = len(rest)
        elif shown:
            for row, g in zip(rest.tolist(), _nearest(x, rest, shown).tolist()):
                final[g].append(row)
            report.conversations_folded = len(rest)
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
