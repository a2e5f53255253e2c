"""Stage 1: one ``ConversationSummary`` per conversation (summary model + embedding model).

With a :class:`SummaryCache` the stage is incremental and resumable: conversations whose summary (and
embedding) is cached cost nothing, and new work is saved to the cache batch by batch as it finishes, so an
interrupted run loses at most the batch in flight. The output is always in input order, whatever came
from the cache, so a resumed run returns exactly what an uninterrupted one would.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from kura_dagster.pipeline.models.base import EmbeddingModel, Progress, SummaryModel
from kura_dagster.types import Conversation, ConversationSummary, GeneratedSummary


class SummaryCache(Protocol):
    """Where finished work is kept between runs (implemented in ``kura_dagster.checkpoints.summary_cache``).

    ``identity`` is the model's identity: every setting that shapes the output. ``put_*`` persists one batch.
    """

    def get_summaries(self, identity: str, conversations: Sequence[Conversation]) -> list[GeneratedSummary | None]: ...

    def put_summaries(self, identity: str, conversations: Sequence[Conversation],
                      summaries: Sequence[GeneratedSummary]) -> None: ...

    def get_embeddings(self, identity: str, texts: Sequence[str]) -> list[np.ndarray | None]: ...

    def put_embeddings(self, identity: str, texts: Sequence[str], vectors: np.ndarray) -> None: ...


@runtime_checkable
class StreamingSummaryModel(Protocol):
    """A summary model that hands over each summary as soon as it is ready (the OpenAI backend does), so
    finished work is saved while the run goes on, without waiting for a whole batch to finish."""

    identity: str

    def summarise_streaming(
        self, conversations: Sequence[Conversation], on_result: Callable[[int, GeneratedSummary], None] | None,
        progress: Progress | None = None,
    ) -> list[GeneratedSummary]: ...


class _BatchWriter:
    """Collects finished summaries and saves them to the cache every ``batch_size`` of them or ``seconds``."""

    def __init__(self, cache: SummaryCache, identity: str, conversations: Sequence[Conversation],
                 batch_size: int, seconds: float) -> None:
        self.cache, self.identity, self.conversations = cache, identity, conversations
        self.batch_size, self.seconds = batch_size, seconds
        self.pending: list[tuple[int, GeneratedSummary]] = []
        self.last = time.monotonic()

    def add(self, i: int, summary: GeneratedSummary) -> None:
        self.pending.append((i, summary))
        if len(self.pending) >= self.batch_size or time.monotonic() - self.last >= self.seconds:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            batch, self.pending = self.pending, []
            self.cache.put_summaries(self.identity, [self.conversations[i] for i, _ in batch], [s for _, s in batch])
        self.last = time.monotonic()


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


def _batches(indices: Sequence[int], size: int | None) -> list[Sequence[int]]:
    size = size or max(len(indices), 1)
    return [indices[i: i + size] for i in range(0, len(indices), size)]


def _summaries_with_cache(
    conversations: Sequence[Conversation], model: SummaryModel, cache: SummaryCache | None,
    batch_size: int | None, progress: Progress | None, flush_seconds: float,
) -> list[GeneratedSummary]:
    total = len(conversations)
    found = cache.get_summaries(model.identity, conversations) if cache is not None else [None] * total
    generated: list[GeneratedSummary | None] = list(found)
    todo = [i for i, g in enumerate(generated) if g is None]
    done = total - len(todo)
    if progress is not None:
        progress(done, total)
    if cache is not None and todo and isinstance(model, StreamingSummaryModel):
        # One call keeps every request slot busy; the writer saves results batch by batch as they arrive.
        chunk = [conversations[i] for i in todo]
        writer = _BatchWriter(cache, model.identity, chunk, batch_size or len(chunk), flush_seconds)
        try:
            out = model.summarise_streaming(
                chunk, writer.add, None if progress is None else lambda d, _t: progress(done + d, total))
        finally:
            writer.flush()  # a failure keeps what succeeded
        batches: list[tuple[Sequence[int], list[GeneratedSummary]]] = [(todo, out)]
    else:
        batches = []
        for batch in _batches(todo, batch_size):
            chunk = [conversations[i] for i in batch]
            offset = done
            out = model.summarise(chunk, progress=None if progress is None else lambda d, _t: progress(offset + d, total))
            if len(out) == len(chunk) and cache is not None:
                cache.put_summaries(model.identity, chunk, out)
            batches.append((batch, out))
            done += len(batch)
            if progress is not None:
                progress(done, total)
    for batch, out in batches:
        if len(out) != len(batch):
            raise ValueError(f"the summary model returned {len(out)} summaries for {len(batch)} conversations")
        for i, g in zip(batch, out):
            generated[i] = g
    return generated  # type: ignore[return-value]


def _embeddings_with_cache(
    texts: Sequence[str], embedder: EmbeddingModel, cache: SummaryCache | None, batch_size: int | None,
    progress: Progress | None,
) -> np.ndarray:
    found = cache.get_embeddings(embedder.identity, texts) if cache is not None else [None] * len(texts)
    vectors: list[np.ndarray | None] = list(found)
    todo = [i for i, v in enumerate(vectors) if v is None]
    done = len(texts) - len(todo)
    for batch in _batches(todo, batch_size):
        chunk = [texts[i] for i in batch]
        out = np.asarray(embedder.embed(chunk), dtype=np.float32)
        if len(out) != len(chunk):
            raise ValueError(f"the embedding model returned {len(out)} vectors for {len(chunk)} texts")
        if cache is not None:
            cache.put_embeddings(embedder.identity, chunk, out)
        for i, v in zip(batch, out):
            vectors[i] = v
        done += len(batch)
        if progress is not None:
            progress(done, len(texts))
    if not vectors:
        return np.zeros((0, 0), dtype=np.float32)
    return np.stack(vectors).astype(np.float32, copy=False)  # type: ignore[arg-type]


def summarise_conversations(
    conversations: Sequence[Conversation],
    model: SummaryModel,
    embedder: EmbeddingModel | None,
    progress: Progress | None = None,
    *,
    cache: SummaryCache | None = None,
    batch_size: int | None = None,
    embedding_batch_size: int | None = None,
    flush_seconds: float = 10.0,
    embedding_progress: Progress | None = None,
) -> list[ConversationSummary]:
    """Summarise (and embed) ``conversations``; the output is in input order.

    ``cache``: look finished work up first and save new work to it, one batch of ``batch_size`` conversations
    (``embedding_batch_size`` texts for embeddings) at a time. ``None`` sizes mean one batch for everything.
    A :class:`StreamingSummaryModel` runs all its conversations in one go and its summaries are saved every
    ``batch_size`` results or ``flush_seconds``, whichever comes first.
    ``progress(done, total)`` counts conversations summarised, cached ones included;
    ``embedding_progress(done, total)`` the texts embedded, after each embedding batch.
    """
    generated = _summaries_with_cache(conversations, model, cache, batch_size, progress, flush_seconds)
    embeddings = None
    if embedder is not None:
        embeddings = _embeddings_with_cache([embedding_text(g) for g in generated], embedder, cache,
                                            embedding_batch_size, embedding_progress)
    return assemble_summaries(conversations, generated, embeddings)
