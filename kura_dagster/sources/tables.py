"""Rows of Arrow data (a Parquet file, an HF dataset, an upstream table) for the shared conversion: only the
columns a ``column_map`` uses are decoded, batch by batch; the others are counted, not read."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import pyarrow as pa

from kura_dagster.sources.detect import table_chat_map
from kura_dagster.sources.result import Collector
from kura_dagster.sources.rows import ColumnMap, Resolved, feed_rows


def bind(cmap: ColumnMap, schema: pa.Schema, source: str) -> tuple[Resolved, list[str]]:
    """The resolved mapping and the columns to read (in the schema's order). A chat dataset's table (a
    ``conversation`` or ``conversations`` column of turns) takes that shape's mapping and keeps every column."""
    cols = table_chat_map(schema.names, cmap, schema).resolve(schema.names, source)
    used = cols.used()
    return cols, [n for n in schema.names if n in used or cols.rest_to_metadata]


def arrow_rows(batches: Iterable[pa.RecordBatch | pa.Table], start: int = 1) -> Iterator[tuple[str, Any, Any, None]]:
    number = start
    for batch in batches:
        for row in batch.to_pylist():
            yield f"row {number}", None, row, None
            number += 1


def read_batches(batches: Iterable[pa.RecordBatch | pa.Table], cols: Resolved, collector: Collector,
                 num_rows: int, unread: list[str]) -> None:
    """Feed the rows, and count each column no mapping uses once per row (its values are not read)."""
    feed_rows(arrow_rows(batches), cols, collector)
    for column in unread:
        collector.dropped[f"unmapped_field:{column}"] += num_rows


def read_table(table: pa.Table, cmap: ColumnMap, collector: Collector, source: str) -> None:
    cols, needed = bind(cmap, table.schema, source)
    unread = [n for n in table.schema.names if n not in needed]
    read_batches(table.select(needed).to_batches(max_chunksize=4096), cols, collector, table.num_rows, unread)
