"""Any other JSON records (a JSON array or JSON lines) with a ``column_map`` saying where Kura's fields are,
e.g. ``{"chat_id": "conversation_id", "messages": "turns", "messages.role": "from", "messages.content": "value"}``
for ShareGPT-style records. Converted by the shared rules of :mod:`kura_dagster.sources.rows`."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from kura_dagster.sources.result import Collector
from kura_dagster.sources.rows import ColumnMap, feed_rows, record_columns
from kura_dagster.types.conversation import RecordItem


def read_json_records(items: Iterable[RecordItem], sample: list[Any], cmap: ColumnMap, collector: Collector,
                      source: str) -> None:
    """``sample``: the first records, whose fields bind the column_map."""
    cols = cmap.resolve(record_columns(sample), source)
    feed_rows(items, cols, collector)
