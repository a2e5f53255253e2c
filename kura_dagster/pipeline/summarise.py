"""Stage 1: one ``ConversationSummary`` per conversation (summary model + embedding model).

* **Single flight.** Conversations with the same content (the summary cache key) are summarised once, and
  texts with the same content embedded once; every conversation still gets its own ``chat_id`` and metadata.
* **Cache.** With an ``AnswerCache`` the stage is incremental and resumable: conversations whose summary (and
  embedding) is cached cost nothing, and each new answer is handed to the cache as soon as it arrives (its
  journal makes it durable within ~200 ms); the cache is compacted every ``batch_size`` answers or
  ``flush_seconds``, and at the end. An interrupted run loses at most the answers in flight.
* The output is always in input order, whatever came from the cache, so a resumed run returns exactly what an
  uninterrupted one would. :class:`SummaryCounts` tells cache hits, duplicates and requests apart.
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from kura_dagster.pipeline.models.base import EmbeddingModel, Progress, SummaryModel
from kura_dagster.pipeline.models.cached import AnswerCache, Flight, RequestCounts, cached_embed
from kura_dagster.types import Conversation, ConversationSummary, GeneratedSummary

SummaryCache = AnswerCache
"""The cache protocol the stage needs (the former name; implemented in ``kura_dagster.checkpoints.summary_cache``)."""


@runtime_checkable
class StreamingSummaryModel(Protocol):
    """A summary model that hands over each summary as soon as it is ready (the OpenAI backend does), so
    finished work is saved while the run goes on, without waiting for a whole batch to finish."""

    identity: str

    def summarise_streaming(
        self, conversations: Sequence[Conversation], on_result: Callable[[int, GeneratedSummary], None] | None,
        progress: Progress | None = None,
    ) -> list[GeneratedSummary]: ...


@dataclass
class SummaryCounts:
    """What one run of the stage cost: conversations (``summaries``) and texts (``embeddings``)."""

    summaries: RequestCounts = field(default_factory=RequestCounts)
    embeddings: RequestCounts = field(default_factory=RequestCounts)


def content_key(conversation: Conversation) -> tuple[tuple[str, str], ...]:
    """What a summary depends on: the messages' roles and contents, in order (the summary cache hashes the same)."""
    return tuple((m.role, m.content) for m in conversation.messages)


def embedding_text(summary: GeneratedSummary) -> str:
    """The text that represents a summary in embedding space."""
    return " ".join(t for t in (summary.request, summary.summary, summary.task) if t)


def summary_metadata(conversation: Conversation) -> dict:
    return {"conversation_turns": len(conversation.messages), **conversation.metadata}


def assemble_summaries(
    conversations: Sequence[Conversation], generated: Sequence[GeneratedSummary], embeddings: np.ndarray | None
) -> list[ConversationSummary]:
    if len(generated) != len(conversations):
        raise ValueError(f"the summary model returned {len(generated)} summaries for {len(conversations)} conversations")
    out = []
    for i, (conversation, gen) in enumerate(zip(conversations, generated)):
        out.append(
            ConversationSummary(
                **gen.model_dump(),
                chat_id=conversation.chat_id,
                metadata=summary_metadata(conversation),
                embedding=None if embeddings is None else embeddings[i].tolist(),
            )
        )
    return out


