"""The columnar fast path: a summaries checkpoint as Arrow-backed columns instead of pydantic objects.

Clustering needs the ``(n, d)`` embedding matrix and ``chat_ids``, not 100k models. ``load_summary_columns``
returns :class:`SummaryColumns`:

* from an HF dataset, the matrix is a zero-copy ``numpy`` view of the memory-mapped Arrow buffer (when the
  embeddings are one ``fixed_size_list<float32>`` chunk without nulls, which is what we write);
* from Parquet, row groups (~8 MB each) are decoded one at a time into one preallocated ``float32`` matrix,
  so the peak is the matrix plus one row group's decoding;
* from JSONL (or any other format) the models are loaded and converted: correct, just slower.

The other columns (summary text, request…) stay in an Arrow table; :meth:`SummaryColumns.to_models` builds
models from them when a stage needs them, by default without the embeddings, and
:meth:`SummaryColumns.models_for` builds them for some rows only (cluster naming reads a few examples per
cluster), reading the columns it is asked for one partition at a time.

``load_summary_columns(manager, name, columns=[...])`` is the selective load for stages that use a few fields and
no vectors (``cluster_facets``, ``cluster_growth``): ``chat_id`` and those fields (``"metadata.<key>"`` for one
metadata key), an ``(n, 0)`` embedding matrix, and nothing else parsed. Parquet reads those columns only; HF selects
them from the verified dataset; JSONL parses them with ``pyarrow.json`` and an explicit schema inside the JSONL
backend's own verified read (:func:`_jsonl_table`), giving exactly a model load's values.
"""

from __future__ import annotations

import contextlib
import functools
import io
import mmap
import os
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from kura_dagster.checkpoints import arrow, storage
from kura_dagster.checkpoints.arrow import new_hasher
from kura_dagster.checkpoints.base import BaseCheckpointManager
from kura_dagster.checkpoints.errors import CheckpointCorruptError
from kura_dagster.types import ConversationSummary


def embedding_matrix(summaries: Sequence[ConversationSummary]) -> np.ndarray:
    """The ``(n, d)`` float32 matrix of the summaries' embeddings; every summary must have one."""
    missing = [s.chat_id for s in summaries if not s.embedding]
    if missing:
        raise ValueError(
            f"{len(missing)} summaries have no embedding (first: {missing[:3]}); clustering needs one per summary. "
            "Re-run the summaries asset with an embedding model."
        )
    return np.asarray([s.embedding for s in summaries], dtype=np.float32)


