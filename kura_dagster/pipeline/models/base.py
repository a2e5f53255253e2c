"""What a model backend provides to the stages. Local (offline) and OpenAI-compatible backends implement these."""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from kura_dagster.types import Cluster, Conversation, ConversationSummary, GeneratedCluster, GeneratedSummary

Progress = Callable[[int, int], None]
"""``progress(done, total)``: called as work completes. ``done`` includes work that cost nothing in this run
(cache hits, duplicates); the stages report those before any work starts."""


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


@dataclass(frozen=True)
class NamingRequest:
    """One naming request exactly as it is sent: ``messages`` is the whole prompt."""

    subject: str
    """What it is for, for error messages (not part of the request)."""
    messages: tuple[tuple[str, str], ...]
    """``(role, content)`` pairs."""

    @functools.cached_property
    def key(self) -> str:
        """SHA-256 of the messages: with the model's identity, everything that shapes the answer."""
        return hashlib.sha256(json.dumps(self.messages, ensure_ascii=False).encode("utf-8")).hexdigest()

    def as_openai(self) -> list[dict[str, str]]:
        return [{"role": role, "content": content} for role, content in self.messages]


@runtime_checkable
class RequestNamingModel(ClusterNamingModel, Protocol):
    """A naming model that shows its requests before sending them, so that they can be cached and deduplicated
    (``CachedNamingModel``): ``name_clusters(g) == answer_requests(cluster_requests(g))``."""

    def cluster_requests(self, groups: Sequence[Sequence[ConversationSummary]]) -> list[NamingRequest]: ...

    def meta_cluster_requests(self, groups: Sequence[Sequence[Cluster]]) -> list[NamingRequest]: ...

    def answer_requests(
        self, requests: Sequence[NamingRequest],
        on_result: Callable[[int, GeneratedCluster], None] | None = None,
    ) -> list[GeneratedCluster]:
        """One answer per request, in order; ``on_result(i, answer)`` as each arrives."""
        ...
