"""Which format a file (or a list of records) holds, from its content: Parquet by its magic bytes; JSON
records by what their first records look like, whatever the file is called."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from kura_dagster.sources import hf_chat, sharegpt
from kura_dagster.sources.rows import SAMPLE_RECORDS, ColumnMap
from kura_dagster.types.conversation import ConversationInputError

KURA, CLAUDE, OPENAI, SHAREGPT, HF_CHAT, OTHER = "kura", "claude", "openai", "sharegpt", "hf_chat", "other"
FORMATS = ("kura_json", "kura_jsonl", "claude_export", "openai_chat", "sharegpt", "hf_chat", "json_records",
           "parquet", "hf_dataset")
"""What ``format=`` may force (``kura`` for either of Kura's, ``jsonl``/``json`` meaning Kura's too)."""
ALIASES = {"kura": "kura", "jsonl": "kura", "json": "kura", "kura_json": "kura", "kura_jsonl": "kura",
           "claude": "claude_export", "claude_export": "claude_export", "openai": "openai_chat",
           "openai_chat": "openai_chat", "records": "json_records", "json_records": "json_records",
           "parquet": "parquet", "hf": "hf_dataset", "hf_dataset": "hf_dataset", "sharegpt": "sharegpt",
           "hf_chat": "hf_chat", "lmsys": "hf_chat"}
CHAT_SHAPES = ((SHAREGPT, sharegpt.TURNS, sharegpt.TURN_KEYS, sharegpt.sharegpt_map),
               (HF_CHAT, hf_chat.TURNS, hf_chat.TURN_KEYS, hf_chat.hf_chat_map))
"""The chat-dataset shapes: a column of turns (without a ``messages`` column) whose turns have these keys."""


def _chat_shape(record: Mapping[str, Any]) -> str | None:
    if "messages" in record:
        return None
    for kind, column, keys, _ in CHAT_SHAPES:
        turns = record.get(column)
        if isinstance(turns, list):
            first = next((t for t in turns if isinstance(t, Mapping)), None)
            if first is not None and all(k in first for k in keys):
                return kind
    return None


def chat_map(kind: str) -> ColumnMap:
    return next(make() for k, _, _, make in CHAT_SHAPES if k == kind)


def table_chat_map(names: list[str], cmap: ColumnMap, schema: Any = None) -> ColumnMap:
    """A table's mapping: ``cmap``, or, when it names no messages column and the table has no ``messages`` but a
    chat dataset's column of turns (``conversation`` LMSYS-style, ``conversations`` ShareGPT), that shape's on
    top of which ``cmap`` goes. ``schema`` (Arrow) tells the turn keys when there is one."""
    if "messages" in cmap.fields or "messages" in names:
        return cmap
    for kind, column, keys, make in CHAT_SHAPES:
        if column not in names:
            continue
        turn = getattr(getattr(schema.field(column).type, "value_type", None), "names", None) if schema else None
        if turn is None or all(k in turn for k in keys):
            return make().merged(cmap)
    return cmap


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
    return _chat_shape(record) or OTHER


def records_shape(records: Iterable[Any]) -> str:
    """The most common shape of the first :data:`SAMPLE_RECORDS` records (ties: Kura, Claude, OpenAI,
    ShareGPT, HF chat)."""
    counts: Counter[str] = Counter()
    for n, record in enumerate(records):
        if n >= SAMPLE_RECORDS:
            break
        counts[shape(record)] += 1
    if not counts:
        return KURA
    order = (KURA, CLAUDE, OPENAI, SHAREGPT, HF_CHAT, OTHER)
    return max(order, key=lambda s: (counts[s], -order.index(s)))


def unknown_records_error(name: str, records: list[Any]) -> ConversationInputError:
    first = next((r for r in records if isinstance(r, Mapping)), None)
    what = (f"the first record has the fields {', '.join(map(str, first))}" if first is not None
            else f"the records are {type(records[0]).__name__ if records else 'missing'}, not objects")
    return ConversationInputError(
        f"{name}: cannot tell the format: {what}. Expected Kura conversations (chat_id, created_at, messages, "
        "metadata), OpenAI-style chat records ({\"messages\": [{\"role\", \"content\"}]}), ShareGPT records "
        "({\"conversations\": [{\"from\", \"value\"}]}), chat-dataset rows ({\"conversation\": [{\"role\", "
        "\"content\"}]}) or a Claude.ai export (uuid, chat_messages); for other records give column_map (e.g. "
        "{\"messages\": \"turns\"}) or format="
    )


def normalise_format(fmt: str | None) -> str | None:
    if fmt is None:
        return None
    try:
        return ALIASES[fmt]
    except KeyError:
        raise ValueError(f"unknown format {fmt!r}; the formats are: {', '.join(FORMATS)}") from None
