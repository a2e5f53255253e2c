"""What a model backend provides to the stages. Local (offline) and OpenAI-compatible backends implement these."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from kura_dagster.types import Cluster, Conversation, ConversationSummary, GeneratedCluster, GeneratedSummary

Progress = Callable[[int, int], None]
"""``progress(done, total)``: called as work completes."""


@runtime_checkable
class SummaryModel(Protocol):
    identity: str
    """Names the model and every setting that shapes its output (used as a cache key)."""

    def summarise(self, conversations: Sequence[Conversation], progress: Progress | None = None) -> list[GeneratedSummary]: ...


@runtime_checkable
class EmbeddingModel(Protocol):
    identity: str

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """A float32 matrix with one L2-normalised row per text."""
        ...


@runtime_checkable
class ClusterNamingModel(Protocol):
    identity: str

    def name_clusters(self, groups: Sequence[Sequence[ConversationSummary]]) -> list[GeneratedCluster]:
        """One name, two-sentence description and slug per group of summaries."""
        ...

    def name_meta_clusters(self, groups: Sequence[Sequence[Cluster]]) -> list[GeneratedCluster]:
        """One name, description and slug per group of child clusters."""
        ...