EMBEDDING = "embedding"
MAX_DECODE_THREADS = 4
"""Parquet row groups decoded at once by the columnar path: each adds one group's decoding (~25 MB) to the peak."""


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
    _load_table: Any = field(default=None, repr=False)
    _parts: list[SummaryColumns] | None = field(default=None, repr=False)
    _models_without_embeddings: bool = field(default=False, repr=False)
    selected: tuple[str, ...] | None = None
    """The columns a selective load read (``None``: every column can be read); ``embeddings`` is then ``(n, 0)``."""

    def read_columns(self, names: Sequence[str] | None = None) -> pa.Table:
        """The other columns, or only ``names`` of them (read for this call and not kept). ``"metadata.<key>"``
        asks for one metadata key: the ``metadata`` column (all of it from Parquet/HF; from a selective JSONL
        load, a struct of the keys read). Columns that a selective load (:func:`load_summary_columns` with
        ``columns=``) did not read are read now, from the checkpoint."""
        if names is None:
            return self.columns()
        names = [n for n in names if n != EMBEDDING]
        wanted = list(dict.fromkeys(_column_of(n) for n in names))
        if self.table is not None and (self.selected is None or self._load_table is None
                                       or all(_was_read(n, self.selected) for n in names)):
            return self.table.select([n for n in wanted if n in self.table.column_names])
        if self._load_table is not None:
            return self._load_table(names)
        return self.columns().select([n for n in names if n == "chat_id"])

    def models_for(self, rows: Sequence[int] | np.ndarray, fields: Sequence[str] | None = None
                   ) -> list[ConversationSummary]:
        """Models (without embeddings) for ``rows`` only, in that order: what a stage that needs a few rows
        (cluster naming's examples) builds instead of every model. ``fields``: the columns to read (the others
        are left at their defaults; ``metadata`` is ``{}`` when not read); ``None`` reads every column.
        Partitions are read one at a time and not kept, so the peak is one partition's columns plus the models."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if len(rows) and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"row {int(rows.max() if rows.max() >= len(self) else rows.min())} is outside "
                             f"the {len(self)} summaries of {self.source or 'these columns'}")
        if self._parts is not None:
            offsets = np.cumsum([0] + [len(p) for p in self._parts])
            part_of = np.searchsorted(offsets, rows, side="right") - 1
            out: list[Any] = [None] * len(rows)
            order = np.argsort(part_of, kind="stable")
            bounds = np.flatnonzero(np.diff(part_of[order])) + 1
            for sel in np.split(order, bounds) if len(order) else []:
                j = int(part_of[sel[0]])
                for i, m in zip(sel.tolist(), self._parts[j].models_for(rows[sel] - offsets[j], fields)):
                    out[i] = m
            return out
        if self._models is not None:
            return [self._models[i].model_copy(update={"embedding": None}) for i in rows.tolist()]
        table = self.read_columns(None if fields is None else ["chat_id", *fields]).take(pa.array(rows))
        if self.meta is not None and self.meta.get("layout") != "kura":  # layout="kura": Kura's columns
            found = arrow.table_rows(table, self.meta)
        else:
            found = arrow.kura_rows(table, ConversationSummary, class_labels={} if self.format == "hf" else None)
        if fields is not None and "metadata" not in fields:
            for row in found:
                row.setdefault("metadata", {})
        return arrow.rows_to_models(found, ConversationSummary, self.source)

    def columns(self) -> pa.Table:
        """The other columns (summary, request, …) as Arrow, read on first use."""
        if self.table is None and self._load_table is not None:
            self.table, self._load_table = self._load_table(), None
        return self.table if self.table is not None else pa.table({"chat_id": self.chat_ids})

    def __len__(self) -> int:
        return len(self.chat_ids)

    def embedding_rows(self, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        """The embeddings of ``rows`` only, in that order (of partitions read on demand, see
        :class:`LazySummaryColumns`: only the partitions those rows are in are read)."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        parts = self._parts
        if parts is not None and any(isinstance(p, LazySummaryColumns) and not p.loaded for p in parts):
            offsets = np.cumsum([0] + [len(p) for p in parts])
            part_of = np.searchsorted(offsets, rows, side="right") - 1
            out = np.empty((len(rows), self.dim), dtype=np.float32)
            for j in np.unique(part_of).tolist():
                sel = part_of == j
                out[sel] = parts[j].embedding_rows(rows[sel] - offsets[j])
            return out
        return self.embeddings[rows]

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1]) if self.embeddings.ndim == 2 else 0

    @classmethod
    def coerce(cls, value: SummaryColumns | list[ConversationSummary]) -> SummaryColumns:
        """``value`` itself, or columns built from a list of summaries (the slower path)."""
        if isinstance(value, SummaryColumns):
            return value
        models = list(value)
        matrix = embedding_matrix(models) if models else np.empty((0, 0), dtype=np.float32)
        return cls([m.chat_id for m in models], matrix, format="models", _models=models)

    @classmethod
    def concat(cls, parts: Sequence[SummaryColumns]) -> SummaryColumns:
        """Several partitions' columns as one: one matrix (copied once; each part's matrix then becomes a view
        of it, so the vectors are held once), chat_ids in order, and the other columns read part by part when a
        stage asks for them."""
        parts = [p for p in parts if len(p)]
        if len(parts) == 1:
            return parts[0]
        if not parts:
            return cls([], np.empty((0, 0), dtype=np.float32), format="empty")
        if any(isinstance(p, LazySummaryColumns) and not p.loaded for p in parts):
            return LazySummaryColumns.of_parts(parts)
        dims = {p.dim for p in parts}
        if len(dims) != 1:
            raise ValueError(f"summaries partitions have embeddings of different sizes {sorted(dims)}; "
                             "re-materialize them with one embedding model")
        chat_ids = [cid for p in parts for cid in p.chat_ids]
        out = cls(chat_ids, np.concatenate([p.embeddings for p in parts]), source=f"{len(parts)} partitions",
                  format="+".join(dict.fromkeys(p.format for p in parts)))
        at = 0
        for p in parts:  # the parts' own matrices can go: the data is in the new one
            p.embeddings, at = out.embeddings[at:at + len(p)], at + len(p)
        out._parts = list(parts)
        out._load_table = lambda names=None: pa.concat_tables([p.read_columns(names) for p in parts],
                                                              promote_options="permissive")
        return out

    def to_models(self, *, with_embeddings: bool = False) -> list[ConversationSummary]:
        """The summaries as models (without embeddings unless asked: the matrix already holds them)."""
        if self._parts is not None:
            return [m for p in self._parts for m in p.to_models(with_embeddings=with_embeddings)]
        if self._models is not None:
            models = self._models
            if with_embeddings:
                if self._models_without_embeddings:  # the matrix holds them: put them back
                    return [m.model_copy(update={"embedding": v}) for m, v in zip(models, self.embeddings.tolist())]
                return models
            return [m.model_copy(update={"embedding": None}) for m in models]
        table = self.columns()
        if self.meta is not None and self.meta.get("layout") != "kura":  # layout="kura": Kura's columns
            rows = arrow.table_rows(table, self.meta)
        else:
            rows = arrow.kura_rows(table, ConversationSummary, class_labels={} if self.format == "hf" else None)
        if with_embeddings:
            for row, vec in zip(rows, self.embeddings.tolist()):
                row[EMBEDDING] = vec
        return arrow.rows_to_models(rows, ConversationSummary, self.source)


