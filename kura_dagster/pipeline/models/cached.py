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
  :class:`Flight` is that bookkeeping (cache lookup, single flight, fan-out), the one piece all three use.
* Each answer is handed to the cache as it arrives (its journal makes it durable within ~200 ms) and
  ``commit`` compacts the journal when the call ends, successful or not.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Generic, Protocol, TypeVar

import numpy as np

from kura_dagster.pipeline.models.base import (
    EmbeddingModel,
    NamingRequest,
    Progress,
    RequestNamingModel,
)
from kura_dagster.types import Cluster, Conversation, ConversationSummary, GeneratedCluster, GeneratedSummary

A = TypeVar("A")

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


class Flight(Generic[A]):
    """The bookkeeping of one cached call, the same for summaries, embeddings and names: what the cache
    answered (``found``), then single flight over the rest by ``keys``, then each answer fanned out to every
    item that shares its key. ``counts`` gets the call's items, cache hits, duplicates and requests.

    The caller sends ``[items[i] for i in leaders]`` (in one go or in :meth:`batches`), hands each batch's
    answers to :meth:`take`, and returns :attr:`answers` (in input order, complete once every leader is
    answered). ``what`` names the model and the things for the error on a wrong number of answers, e.g.
    ``("summary model", "summaries", "conversations")``."""

    def __init__(self, found: Sequence[A | None], keys: Sequence[Hashable], counts: RequestCounts,
                 what: tuple[str, str, str]) -> None:
        if len(found) != len(keys):
            raise ValueError(f"the cache returned {len(found)} answers for {len(keys)} {what[2]}")
        self.answers: list[A | None] = list(found)
        self.total = len(self.answers)
        todo = [i for i, a in enumerate(self.answers) if a is None]
        self.leaders, self._followers = single_flight(todo, keys.__getitem__)
        self.what = what
        counts.items += self.total
        counts.cache_hits += self.total - len(todo)
        counts.deduplicated += len(todo) - len(self.leaders)
        counts.requested += len(self.leaders)

    @property
    def free(self) -> int:
        """Items that need no request of their own (cached, or sharing a leader's)."""
        return self.total - len(self.leaders)

    def batches(self, size: int | None) -> list[Sequence[int]]:
        """The leaders, ``size`` at a time (``None``: all at once)."""
        return batches(self.leaders, size)

    def take(self, batch: Sequence[int], out: Sequence[A]) -> None:
        """The answers ``out`` to the leaders ``batch`` (in order), fanned out to their followers."""
        if len(out) != len(batch):
            model, answers, items = self.what
            raise ValueError(f"the {model} returned {len(out)} {answers} for {len(batch)} {items}")
        for i, a in zip(batch, out):
            self.answers[i] = a
            for j in self._followers.get(i, ()):
                self.answers[j] = a


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
    flight: Flight[np.ndarray] = Flight(found, texts, counts, ("embedding model", "vectors", "texts"))
    done = flight.free
    if progress is not None:
        progress(done, n)
    for batch in flight.batches(batch_size):
        chunk = [texts[i] for i in batch]
        out = np.asarray(embedder.embed(chunk), dtype=np.float32)
        flight.take(batch, out)
        if cache is not None:
            cache.put_embeddings(embedder.identity, chunk, out)
            cache.commit()
        done += len(batch)
        if progress is not None:
            progress(done, n)
    if not flight.answers:
        return np.zeros((0, 0), dtype=np.float32)
    return np.stack(flight.answers).astype(np.float32, copy=False)  # type: ignore[arg-type]


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
        keys = [r.key for r in requests]
        cache = self.cache
        found = cache.get_names(self.identity, keys) if cache is not None else [None] * len(keys)
        flight: Flight[GeneratedCluster] = Flight(found, keys, self.counts, ("naming model", "names", "requests"))
        leaders = flight.leaders
        if not leaders:
            return flight.answers  # type: ignore[return-value]

        def save(j: int, name: GeneratedCluster) -> None:
            cache.put_names(self.identity, [keys[leaders[j]]], [name])  # type: ignore[union-attr]

        try:
            out = inner.answer_requests([requests[i] for i in leaders], save if cache is not None else None)
        finally:
            if cache is not None:
                cache.commit()
        flight.take(leaders, out)
        return flight.answers  # type: ignore[return-value]
