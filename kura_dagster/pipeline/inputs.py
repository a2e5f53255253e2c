"""Moved to :mod:`kura_dagster.sources`; these names stay importable from here."""

from kura_dagster.sources import (
    DEFAULT_MAX_MESSAGE_CHARS,
    SHOWN_PROBLEMS,
    BadRecord,
    ConversationInputError,
    OnBadRecord,
    ReadResult,
    conversations_from_value,
    list_source_files,
    quarantine_jsonl,
    read_conversations,
    read_source,
)

__all__ = [
    "DEFAULT_MAX_MESSAGE_CHARS",
    "SHOWN_PROBLEMS",
    "BadRecord",
    "ConversationInputError",
    "OnBadRecord",
    "ReadResult",
    "conversations_from_value",
    "list_source_files",
    "quarantine_jsonl",
    "read_conversations",
    "read_source",
]
