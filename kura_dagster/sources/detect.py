"""Which format a file (or a list of records) holds, from its content: Parquet by its magic bytes; JSON
records by what their first records look like, whatever the file is called."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from kura_dagster.sources.rows import SAMPLE_RECORDS
from kura_dagster.types.conversation import ConversationInputError

KURA, CLAUDE, OPENAI, OTHER = "kura", "claude", "openai", "other"
FORMATS = ("kura_json", "kura_jsonl", "claude_export", "openai_chat", "json_records", "parquet", "hf_dataset")
"""What ``format=`` may force (``kura`` for either of Kura's, ``jsonl``/``json`` meaning Kura's too)."""
ALIASES = {"kura": "kura", "jsonl": "kura", "json": "kura", "kura_json": "kura", "kura_jsonl": "kura",
           "claude": "claude_export", "claude_export": "claude_export", "openai": "openai_chat",
           "openai_chat": "openai_chat", "records": "json_records", "json_records": "json_records",
           "parquet": "parquet", "hf": "hf_dataset", "hf_dataset": "hf_dataset"}


def shape(record: Any) -> str:
    if not isinstance(record, Mapping):
        return OTHER
    if "chat_messages" in record and "uuid" in record:
        return CLAUDE
    messages = record.get("messages")
    if isinstance(messages, list):
        first = next((m for m in messages if isinstance(m, Mapping)), None)
        if {"chat_id", "created_at"} <= record.keys() and (first is None or "created_at" in first):
            return KURA
        if first is None or "role" in first:
            return OPENAI
    return OTHER


def records_shape(records: Iterable[Any]) -> str:
    """The most common shape of the first :data:`SAMPLE_RECORDS` records (ties: Kura, Claude, OpenAI)."""
    counts: Counter[str] = Counter()
    for n, record in enumerate(records):
        if n >= SAMPLE_RECORDS:
            break
        counts[shape(record)] += 1
    if not counts:
        return KURA
    order = (KURA, CLAUDE, OPENAI, OTHER)
    return max(order, key=lambda s: (counts[s], -order.index(s)))


def unknown_records_error(name: str, records: list[Any]) -> ConversationInputError:
    first = next((r for r in records if isinstance(r, Mapping)), None)
    what = (f"the first record has the fields {', '.join(map(str, first))}" if first is not None
            else f"the records are {type(records[0]).__name__ if records else 'missing'}, not objects")
    return ConversationInputError(
        f"{name}: cannot tell the format: {what}. Expected Kura conversations (chat_id, created_at, messages, "
        "metadata), OpenAI-style chat records ({\"messages\": [{\"role\", \"content\"}]}) or a Claude.ai export "
        "(uuid, chat_messages); for other records give column_map (e.g. {\"messages\": \"turns\"}) or format="
    )


def normalise_format(fmt: str | None) -> str | None:
    if fmt is None:
        return None
    try:
        return ALIASES[fmt]
    except KeyError:
        raise ValueError(f"unknown format {fmt!r}; the formats are: {', '.join(FORMATS)}") from None
