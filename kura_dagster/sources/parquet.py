"""Parquet files (``PAR1``), read with pyarrow through fsspec, one row group batch at a time, with a
``column_map`` (the default columns are Kura's: ``chat_id``, ``created_at``, ``messages``, ``metadata``).
``messages`` may be a list of structs or a JSON string (as Kura's own Parquet checkpoints store it), ``metadata``
a struct, a map or a JSON string. Rows are numbered from 1 across the file (``row 12``)."""

from __future__ import annotations

from typing import Any

import pyarrow.parquet as pq

from kura_dagster.sources.result import Collector
from kura_dagster.sources.rows import ColumnMap
from kura_dagster.sources.tables import bind, read_batches
from kura_dagster.types.conversation import ConversationInputError

MAGIC = b"PAR1"


def read_parquet(fs: Any, path: str, name: str, cmap: ColumnMap, collector: Collector) -> None:
    with fs.open(path, "rb") as fh:
        try:
            pf = pq.ParquetFile(fh)
        except Exception as exc:  # pyarrow raises several kinds for a damaged file; say which file
            raise ConversationInputError(f"{name}: not a readable Parquet file ({exc})") from exc
        cols, needed = bind(cmap, pf.schema_arrow, name)
        unread = [n for n in pf.schema_arrow.names if n not in needed]
        read_batches(pf.iter_batches(batch_size=4096, columns=needed), cols, collector,
                     pf.metadata.num_rows, unread)
