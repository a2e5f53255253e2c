"""Conversations and messages, field for field as Kura defines them (``kura.types.conversation``)."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Literal, Union

from pydantic import BaseModel

# What Kura's web UI accepts in metadata on upload: scalars, or flat lists of them.
MetadataValue = Union[str, int, float, bool, list[str], list[int], list[float]]
MetadataDict = dict[str, MetadataValue]


class Message(BaseModel):
    created_at: datetime
    role: Literal["user", "assistant"]
    content: str


class Conversation(BaseModel):
    chat_id: str
    created_at: datetime
    messages: list[Message]
    metadata: MetadataDict

    @classmethod
    def generate_conversation_dump(cls, conversations: list[Conversation], file_path: str | Path) -> None:
        """Write Kura's conversation dump: one JSON array of conversations."""
        Path(file_path).write_text(
            json.dumps([c.model_dump(mode="json") for c in conversations]), encoding="utf-8"
        )

    @classmethod
    def from_conversation_dump(cls, file_path: str | Path) -> list[Conversation]:
        """Read Kura's conversation dump (a JSON array), or a ``.jsonl`` file of conversations.

        Errors name the file and the record (or line) that was wrong; see
        :func:`kura_dagster.pipeline.inputs.read_conversations` for the lenient variant.
        """
        from kura_dagster.pipeline.inputs import read_conversations

        return read_conversations(file_path).conversations
