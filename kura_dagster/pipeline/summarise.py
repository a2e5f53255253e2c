"""Stage 1: one ``ConversationSummary`` per conversation (summary model + embedding model)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from kura_dagster.pipeline.models.base import EmbeddingModel, Progress, SummaryModel
from kura_dagster.types import Conversation, ConversationSummary, GeneratedSummary


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


def summarise_conversations(
    conversations: Sequence[Conversation],
    model: SummaryModel,
    embedder: EmbeddingModel | None,
    progress: Progress | None = None,
) -> list[ConversationSummary]:
    generated = model.summarise(conversations, progress=progress)
    embeddings = embedder.embed([embedding_text(g) for g in generated]) if embedder is not None else None
    return assemble_summaries(conversations, generated, embeddings)
