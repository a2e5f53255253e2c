"""A Claude.ai data export (``conversations.json``), mapped as Kura's ``Conversation.from_claude_conversation_dump``
(kura 0.5.4) maps it:

* ``chat_id`` ← ``uuid``, ``created_at`` ← ``created_at``;
* messages ← ``chat_messages`` sorted by (``created_at``, human before assistant); ``sender == "human"`` →
  ``user``, any other sender → ``assistant``; ``content`` ← the ``text`` of the content items whose ``type`` is
  ``text``, joined with ``"\\n"``;
* ``metadata`` ← ``{}`` (Kura's default ``metadata_fn``), or what ``column_map`` maps: ``metadata.<key>`` → a
  field of the conversation (``{"metadata.title": "name"}``), ``metadata`` → a field holding a mapping.

Where this reader says more than Kura: other content items (images, tool use…) are counted
(``non_text_parts``), as are non-empty ``attachments`` and ``files`` of a message (``attachments``,
``files``: one per item) and the conversation's fields no mapping uses (``unmapped_field:<name>``); a message
without ``content`` (exports before 2024) takes its ``text``; a conversation with no messages is skipped
(``empty_conversations``) where Kura would keep an empty one.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from kura_dagster.sources.result import Collector
from kura_dagster.sources.rows import ColumnMap, is_null, metadata_dict, metadata_value
from kura_dagster.types.conversation import RecordItem

CONVERSATION_FIELDS = ("uuid", "created_at", "chat_messages")


def _time(value: Any) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def claude_record(conv: Any, cmap: ColumnMap, drops: Counter[str]) -> tuple[dict[str, Any] | None, str | None]:
    if not isinstance(conv, dict):
        return None, f"expected a JSON object, got {type(conv).__name__}"
    missing = [f for f in CONVERSATION_FIELDS if f not in conv]
    if missing:
        return None, f"missing field(s) {', '.join(repr(f) for f in missing)} of a Claude.ai export conversation"
    chat_messages = conv["chat_messages"]
    if not isinstance(chat_messages, list):
        return None, f"chat_messages is {type(chat_messages).__name__}, expected a list"
    if not chat_messages:
        drops["empty_conversations"] += 1
        return None, None
    keyed = []
    for i, m in enumerate(chat_messages):
        if not isinstance(m, dict) or "sender" not in m or not isinstance(m.get("created_at"), str):
            return None, f"chat_messages[{i}] needs 'sender' and a 'created_at' string"
        try:
            when = _time(m["created_at"])
        except ValueError:
            return None, f"chat_messages[{i}].created_at {m['created_at']!r} is not an ISO 8601 time"
        keyed.append(((when, 0 if m["sender"] == "human" else 1), i, when, m))
    messages = []
    for _key, i, when, m in sorted(keyed, key=lambda k: k[0]):
        content = m.get("content")
        if content is None:
            text = m.get("text", "")
            if not isinstance(text, str):
                return None, f"chat_messages[{i}] has no 'content' list and no 'text' string"
        elif isinstance(content, list):
            texts = []
            for item in content:
                if isinstance(item, dict) and item.get("type") == "text":
                    if not isinstance(item.get("text"), str):
                        return None, f"chat_messages[{i}]: a text content item without a 'text' string"
                    texts.append(item["text"])
                else:
                    drops["non_text_parts"] += 1
            text = "\n".join(texts)
        else:
            return None, f"chat_messages[{i}].content is {type(content).__name__}, expected a list"
        for extra in ("attachments", "files"):
            if isinstance(m.get(extra), list) and m[extra]:
                drops[extra] += len(m[extra])
        messages.append({"created_at": when, "role": "user" if m["sender"] == "human" else "assistant",
                         "content": text})
    metadata: dict[str, Any] = {}
    used = set(CONVERSATION_FIELDS)
    if "metadata" in cmap.fields:
        used.add(cmap.fields["metadata"])
        metadata, error = metadata_dict(conv.get(cmap.fields["metadata"]), drops, "metadata")
        if error:
            return None, error
    for key, field_name in cmap.metadata_columns.items():
        used.add(field_name)
        keep, value = metadata_value(conv.get(field_name), drops)
        if keep:
            metadata[key] = value
    for key, value in conv.items():
        if key not in used and not is_null(value):
            drops[f"unmapped_field:{key}"] += 1
    return {"chat_id": conv["uuid"], "created_at": conv["created_at"], "messages": messages,
            "metadata": metadata}, None


def check_claude_column_map(cmap: ColumnMap, source: str) -> None:
    other = sorted(cmap.fields.keys() - {"metadata"}) + [f"messages.{k}" for k in cmap.message_keys]
    if other:
        raise ValueError(f"{source}: a Claude.ai export maps its fields as Kura does; column_map can only add "
                         f"metadata ('metadata' or 'metadata.<key>'), not {other}")


def read_claude(items: Iterable[RecordItem], cmap: ColumnMap, collector: Collector) -> None:
    for location, raw, record, parse_error in items:
        if parse_error is not None:
            collector.bad(location, parse_error, raw)
            continue
        drops: Counter[str] = Counter()
        converted, reason = claude_record(record, cmap, drops)
        chat_id = record.get("uuid") if isinstance(record, dict) and isinstance(record.get("uuid"), str) else None
        collector.converted(location, raw, converted, reason, drops, chat_id)