class _EmbeddingStream:
    """The summaries' texts embedded while the summaries are still arriving, one embedder batch at a time, so
    the embedding requests overlap the summary requests instead of waiting for the last summary.

    The same bookkeeping as :func:`~kura_dagster.pipeline.models.cached.cached_embed` (cache lookup, each
    distinct text sent once, fan-out, the same :class:`RequestCounts`), and the same vectors in input order:
    :meth:`finish` embeds whatever the stream has not seen (e.g. summaries that differ from what ``on_result``
    saw) before it returns. Cache lookups and writes stay on the caller's thread; only ``embedder.embed``
    runs on the stream's one worker thread (an embedder that mostly waits on a server)."""

    def __init__(self, embedder: EmbeddingModel, cache: AnswerCache | None, total: int, batch_size: int,
                 progress: Progress | None) -> None:
        self.embedder, self.cache, self.total, self.batch_size, self.progress = (
            embedder, cache, total, batch_size, progress)
        self.vectors: dict[str, np.ndarray] = {}
        self.from_cache: set[str] = set()
        self.asked: set[str] = set()  # distinct texts sent or waiting to be sent
        self.pending: list[str] = []
        self.futures: list[tuple[list[str], concurrent.futures.Future]] = []
        self.pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="kura-embed")
        if progress is not None:
            progress(0, total)  # the clock starts with the summaries; the texts are counted at the end

    def add(self, texts: Sequence[str], *, whole_batches: bool = True) -> None:
        """Texts whose summaries just arrived: looked up, and sent once a batch of new ones is complete
        (``whole_batches=False``: only looked up)."""
        new = [t for t in dict.fromkeys(texts) if t not in self.vectors and t not in self.asked]
        if new:
            found = (self.cache.get_embeddings(self.embedder.identity, new) if self.cache is not None
                     else [None] * len(new))
            for text, vector in zip(new, found):
                if vector is None:
                    self.asked.add(text)
                    self.pending.append(text)
                else:
                    self.vectors[text] = vector
                    self.from_cache.add(text)
        while whole_batches and len(self.pending) >= self.batch_size:
            self._send(self.pending[:self.batch_size])
            self.pending = self.pending[self.batch_size:]
        self._collect(wait=False)

    def _send(self, chunk: list[str]) -> None:
        self.futures.append((chunk, self.pool.submit(self.embedder.embed, chunk)))

    def _collect(self, wait: bool) -> None:
        """Saves the answered batches (in the order sent); ``wait``: every batch, raising the first failure."""
        while self.futures and (wait or self.futures[0][1].done()):
            chunk, future = self.futures.pop(0)
            out = np.asarray(future.result(), dtype=np.float32)
            if len(out) != len(chunk):
                raise ValueError(f"the embedding model returned {len(out)} vectors for {len(chunk)} texts")
            self.vectors.update(zip(chunk, out))
            if self.cache is not None:
                self.cache.put_embeddings(self.embedder.identity, chunk, out)

    def finish(self, texts: Sequence[str], counts: RequestCounts) -> np.ndarray:
        """The vectors of ``texts`` (all the conversations' texts, in input order); ``counts`` as
        :func:`cached_embed` counts them."""
        self.add(texts, whole_batches=False)
        if self.pending:  # the rest in one call: the embedder sends its batches of it concurrently
            self._send(self.pending)
            self.pending = []
        self._collect(wait=True)
        self.close()
        seen: set[str] = set()
        for text in texts:
            counts.items += 1
            if text in self.from_cache:
                counts.cache_hits += 1
            elif text in seen:
                counts.deduplicated += 1
            else:
                counts.requested += 1
                seen.add(text)
        if self.progress is not None:
            self.progress(len(texts), len(texts))
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([self.vectors[t] for t in texts]).astype(np.float32, copy=False)

    def close(self) -> None:
        """Waits for the batches in flight and keeps what they answered (after a failure too)."""
        self.pool.shutdown(wait=True)
        for chunk, future in self.futures:
            if future.exception() is None and self.cache is not None:
                self.cache.put_embeddings(self.embedder.identity, chunk, np.asarray(future.result(), np.float32))
        self.futures = []


def _streams_embeddings(model: SummaryModel, embedder: EmbeddingModel | None) -> bool:
    """Embed beside the summary requests: a streaming summary model, and an embedder of summaries (not of
    conversations) that waits on a server and says how many texts it sends per request."""
    return (isinstance(model, StreamingSummaryModel) and embedder is not None
            and not callable(getattr(embedder, "conversation_text", None))
            and getattr(type(embedder), "waits_on_server", False) is True  # the backend itself, not a wrapper
            and isinstance(getattr(embedder, "batch_size", None), int) and embedder.batch_size >= 1)


class _Compactor:
    """Compacts the cache every ``batch_size`` answers or ``seconds``, whichever comes first."""

    def __init__(self, cache: AnswerCache, batch_size: int, seconds: float) -> None:
        self.cache, self.batch_size, self.seconds = cache, batch_size, seconds
        self.since = 0
        self.last = time.monotonic()

    def answered(self) -> None:
        self.since += 1
        if self.since >= self.batch_size or time.monotonic() - self.last >= self.seconds:
            self.cache.commit()
            self.since, self.last = 0, time.monotonic()


