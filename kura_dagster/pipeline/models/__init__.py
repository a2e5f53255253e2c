"""Model backends: ``local`` (offline, deterministic, no key) and ``openai`` (any OpenAI-compatible server)."""

from kura_dagster.pipeline.models.base import ClusterNamingModel, EmbeddingModel, Progress, SummaryModel
from kura_dagster.pipeline.models.local import LocalClusterNamingModel, LocalEmbeddingModel, LocalSummaryModel

__all__ = [
    "ClusterNamingModel",
    "EmbeddingModel",
    "LocalClusterNamingModel",
    "LocalEmbeddingModel",
    "LocalSummaryModel",
    "Progress",
    "SummaryModel",
]
