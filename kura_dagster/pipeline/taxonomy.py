"""A taxonomy that stays put: new conversations join the clusters people already know.

A full build (Kura's k-means, hierarchy and projection) happens once; after it every run is incremental:

* **Base clusters** (:func:`update_base_clusters`). A new conversation joins the nearest existing base cluster
  (cosine, in the stored embedding space) when it is no farther from that cluster's centroid than the cluster's
  *radius*: the ``assign_quantile`` (default 0.95) of its own members' distances to the centroid, learnt when
  the cluster was made (clusters with fewer than :data:`MIN_SPREAD_MEMBERS` members take the median radius). The
  rest are clustered on their own with Kura's rule (``k = ceil(n / clusters_per_group)``) and the privacy
  thresholds into new base clusters; an "Other requests" among them merges with the existing one. An existing
  "Other requests" pool whose own growth (since it was last looked at) reaches ``rename_fraction`` of its size
  and ``min_conversations`` is clustered again with the leftovers (what was too rare may now have company).
  A cluster keeps its id, name and parent; its name and description are asked again only when
  ``rename_fraction`` (default a quarter) of its membership changed since it was named. Removed conversations leave their clusters; a cluster
  left empty, or below the privacy thresholds, is retired (its members, if any, join the nearest cluster).
* **Meta clusters** (:func:`update_meta_clusters`). A new base cluster attaches to the nearest parent whose radius
  (its children's spread) takes it; the others form new parents with Kura's rule, level by level. Only parents
  whose children changed are renamed; a parent left without children is retired.
* **The map** (:func:`update_projection`). The projection fitted at the build (PCA mean, components and signs) is
  stored; clusters already on the map keep their coordinates and new ones are placed by the fitted projection.

**Drift** forces a full build: when the share of conversations in clusters made since the last build passes
``rebuild_new_share``, or the share of conversations farther from their centroid than their cluster's radius
passes ``rebuild_far_share`` (right after a build it is about ``1 - assign_quantile``). Changed settings or a
changed embedding space (the stored centroids no longer match their unchanged members) force one too. No storage
here and no Dagster: the states are :class:`~kura_dagster.checkpoints.artifacts.FittedState` values.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kura_dagster.checkpoints.artifacts import FittedState
from kura_dagster.checkpoints.columnar import SummaryColumns
from kura_dagster.pipeline.cluster import NAMING_FIELDS, cluster_id, naming_sample
from kura_dagster.pipeline.kmeans import cluster_labels
from kura_dagster.pipeline.models.base import ClusterNamingModel
from kura_dagster.pipeline.settings import PipelineSettings
from kura_dagster.types import Cluster

BASE_KIND = "kura-taxonomy-base-1"
META_KIND = "kura-taxonomy-meta-1"
PROJECTION_KIND = "kura-taxonomy-projection-1"
MIN_SPREAD_MEMBERS = 5
"""A cluster with fewer members than this takes the median radius of the others (a quantile of 2 distances
says little about a cluster's spread)."""
RADIUS_TOLERANCE = 1e-4
"""Float32 rounding: a copy of a member (distance 0 up to rounding) joins a cluster of identical members."""
SPACE_CHECK_ROWS = 2_048
"""How many stored conversations (the latest whose distance was measured against their cluster's current centroid)
have that distance measured again to check that the embedding space is the one the taxonomy was made in. The
latest rows: with partitions read on demand, they are in the last partition or two."""
SPACE_TOLERANCE = 1e-3
"""A distance measured again may differ from the stored one by float rounding, never by more than this."""
ROW_STATS = ("mean_norm", "distance", "measured", "stamp")
"""The base state's arrays that let an update read only this run's rows: each cluster's mean member embedding's
length (with the unit centroid, its members' sum), each row's distance to its centroid and the run it was
measured in, and the run each centroid last moved in."""
NEAREST_CELLS = 1 << 25
"""At most this many (row, centroid) similarities at once when finding nearest centroids (128 MB of float32)."""
CHUNK = 65_536
"""Rows per block when measuring distances (a 1M × 256 matrix is never copied whole)."""


@dataclass(frozen=True)
class TaxonomyOptions:
    rename_fraction: float = 0.25
    """A cluster is named again when this share of its membership (members added plus removed, over its size
    when last named) changed."""
    assign_quantile: float = 0.95
    """A cluster's radius: this quantile of its members' cosine distances to its centroid."""
    rebuild_new_share: float = 0.35
    """Rebuild when more than this share of the conversations sits in clusters made since the last build."""
    rebuild_far_share: float = 0.25
    """Rebuild when more than this share of the conversations is farther from its centroid than the radius."""

    def __post_init__(self) -> None:
        for name in ("rename_fraction", "rebuild_new_share", "rebuild_far_share"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in (0, 1], got {getattr(self, name)}")
        if not 0 < self.assign_quantile <= 1:
            raise ValueError(f"assign_quantile must be in (0, 1], got {self.assign_quantile}")


@dataclass
class TaxonomyReport:
    """What one run did to the taxonomy (for metadata and logs). ``rebuild_reason`` set: a full build is due."""

    rebuild: bool = False
    rebuild_reason: str = ""
    generation: int = 0
    new_conversations: int = 0
    removed_conversations: int = 0
    assigned_to_existing: int = 0
    new_cluster_ids: list[str] = field(default_factory=list)
    renamed_cluster_ids: list[str] = field(default_factory=list)
    retired_cluster_ids: list[str] = field(default_factory=list)
    unassigned_share: float = 0.0
    new_cluster_share: float = 0.0
    far_share: float = 0.0
    growth: dict[str, int] = field(default_factory=dict)
    """Members added this run, by existing cluster id (new clusters are in ``new_cluster_ids``)."""

    def as_metadata(self) -> dict[str, Any]:
        """Plain values under ``taxonomy/…`` (lists and dicts are for JSON metadata)."""
        top = dict(sorted(self.growth.items(), key=lambda kv: (-kv[1], kv[0]))[:20])
        return {
            "taxonomy/rebuild": self.rebuild, "taxonomy/rebuild_reason": self.rebuild_reason,
            "taxonomy/generation": self.generation,
            "taxonomy/new_conversations": self.new_conversations,
            "taxonomy/removed_conversations": self.removed_conversations,
            "taxonomy/assigned_to_existing": self.assigned_to_existing,
            "taxonomy/new_clusters": len(self.new_cluster_ids), "taxonomy/new_cluster_ids": self.new_cluster_ids,
            "taxonomy/renamed_clusters": len(self.renamed_cluster_ids),
            "taxonomy/renamed_cluster_ids": self.renamed_cluster_ids,
            "taxonomy/retired_clusters": len(self.retired_cluster_ids),
            "taxonomy/retired_cluster_ids": self.retired_cluster_ids,
            "taxonomy/drift/unassigned_share": round(self.unassigned_share, 4),
            "taxonomy/drift/new_cluster_share": round(self.new_cluster_share, 4),
            "taxonomy/drift/far_share": round(self.far_share, 4),
            "taxonomy/cluster_growth": top,
        }


# --- geometry ---------------------------------------------------------------------------------------------


def _unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32)
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return v / np.where(n == 0, 1, n)


def _unit_all(vectors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``{id: _unit(v)}`` normalised as one matrix (a ``_unit`` call per vector cost ~30 µs × clusters)."""
    if not vectors:
        return {}
    ids = list(vectors)
    rows = _unit(np.stack([np.asarray(vectors[i], dtype=np.float32) for i in ids]))
    return dict(zip(ids, rows))


def label_sums(x: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Each label's sum of rows (float64; label -1 rows left out)."""
    from scipy.sparse import csr_matrix

    sums = np.zeros((k, x.shape[1] if x.ndim == 2 else 0), dtype=np.float64)
    for a in range(0, len(x), CHUNK):  # per block: a (k × rows) 0/1 matrix times the rows (np.add.at is ~20x slower)
        lab = labels[a:a + CHUNK]
        ok = np.flatnonzero(lab >= 0)
        if len(ok):
            pick = csr_matrix((np.ones(len(ok)), (lab[ok], np.arange(len(ok)))), shape=(k, len(ok)))
            sums += pick @ np.asarray(x[a:a + CHUNK][ok], dtype=np.float64)
    return sums


def means_of(sums: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(unit centroids, lengths of the means)`` from members' sums and counts (zeros when empty)."""
    mean = (sums / np.maximum(np.asarray(counts, dtype=np.float64), 1)[:, None]).astype(np.float32)
    return _unit(mean), np.linalg.norm(mean, axis=1).astype(np.float32)


def centroids_of(x: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Each label's mean row, L2-normalised (the same as ``meta_cluster.cluster_centroids``); zeros when empty."""
    return means_of(label_sums(x, labels, k), np.bincount(labels[labels >= 0], minlength=k))[0]


def distances_to(x: np.ndarray, labels: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Cosine distance of each row to its label's centroid (``nan`` for label -1)."""
    out = np.full(len(x), np.nan, dtype=np.float32)
    for a in range(0, len(x), CHUNK):
        lab = labels[a:a + CHUNK]
        ok = lab >= 0
        rows = _unit(x[a:a + CHUNK][ok])
        out[a:a + CHUNK][ok] = 1.0 - np.einsum("ij,ij->i", rows, centroids[lab[ok]])
    return out


def radii(distances: np.ndarray, labels: np.ndarray, k: int, quantile: float) -> np.ndarray:
    """Each cluster's ``quantile`` of its members' distances (``np.quantile``'s linear method, for all clusters at
    once from one sort: a loop of ``np.quantile`` per cluster cost ~30 µs × clusters); the median of the others
    for small clusters."""
    out = np.full(k, np.nan, dtype=np.float32)
    ok = labels >= 0
    lab, d = labels[ok], np.asarray(distances[ok])
    order = np.lexsort((d, lab))  # by cluster, then by distance
    lab, d = lab[order], d[order]
    bounds = np.searchsorted(lab, np.arange(k + 1))
    sizes = np.diff(bounds)
    big = np.flatnonzero(sizes >= MIN_SPREAD_MEMBERS)
    if len(big):
        h = (sizes[big] - 1) * float(quantile)  # the virtual index of the quantile within each cluster
        lo = np.floor(h).astype(np.int64)
        t = h - lo
        a = d[bounds[big] + lo]
        b = d[bounds[big] + np.minimum(lo + 1, sizes[big] - 1)]
        out[big] = np.where(t >= 0.5, b - (b - a) * (1 - t), a + (b - a) * t)  # (as numpy's _lerp)
    small = np.flatnonzero(sizes < MIN_SPREAD_MEMBERS)
    known = out[np.isfinite(out)]
    fallback = float(np.median(known)) if len(known) else float(np.quantile(distances[labels >= 0], quantile)) \
        if (labels >= 0).any() else 0.0
    out[small] = fallback
    return out


def _nearest(x: np.ndarray, centroids: np.ndarray, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(index, distance)`` of each row's nearest allowed centroid."""
    if not allowed.any():
        return np.full(len(x), -1, dtype=np.int64), np.full(len(x), np.inf, dtype=np.float32)
    best = np.empty(len(x), dtype=np.int64)
    dist = np.empty(len(x), dtype=np.float32)
    # in blocks of rows: a (rows × clusters) float32 matrix of at most NEAREST_CELLS cells (10k new rows against
    # the ~100k clusters of 1M conversations would be 4 GB at once)
    idx = np.flatnonzero(allowed)
    cents = np.ascontiguousarray(centroids[idx], dtype=np.float32)  # only the allowed ones are compared
    step = max(1, NEAREST_CELLS // max(len(cents), 1))
    for a in range(0, len(x), step):
        sims = _unit(x[a:a + step]) @ cents.T
        b = sims.argmax(axis=1)  # (ties: the lowest index, as before)
        best[a:a + step] = idx[b]
        dist[a:a + step] = 1.0 - sims[np.arange(len(b)), b]
    return best, dist


class RowsView(SummaryColumns):
    """Some rows of a :class:`SummaryColumns`, for the stages that take columns (models read from the parent)."""

    def __init__(self, parent: SummaryColumns, rows: np.ndarray, embeddings: np.ndarray | None = None) -> None:
        rows = np.asarray(rows, dtype=np.int64)
        super().__init__([parent.chat_ids[i] for i in rows.tolist()],
                         parent.embedding_rows(rows) if embeddings is None else embeddings,
                         source=parent.source, format=parent.format)
        self._parent, self._rows = parent, rows

    def models_for(self, rows: Sequence[int] | np.ndarray, fields: Sequence[str] | None = None) -> list:
        return self._parent.models_for(self._rows[np.asarray(rows, dtype=np.int64)], fields)


# --- base clusters ----------------------------------------------------------------------------------------


def settings_key(settings: PipelineSettings, thresholds: Any, dim: int) -> dict[str, Any]:
    """What must not change between incremental runs (else a full build)."""
    return {"clusters_per_group": settings.clusters_per_group, "max_clusters": settings.max_clusters,
            "seed": settings.seed, "dim": int(dim), "min_conversations": thresholds.min_conversations,
            "min_users": thresholds.min_users, "user_key": thresholds.user_key}


def base_state(columns: SummaryColumns, clusters: Sequence[Cluster], settings_json: Mapping[str, Any],
               options: TaxonomyOptions, generation: int) -> FittedState:
    """The state of a full build's ``clusters``: membership, centroids, radii, :data:`ROW_STATS`, the "Other
    requests" pools' vectors, and ``member_centroids``: each cluster's mean member embedding exactly as
    ``meta_cluster.cluster_centroids`` computes it (float32 mean in member order), which meta_clusters groups on
    without reading the summaries. (An update writes its state in :func:`update_base_clusters`.)"""
    row = {cid: i for i, cid in enumerate(columns.chat_ids)}
    labels = np.full(len(columns), -1, dtype=np.int64)
    for j, c in enumerate(clusters):
        for cid in c.chat_ids:
            labels[row[cid]] = j
    if (labels < 0).any():
        raise ValueError(f"{int((labels < 0).sum())} summaries are in no base cluster, e.g. "
                         f"{columns.chat_ids[int(np.flatnonzero(labels < 0)[0])]!r}")
    k = len(clusters)
    x = columns.embeddings
    if k:  # every centroid and radius (a small cluster's radius is the median of all the others')
        cents = centroids_of(x, labels, k)
        measured = distances_to(x, labels, cents)
        rad = radii(measured, labels, k, options.assign_quantile).astype(np.float32)
    else:
        cents, rad = np.zeros((0, columns.dim), np.float32), np.zeros(0, np.float32)
        measured = np.zeros(len(columns), np.float32)
    mc, norms = member_means(x, labels, k, [c.id for c in clusters], {}, columns.dim, lengths=True)
    entries = [{"id": c.id, "name": c.name, "description": c.description, "slug": c.slug,
                "named_size": len(c.chat_ids), "born": 0} for c in clusters]
    return FittedState(kind=BASE_KIND, params={"generation": generation, "run": 0, "settings": dict(settings_json),
                                               "clusters": entries, "chat_ids": list(columns.chat_ids)},
                       arrays={"centroids": cents, "radius": rad, "labels": labels.astype(np.int32),
                               "member_centroids": mc, "mean_norm": norms.astype(np.float32),
                               "distance": measured,
                               "measured": np.zeros(len(columns), np.int32), "stamp": np.zeros(k, np.int32),
                               **other_arrays(labels, [_is_other(c) for c in clusters], lambda r: x[r], columns.dim)})


def _is_other(c: Cluster) -> bool:
    from kura_dagster.pipeline.thresholds import OTHER_NAME, OTHER_SLUG

    return c.name == OTHER_NAME and c.slug == OTHER_SLUG


def member_means(x: np.ndarray, labels: np.ndarray, k: int, ids: Sequence[str],
                 keep: Mapping[str, np.ndarray], dim: int, lengths: bool = False) -> Any:
    """``meta_cluster.cluster_centroids`` of every cluster (rows labelled ``j`` in ascending order: the members'
    order in Kura's output), computed only for the clusters not in ``keep``."""
    from kura_dagster.pipeline.meta_cluster import _normalise

    out = np.zeros((k, dim), dtype=np.float32)
    todo = [j for j in range(k) if ids[j] not in keep]
    for j in range(k):
        if ids[j] in keep:
            out[j] = keep[ids[j]]
    norms = np.zeros(k, dtype=np.float32)
    if todo:
        groups = _members_by_label(labels, k)
        for j in todo:
            mean = np.asarray(x[groups(j)], dtype=np.float32).mean(axis=0)
            norms[j] = np.linalg.norm(mean)
            out[j] = _normalise(mean)
    return (out, norms) if lengths else out


def stored_member_centroids(state: FittedState) -> dict[str, np.ndarray]:
    """``{base cluster id: member centroid}`` of a base state (empty for a state written before they were)."""
    mc = state.arrays.get("member_centroids")
    if mc is None:
        return {}
    return {e["id"]: mc[j] for j, e in enumerate(state.params["clusters"])}


def render_base(state: FittedState) -> list[Cluster]:
    """Kura's base clusters from a state (members in the summaries' order)."""
    entries, chat_ids, labels = state.params["clusters"], state.params["chat_ids"], state.arrays["labels"]
    members: list[list[str]] = [[] for _ in entries]
    for cid, lab in zip(chat_ids, labels.tolist()):
        members[lab].append(cid)
    return [Cluster(id=e["id"], name=e["name"], description=e["description"], slug=e["slug"], chat_ids=m,
                    parent_id=None) for e, m in zip(entries, members)]


def _members_by_label(labels: np.ndarray, k: int) -> Callable[[int], np.ndarray]:
    """``rows(j)``: the rows labelled ``j``, ascending (``np.flatnonzero(labels == j)``, one sort for all ``j``)."""
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(k + 1))
    return lambda j: order[bounds[j]:bounds[j + 1]]


def _users_ok(rows: np.ndarray, users: Sequence[str | None] | None, thresholds: Any) -> bool:
    from kura_dagster.pipeline.thresholds import meets

    return meets(rows, users, thresholds)


def _row_reader(columns: SummaryColumns) -> Callable[[np.ndarray], np.ndarray]:
    """``read(rows)``: the embeddings of ``rows`` (of columns read on demand: only the partitions they are in)."""
    read = getattr(columns, "embedding_rows", None)
    if callable(read):
        return lambda rows: np.asarray(read(np.asarray(rows, dtype=np.int64)))
    return lambda rows: columns.embeddings[np.asarray(rows, dtype=np.int64)]


def _row_distances(x: np.ndarray, labels: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Cosine distance of each of the rows ``x`` to ``centroids[labels]`` (all labels valid)."""
    if not len(x):
        return np.zeros(0, dtype=np.float32)
    return (1.0 - np.einsum("ij,ij->i", _unit(x), centroids[labels])).astype(np.float32)


def _with_row_stats(state: FittedState, columns: SummaryColumns, read: Callable[[np.ndarray], np.ndarray]
                    ) -> FittedState:
    """A base state written before :data:`ROW_STATS` existed, with them computed once from the stored centroids
    and every stored row that is still there (a one-off read of every row)."""
    old_ids, labels = state.params["chat_ids"], state.arrays["labels"].astype(np.int64)
    cents = state.arrays["centroids"].astype(np.float32)
    k = len(cents)
    at = {cid: i for i, cid in enumerate(columns.chat_ids)}
    here = np.fromiter((at.get(cid, -1) for cid in old_ids), dtype=np.int64, count=len(old_ids))
    ok = np.flatnonzero(here >= 0)
    x = read(here[ok]) if len(ok) else np.zeros((0, cents.shape[1] if cents.ndim == 2 else 0), np.float32)
    dist = np.zeros(len(old_ids), dtype=np.float32)
    dist[ok] = _row_distances(x, labels[ok], cents)
    counts = np.bincount(labels[ok], minlength=k)
    _, norms = means_of(label_sums(x, labels[ok], k), counts)
    at_old = np.full(len(old_ids), -1, dtype=np.int64)
    at_old[ok] = np.arange(len(ok))
    others = [_is_other(Cluster.model_construct(name=e["name"], slug=e["slug"])) for e in state.params["clusters"]]
    pool = other_arrays(labels, others, lambda r: x[at_old[r]] if (at_old[r] >= 0).all() else
                        np.where((at_old[r] >= 0)[:, None], x[np.maximum(at_old[r], 0)], 0), cents.shape[1])
    arrays = {**state.arrays, "mean_norm": norms, "distance": dist, "measured": np.zeros(len(old_ids), np.int32),
              "stamp": np.zeros(k, np.int32), **pool}
    return FittedState(kind=state.kind, params=state.params, arrays=arrays, version=state.version)


def update_base_clusters(
    columns: SummaryColumns,
    state: FittedState,
    namer: ClusterNamingModel,
    settings: PipelineSettings,
    thresholds: Any,
    settings_json: Mapping[str, Any],
    options: TaxonomyOptions = TaxonomyOptions(),
    *,
    new_clusters: Any = None,
    auditor: Any = None,
    min_rating: int = 3,
    report: TaxonomyReport | None = None,
) -> tuple[list[Cluster], FittedState | None]:
    """The base clusters after this run's new and removed conversations, and the new state; ``(…, None)`` with
    ``report.rebuild_reason`` set when a full build is due instead (decided before any naming request).

    ``new_clusters(columns_view) -> list[Cluster]``: how the conversations that joined no cluster become new
    clusters (the full build's k-means + thresholds + naming, on those rows only).

    Only this run's rows are read (through ``columns.embedding_rows`` when the columns have it, so partitions are
    read on demand): the new conversations, a probe of :data:`SPACE_CHECK_ROWS` stored ones for the space check,
    and the members of clusters that lost conversations or were regrouped (removals, retirements, an "Other
    requests" pool clustered again). A cluster that only gained conversations moves its centroid by its stored
    sum plus theirs. Each conversation's distance to its centroid is the one measured when it was last read
    (drift's far share is over those), and a renamed cluster learns its radius from them."""
    from kura_dagster.pipeline.thresholds import OTHER_NAME, OTHER_SLUG, ThresholdError, user_ids

    report = report if report is not None else TaxonomyReport()
    params = state.params
    report.generation = int(params["generation"])
    if dict(params.get("settings", {})) != dict(settings_json):
        changed = sorted(k for k in set(params.get("settings", {})) | set(settings_json)
                         if params.get("settings", {}).get(k) != settings_json.get(k))
        report.rebuild_reason = f"settings changed since the last build ({', '.join(changed)})"
        return [], None
    entries = [dict(e) for e in params["clusters"]]
    cents = state.arrays["centroids"].astype(np.float32)
    k, n = len(entries), len(columns)
    if n and cents.shape[1:] != (columns.dim,):
        report.rebuild_reason = f"the embedding size changed ({cents.shape[1]} → {columns.dim})"
        return [], None
    read = _row_reader(columns)
    if not set(ROW_STATS) <= set(state.arrays):
        state = _with_row_stats(state, columns, read)
    old_ids, old_labels = params["chat_ids"], state.arrays["labels"].astype(np.int64)
    rad = state.arrays["radius"].astype(np.float32)
    norms = state.arrays["mean_norm"].astype(np.float32)
    stamp = state.arrays["stamp"].astype(np.int64)
    run = int(params.get("run", 0)) + 1  # this run's number, if it changes anything
    before = {cid: i for i, cid in enumerate(old_ids)}
    old_row = np.fromiter((before.get(cid, -1) for cid in columns.chat_ids), dtype=np.int64, count=n)
    known = old_row >= 0
    labels = np.where(known, old_labels[np.maximum(old_row, 0)] if len(old_labels) else -1, -1).astype(np.int64)
    dist = np.where(known, state.arrays["distance"][np.maximum(old_row, 0)] if len(old_labels) else 0,
                    np.nan).astype(np.float32)
    measured = np.where(known, state.arrays["measured"][np.maximum(old_row, 0)] if len(old_labels) else 0,
                        -1).astype(np.int64)
    was = labels.copy()  # each row's cluster before this run (-1: new)
    kept = np.bincount(labels[labels >= 0], minlength=k)
    old_size = np.bincount(old_labels, minlength=k)
    removed = old_size - kept
    report.removed_conversations = int(removed.sum())
    # the space must be the one the centroids were made in: the latest stored rows whose distance was measured
    # against their cluster's current centroid are measured again (a changed space changes every distance)
    valid = np.flatnonzero(known & (measured >= stamp[np.maximum(labels, 0)]))[-SPACE_CHECK_ROWS:]
    if len(valid):
        again = _row_distances(read(valid), labels[valid], cents)
        if float(np.max(np.abs(again - dist[valid]))) > SPACE_TOLERANCE:
            report.rebuild_reason = ("the embedding space changed (stored centroids no longer match their "
                                     "members: refit embedding or another model)")
            return [], None
    is_other = np.array([e["name"] == OTHER_NAME and e["slug"] == "other_requests" for e in entries], dtype=bool)
    new_rows = np.flatnonzero(labels < 0)
    report.new_conversations = len(new_rows)
    x_new = read(new_rows) if len(new_rows) else np.zeros((0, cents.shape[1]), np.float32)
    active = kept > 0
    if len(new_rows):
        best, near = _nearest(x_new, cents, active & ~is_other) if k else (
            np.full(len(new_rows), -1), np.full(len(new_rows), np.inf))
        ok = (best >= 0) & (near <= rad[np.maximum(best, 0)] + RADIUS_TOLERANCE if k else False)
        labels[new_rows[ok]] = best[ok]
        leftover = new_rows[~ok]
    else:
        leftover = new_rows
    report.assigned_to_existing = len(new_rows) - len(leftover)
    report.unassigned_share = len(leftover) / len(new_rows) if len(new_rows) else 0.0
    # drift, before any request: conversations in clusters born since the build, and far from their centroid
    sizes = np.bincount(labels[labels >= 0], minlength=k)
    young = np.array([e["born"] > 0 for e in entries], dtype=bool)
    report.new_cluster_share = (float(sizes[young].sum()) + len(leftover)) / n if n else 0.0
    new_at = np.full(n, -1, dtype=np.int64)  # row -> its index in x_new
    new_at[new_rows] = np.arange(len(new_rows))

    # the "Other requests" pools' members' vectors are stored (a pool is clustered again with the leftovers)
    held = np.full(n, -1, dtype=np.int64)
    if "other_rows" in state.arrays and len(old_ids):
        current = np.full(len(old_ids), -1, dtype=np.int64)
        current[old_row[known]] = np.flatnonzero(known)
        where = current[state.arrays["other_rows"].astype(np.int64)]
        held[where[where >= 0]] = np.flatnonzero(where >= 0)
    held_x = state.arrays.get("other_vectors")

    def x_of(rows: np.ndarray) -> np.ndarray:
        """Rows' embeddings: this run's new ones from ``x_new``, pool members' as stored, the others read."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), cents.shape[1]), dtype=np.float32)
        at, kept_at = new_at[rows], held[rows]
        fresh, stored = at >= 0, (at < 0) & (kept_at >= 0)
        if fresh.any():
            out[fresh] = x_new[at[fresh]]
        if stored.any():
            out[stored] = held_x[kept_at[stored]]
        rest = ~(fresh | stored)
        if rest.any():
            out[rest] = read(rows[rest])
        return out

    def moved_centroids(lost: np.ndarray, lab: np.ndarray, size: np.ndarray, kk: int
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(centroids, lengths, rows read)`` of the first ``kk`` clusters under labels ``lab``: old clusters that
        ``lost`` members, and new clusters, from all their members; the other old clusters that gained members
        (new ones, or old ones that moved in) from their stored sum plus the newcomers'; the rest as stored."""
        c = np.zeros((kk, cents0.shape[1]), dtype=np.float32)
        nm = np.zeros(kk, dtype=np.float32)
        c[:k], nm[:k] = cents0, norms0
        full = np.zeros(kk, dtype=bool)
        full[:k] = lost
        full[k:] = True
        safe = np.maximum(lab, 0)
        placed = lab >= 0
        rows = np.flatnonzero(placed & full[safe])
        gain = np.flatnonzero(placed & ~full[safe] & (was != lab))
        ids = np.unique(np.concatenate([lab[rows], lab[gain]]))  # only these clusters' sums are formed
        if len(ids):
            sums = np.zeros((len(ids), cents0.shape[1]), dtype=np.float64)
            if len(rows):
                sums += label_sums(x_of(rows), np.searchsorted(ids, lab[rows]), len(ids))
            if len(gain):
                grow = np.searchsorted(ids, np.unique(lab[gain]))
                old = ids[grow]
                sums[grow] += cents0[old].astype(np.float64) * (norms0[old].astype(np.float64)
                                                                 * old_size[old])[:, None]
                sums += label_sums(x_of(gain), np.searchsorted(ids, lab[gain]), len(ids))
            c[ids], nm[ids] = means_of(sums, size[ids])
        return c, nm, rows

    # clusters that lost conversations are measured from their members; the others that gained, from their sums
    cents0, norms0 = cents, norms  # (as stored: what moved_centroids starts from)
    cents, norms, _ = moved_centroids(removed > 0, labels, sizes, k)
    changed = (sizes != old_size) | (sizes != kept)
    placed = labels >= 0
    fresh = np.flatnonzero(placed & ~known)  # this run's assigned rows: measured against the moved centroids
    dist[fresh] = _row_distances(x_of(fresh), labels[fresh], cents)
    far = placed & (np.nan_to_num(dist, nan=0.0) > rad[np.maximum(labels, 0)] + RADIUS_TOLERANCE)
    report.far_share = float(far.sum()) / n if n else 0.0
    if report.new_cluster_share > options.rebuild_new_share:
        report.rebuild_reason = (f"drift: {report.new_cluster_share:.0%} of the conversations are in clusters made "
                                 f"since the last build (rebuild_new_share={options.rebuild_new_share:g})")
    elif report.far_share > options.rebuild_far_share:
        report.rebuild_reason = (f"drift: {report.far_share:.0%} of the conversations are farther from their "
                                 f"centroid than their cluster's radius (rebuild_far_share={options.rebuild_far_share:g})")
    if report.rebuild_reason:
        return [], None

    # clusters that emptied or fell below the privacy thresholds are retired; their members join the nearest
    users = user_ids(columns, thresholds.user_key)
    retired = [j for j in range(k) if sizes[j] == 0 and old_size[j] > 0]
    # without a user threshold a cluster meets the thresholds by its size: when every cluster does, nothing is
    # retired here and the per-cluster loop (~100k clusters at 1M conversations) is skipped
    by_size = users is None or not thresholds.user_key
    below = by_size and bool(((sizes > 0) & (sizes < thresholds.min_conversations)).any())
    groups = _members_by_label(labels, k) if (below or not by_size) else None  # regrouped when rows move
    for j in range(k if (below or not by_size) else 0):
        members = groups(j)
        if len(members) and not _users_ok(members, users, thresholds):
            retired.append(j)
            keep = np.ones(k, dtype=bool)
            keep[retired] = False
            if (keep & (sizes > 0)).any():
                best, _ = _nearest(x_of(members), cents, keep & (sizes > 0))
                labels[members] = best
            else:
                labels[members] = -1  # nothing left to join: they are clustered afresh below
                leftover = np.concatenate([leftover, members])
            sizes = np.bincount(labels[labels >= 0], minlength=k)
            groups = _members_by_label(labels, k)
    retired_set = set(retired)
    # Conversations that joined nothing become new clusters (Kura's rule and the thresholds). Each "Other
    # requests" pool is weighed on its own: once it grew (its members plus today's leftovers nearest to it) by
    # rename_fraction of its size when last looked at, and by at least min_conversations (one cluster's worth),
    # its members are clustered with the leftovers: what was too rare to show may now have enough company to be
    # named. (Summed over all pools, a big pool hid the small ones' growth: on the mixed corpus no pool was ever
    # looked at again and the taxonomy kept a day-0 build's "Other" share, 25% vs 3% in a rebuild.)
    made: list[Cluster] = []
    others = np.array([j for j in range(k) if is_other[j] and j not in retired_set and sizes[j] > 0], dtype=np.int64)
    if len(leftover):
        # each pool on its own: its members now, plus the leftovers nearest to it, against its size when looked at
        near_pool = np.bincount(_nearest(x_of(leftover), cents[others], np.ones(len(others), dtype=bool))[0],
                                minlength=len(others)) if len(others) else np.zeros(0, np.int64)
        regrown = np.array([j for j, m in zip(others.tolist(), near_pool.tolist())
                            if sizes[j] + m - entries[j]["named_size"]
                            >= max(options.rename_fraction * entries[j]["named_size"], thresholds.min_conversations)],
                           dtype=np.int64)
        grown = len(regrown) > 0
        in_other = np.flatnonzero(np.isin(labels, regrown)) if grown else np.zeros(0, np.int64)
        pool = np.sort(np.concatenate([leftover, in_other]))
        labels[pool] = -1
        try:
            made = list(new_clusters(RowsView(columns, pool, x_of(pool))))
        except ThresholdError:
            made = []
        row = {columns.chat_ids[i]: i for i in pool.tolist()}
        ids_taken = {e["id"] for e in entries}
        for c in made:
            rows = np.array([row[cid] for cid in c.chat_ids], dtype=np.int64)
            if c.name == OTHER_NAME and len(others):
                continue  # the pools people know hold them (below)
            members = [columns.chat_ids[i] for i in rows.tolist()]
            cid = c.id if c.id not in ids_taken else cluster_id(settings.seed, f"base-{run}", members)  # (a pool's
            ids_taken.add(cid)  # members can regroup exactly as a cluster that exists: ids stay unique)
            entries.append({"id": cid, "name": c.name, "description": c.description, "slug": c.slug,
                            "named_size": len(rows), "born": run})
            labels[rows] = len(entries) - 1
            report.new_cluster_ids.append(cid)
        rest = pool[labels[pool] < 0]
        if len(rest) and len(others):  # still too rare to show: the nearest "Other requests" (same ids)
            best, _ = _nearest(x_of(rest), cents[others], np.ones(len(others), dtype=bool))
            labels[rest] = others[best]
            for j in regrown.tolist():
                entries[j]["named_size"] = int((labels == j).sum())
        elif len(rest):  # no "Other" to hold them: the nearest shown cluster takes them
            alive_now = np.bincount(labels[labels >= 0], minlength=len(entries)) > 0
            allowed = np.zeros(len(entries), dtype=bool)
            allowed[:k] = alive_now[:k] & ~is_other
            allowed[:k][retired] = False
            if not allowed.any():
                raise ThresholdError(f"{len(rest)} conversations cannot make one cluster of {thresholds.describe()}")
            best, _ = _nearest(x_of(rest), np.concatenate([cents, np.zeros((len(entries) - k, cents.shape[1]),
                                                                            np.float32)]), allowed)
            labels[rest] = best
    # an "Other requests" left below the thresholds is not shown: its members join their nearest shown cluster
    small_pools = [j for j in range(len(entries)) if entries[j]["name"] == OTHER_NAME
                   and entries[j]["slug"] == OTHER_SLUG and (labels == j).any()
                   and not _users_ok(np.flatnonzero(labels == j), users, thresholds)]
    if small_pools:
        lost_now = removed > 0
        lost_now[was[(was >= 0) & (was != labels)]] = True
        now, _, _ = moved_centroids(lost_now, labels, np.bincount(labels[labels >= 0], minlength=len(entries)),
                                    len(entries))
        shown = np.bincount(labels, minlength=len(entries)) > 0
        shown[[j for j in range(len(entries)) if entries[j]["slug"] == OTHER_SLUG]] = False
        if not shown.any():
            raise ThresholdError(f"{n} conversations cannot make one cluster of {thresholds.describe()}")
        for j in small_pools:
            members = np.flatnonzero(labels == j)
            labels[members] = _nearest(x_of(members), now, shown)[0]
    # renames: only where the membership changed materially since the cluster was named
    sizes = np.bincount(labels, minlength=len(entries))
    added = np.zeros(len(entries), dtype=np.int64)
    news = np.flatnonzero(was < 0)  # the rows that were in no cluster before this run
    np.add.at(added, labels[news], 1)
    rename = [j for j in range(k) if j not in retired_set and sizes[j] > 0 and not is_other[j]
              and (added[j] + removed[j]) / max(entries[j]["named_size"], 1) >= options.rename_fraction]
    report.growth = {entries[j]["id"]: int(added[j]) for j in range(k) if added[j]}
    if rename:
        groups = _members_by_label(labels, len(entries))
        picked = [naming_sample(columns.chat_ids, groups(j), settings.seed) for j in rename]
        models = columns.models_for(np.concatenate(picked), fields=NAMING_FIELDS)
        bounds = np.cumsum([len(p) for p in picked]).tolist()
        names = list(namer.name_clusters([models[a:b] for a, b in zip([0, *bounds[:-1]], bounds)]))
        ratings = auditor(names) if auditor is not None else [5] * len(names)
        for j, gen, rating in zip(rename, names, ratings):
            if rating < min_rating:
                continue  # the auditor withholds the new name: the cluster keeps the one it had
            entries[j].update(name=gen.name, description=gen.summary, slug=gen.slug, named_size=int(sizes[j]))
            report.renamed_cluster_ids.append(entries[j]["id"])
    alive = [j for j in range(len(entries)) if sizes[j] > 0]
    report.retired_cluster_ids = [entries[j]["id"] for j in range(k) if sizes[j] == 0]
    return _updated(columns, state, entries, labels, was, known, old_size, removed, rename, alive, run, dist,
                    measured, settings_json, options, moved_centroids, x_of)


def _updated(columns: SummaryColumns, state: FittedState, entries: list[dict], labels: np.ndarray, was: np.ndarray,
             known: np.ndarray, old_size: np.ndarray, removed: np.ndarray, rename: list[int], alive: list[int], run: int,
             dist: np.ndarray, measured: np.ndarray, settings_json: Mapping[str, Any], options: TaxonomyOptions,
             moved_centroids: Callable, x_of: Callable) -> tuple[list[Cluster], FittedState]:
    """The clusters and the base state after an update (see :func:`update_base_clusters`)."""
    from kura_dagster.pipeline.thresholds import OTHER_NAME, OTHER_SLUG

    k, total = len(old_size), len(entries)
    params = state.params
    sizes = np.bincount(labels[labels >= 0], minlength=total)
    moved = (was >= 0) & (was != labels)  # old rows that left or joined a cluster (a regrouped pool's included)
    touched = removed > 0  # clusters that lost members: measured from all of them
    touched[was[moved]] = True
    cents, norms, reread = moved_centroids(touched, labels, sizes, total)
    remap = np.full(total, -1, dtype=np.int64)
    remap[alive] = np.arange(len(alive))
    final = remap[labels]
    out_entries = [entries[j] for j in alive]
    members: list[list[str]] = [[] for _ in out_entries]
    for cid, lab in zip(columns.chat_ids, final.tolist()):
        members[lab].append(cid)
    # (validated names and chat ids: no second validation of a million ids)
    clusters = [Cluster.model_construct(id=e["id"], name=e["name"], description=e["description"], slug=e["slug"],
                                        chat_ids=m, parent_id=None) for e, m in zip(out_entries, members)]
    gained = np.zeros(total, dtype=bool)
    gained[labels[(was < 0) & (labels >= 0)]] = True
    moved_c = np.zeros(total, dtype=bool)
    moved_c[:k] = touched | gained[:k]
    moved_c[labels[moved & (labels >= 0)]] = True  # (old rows that joined another cluster moved it too)
    moved_c[k:] = True
    # distances measured now: this run's rows and every member read again, against the final centroids
    now_rows = np.union1d(np.flatnonzero(((was < 0) | moved) & (labels >= 0)), reread)
    dist = dist.copy()
    measured = measured.copy()
    if len(now_rows):
        dist[now_rows] = _row_distances(x_of(now_rows), labels[now_rows], cents)
        measured[now_rows] = run
    # radii: kept, except renamed clusters and new ones (learnt from their members' distances as measured)
    rad_old = state.arrays["radius"].astype(np.float32)
    relearn = np.zeros(total, dtype=bool)
    relearn[rename] = True
    relearn[k:] = True
    sub = np.where(relearn[np.maximum(labels, 0)] & (labels >= 0), labels, -1)
    learnt = radii(np.nan_to_num(dist, nan=0.0), sub, total, options.assign_quantile) if relearn.any() \
        else np.zeros(total, np.float32)
    rad = np.where(relearn, learnt, np.concatenate([rad_old, np.zeros(total - k, np.float32)]))
    stamp = np.concatenate([state.arrays["stamp"].astype(np.int64), np.full(total - k, run)])
    stamp[moved_c] = run
    stored_c = state.arrays["centroids"]
    stored_mc = state.arrays.get("member_centroids")
    mc = cents.copy()
    for j in range(k):  # an unchanged cluster keeps its stored vectors to the bit (an unchanged rerun is a no-op)
        if not moved_c[j]:
            cents[j] = stored_c[j]
            if stored_mc is not None:
                mc[j] = stored_mc[j]
    order = np.asarray(alive, dtype=np.int64)
    changed_anything = bool(len(np.flatnonzero(was < 0)) or (removed > 0).any() or moved.any()
                            or len(alive) != k or total != k)
    new_state = FittedState(
        kind=BASE_KIND,
        params={"generation": int(params["generation"]), "run": int(params.get("run", 0)) + (1 if changed_anything else 0),
                "settings": dict(settings_json), "clusters": [
                    {"id": e["id"], "name": e["name"], "description": e["description"], "slug": e["slug"],
                     "named_size": int(e["named_size"]), "born": int(e["born"])} for e in out_entries],
                "chat_ids": list(columns.chat_ids)},
        arrays={"centroids": cents[order].astype(np.float32), "radius": rad[order].astype(np.float32),
                "labels": final.astype(np.int32), "member_centroids": mc[order].astype(np.float32),
                "mean_norm": norms[order].astype(np.float32), "distance": np.nan_to_num(dist, nan=0.0).astype(np.float32),
                "measured": np.maximum(measured, 0).astype(np.int32), "stamp": stamp[order].astype(np.int32),
                **other_arrays(final, [e["name"] == OTHER_NAME and e["slug"] == OTHER_SLUG for e in out_entries], x_of,
                               cents.shape[1])})
    return clusters, new_state


def other_arrays(labels: np.ndarray, is_other: Sequence[bool], vectors: Callable[[np.ndarray], np.ndarray],
                 dim: int) -> dict[str, np.ndarray]:
    """``other_rows`` (the rows in an "Other requests" pool) and ``other_vectors`` (their embeddings, from
    ``vectors(rows)``): stored so that a pool clustered again with new leftovers reads no partition."""
    pools = np.flatnonzero(np.asarray(is_other, dtype=bool))
    rows = np.flatnonzero(np.isin(labels, pools)) if len(pools) else np.zeros(0, np.int64)
    vec = np.asarray(vectors(rows), dtype=np.float32) if len(rows) else np.zeros((0, dim), np.float32)
    return {"other_rows": rows.astype(np.int32), "other_vectors": vec.reshape(len(rows), dim)}


# --- meta clusters ----------------------------------------------------------------------------------------


def meta_state(clusters: Sequence[Cluster], base_ids: set[str], vectors: Mapping[str, np.ndarray],
               base_generation: Any, generation: int, options: TaxonomyOptions,
               radius: Mapping[str, float] | None = None, children_order: Mapping[str, list[str]] | None = None
               ) -> FittedState:
    """The state of a hierarchy (``clusters``: Kura's meta-cluster output, bases and parents; ``vectors``: every
    cluster's vector, bases' centroids included)."""
    children: dict[str, list[str]] = {}
    for c in clusters:
        if c.parent_id is not None:
            children.setdefault(c.parent_id, []).append(c.id)
    if children_order:
        for pid, order in children_order.items():
            if pid in children:
                rank = {cid: i for i, cid in enumerate(order)}
                children[pid].sort(key=lambda cid: (rank.get(cid, len(rank)), 0))
    by_id = {c.id: c for c in clusters}
    height: dict[str, int] = {}

    def h(cid: str) -> int:
        if cid not in height:
            height[cid] = 0 if cid in base_ids else 1 + max(h(ch) for ch in children[cid])
        return height[cid]

    metas = [c for c in clusters if c.id not in base_ids]
    nodes, cents, rad = [], [], []
    for m in metas:
        vec = _unit(vectors[m.id])
        kids = children.get(m.id, [])
        if radius is not None and m.id in radius:
            r = radius[m.id]  # (kept: not learnt again)
        else:
            d = [float(1.0 - _unit(vectors[ch]) @ vec) for ch in kids]
            r = float(np.quantile(d, options.assign_quantile)) if d else 0.0
        nodes.append({"id": m.id, "name": m.name, "description": m.description, "slug": m.slug,
                      "parent_id": m.parent_id, "height": h(m.id), "children": kids})
        cents.append(vec)
        rad.append(r)
    dim = len(next(iter(vectors.values()))) if vectors else 0
    base_parent = {c.id: c.parent_id for c in clusters if c.id in base_ids}
    roots = [c.id for c in clusters if c.parent_id is None]
    return FittedState(kind=META_KIND, params={"base_generation": base_generation, "generation": generation,
                                               "nodes": nodes, "base_parent": base_parent, "roots": roots},
                       arrays={"centroids": np.stack(cents).astype(np.float32) if cents
                               else np.zeros((0, dim), np.float32),
                               "radius": np.array(rad, dtype=np.float32)})


def render_meta(state: FittedState, base: Sequence[Cluster]) -> list[Cluster]:
    """Kura's meta-cluster output from a state and the base clusters: preorder (roots first, each followed by
    its subtree), children in their stored order, a parent's members the union of its children's."""
    nodes = {n["id"]: n for n in state.params["nodes"]}
    by_base = {c.id: c for c in base}
    members: dict[str, list[str]] = {}

    def chats(cid: str) -> list[str]:
        if cid not in members:
            members[cid] = list(by_base[cid].chat_ids) if cid in by_base else \
                [x for ch in nodes[cid]["children"] for x in chats(ch)]
        return members[cid]

    parent = {**state.params["base_parent"], **{n["id"]: n["parent_id"] for n in nodes.values()}}
    out: list[Cluster] = []
    stack = list(reversed(state.params["roots"]))
    while stack:
        cid = stack.pop()
        # (built from validated clusters and stored names: no second validation of every chat id)
        if cid in by_base:
            c = by_base[cid]
            out.append(Cluster.model_construct(id=c.id, name=c.name, description=c.description, slug=c.slug,
                                               chat_ids=c.chat_ids, parent_id=parent.get(cid)))
            continue
        n = nodes[cid]
        out.append(Cluster.model_construct(id=cid, name=n["name"], description=n["description"], slug=n["slug"],
                                           chat_ids=chats(cid), parent_id=n["parent_id"]))
        stack.extend(reversed(n["children"]))
    if len(out) != len(base) + len(nodes):
        raise ValueError(f"the stored hierarchy covers {len(out)} clusters of {len(base) + len(nodes)}")
    return out


def update_meta_clusters(
    base: Sequence[Cluster],
    centroids: Mapping[str, np.ndarray],
    state: FittedState,
    namer: ClusterNamingModel,
    settings: PipelineSettings,
    options: TaxonomyOptions = TaxonomyOptions(),
    report: TaxonomyReport | None = None,
) -> tuple[list[Cluster], FittedState]:
    """The hierarchy after this run's base clusters (``centroids``: each base cluster's, by id) and its state."""
    report = report if report is not None else TaxonomyReport()
    report.generation = int(state.params["generation"])
    nodes = {n["id"]: {**n, "children": list(n["children"])} for n in state.params["nodes"]}
    cents = {n["id"]: state.arrays["centroids"][i] for i, n in enumerate(state.params["nodes"])}
    rad = {n["id"]: float(state.arrays["radius"][i]) for i, n in enumerate(state.params["nodes"])}
    base_parent = dict(state.params["base_parent"])
    roots = list(state.params["roots"])
    base_by_id = {c.id: c for c in base}
    top = max([n["height"] for n in nodes.values()], default=0)
    vectors: dict[str, np.ndarray] = _unit_all(centroids)
    vectors.update(cents)
    dirty: set[str] = set()
    # base clusters that left: out of their parents (and of the roots)
    gone = [cid for cid in base_parent if cid not in base_by_id]
    for cid in gone:
        pid = base_parent.pop(cid)
        if pid in nodes:
            nodes[pid]["children"].remove(cid)
            dirty.add(pid)
        if cid in roots:
            roots.remove(cid)
    # parents whose children left them all are retired, up the tree
    while True:
        empty = [nid for nid, n in nodes.items() if not n["children"]]
        if not empty:
            break
        for nid in empty:
            pid = nodes.pop(nid)["parent_id"]
            report.retired_cluster_ids.append(nid)
            dirty.discard(nid)
            if nid in roots:
                roots.remove(nid)
            if pid in nodes:
                nodes[pid]["children"].remove(nid)
                dirty.add(pid)
    new_ids = [c.id for c in base if c.id not in base_parent and c.id not in roots]
    report.new_cluster_ids = []  # new parents (the new base clusters are the clusters stage's)
    if top == 0 and len(roots) + len(new_ids) > settings.max_clusters:
        report.rebuild_reason = (f"{len(roots) + len(new_ids)} base clusters and no parents yet: more than "
                                 f"max_clusters={settings.max_clusters} roots need a hierarchy")
        return [], state
    pending, height = new_ids, 0
    while pending:
        parents = [nid for nid, n in nodes.items() if n["height"] == height + 1]
        if height >= top:
            roots.extend(pending)  # at the top: new roots
            break
        unattached = []
        # new parents one level below the top are new roots: only while the roots stay within max_clusters
        # (Kura's budget); past it, a newcomer joins the nearest parent however far
        room = settings.max_clusters - len(roots) if height + 1 == top else len(pending)
        if parents:
            pc = np.stack([cents[p] for p in parents])
            for cid in pending:
                sims = pc @ vectors[cid]
                j = int(np.argmax(sims))
                if 1.0 - float(sims[j]) <= rad[parents[j]] or room <= 0:
                    nodes[parents[j]]["children"].append(cid)
                    _set_parent(cid, parents[j], nodes, base_parent)
                    dirty.add(parents[j])
                else:
                    unattached.append(cid)
        else:
            unattached = list(pending)
        made = []
        if unattached:  # Kura's rule on the newcomers: new parents one level up
            x = np.stack([vectors[c] for c in unattached])
            k = max(1, min(math.ceil(len(unattached) / settings.clusters_per_group), room))
            labels = cluster_labels(x, k, seed=settings.seed + height + 1)
            for g in range(int(labels.max()) + 1):
                kids = [c for c, lab in zip(unattached, labels.tolist()) if lab == g]
                chat_ids = [x_ for c in kids for x_ in _members(c, nodes, base_by_id)]
                pid = cluster_id(settings.seed, f"meta-{height + 1}", chat_ids)
                nodes[pid] = {"id": pid, "name": "", "description": "", "slug": "", "parent_id": None,
                              "height": height + 1, "children": kids}
                for c in kids:
                    _set_parent(c, pid, nodes, base_parent)
                w = np.array([[len(_members(c, nodes, base_by_id))] for c in kids], dtype=np.float32)
                vectors[pid] = _unit((np.stack([vectors[c] for c in kids]) * w).sum(axis=0))  # placed one level up
                dirty.add(pid)
                made.append(pid)
                report.new_cluster_ids.append(pid)
        pending, height = made, height + 1
    # vectors (size-weighted children), bottom-up, and names of the parents whose children changed
    sizes: dict[str, int] = {}
    for h in range(1, top + 2):
        level = [nid for nid, n in nodes.items() if n["height"] == h]
        for nid in level:
            kids = nodes[nid]["children"]
            w = np.array([_size(c, nodes, base_by_id, sizes) for c in kids], dtype=np.float32)[:, None]
            if nid in dirty or nid not in cents:
                vectors[nid] = _unit((np.stack([vectors[c] for c in kids]) * w).sum(axis=0))
        renamed = [nid for nid in level if nid in dirty]
        if renamed:
            named = namer.name_meta_clusters([[_as_cluster(c, nodes, base_by_id) for c in nodes[nid]["children"]]
                                              for nid in renamed])
            for nid, gen in zip(renamed, named):
                nodes[nid].update(name=gen.name, description=gen.summary, slug=gen.slug)
                if nid not in report.new_cluster_ids:
                    report.renamed_cluster_ids.append(nid)
                    rad.pop(nid, None)  # its children changed: its radius is learnt again
    for nid in report.new_cluster_ids:
        rad.pop(nid, None)
    report.new_cluster_ids = [c for c in report.new_cluster_ids if c in nodes or c in base_by_id]
    base_ids = set(base_by_id)
    interim = FittedState(kind=META_KIND, params={"nodes": [{**n} for n in nodes.values()],
                                                  "base_parent": base_parent, "roots": roots},
                          arrays={})
    clusters = render_meta(interim, base)
    new_state = meta_state(clusters, base_ids, vectors, state.params["base_generation"],
                           int(state.params["generation"]), options, radius=rad,
                           children_order={nid: n["children"] for nid, n in nodes.items()})
    new_state = FittedState(kind=new_state.kind, params={**new_state.params, "roots": roots}, arrays=new_state.arrays)
    return clusters, new_state


def _set_parent(cid: str, pid: str, nodes: dict, base_parent: dict) -> None:
    if cid in nodes:
        nodes[cid]["parent_id"] = pid
    else:
        base_parent[cid] = pid


def _members(cid: str, nodes: dict, base_by_id: Mapping[str, Cluster]) -> list[str]:
    if cid in base_by_id:
        return list(base_by_id[cid].chat_ids)
    return [x for ch in nodes[cid]["children"] for x in _members(ch, nodes, base_by_id)]


def _size(cid: str, nodes: dict, base_by_id: Mapping[str, Cluster], memo: dict[str, int]) -> int:
    if cid not in memo:
        memo[cid] = len(base_by_id[cid].chat_ids) if cid in base_by_id else \
            sum(_size(ch, nodes, base_by_id, memo) for ch in nodes[cid]["children"])
    return memo[cid]


def _as_cluster(cid: str, nodes: dict, base_by_id: Mapping[str, Cluster]) -> Cluster:
    if cid in base_by_id:
        return base_by_id[cid]
    n = nodes[cid]
    return Cluster(id=cid, name=n["name"], description=n["description"], slug=n["slug"],
                   chat_ids=_members(cid, nodes, base_by_id), parent_id=n["parent_id"])


# --- the map ----------------------------------------------------------------------------------------------


def projection_state(ids: Sequence[str], xy: np.ndarray, mean: np.ndarray, components: np.ndarray,
                     sign: np.ndarray, meta_generation: Any) -> FittedState:
    return FittedState(kind=PROJECTION_KIND, params={"meta_generation": meta_generation, "ids": list(ids)},
                       arrays={"xy": np.asarray(xy, np.float64), "mean": np.asarray(mean, np.float64),
                               "components": np.asarray(components, np.float64), "sign": np.asarray(sign, np.float64)})


def place(state: FittedState, ids: Sequence[str], vectors_for: Any) -> tuple[np.ndarray, list[str]]:
    """Coordinates of ``ids``: stored ones as they are, the others through the fitted projection
    (``vectors_for(ids)`` embeds the clusters that are new on the map). Returns ``(xy, new ids)``."""
    at = {cid: i for i, cid in enumerate(state.params["ids"])}
    fresh = [cid for cid in ids if cid not in at]
    xy = np.zeros((len(ids), 2), dtype=np.float64)
    placed = {}
    if fresh:
        x = np.asarray(vectors_for(fresh), dtype=np.float64)
        coords = (x - state.arrays["mean"]) @ state.arrays["components"].T * state.arrays["sign"]
        placed = dict(zip(fresh, coords))
    for i, cid in enumerate(ids):
        xy[i] = state.arrays["xy"][at[cid]] if cid in at else placed[cid]
    return xy, fresh


def tree_vectors(clusters: Sequence[Cluster], base_centroids: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every cluster's vector: a base cluster's centroid, a parent's the size-weighted mean of its children's
    (what ``meta_cluster.reduce_clusters`` grouped on)."""
    children: dict[str, list[Cluster]] = {}
    for c in clusters:
        if c.parent_id is not None:
            children.setdefault(c.parent_id, []).append(c)
    out: dict[str, np.ndarray] = _unit_all(base_centroids)

    def vec(c: Cluster) -> np.ndarray:
        if c.id not in out:
            kids = children[c.id]
            w = np.array([[len(k.chat_ids)] for k in kids], dtype=np.float32)
            out[c.id] = _unit((np.stack([vec(k) for k in kids]) * w).sum(axis=0))
        return out[c.id]

    for c in clusters:
        vec(c)
    return out
