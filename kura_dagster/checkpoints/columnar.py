"""The columnar fast path: a summaries checkpoint as Arrow-backed columns instead of pydantic objects.

Clustering needs the ``(n, d)`` embedding matrix and ``chat_ids``, not 100k models. ``load_summary_columns``
returns :class:`SummaryColumns`:

* from an HF dataset, the matrix is a zero-copy ``numpy`` view of the memory-mapped Arrow buffer (when the
  embeddings are one ``fixed_size_list<float32>`` chunk without nulls, which is what we write);
* from Parquet, row groups are decoded one at a time into one preallocated ``float32`` matrix, so the peak
  is the matrix plus one row group;
* from JSONL (or any other format) the models are loaded and converted: correct, just slower.

The other columns (summary text, request…) stay in an Arrow table; :meth:`SummaryColumns.to_models` builds
models from them when a stage needs them (cluster naming does), by default without the embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from kura_dagster.checkpoints.base import BaseCheckpointManager
from kura_dagster.checkpoints.errors import CheckpointCorruptError
from kura_dagster.types import ConversationSummary

EMBEDDING = "embedding"


@dataclass
class SummaryColumns:
    """Summaries as columns: ``chat_ids``, the ``embeddings`` matrix and the other columns as Arrow."""

    chat_ids: list[str]
    embeddings: np.ndarray
    table: pa.Table | None = None
    meta: dict[str, Any] | None = None
    source: str = ""
    format: str = ""
    zero_copy: bool = False
    _models: list[ConversationSummary] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.chat_ids)

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1]) if self.embeddings.ndim == 2 else 0

    @classmethod
    def coerce(cls, value: SummaryColumns | list[ConversationSummary]) -> SummaryColumns:
        """``value`` itself, or columns built from a list of summaries (the slower path)."""
        if isinstance(value, SummaryColumns):
            return value
        from kura_dagster.pipeline.cluster import embedding_matrix

        models = list(value)
        matrix = embedding_matrix(models) if models else np.empty((0, 0), dtype=np.float32)
        return cls([m.chat_id for m in models], matrix, format="models", _models=models)

    def to_models(self, *, with_embeddings: bool = False) -> list[ConversationSummary]:
        """The summaries as models (without embeddings unless asked: the matrix already holds them)."""
        if self._models is not None:
            models = self._models
            if with_embeddings:
                return models
            return [m.model_copy(update={"embedding": None}) for m in models]
        from kura_dagster.checkpoints import arrow

        table = self.table if self.table is not None else pa.table({"chat_id": self.chat_ids})
        if self.meta is not None:
            rows = arrow.table_rows(table, self.meta)
        else:
            rows = arrow.kura_rows(table, ConversationSummary, class_labels=None)
        if with_embeddings:
            for row, vec in zip(rows, self.embeddings.tolist()):
                row[EMBEDDING] = vec
        return arrow.rows_to_models(rows, ConversationSummary, self.source)


def _matrix_from_chunks(col: pa.ChunkedArray, source: object) -> tuple[np.ndarray, bool]:
    """(n, d) float32 from a fixed-size or variable list column; zero-copy when one clean float32 chunk."""
    n = len(col)
    if col.null_count:
        raise ValueError(f"{source}: {col.null_count} summaries have no embedding; clustering needs one per summary. "
                         "Re-run the summaries asset with an embedding model.")
    typ = col.type
    if pa.types.is_fixed_size_list(typ):
        d = typ.list_size
        if col.num_chunks == 1 and typ.value_type == pa.float32():
            chunk = col.chunk(0)
            flat = chunk.values.slice(chunk.offset * d, n * d).to_numpy(zero_copy_only=True)
            return flat.reshape(n, d), True
    out: np.ndarray | None = None
    row = 0
    for chunk in col.chunks:
        m = len(chunk)
        if m == 0:
            continue
        flat = chunk.flatten().to_numpy(zero_copy_only=False)
        d = len(flat) // m
        if d * m != len(flat):
            raise CheckpointCorruptError(source, "embeddings have different lengths; cannot form a matrix")
        if out is None:
            out = np.empty((n, d), dtype=np.float32)
        elif out.shape[1] != d:
            raise CheckpointCorruptError(source, "embeddings have different lengths; cannot form a matrix")
        out[row:row + m] = flat.reshape(m, d)
        row += m
    return (out if out is not None else np.empty((0, 0), dtype=np.float32)), False


def _from_parquet(manager: Any, path: Any) -> SummaryColumns:
    pf, meta = manager.open_verified(path)
    others = [n for n in pf.schema_arrow.names if n != EMBEDDING]
    table = manager._read_table(pf, path, others)  # noqa: SLF001 - same package
    n = pf.metadata.num_rows
    emb_index = pf.schema_arrow.get_field_index(EMBEDDING)
    if emb_index < 0:
        raise CheckpointCorruptError(path, "has no embedding column")
    out: np.ndarray | None = None
    row = 0
    try:
        for g in range(pf.metadata.num_row_groups):
            col = pf.read_row_group(g, columns=[EMBEDDING]).column(0)
            part, _ = _matrix_from_chunks(col, path)
            if out is None:
                out = np.empty((n, part.shape[1]), dtype=np.float32)
            out[row:row + len(part)] = part
            row += len(part)
            del col, part
    except (pa.ArrowException, OSError) as exc:
        raise CheckpointCorruptError(path, f"damaged data ({exc})") from None
    matrix = out if out is not None else np.empty((0, 0), dtype=np.float32)
    return SummaryColumns(table.column("chat_id").to_pylist(), matrix, table, meta, str(path), "parquet", False)


def _from_hf(manager: Any, path: Any) -> SummaryColumns:
    table, meta = manager.open_verified(path)
    if EMBEDDING not in table.column_names:
        raise CheckpointCorruptError(path, "has no embedding column")
    col = table.column(EMBEDDING)
    others = table.drop_columns([EMBEDDING])
    if col.num_chunks <= 1:  # one record batch: a view of the memory-mapped file, no copy at all
        matrix, zero_copy = _matrix_from_chunks(col, path)
        return SummaryColumns(others.column("chat_id").to_pylist(), matrix, others, meta, str(path), "hf", zero_copy)
    # save_to_disk writes record batches of <= 1000 rows, so the vectors are not one buffer. Copying them out of
    # the mapping would leave both the touched pages and the copy resident (2× the data); instead read the
    # files batch by batch into one preallocated matrix (the peak stays ~1× the data).
    del col
    if col_nulls := table.column(EMBEDDING).null_count:
        raise ValueError(f"{path}: {col_nulls} summaries have no embedding; clustering needs one per summary. "
                         "Re-run the summaries asset with an embedding model.")
    n = table.num_rows
    out: np.ndarray | None = None
    row = 0
    for f in manager.data_files(path):
        with manager.open_data_file(f) as source:
            reader = pa.ipc.open_stream(source)
            for batch in reader:
                part, _ = _matrix_from_chunks(pa.chunked_array([batch.column(EMBEDDING)]), f)
                if out is None:
                    out = np.empty((n, part.shape[1]), dtype=np.float32)
                out[row:row + len(part)] = part
                row += len(part)
                del batch, part
    if row != n:
        raise CheckpointCorruptError(path, f"read {row} embeddings but the dataset has {n} rows")
    matrix = out if out is not None else np.empty((0, 0), dtype=np.float32)
    return SummaryColumns(others.column("chat_id").to_pylist(), matrix, others, meta, str(path), "hf", False)


def load_summary_columns(manager: BaseCheckpointManager, filename: str) -> SummaryColumns | None:
    """Load summaries checkpoint ``filename`` as :class:`SummaryColumns`; ``None`` when it is absent."""
    if not manager.enabled:
        return None
    path = manager.get_checkpoint_path(filename)
    if not manager.has_checkpoint(filename):
        return None
    from kura_dagster.checkpoints.arrow import read_consistently

    if manager.format_name == "parquet":
        return read_consistently(path, lambda: _from_parquet(manager, path))
    if manager.format_name == "hf":
        return read_consistently(path, lambda: _from_hf(manager, path))
    columns = SummaryColumns.coerce(manager.load_checkpoint(filename, ConversationSummary) or [])
    columns.source, columns.format = str(path), manager.format_name
    return columns