def _summaries_with_cache(
    conversations: Sequence[Conversation], model: SummaryModel, cache: AnswerCache | None,
    batch_size: int | None, progress: Progress | None, flush_seconds: float, counts: RequestCounts,
    stream: _EmbeddingStream | None = None,
) -> list[GeneratedSummary]:
    total = len(conversations)
    found = cache.get_summaries(model.identity, conversations) if cache is not None else [None] * total
    flight: Flight[GeneratedSummary] = Flight(found, [content_key(c) for c in conversations], counts,
                                              ("summary model", "summaries", "conversations"))
    done = flight.free
    if progress is not None:
        progress(done, total)

    if flight.leaders and isinstance(model, StreamingSummaryModel):
        # One call keeps every request slot busy; each answer is saved as it arrives (and its text embedded
        # beside the other summary requests when there is a stream).
        chunk = [conversations[i] for i in flight.leaders]
        if stream is not None:
            stream.add([embedding_text(g) for g in found if g is not None])
        on_result: Callable[[int, GeneratedSummary], None] | None = None
        compactor = _Compactor(cache, batch_size or len(chunk), flush_seconds) if cache is not None else None

        def save(j: int, summary: GeneratedSummary) -> None:
            if cache is not None and compactor is not None:
                cache.put_summaries(model.identity, [chunk[j]], [summary])
                compactor.answered()
            if stream is not None:
                stream.add([embedding_text(summary)])

        if cache is not None or stream is not None:
            on_result = save

        try:
            out = model.summarise_streaming(
                chunk, on_result, None if progress is None else lambda d, _t: progress(done + d, total))
        finally:
            if cache is not None:
                cache.commit()  # a failure keeps what succeeded
        flight.take(flight.leaders, out)
    else:
        for batch in flight.batches(batch_size):
            chunk = [conversations[i] for i in batch]
            offset = done
            out = model.summarise(chunk, progress=None if progress is None else lambda d, _t: progress(offset + d, total))
            flight.take(batch, out)
            if cache is not None:
                cache.put_summaries(model.identity, chunk, out)
                cache.commit()
            done += len(batch)
            if progress is not None:
                progress(done, total)
    return flight.answers  # type: ignore[return-value]


def summarise_conversations(
    conversations: Sequence[Conversation],
    model: SummaryModel,
    embedder: EmbeddingModel | None,
    progress: Progress | None = None,
    *,
    cache: AnswerCache | None = None,
    batch_size: int | None = None,
    embedding_batch_size: int | None = None,
    flush_seconds: float = 10.0,
    embedding_progress: Progress | None = None,
    counts: SummaryCounts | None = None,
) -> list[ConversationSummary]:
    """Summarise (and embed) ``conversations``; the output is in input order.

    ``cache``: look finished work up first and save new work to it. A :class:`StreamingSummaryModel` runs all
    its conversations in one go, each summary saved as it arrives and the cache compacted every ``batch_size``
    answers or ``flush_seconds``; other models run ``batch_size`` conversations at a time, and embeddings
    ``embedding_batch_size`` distinct texts at a time. ``None`` sizes mean one batch for everything.
    ``progress(done, total)`` counts conversations and ``embedding_progress(done, total)`` texts; the first
    call, before any request, counts those that cost nothing (cached or duplicates).
    ``counts`` (optional) receives cache hits, duplicates and requests of both halves.
    """
    counts = counts if counts is not None else SummaryCounts()
    if callable(prepare := getattr(model, "prepare", None)):
        prepare(conversations)  # corpus-level pass first (the local model learns the corpus's template text)
    stream = (_EmbeddingStream(embedder, cache, len(conversations), embedder.batch_size,  # type: ignore[union-attr]
                               embedding_progress) if _streams_embeddings(model, embedder) else None)
    try:
        generated = _summaries_with_cache(conversations, model, cache, batch_size, progress, flush_seconds,
                                          counts.summaries, stream)
        if stream is not None:
            embeddings = stream.finish([embedding_text(g) for g in generated], counts.embeddings)
            return assemble_summaries(conversations, generated, embeddings)
    finally:
        if stream is not None:
            stream.close()  # after a failure: the batches in flight are still saved
            if cache is not None:
                cache.commit()
    embeddings = None
    if embedder is not None:
        # An embedder that reads conversations (the offline one: user turns and the replies' starts) embeds those;
        # others embed the summary, as Kura does.
        of_conversation = getattr(embedder, "conversation_text", None)
        if callable(of_conversation) and callable(prepare_embedder := getattr(embedder, "prepare", None)):
            # an unfitted offline embedder learns the corpus first, with the template the summary model learnt
            prepare_embedder(conversations, template=getattr(model, "template", None))
        texts = ([of_conversation(c) for c in conversations] if callable(of_conversation)
                 else [embedding_text(g) for g in generated])
        embeddings = cached_embed(texts, embedder, cache,
                                  batch_size=embedding_batch_size, progress=embedding_progress,
                                  counts=counts.embeddings)
    return assemble_summaries(conversations, generated, embeddings)
