"""Caching and single flight around any model backend: no answer is paid for twice, in one run or across runs.

* :class:`CachedEmbeddingModel` and :class:`CachedNamingModel` wrap a backend and an :class:`AnswerCache`
  (implemented in ``kura_dagster.checkpoints.summary_cache``; this module holds no storage code). The stage
  functions take them as ordinary models, so caching needs no change there.
* **Keys: what shapes the answer.** Embeddings: the text, under the embedding model's identity. Cluster
  names: the exact request (:attr:`NamingRequest.key`: members, contrastive examples, prompt version), under
  the naming model's identity (model, temperature). Summaries (``pipeline.summarise``): the conversation's
  content, under the summary model's identity.
* **Single flight.** Within one call, identical requests (same key) are sent once and every item sharing
  the key gets the answer; :class:`RequestCounts` counts ``deduplicated`` apart from ``cache_hits``.
* Each answer is handed to the cache as it arrives (its journal makes it durable within ~200 ms) and
  ``commit`` compacts the journal when the call ends, successful or not.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np

from kura_dagster.pipeline.models.base import (
    EmbeddingModel,
    NamingRequest,
    Progress,
    RequestNamingModel,
)
from kura_dagster.types import Cluster, Conversation, ConversationSummary, GeneratedCluster, GeneratedSummary

class AnswerCache(Protocol):
    """Where answers are kept between runs. ``identity`` is the model's identity (every setting that shapes its
    answers). ``put_*`` saves answers at once (one or many per call); ``commit`` compacts what was put."""

    def get_summaries(self, identity: str, conversations: Sequence[Conversation]) -> list[GeneratedSummary | None]: ...

    def put_summaries(self, identity: str, conversations: Sequence[Conversation],
                      summaries: Sequence[GeneratedSummary]) -> None: ...

    def get_embeddings(self, identity: str, texts: Sequence[str]) -> list[np.ndarray | None]: ...

    def put_embeddings(self, identity: str, texts: Sequence[str], vectors: np.ndarray) -> None: ...

    def get_names(self, identity: str, keys: Sequence[str]) -> list[GeneratedCluster | None]: ...

    def put_names(self, identity: str, keys: Sequence[str], names: Sequence[GeneratedCluster]) -> None: ...

    def commit(self) -> None: ...


@dataclass
class RequestCounts:
    """What happened to the items asked for in one run (conversations, texts, groups to name)."""

    items: int = 0
    cache_hits: int = 0
    """Answered from the cache (paid for in an earlier run or an earlier call)."""
    deduplicated: int = 0
    """Shared a request with an identical item of the same call (single flight)."""
    requested: int = 0
    """Distinct items sent to the model."""

    @property
    def skipped(self) -> int:
        """Items that cost nothing in this run."""
        return self.cache_hits + self.deduplicated

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def single_flight(indices: Sequence[int], key_of: Any) -> tuple[list[int], dict[int, list[int]]]:
    """``(leaders, followers)``: the first index of each distinct key, and for each leader the later indices
    with the same key (which get the leader's answer instead of a request of their own)."""
    first: dict[Any, int] = {}
    followers: dict[int, list[int]] = {}
    leaders: list[int] = []
    for i in indices:
        key = key_of(i)
        lead = first.get(key)
        if lead is None:
            first[key] = i
            leaders.append(i)
        else:
            followers.setdefault(lead, []).append(i)
    return leaders, followers


def batches(indices: Sequence[int], size: int | None) -> list[Sequence[int]]:
    size = size or max(len(indices), 1)
    return [indices[i: i + size] for i in range(0, len(indices), size)]


def cached_embed(
    texts: Sequence[str],
    embedder: EmbeddingModel,
    cache: AnswerCache | None,
    *,
    batch_size: int | None = None,
    progress: Progress | None = None,
    counts: RequestCounts | None = None,
) -> np.ndarray:
    """``embedder.embed(texts)``, asking only for texts neither cached nor already asked for in this call.

    New vectors go to the cache ``batch_size`` distinct texts at a time (``None``: all at once);
    ``progress(done, total)`` counts texts, cached and duplicate ones first."""
    counts = counts if counts is not None else RequestCounts()
    n = len(texts)
    found = cache.get_embeddings(embedder.identity, texts) if cache is not None else [None] * n
    vectors: list[np.ndarray | None] = list(found)
    todo = [i for i, v in enumerate(vectors) if v is None]
    leaders, followers = single_flight(todo, texts.__getitem__)
    counts.items += n
    counts.cache_hits += n - len(todo)
    counts.deduplicated += len(todo) - len(leaders)
    counts.requested += len(leaders)
    done = n - len(leaders)
    if progress is not None:
        progress(done, n)
    for batch in batches(leaders, batch_size):
        chunk = [texts[i] for i in batch]
        out = np.asarray(embedder.embed(chunk), dtype=np.float32)
        if len(out) != len(chunk):
            raise ValueError(f"the embedding model returned {len(out)} vectors for {len(chunk)} texts")
        if cache is not None:
            cache.put_embeddings(embedder.identity, chunk, out)
            cache.commit()
        for i, v in zip(batch, out):
            vectors[i] = v
            for j in followers.get(i, ()):
                vectors[j] = v
        done += len(batch)
        if progress is not None:
            progress(done, n)
    if not vectors:
        return np.zeros((0, 0), dtype=np.float32)
    return np.stack(vectors).astype(np.float32, copy=False)  # type: ignore[arg-type]


class _Wrapper:
    """Delegates everything it does not define (``usage``, ``config`` …) to the wrapped backend."""

    def __init__(self, inner: Any, cache: AnswerCache | None) -> None:
        self.inner = inner
        self.cache = cache
        self.identity: str = inner.identity
        self.counts = RequestCounts()

    def __getattr__(self, name: str) -> Any:
        if name == "inner":  # not set yet (copy/unpickle): do not recurse
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.inner!r})"