class LazySummaryColumns(SummaryColumns):
    """Summary columns whose chat ids are read now and everything else on first use: one checkpoint
    (:meth:`of_checkpoint`), or several partitions (:meth:`of_parts`) of which :meth:`embedding_rows` reads only
    the partitions the rows asked for are in. A stage that needs every vector (``embeddings``, a full k-means)
    reads them all then; an incremental taxonomy update reads only this run's partitions and a probe
    (``pipeline/taxonomy.py``). A checkpoint replaced between the two reads is refused, naming it."""

    def __init__(self, chat_ids: list[str], load: Any, dim: Any, source: str = "", format: str = "",
                 parts: list[SummaryColumns] | None = None) -> None:
        self._load, self._dim, self._matrix = load, dim, None
        super().__init__(chat_ids, np.empty((len(chat_ids), 0), dtype=np.float32), source=source, format=format)
        self._parts = parts

    # ``embeddings`` is read on first use (the dataclass field becomes this property's storage)
    @property  # type: ignore[override]
    def embeddings(self) -> np.ndarray:
        if self._matrix is None:
            self._matrix = self._load()
        return self._matrix

    @embeddings.setter
    def embeddings(self, value: np.ndarray) -> None:
        if getattr(self, "_load", None) is None or (value.ndim == 2 and value.shape[1]):
            self._matrix = value  # (a loaded matrix, or a view of a concatenated one)

    @property
    def loaded(self) -> bool:
        return self._matrix is not None

    @property
    def dim(self) -> int:
        return int(self._matrix.shape[1]) if self._matrix is not None and self._matrix.ndim == 2 else int(self._dim())

    @classmethod
    def of_checkpoint(cls, manager: BaseCheckpointManager, filename: str, model: type | None = None
                      ) -> LazySummaryColumns | None:
        """Chat ids now (:func:`load_chat_ids`), the rest of ``filename`` on first use (``None``: no checkpoint)."""
        chat_ids = load_chat_ids(manager, filename, model)
        if chat_ids is None:
            return None
        path = manager.get_checkpoint_path(filename)
        full: list[SummaryColumns] = []

        def whole() -> SummaryColumns:
            if not full:
                full.append(same(load_summary_columns(manager, filename)))
            return full[0]

        def same(loaded: SummaryColumns | None) -> SummaryColumns:
            if loaded is None or loaded.chat_ids != chat_ids:
                raise CheckpointCorruptError(path, "was replaced or removed while it was being read (its chat ids "
                                             "changed between two reads); run the step again")
            return loaded

        def table(names: Sequence[str] | None = None) -> pa.Table:
            if names is None:
                got = whole()
                out.meta = got.meta
                return got.columns()
            # some columns (e.g. a naming sample's fields): read without the embeddings
            wanted = tuple(dict.fromkeys(n for n in names if n not in ("chat_id", EMBEDDING)))
            got = same(load_summary_columns(manager, filename, columns=wanted))
            out.meta = got.meta
            return got.read_columns(names)

        def vectors() -> np.ndarray:
            got = whole()
            matrix = got.embeddings
            # from now on only ``out`` holds them (a concatenation replaces them by a view of its matrix, and
            # the partition's own copy must then go: at 1M conversations that copy is 1 GB)
            got.embeddings = np.empty((len(chat_ids), 0), dtype=np.float32)
            return matrix

        out = cls(chat_ids, vectors, lambda: whole().dim, source=str(path), format=manager.format_name)
        out._load_table = table
        return out

    def __repr__(self) -> str:  # (the dataclass's would read every vector)
        return f"LazySummaryColumns({len(self)} rows from {self.source or 'memory'}, loaded={self.loaded})"

    @classmethod
    def of_parts(cls, parts: Sequence[SummaryColumns]) -> LazySummaryColumns:
        parts = list(parts)

        def matrix() -> np.ndarray:
            dims = {p.dim for p in parts}
            if len(dims) != 1:
                raise ValueError(f"summaries partitions have embeddings of different sizes {sorted(dims)}; "
                                 "re-materialize them with one embedding model")
            whole = np.concatenate([p.embeddings for p in parts])
            at = 0
            for p in parts:  # the parts' own matrices can go: the data is in the new one
                p.embeddings, at = whole[at:at + len(p)], at + len(p)
            return whole

        out = cls([cid for p in parts for cid in p.chat_ids], matrix, lambda: parts[-1].dim,
                  source=f"{len(parts)} partitions", format="+".join(dict.fromkeys(p.format for p in parts)),
                  parts=parts)
        out._load_table = lambda names=None: pa.concat_tables([p.read_columns(names) for p in parts],
                                                              promote_options="permissive")
        return out

    def embedding_rows(self, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if self._matrix is None and self._parts is None and len(rows) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        return super().embedding_rows(rows)


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
    # Footer checksum, row count and structure are checked here; the data pages are checked by their CRC32s
    # as they are decoded (page_checksum_verification), which spares a second pass over the whole file.
    local = storage.is_local(path)
    try:  # one open file that every decoding thread reads (pread): all of them see the same version of the file
        source = pa.OSFile(storage.local_path(path)) if local else None
    except FileNotFoundError:
        raise CheckpointCorruptError(path, "the file disappeared while it was being read") from None
    pf, meta = manager.open_verified(path, verify=False, source=source)
    others = [n for n in pf.schema_arrow.names if n != EMBEDDING]
    md = pf.metadata
    n = md.num_rows
    if pf.schema_arrow.get_field_index(EMBEDDING) < 0:
        raise CheckpointCorruptError(path, "has no embedding column")
    starts = np.cumsum([0] + [md.row_group(g).num_rows for g in range(md.num_row_groups)])
    pool = pa.default_memory_pool()
    out: np.ndarray | None = None

    def decode(reader: Any, g: int) -> None:
        # The peak is the matrix plus the groups being decoded: each group's decoding buffers go back to the
        # system at once (the allocator would otherwise keep the largest for reuse).
        nonlocal out
        col = reader.read_row_group(g, columns=[EMBEDDING], use_threads=False).column(0)
        part, _ = _matrix_from_chunks(col, path)
        del col
        if len(part) == 0:
            return
        if out is None:  # the first group (decoded before any thread starts) tells the dimension
            out = np.empty((n, part.shape[1]), dtype=np.float32)
        if part.shape != (starts[g + 1] - starts[g], out.shape[1]):
            raise CheckpointCorruptError(path, f"row group {g} holds {part.shape} embeddings; the file's other rows "
                                         f"have {out.shape[1]} values each")
        out[starts[g]:starts[g + 1]] = part
        del part
        pool.release_unused()

    try:
        if md.num_row_groups:
            decode(pf, 0)
            if out is None and n:
                raise CheckpointCorruptError(path, f"row group 0 holds no embeddings but the file has {n} rows")
        rest = range(1, md.num_row_groups)
        threads = min(MAX_DECODE_THREADS, pa.cpu_count(), len(rest)) if local else 1
        if threads > 1:  # row groups decode in parallel (pyarrow releases the GIL), each thread with its own reader
            readers = threading.local()

            def job(g: int) -> None:
                if not hasattr(readers, "pf"):
                    readers.pf = pq.ParquetFile(source, metadata=md, page_checksum_verification=True)
                decode(readers.pf, g)

            with ThreadPoolExecutor(threads, thread_name_prefix="kura-parquet") as workers:
                list(workers.map(job, rest))
        else:
            for g in rest:
                decode(pf, g)
    except (pa.ArrowException, OSError) as exc:
        raise CheckpointCorruptError(path, f"damaged data ({exc})") from None
    matrix = out if out is not None else np.empty((0, 0), dtype=np.float32)
    chat_ids = manager._read_table(pf, path, ["chat_id"]).column(0).to_pylist()  # noqa: SLF001 - same package
    pool.release_unused()
    # The text columns are only read when a stage asks for them (to_models / columns()), from the same open file.
    return SummaryColumns(chat_ids, matrix, None, meta, str(path), "parquet", False,
                          _load_table=lambda names=None: manager._read_table(  # noqa: SLF001
                              pf, path, others if names is None else
                              [n for n in dict.fromkeys(map(_column_of, names)) if n in others]))


class _HashingReader(io.RawIOBase):
    """Reads ``raw`` while hashing every byte, so a file is verified in the same pass that decodes it."""

    def __init__(self, raw: Any) -> None:
        self._raw = raw
        self.hasher = new_hasher()
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._raw.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        self.hasher.update(data)
        self.count += n
        return n

    def drain(self) -> None:
        while self.read(8 << 20):
            pass


def _stream_mapped(local: str, take: Any) -> tuple[int, str]:
    """Feed each record batch of an Arrow stream file to ``take`` straight from a memory map, hashing the
    bytes in place and dropping the pages already consumed (``MADV_DONTNEED``), so the resident set holds
    about one batch of the file at a time. Returns (bytes, XXH3-128 hex digest)."""
    page = mmap.PAGESIZE
    with open(local, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size == 0:
            raise OSError("the file is empty")
        mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    hasher, hashed, dropped = new_hasher(), 0, 0
    view = memoryview(mm)
    try:
        source = pa.BufferReader(pa.py_buffer(mm))
        reader = pa.ipc.open_stream(source)
        for batch in reader:
            take(batch)
            del batch
            pos = source.tell()
            hasher.update(view[hashed:pos])
            hashed = pos
            if pos - dropped >= 8 * page and hasattr(mm, "madvise"):
                end = pos - pos % page
                mm.madvise(mmap.MADV_DONTNEED, dropped, end - dropped)
                dropped = end
        hasher.update(view[hashed:])
        del reader, source
    finally:
        view.release()
        with contextlib.suppress(BufferError):  # an Arrow buffer may still reference it: the GC closes it then
            mm.close()
    return size, hasher.hexdigest()


def _from_hf(manager: Any, path: Any) -> SummaryColumns:
    table, meta = manager.open_verified(path, verify=False)
    if EMBEDDING not in table.column_names:
        raise CheckpointCorruptError(path, "has no embedding column")
    col = table.column(EMBEDDING)
    others = table.drop_columns([EMBEDDING])
    if col.num_chunks <= 1:  # one record batch (what we write): a view of the memory-mapped file, no copy at all
        if meta is not None:  # verified now: one XXH3 pass over the very mapping the matrix views
            del col, others, table
            table, meta = manager.open_verified(path)
            col, others = table.column(EMBEDDING), table.drop_columns([EMBEDDING])
        matrix, zero_copy = _matrix_from_chunks(col, path)
        return SummaryColumns(others.column("chat_id").to_pylist(), matrix, others, meta, str(path), "hf", zero_copy)
    # Several record batches (Kura's datasets: save_to_disk's default is <= 1000 rows; ours only beyond
    # hf.WRITER_BATCH_BYTES), so the vectors are not one buffer. Copying them out of
    # the mapping would leave both the touched pages and the copy resident (2× the data); instead read the
    # files batch by batch into one preallocated matrix (the peak stays ~1× the data), hashing them as they are
    # read, so verification costs no second pass.
    if col.null_count:
        raise ValueError(f"{path}: {col.null_count} summaries have no embedding; clustering needs one per summary. "
                         "Re-run the summaries asset with an embedding model.")
    del col
    files = manager.data_files(path)
    if meta is not None:
        manager._verify(path, meta, skip=frozenset(f.name for f in files))  # noqa: SLF001
    n = table.num_rows
    out: np.ndarray | None = None
    row = 0
    for f in files:
        def take(batch: pa.RecordBatch) -> None:
            nonlocal out, row
            part, _ = _matrix_from_chunks(pa.chunked_array([batch.column(EMBEDDING)]), f)
            if out is None:
                out = np.empty((n, part.shape[1]), dtype=np.float32)
            if row + len(part) > n:
                raise CheckpointCorruptError(f, f"holds more than the {n} rows the dataset lists")
            out[row:row + len(part)] = part
            row += len(part)

        try:
            if storage.is_local(f):
                count, digest = _stream_mapped(storage.local_path(f), take)
            else:
                with manager.open_data_file(f) as raw:
                    source = _HashingReader(raw)
                    for batch in pa.ipc.open_stream(source):
                        take(batch)
                    source.drain()
                    count, digest = source.count, source.hasher.hexdigest()
        except (OSError, pa.ArrowException) as exc:
            raise CheckpointCorruptError(f, f"not a readable Arrow file ({exc})") from None
        expected = (meta or {}).get("files", {}).get(f.name)
        if expected is not None and (count != expected["bytes"] or arrow.CHECKSUM_PREFIX + digest != expected["checksum"]):
            raise CheckpointCorruptError(f, "checksum mismatch: the file was changed or damaged after it was saved")
    if row != n:
        raise CheckpointCorruptError(path, f"read {row} embeddings but the dataset has {n} rows")
    matrix = out if out is not None else np.empty((0, 0), dtype=np.float32)
    return SummaryColumns(others.column("chat_id").to_pylist(), matrix, others, meta, str(path), "hf", False)


def load_summary_columns(manager: BaseCheckpointManager, filename: str, columns: Sequence[str] | None = None
                         ) -> SummaryColumns | None:
    """Load summaries checkpoint ``filename`` as :class:`SummaryColumns`; ``None`` when it is absent. A
    :class:`~kura_dagster.checkpoints.multi.MultiCheckpointManager` serves it from the child its load strategy
    picks, through that child's own fast path.

    ``columns``: read only ``chat_id`` and these fields (``"metadata.<key>"`` for one metadata key), without the
    embeddings (``embeddings`` is then an ``(n, 0)`` matrix): see :func:`_load_selected`. Columns asked for later
    (:meth:`SummaryColumns.read_columns`) are read then."""
    if not manager.enabled:
        return None
    from kura_dagster.checkpoints.multi import MultiCheckpointManager

    if isinstance(manager, MultiCheckpointManager):
        loader = load_summary_columns if columns is None else functools.partial(load_summary_columns, columns=columns)
        loaded = manager.load_with_source(filename, loader=loader)
        return None if loaded is None else loaded.data
    path = manager.get_checkpoint_path(filename)
    if not manager.has_checkpoint(filename):
        return None
    from kura_dagster.checkpoints.arrow import read_consistently

    if columns is not None and EMBEDDING not in columns:
        return _load_selected(manager, path, tuple(dict.fromkeys(c for c in columns if c != "chat_id")))
    if manager.format_name == "parquet":
        return read_consistently(path, lambda: _from_parquet(manager, path))
    if manager.format_name == "hf":
        return read_consistently(path, lambda: _from_hf(manager, path))
    models = manager.load_checkpoint(filename, ConversationSummary) or []
    columns = SummaryColumns.coerce(models)
    # The models were loaded here and belong to nobody else: once their vectors are in the matrix, drop the
    # per-row Python floats (at 256 dimensions ~8 KB a row, most of a summary's memory).
    for m in models:
        m.embedding = None
    columns._models_without_embeddings = True
    columns.source, columns.format = str(path), manager.format_name
    return columns


# --- selective loads: some columns, no embeddings ---------------------------------------------------------------

JSONL_COLUMN_TYPES: dict[str, pa.DataType] = {
    "chat_id": pa.string(), "summary": pa.string(), "request": pa.string(), "topic": pa.string(),
    "languages": pa.list_(pa.string()), "task": pa.string(), "concerning_score": pa.int64(),
    "user_frustration": pa.int64(), "assistant_errors": pa.list_(pa.string()),
}
"""The summary fields a selective JSONL load reads as Arrow (plus ``metadata.<key>``), with their types."""
_SCORES = ("concerning_score", "user_frustration")  # 1-5, as ConversationSummary validates them
_KEY_TYPES = (pa.string(), pa.int64(), pa.bool_())
"""A metadata key's value types read by pyarrow (tried in this order per batch of lines); any other (floats,
objects, a mix within a batch) is read by the models, so a value is always exactly what a model load gives."""
ARROW_BATCH_BYTES = 4 << 20
"""Bytes of JSONL lines handed to one ``pyarrow.json.read_json`` call."""


def _column_of(name: str) -> str:
    """``"metadata.<key>"`` → ``"metadata"``; any other name as it is."""
    return "metadata" if name.startswith("metadata.") else name


def _was_read(name: str, selected: Sequence[str]) -> bool:
    return name == "chat_id" or name in selected or (name.startswith("metadata.") and "metadata" in selected)


def _load_selected(manager: BaseCheckpointManager, path: Any, selected: tuple[str, ...]) -> SummaryColumns:
    """``chat_id`` and the ``selected`` fields of the summaries at ``path``, without embeddings: Parquet reads only
    those columns (their pages' CRC32s checked as they are decoded, as the columnar path does); HF selects them from
    the verified memory-mapped dataset; JSONL is read by ``pyarrow.json`` inside the JSONL backend's own verified
    read (:func:`_jsonl_table`); any other format loads the models."""
    from kura_dagster.checkpoints.arrow import read_consistently

    fmt, meta = manager.format_name, None
    if fmt == "parquet":
        def read_parquet() -> tuple[pa.Table, Any]:
            pf, found = manager.open_verified(path, verify=False)
            present = set(pf.schema_arrow.names)
            names = [n for n in dict.fromkeys(["chat_id", *map(_column_of, selected)]) if n in present]
            return manager._read_table(pf, path, names), found  # noqa: SLF001 - same package

        table, meta = read_consistently(path, read_parquet)
        stored: tuple[str, ...] = tuple(dict.fromkeys(map(_column_of, selected)))
    elif fmt == "hf":
        whole, meta = read_consistently(path, lambda: manager.open_verified(path))
        names = [n for n in dict.fromkeys(["chat_id", *map(_column_of, selected)]) if n in whole.column_names]
        table, stored = whole.select(names), tuple(dict.fromkeys(map(_column_of, selected)))
    elif fmt == "jsonl":
        table, stored = _jsonl_table(manager, path, selected), selected
    else:
        models = manager.load_checkpoint(path.name[: -len(manager.suffix)] if manager.suffix else path.name,
                                         ConversationSummary) or []
        table, stored = _models_table(models, ["chat_id", *(c for c in selected if not c.startswith("metadata."))],
                                      [c.split(".", 1)[1] for c in selected if c.startswith("metadata.")]), selected
    if "chat_id" not in table.column_names:
        raise CheckpointCorruptError(path, "has no chat_id column")
    chat_ids = table.column("chat_id").to_pylist()
    return SummaryColumns(chat_ids, np.empty((len(chat_ids), 0), dtype=np.float32), table, meta, str(path), fmt,
                          selected=stored,
                          _load_table=lambda names: _load_selected(manager, path, tuple(names)).table)


def _key_values(values: list[Any]) -> pa.Array | list[Any]:
    """A metadata key's values as an Arrow array of one of :data:`_KEY_TYPES` (or all null), else the list."""
    try:
        array = pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        return values
    return array if array.type in _KEY_TYPES or pa.types.is_null(array.type) else values


def _models_table(models: Sequence[ConversationSummary], plain: Sequence[str], keys: Sequence[str]) -> pa.Table:
    out = pa.table({n: pa.array([getattr(m, n) for m in models], JSONL_COLUMN_TYPES.get(n)) for n in plain})
    if keys:
        out = out.append_column("metadata", _metadata_column(
            [{k: _key_values([m.metadata.get(k) for m in models]) for k in keys}], keys))
    return out


def _metadata_column(batches: list[dict[str, pa.Array | list[Any]]], keys: Sequence[str]) -> pa.ChunkedArray:
    """The metadata keys of every batch as one column: a struct when each key has one Arrow type throughout,
    else each row's keys as JSON text (what :func:`json.dumps` makes of the values a model load gives)."""
    import json

    types: dict[str, set[pa.DataType]] = {k: set() for k in keys}
    uniform = True
    for batch in batches:
        for k in keys:
            value = batch[k]
            if not isinstance(value, pa.Array):
                uniform = False
            elif not pa.types.is_null(value.type):
                types[k].add(value.type)
    if uniform and all(len(t) <= 1 for t in types.values()):
        final = {k: next(iter(t)) if t else pa.string() for k, t in types.items()}
        return pa.chunked_array([pa.StructArray.from_arrays([b[k].cast(final[k]) for k in keys], names=list(keys))
                                 for b in batches], pa.struct([(k, final[k]) for k in keys]))
    columns = {k: [v for b in batches for v in (b[k].to_pylist() if isinstance(b[k], pa.Array) else b[k])]
               for k in keys}
    rows = len(next(iter(columns.values()))) if columns else 0
    return pa.chunked_array([pa.array([json.dumps({k: columns[k][i] for k in keys}, ensure_ascii=False)
                                       for i in range(rows)], pa.string())])


def _failed_key(message: str, keys: Sequence[str]) -> str | None:
    """The metadata key whose type a pyarrow JSON error names (``Column(/metadata/<key>) changed from …``)."""
    return next((k for k in keys if f"Column(/metadata/{k})" in message), None)


_EMBEDDING_KEY = b'"embedding"'
_COMPACT_KEY = b'"embedding":'


def _without_embedding(line: bytes) -> bytes:
    """``line`` without its top-level ``"embedding"`` field when that is the object's last field (as Kura and
    we write it), so that the parser skips its ~256 numbers; else ``line`` unchanged. The cut is taken only when
    what follows the key is provably that field: a ``:`` after the key, no quote or brace after it but the
    object's closing one (so the key is not inside a string or a nested object), and a ``,`` (or the object's
    ``{``) before it, and a value that is ``null`` or one flat ``[…]``. The numbers themselves are not looked at:
    a column load does not validate the embeddings it does not read (a sidecar's checksum still covers them)."""
    if line.endswith(b"]}"):  # compact JSON (what pydantic and Kura write): three scans in C, no copy but the head
        start = line.rfind(b"[")
        at = start - len(_EMBEDDING_KEY) - 1
        if at > 0 and line.startswith(_COMPACT_KEY, at) and line.find(b"]", start) == len(line) - 2 \
                and line[at - 1:at] in (b",", b"{"):
            # (an unescaped '"' after ',' or '{' cannot be inside a string, and no list nests in this one)
            return line[:at - 1] + b"}" if line[at - 1:at] == b"," else b"{}"
    at = line.rfind(_EMBEDDING_KEY)
    if at < 0:
        return line
    after = at + len(_EMBEDDING_KEY)
    end = len(line.rstrip()) - 1  # the object's closing brace
    if line[after:after + 8].lstrip()[:1] != b":" or line.find(b'"', after) >= 0 or line.find(b"{", after) >= 0 \
            or line.find(b"}", after) != end:
        return line
    value = line[line.find(b":", after) + 1:end].strip()  # one flat list of numbers, or null
    if value != b"null" and not (value[:1] == b"[" and value.find(b"[", 1) < 0 and value.find(b"]") == len(value) - 1):
        return line
    head = line[:at].rstrip()
    if head.endswith(b","):
        return head[:-1] + b"}"
    return head + b"}" if head.endswith(b"{") else line


def _line_batches(chunks: Any) -> Iterator[tuple[list[bytes], list[int]]]:
    """The JSONL backend's verified ``(lines, line numbers)`` chunks regrouped into batches of about
    :data:`ARROW_BATCH_BYTES`, each read by one ``pyarrow.json`` call."""
    lines: list[bytes] = []
    numbers: list[int] = []
    size = 0
    for chunk_lines, chunk_numbers in chunks:
        lines += chunk_lines
        numbers += chunk_numbers
        size += sum(map(len, chunk_lines))
        if size >= ARROW_BATCH_BYTES:
            yield lines, numbers
            lines, numbers, size = [], [], 0
    if lines:
        yield lines, numbers


def _jsonl_table(manager: Any, path: Any, selected: Sequence[str]) -> pa.Table:
    """``chat_id`` and the ``selected`` fields of a JSONL summaries checkpoint, parsed by ``pyarrow.json`` with an
    explicit schema of those fields only (the others are skipped, not made into values); each line's embedding,
    when it is the last field, is cut off before parsing (:func:`_without_embedding`): it is most of the bytes.

    The lines come from the JSONL backend's own verified read (``_verified_stream``: the sidecar's checksum,
    hashed as the bytes go by, retried when a writer replaces the file), so a damaged or truncated file is refused
    with the same errors, naming the file and its lines. A batch of lines that pyarrow cannot read with the schema,
    or whose values a model would refuse (a missing ``chat_id`` or ``metadata``, a score outside 1-5), is validated
    by the backend's model parser instead: its error names the line, and a batch it accepts (e.g. ``3.0`` for a
    score, or a float metadata value) gives exactly the model's values."""
    import pyarrow.compute as pc
    import pyarrow.json as pj

    plain = ["chat_id", *(c for c in selected if not c.startswith("metadata.") and c != "chat_id")]
    keys = [c.split(".", 1)[1] for c in selected if c.startswith("metadata.")]
    unknown = [c for c in plain if c not in JSONL_COLUMN_TYPES]
    if unknown:
        raise ValueError(f"{path}: cannot read {unknown} as columns of a JSONL summaries checkpoint; the readable "
                         f"ones are {sorted(JSONL_COLUMN_TYPES)} and metadata.<key>")
    key_types = {k: pa.string() for k in keys}  # the type that read the last batch is tried first on the next

    def plausible(table: pa.Table, n: int) -> bool:
        if table.num_rows != n or table.column("chat_id").null_count:
            return False
        if keys and table.column("metadata").null_count:
            return False
        for name in (s for s in _SCORES if s in plain):
            low, high = pc.min_max(table.column(name)).values()
            if low.is_valid and (low.as_py() < 1 or high.as_py() > 5):
                return False
        return True

    def read(lines: list[bytes], numbers: list[int]) -> tuple[pa.Table, dict[str, Any]]:
        data = b"\n".join([_without_embedding(line) for line in lines])
        tried = {k: {key_types[k]} for k in keys}
        while True:
            fields = [(n, JSONL_COLUMN_TYPES[n]) for n in plain]
            if keys:
                fields.append(("metadata", pa.struct([(k, key_types[k]) for k in keys])))
            try:
                table = pj.read_json(
                    pa.BufferReader(data),
                    read_options=pj.ReadOptions(use_threads=False, block_size=len(data) + 1),
                    parse_options=pj.ParseOptions(explicit_schema=pa.schema(fields),
                                                  unexpected_field_behavior="ignore"))
            except pa.ArrowInvalid as exc:
                key = _failed_key(str(exc), keys)
                following = next((t for t in _KEY_TYPES if t not in tried[key]), None) if key else None
                if following is None:
                    break
                key_types[key] = following
                tried[key].add(following)
                continue
            if not plausible(table, len(lines)):
                break
            meta = table.column("metadata").combine_chunks() if keys else None
            return table.select(plain), {k: meta.field(k) for k in keys}
        models = [m for chunk in manager._parse_chunks(path, [(lines, numbers)], ConversationSummary)  # noqa: SLF001
                  for m in chunk]
        return _models_table(models, plain, []), {k: _key_values([m.metadata.get(k) for m in models]) for k in keys}

    def parse(chunks: Any) -> tuple[list[pa.Table], list[dict[str, Any]]]:
        tables: list[pa.Table] = []
        metas: list[dict[str, Any]] = []
        for lines, numbers in _line_batches(chunks):
            table, meta = read(lines, numbers)
            tables.append(table)
            metas.append(meta)
        return tables, metas

    (tables, metas), version = manager._verified_stream(path, parse)  # noqa: SLF001 - same package
    schema = pa.schema([(n, JSONL_COLUMN_TYPES[n]) for n in plain])
    table = pa.concat_tables(tables) if tables else schema.empty_table()
    if keys:
        table = table.append_column("metadata", _metadata_column(metas, keys) if metas else
                                    pa.chunked_array([], pa.struct([(k, pa.string()) for k in keys])))
    if version is not None and version.get("rows") is not None and version["rows"] != table.num_rows:
        raise CheckpointCorruptError(path, f"holds {table.num_rows} rows but was saved with {version['rows']}")
    return table


# --- chat ids only: any stage's checkpoint ---------------------------------------------------------------------


def load_chat_ids(manager: BaseCheckpointManager, filename: str, model: type | None = None) -> list[str] | None:
    """The ``chat_id`` of every row of checkpoint ``filename`` (any stage whose rows have one), in stored order,
    without building the rows; ``None`` when it is absent. Parquet reads the one column, HF selects it from the
    verified dataset, JSONL parses only that field of each verified line with ``pyarrow.json`` (a file it cannot
    read that way is loaded as ``model`` rows, so a damaged line is refused naming it, as a full load would). A
    per-partition check of a ten-day backfill of 7 KB conversations held ~5 GB of conversation models to compare
    two sets of ids."""
    if not manager.enabled:
        return None
    from kura_dagster.checkpoints.multi import MultiCheckpointManager

    if isinstance(manager, MultiCheckpointManager):
        loaded = manager.load_with_source(filename, loader=lambda m, f: load_chat_ids(m, f, model))
        return None if loaded is None else loaded.data
    if not manager.has_checkpoint(filename):
        return None
    from kura_dagster.checkpoints.arrow import read_consistently

    path = manager.get_checkpoint_path(filename)
    fmt = manager.format_name
    table = None
    if fmt == "parquet":
        def read_parquet() -> pa.Table | None:
            pf, _ = manager.open_verified(path, verify=False)
            if "chat_id" not in pf.schema_arrow.names:
                return None
            return manager._read_table(pf, path, ["chat_id"])  # noqa: SLF001 - same package

        table = read_consistently(path, read_parquet)
    elif fmt == "hf":
        whole, _ = read_consistently(path, lambda: manager.open_verified(path))
        table = whole.select(["chat_id"]) if "chat_id" in whole.column_names else None
    elif fmt == "jsonl":
        table = _jsonl_ids(manager, path)
    if table is None:  # another format, or rows stored without a chat_id column
        return [row.chat_id for row in manager.load_checkpoint(filename, model) or []]
    return table.column("chat_id").to_pylist()


def _jsonl_ids(manager: Any, path: Any) -> pa.Table | None:
    """The ``chat_id`` column of a verified JSONL checkpoint, or ``None`` when a batch of lines does not read as
    JSON objects with a string ``chat_id`` (the caller then loads the rows, whose parser names the bad line)."""
    import pyarrow.json as pj

    schema = pa.schema([("chat_id", pa.string())])

    def read(lines: list[bytes]) -> pa.Table | None:
        data = b"\n".join(lines)
        try:
            table = pj.read_json(pa.BufferReader(data),
                                 read_options=pj.ReadOptions(use_threads=False, block_size=len(data) + 1),
                                 parse_options=pj.ParseOptions(explicit_schema=schema,
                                                               unexpected_field_behavior="ignore"))
        except pa.ArrowInvalid:
            return None
        return table if table.num_rows == len(lines) and not table.column("chat_id").null_count else None

    def parse(chunks: Any) -> list[pa.Table] | None:
        tables: list[pa.Table] = []
        for lines, _numbers in _line_batches(chunks):
            if (table := read(lines)) is None:
                for _rest in chunks:  # read (and hash) the rest, so the file is still verified
                    pass
                return None
            tables.append(table)
        return tables

    tables, version = manager._verified_stream(path, parse)  # noqa: SLF001 - same package
    if tables is None:
        return None
    table = pa.concat_tables(tables) if tables else schema.empty_table()
    if version is not None and version.get("rows") is not None and version["rows"] != table.num_rows:
        raise CheckpointCorruptError(path, f"holds {table.num_rows} rows but was saved with {version['rows']}")
    return table
