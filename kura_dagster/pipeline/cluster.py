"""Stage 2: base clusters — k-means over summary embeddings, named by a cluster-naming model."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import numpy as np

from kura_dagster.checkpoints.columnar import SummaryColumns, embedding_matrix  # noqa: F401 (also importable from here)
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


NAMING_SAMPLE = 10
"""The most members of one base cluster that its naming model reads (Kura's ``clusters_per_group`` default, so a
typical cluster is read whole). Larger clusters are named from a seeded sample of their members, chosen by
chat id alone (:func:`naming_sample`), so a cluster's sample does not depend on the other clusters. At 1M
conversations this is what keeps ``clusters`` from building a million summary models."""
NAMING_FIELDS = ("summary", "request", "topic", "languages", "task", "concerning_score", "user_frustration",
                 "assistant_errors")
"""The summary fields a naming model is given (every generated field; not ``metadata``, not the embedding)."""


def naming_sample(chat_ids: Sequence[str], members: np.ndarray, seed: int, size: int = NAMING_SAMPLE) -> np.ndarray:
    """The ``size`` members (row numbers, in their original order) of lowest seeded hash of their chat id, or
    every member of a smaller cluster."""
    if len(members) <= size:
        return members
    scores = [hashlib.blake2b(f"{seed}\x00{chat_ids[i]}".encode(), digest_size=8).digest() for i in members.tolist()]
    return np.sort(members[np.argsort(np.array(scores, dtype="S8"), kind="stable")[:size]])


def _groups(x: np.ndarray, settings: PipelineSettings) -> list[np.ndarray]:
    """Row numbers of each base cluster, clusters in order of first appearance (Kura's k rule)."""
    k = math.ceil(len(x) / settings.clusters_per_group)
    labels = cluster_labels(x, k, seed=settings.seed)
    order = np.argsort(labels, kind="stable")
    return np.split(order, np.flatnonzero(np.diff(labels[order])) + 1)


def _named(groups: list[np.ndarray], chat_ids: Sequence[str], samples: list[list[ConversationSummary]],
           namer: ClusterNamingModel, seed: int) -> list[Cluster]:
    names = namer.name_clusters(samples)
    out = []
    for idx, gen in zip(groups, names):
        members = [chat_ids[i] for i in idx.tolist()]
        out.append(Cluster(id=cluster_id(seed, "base", members), name=gen.name, description=gen.summary,
                           slug=gen.slug, chat_ids=members, parent_id=None))
    return out


def generate_base_clusters(
    summaries: Sequence[ConversationSummary],
    namer: ClusterNamingModel,
    settings: PipelineSettings = PipelineSettings(),
    embeddings: np.ndarray | None = None,
) -> list[Cluster]:
    """Kura's rule: ``k = ceil(n / clusters_per_group)`` clusters, each named from (a sample of at most
    :data:`NAMING_SAMPLE` of) its members.

    ``embeddings`` may be passed directly; otherwise it is read off the summaries. The same as
    :func:`base_clusters_from_columns` on the same summaries.
    """
    if not summaries:
        return []
    x = embedding_matrix(summaries) if embeddings is None else np.asarray(embeddings, dtype=np.float32)
    if len(x) != len(summaries):
        raise ValueError(f"{len(x)} embeddings for {len(summaries)} summaries")
    chat_ids = [s.chat_id for s in summaries]
    groups = _groups(x, settings)
    samples = [[summaries[i] for i in naming_sample(chat_ids, g, settings.seed).tolist()] for g in groups]
    return _named(groups, chat_ids, samples, namer, settings.seed)


def base_clusters_from_columns(
    columns: SummaryColumns, namer: ClusterNamingModel, settings: PipelineSettings = PipelineSettings()
) -> list[Cluster]:
    """:func:`generate_base_clusters` over :class:`SummaryColumns`: k-means on the embedding matrix, and summary
    models built only for the rows each cluster's naming sample reads (:data:`NAMING_FIELDS` of them), never for
    every summary. Holds the matrix, the chat ids, the labels and the sampled models."""
    if not len(columns):
        return []
    if len(columns.embeddings) != len(columns):
        raise ValueError(f"{len(columns.embeddings)} embeddings for {len(columns)} summaries")
    groups = _groups(columns.embeddings, settings)
    picked = [naming_sample(columns.chat_ids, g, settings.seed) for g in groups]
    models = columns.models_for(np.concatenate(picked), fields=NAMING_FIELDS)
    bounds = np.cumsum([len(p) for p in picked])[:-1]
    samples = [models[a:b] for a, b in zip([0, *bounds.tolist()], [*bounds.tolist(), len(models)])]
    del models
    return _named(groups, columns.chat_ids, samples, namer, settings.seed)