class CachedEmbeddingModel(_Wrapper):
    """An ``EmbeddingModel``: vectors come from the cache when they can, each distinct text is sent once."""

    def __init__(self, inner: EmbeddingModel, cache: AnswerCache | None, batch_size: int | None = None) -> None:
        super().__init__(inner, cache)
        self.batch_size = batch_size

    def embed(self, texts: Sequence[str], progress: Progress | None = None) -> np.ndarray:
        return cached_embed(texts, self.inner, self.cache, batch_size=self.batch_size, progress=progress,
                            counts=self.counts)


class CachedNamingModel(_Wrapper):
    """A ``ClusterNamingModel``: names come from the cache when the same request was answered before, and
    identical requests of one call are sent once. A backend that does not show its requests
    (not a :class:`RequestNamingModel`, e.g. the offline one) is called as it is."""

    def name_clusters(self, groups: Sequence[Sequence[ConversationSummary]]) -> list[GeneratedCluster]:
        if not isinstance(self.inner, RequestNamingModel):
            return self._uncached(self.inner.name_clusters(groups), len(groups))
        return self.answer(self.inner.cluster_requests(groups))

    def name_meta_clusters(self, groups: Sequence[Sequence[Cluster]]) -> list[GeneratedCluster]:
        if not isinstance(self.inner, RequestNamingModel):
            return self._uncached(self.inner.name_meta_clusters(groups), len(groups))
        return self.answer(self.inner.meta_cluster_requests(groups))

    def _uncached(self, names: list[GeneratedCluster], n: int) -> list[GeneratedCluster]:
        self.counts.items += n
        self.counts.requested += n
        return names

    def answer(self, requests: Sequence[NamingRequest]) -> list[GeneratedCluster]:
        inner: RequestNamingModel = self.inner
        n = len(requests)
        keys = [r.key for r in requests]
        found = self.cache.get_names(self.identity, keys) if self.cache is not None else [None] * n
        names: list[GeneratedCluster | None] = list(found)
        todo = [i for i, g in enumerate(names) if g is None]
        leaders, followers = single_flight(todo, keys.__getitem__)
        self.counts.items += n
        self.counts.cache_hits += n - len(todo)
        self.counts.deduplicated += len(todo) - len(leaders)
        self.counts.requested += len(leaders)
        if not leaders:
            return names  # type: ignore[return-value]
        cache = self.cache

        def save(j: int, name: GeneratedCluster) -> None:
            cache.put_names(self.identity, [keys[leaders[j]]], [name])  # type: ignore[union-attr]

        try:
            out = inner.answer_requests([requests[i] for i in leaders], save if cache is not None else None)
        finally:
            if cache is not None:
                cache.commit()
        if len(out) != len(leaders):
            raise ValueError(f"the naming model returned {len(out)} names for {len(leaders)} requests")
        for i, name in zip(leaders, out):
            names[i] = name
            for j in followers.get(i, ()):
                names[j] = name
        return names  # type: ignore[return-value]

