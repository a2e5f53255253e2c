"""OpenAI-style chat records: ``{"messages": [{"role": "system" | "user" | "assistant" | "tool", "content": str or
a list of content parts}], …}``, one per line or in a JSON array (a fine-tuning file, logged completions).

``chat_id`` comes from ``chat_id`` or ``id`` (or ``column_map``), else an id generated from the file's name, the
record's position and its content (unique per record, the same on every read of the file);
``created_at`` from ``created_at`` or ``created`` (Unix seconds), else 1970-01-01T00:00:00Z; ``metadata`` from a
``metadata`` object. What becomes of system and tool messages, content parts, tool calls and other fields is
the shared conversion's rule, :mod:`kura_dagster.sources.rows`; every drop is counted.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from kura_dagster.sources.result import Collector
from kura_dagster.sources.rows import ColumnMap, feed_rows, record_columns
from kura_dagster.types.conversation import RecordItem


def read_openai_chat(items: Iterable[RecordItem], sample: list[Any], cmap: ColumnMap, collector: Collector,
                     source: str) -> None:
    """``sample``: the first records, whose fields bind the column_map."""
    cols = cmap.resolve(record_columns(sample), source)
    feed_rows(items, cols, collector)
