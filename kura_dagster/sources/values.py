"""Conversations from an upstream asset's value: a ``list[Conversation]``, a list of dicts (Kura-shaped,
OpenAI-style, a Claude.ai export's, or any with a ``column_map``), a pyarrow ``Table``/``RecordBatch``, a pandas
or polars ``DataFrame``, a Hugging Face ``Dataset``, or anything exporting the Arrow C stream. pandas and polars
are never imported here: a value is recognised by its type's module. Locations are ``record N`` (lists) or
``row N`` (tables), 1-based."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pyarrow as pa

from kura_dagster.sources.detect import table_chat_map
from kura_dagster.sources.hf_dataset import read_dataset
from kura_dagster.sources.read import dispatch_records
from kura_dagster.sources.result import Collector, OnBadRecord, ReadResult
from kura_dagster.sources.rows import ColumnMap, feed_rows, plain
from kura_dagster.sources.tables import read_table
from kura_dagster.types import Conversation
from kura_dagster.types.conversation import DEFAULT_MAX_MESSAGE_CHARS, ConversationInputError

VALUE_HINT = "Fix them upstream, or read with on_bad_record='skip' to skip and quarantine them."


def conversations_from_value(
    value: Any,
    *,
    column_map: dict[str, str] | None = None,
    on_bad_record: OnBadRecord = "fail",
    source: str = "upstream asset",
    max_message_chars: int = DEFAULT_MAX_MESSAGE_CHARS,
    skip_hint: str | None = None,
) -> ReadResult:
    """``skip_hint`` ends the bad-record error with the setting that skips them where the caller is configured."""
    cmap = ColumnMap.parse(column_map)
    collector = Collector(source, on_bad_record, max_message_chars)
    module = type(value).__module__.split(".")[0]
    if isinstance(value, pa.RecordBatch):
        value = pa.Table.from_batches([value])
    if isinstance(value, pa.Table):
        read_table(value, cmap, collector, source)
        collector.note_format("arrow_table")
    elif module == "pandas" and hasattr(value, "to_dict") and hasattr(value, "columns"):
        columns = [str(c) for c in value.columns]
        rows = ((f"row {i}", None, plain(row), None) for i, row in enumerate(value.to_dict("records"), start=1))
        feed_rows(rows, table_chat_map(columns, cmap).resolve(columns, source), collector)
        collector.note_format("pandas")
    elif module == "polars" and hasattr(value, "to_arrow"):
        read_table(value.to_arrow(), cmap, collector, source)
        collector.note_format("polars")
    elif module == "datasets" and hasattr(value, "features") and hasattr(value, "select_columns"):
        read_dataset(value, cmap, collector, source)
        collector.note_format("hf_dataset")
    elif hasattr(value, "__arrow_c_stream__"):
        read_table(pa.table(value), cmap, collector, source)
        collector.note_format("arrow_table")
    elif isinstance(value, (list, tuple)):
        if value and all(isinstance(v, Conversation) for v in value):
            for i, conversation in enumerate(value, start=1):
                collector.model(f"record {i}", conversation)
            collector.note_format("conversations")
        else:
            items = [(f"record {i}", None, v.model_dump(mode="json") if isinstance(v, Conversation) else v, None)
                     for i, v in enumerate(value, start=1)]
            if not all(isinstance(r, Mapping) for _, _, r, _ in items):
                bad = next(i for i, (_, _, r, _) in enumerate(items, start=1) if not isinstance(r, Mapping))
                raise ConversationInputError(
                    f"{source}: record {bad} is {type(items[bad - 1][2]).__name__}; a list of conversations holds "
                    "Conversation objects or dicts"
                )
            collector.note_format(dispatch_records(items, cmap, collector, source, None, "records", "records"))
    else:
        raise ConversationInputError(
            f"{source}: cannot read conversations from a {type(value).__module__}.{type(value).__qualname__}; "
            "expected a list of Conversation objects or dicts, a pyarrow Table, or a pandas or polars DataFrame"
        )
    return collector.finish(skip_hint or VALUE_HINT)
