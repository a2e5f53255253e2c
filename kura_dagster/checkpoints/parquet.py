"""Parquet checkpoints: ``<dir>/<name>.parquet`` with native Arrow types (see :mod:`.arrow`).

Integrity: pages carry CRC32 checksums (verified by pyarrow on read), and the footer's key-value metadata
holds ``kura_dagster.integrity`` = row count, the byte length of everything before the footer and its
XXH3-128 checksum, plus the XXH3-128 of the footer itself (computed with its own digits zeroed and then
patched in), all verified on every load. A truncated, emptied or altered file raises
:class:`CheckpointCorruptError` naming it; no partial data is returned. Files Kura wrote (JSON-string
columns, no ``kura_dagster`` metadata) are read with Kura's decoding.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel
from upath import UPath

from kura_dagster.checkpoints import arrow, kura_layout, storage
from kura_dagster.checkpoints.base import SCHEMA_VERSION, BaseCheckpointManager, SavedCheckpoint, identity_of
from kura_dagster.checkpoints.errors import CheckpointCorruptError

T = TypeVar("T", bound=BaseModel)
logger = logging.getLogger(__name__)

INTEGRITY_KEY = b"kura_dagster.integrity"
COMPRESSIONS = ("snappy", "gzip", "brotli", "lz4", "zstd", "none")
# Row groups: with embeddings ~8 MB each (~1,300 rows at 1536-d), because decoding a group of vectors needs about
# 3× its size on top (the compressed chunk, repetition levels, the decoded array), so the columnar path peaks at
# the matrix plus ~25 MB (32 MB groups cost ~110 MB, ~1.26× the 586 MB matrix of 100k×1536 summaries; measured in
# benchmarks/results/checkpoint_formats.md). Without embeddings, up to 256 MB / 1M rows, because every group
# restarts the dictionaries (Kura writes one group).
TARGET_ROW_GROUP_BYTES = 8 << 20
TEXT_ROW_GROUP_BYTES = 256 << 20
MAX_ROW_GROUP_ROWS = 1 << 20


FOOTER_MARK = b'"footer_checksum": "xxh3_128:'
FOOTER_PLACEHOLDER = "0" * 32


class _HashingWriter(io.RawIOBase):
    """Passes bytes through to ``fh`` while hashing and counting them; after :meth:`capture` it also keeps
    a copy of what follows (the footer, a few KB)."""

    def __init__(self, fh: Any) -> None:
        self._fh = fh
        self.hasher = arrow.new_hasher()
        self.count = 0
        self.tail: bytearray | None = None

    def writable(self) -> bool:
        return True

    def capture(self) -> None:
        self.tail = bytearray()

    def write(self, b: Any) -> int:
        data = bytes(b)
        self._fh.write(data)
        self.hasher.update(data)
        self.count += len(data)
        if self.tail is not None:
            self.tail += data
        return len(data)


def _footer_checksum(footer: bytes) -> tuple[int, str]:
    """(offset of the footer checksum's hex digits in ``footer``, XXH3-128 of ``footer`` with them zeroed)."""
    at = footer.find(FOOTER_MARK)
    if at < 0:
        raise ValueError("no footer checksum in the footer")
    at += len(FOOTER_MARK)
    blank = footer[:at] + FOOTER_PLACEHOLDER.encode() + footer[at + 32:]
    h = arrow.new_hasher()
    h.update(blank)
    return at, h.hexdigest()


def _seekable(fh: Any) -> bool:
    try:
        return bool(fh.seekable())
    except (AttributeError, OSError, ValueError):
        return False


def leaf_paths(name: str, typ: pa.DataType) -> list[str]:
    """Parquet column paths under an Arrow field (``metadata.model``, ``languages.list.element``): dictionary
    encoding is set per leaf column, so nested columns need their leaf paths."""
    if pa.types.is_struct(typ):
        return [p for child in typ for p in leaf_paths(f"{name}.{child.name}", child.type)]
    if pa.types.is_list(typ) or pa.types.is_large_list(typ) or pa.types.is_fixed_size_list(typ):
        return leaf_paths(f"{name}.list.element", typ.value_type)
    return [name]


def leaf_arrays(name: str, col: pa.ChunkedArray) -> list[tuple[str, pa.Array]]:
    """(Parquet column path, values) for every leaf column under an Arrow column."""
    arr = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    typ = arr.type
    if pa.types.is_struct(typ):
        return [p for i, child in enumerate(typ)
                for p in leaf_arrays(f"{name}.{child.name}", pa.chunked_array([arr.field(i)]))]
    if pa.types.is_list(typ) or pa.types.is_large_list(typ) or pa.types.is_fixed_size_list(typ):
        return leaf_arrays(f"{name}.list.element", pa.chunked_array([arr.flatten()]))
    return [(name, arr)]


def repetitive(values: pa.Array) -> bool:
    """Is dictionary encoding worth it? Only when values repeat (a dictionary of unique text is pure overhead)."""
    if len(values) == 0:
        return True
    return pc.count_distinct(values).as_py() <= len(values) // 2


def row_group_rows(table: pa.Table, has_vectors: bool) -> int:
    """Rows per row group: about ``TARGET_ROW_GROUP_BYTES`` of Arrow data with embeddings, else
    ``TEXT_ROW_GROUP_BYTES`` (each group is read, and can be streamed, on its own)."""
    if table.num_rows == 0:
        return 1
    per_row = max(1, table.nbytes // table.num_rows)
    target = TARGET_ROW_GROUP_BYTES if has_vectors else TEXT_ROW_GROUP_BYTES
    return int(max(256, min(MAX_ROW_GROUP_ROWS, target // per_row)))


def _kura_columns(meta: dict[str, Any] | None) -> bool:
    """Does a file hold Kura's columns (a file Kura wrote, or one we wrote with ``layout="kura"``)?"""
    return meta is None or meta.get("layout") == "kura"


class ParquetCheckpointManager(BaseCheckpointManager):
    """Kura's ``ParquetCheckpointManager`` API, with native types, integrity checks and atomic writes."""

    format_name = "parquet"
    suffix = ".parquet"

    def __init__(
        self,
        checkpoint_dir: Any,
        *,
        enabled: bool = True,
        compression: str | None = "snappy",
        embedding_dtype: str = "float32",
        storage_options: dict[str, Any] | None = None,
        layout: str = "native",
    ) -> None:
        super().__init__(checkpoint_dir, enabled=enabled, storage_options=storage_options)
        self.layout = kura_layout.check_layout(layout)
        codec = (compression or "none").lower()
        if codec not in COMPRESSIONS:
            raise ValueError(f"compression must be one of {', '.join(COMPRESSIONS)}; got {compression!r}")
        arrow.check_embedding_dtype(embedding_dtype)
        self.compression = codec
        self.embedding_dtype = embedding_dtype

    def __repr__(self) -> str:
        return (f"ParquetCheckpointManager({str(self.checkpoint_dir)!r}, enabled={self.enabled}, "
                f"compression={self.compression!r}, layout={self.layout!r})")

    # --- write -----------------------------------------------------------------------------------------
    def _write(self, path: UPath, models: list[BaseModel], model: type[BaseModel] | None, **_: Any) -> SavedCheckpoint:
        kind = kura_layout.kind_to_write(self.layout, model, path)
        if kind is not None:
            return self._write_kura(path, model, kind, [models])  # type: ignore[arg-type]
        table = arrow.models_to_table(models, model, embedding_dtype=self.embedding_dtype)
        meta = arrow.kura_meta(table.schema) or {}
        dictionary_columns = [path for f in table.schema if meta["columns"].get(f.name, {}).get("encoding")
                              not in ("embedding", "json")
                              for path, leaf in leaf_arrays(f.name, table.column(f.name)) if repetitive(leaf)]
        # No min/max statistics for long free text (summaries, descriptions): nobody range-filters prose, and each
        # page would carry two copies of a long string.
        prose = {f.name for f in table.schema if pa.types.is_string(f.type) and table.num_rows
                 and (pc.sum(pc.binary_length(table.column(f.name))).as_py() or 0) > 64 * table.num_rows}
        statistics = [path for f in table.schema if f.name not in prose for path in leaf_paths(f.name, f.type)]
        has_vectors = any(enc.get("encoding") == "embedding" and table.column(name).null_count < table.num_rows
                          for name, enc in meta["columns"].items())
        # Our metadata goes in the footer's key-value metadata once (not also inside ARROW:schema).
        plain = table.replace_schema_metadata(None)
        size, integrity = self._write_file(path, plain.schema, [(plain, row_group_rows(table, has_vectors))], meta,
                                           use_dictionary=dictionary_columns, write_statistics=statistics)
        extra: dict[str, Any] = {"codec": self.compression, "layout": "native"}
        emb = meta["columns"].get("embedding")
        if emb:
            extra["embedding_dtype"] = emb["dtype"]
            if emb.get("rounded"):
                extra["embedding_rounded"] = emb["rounded"]
                logger.warning("%s: %d embedding values were rounded to float32 (use embedding_dtype='float64' "
                               "to keep full precision)", path, emb["rounded"])
        return SavedCheckpoint(name=path.name, path=str(path), format=self.format_name, rows=table.num_rows,
                               bytes=size, model=meta.get("model"), checksum=integrity["checksum"], extra=extra)

    def _write_kura(self, path: UPath, model: type[BaseModel], kind: str, batches: Iterable[Sequence[BaseModel]]
                    ) -> SavedCheckpoint:
        """Kura's Parquet columns (:mod:`.kura_layout`), plus our metadata and integrity record in the footer."""
        schema = kura_layout.PARQUET_SCHEMAS[kind]
        meta: dict[str, Any] = {"format": arrow.FORMAT_TAG, "schema_version": SCHEMA_VERSION,
                                "model": identity_of(model), "layout": "kura", "kura_type": kind, "rows": 0,
                                "columns": {}, "computed": []}
        vectors = kind == "summaries"
        tables = ((t, row_group_rows(t, vectors)) for t in
                  (kura_layout.parquet_table(b, kind) for b in batches if len(b)))
        size, integrity = self._write_file(path, schema, tables, meta, use_dictionary=True, write_statistics=True)
        return SavedCheckpoint(name=path.name, path=str(path), format=self.format_name, rows=integrity["rows"],
                               bytes=size, model=meta["model"], checksum=integrity["checksum"],
                               extra={"codec": self.compression, "layout": "kura", "embedding_dtype": "float64"})

    def _write_file(self, path: UPath, schema: pa.Schema, tables: Iterable[tuple[pa.Table, int]],
                    meta: dict[str, Any], **writer_options: Any) -> tuple[int, dict[str, Any]]:
        """Write ``(table, row group rows)`` pairs atomically to ``path`` with our metadata (``rows`` filled in)
        and integrity record in the footer. Returns (bytes, integrity record)."""
        integrity: dict[str, Any] = {}

        def write(fh: Any) -> None:
            # The data region's checksum goes in the footer; the footer's own checksum is patched into a
            # placeholder inside it once the footer is written (in place, or in memory for object stores).
            seekable = _seekable(fh)
            target = fh if seekable else io.BytesIO()
            sink = _HashingWriter(target)
            rows = 0
            with pq.ParquetWriter(sink, schema, compression=self.compression, write_page_checksum=True,
                                  store_schema=True, **writer_options) as writer:
                for table, group_rows in tables:
                    writer.write_table(table, row_group_size=group_rows)
                    rows += table.num_rows
                meta["rows"] = rows
                integrity.update(rows=rows, data_bytes=sink.count, checksum=arrow.checksum_text(sink.hasher),
                                 footer_checksum="xxh3_128:" + FOOTER_PLACEHOLDER)
                sink.capture()
                writer.add_key_value_metadata({arrow.META_KEY: json.dumps(meta).encode(),
                                               INTEGRITY_KEY: json.dumps(integrity).encode()})
            at, digest = _footer_checksum(bytes(sink.tail or b""))
            if seekable:
                fh.seek(integrity["data_bytes"] + at)
                fh.write(digest.encode())
                fh.seek(0, io.SEEK_END)
            else:
                buf = target.getbuffer()
                buf[integrity["data_bytes"] + at: integrity["data_bytes"] + at + 32] = digest.encode()
                del buf
                fh.write(target.getvalue())

        return storage.atomic_write_file(path, write), integrity

    # --- open and verify ---------------------------------------------------------------------------------
    def _source(self, path: UPath) -> Any:
        return storage.local_path(path) if storage.is_local(path) else path.open("rb")

    def open_verified(self, path: UPath, *, verify: bool = True, source: Any = None
                      ) -> tuple[pq.ParquetFile, dict[str, Any] | None]:
        """The open file and our metadata (``None`` for a Kura file), after the integrity checks. ``source`` is an
        already open file to read (e.g. one that several readers share), else ``path`` is opened. On an object
        store a verified read downloads the object whole, in one GET (one consistent version, one request instead
        of many ranges); otherwise only the ranges that are read (the footer, for a description)."""
        blob = None
        try:
            if source is None and verify and not storage.is_local(path):
                blob = storage.read_bytes(path)
                source, size = pa.BufferReader(blob), len(blob)
            else:
                size = path.stat().st_size
        except FileNotFoundError:
            raise CheckpointCorruptError(path, "the file disappeared while it was being read") from None
        if size == 0:
            raise CheckpointCorruptError(path, "the file is empty (0 bytes): it was truncated")
        try:
            pf = pq.ParquetFile(self._source(path) if source is None else source, page_checksum_verification=True)
            meta = arrow.kura_meta(pf.metadata.metadata)
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise CheckpointCorruptError(path, f"not a readable Parquet file ({exc}); it is truncated or damaged") from None
        if meta is None:
            return pf, None
        raw = (pf.metadata.metadata or {}).get(INTEGRITY_KEY)
        try:
            integrity = json.loads(raw)
            rows, data_bytes, checksum = integrity["rows"], integrity["data_bytes"], integrity["checksum"]
        except (TypeError, ValueError, KeyError):
            raise CheckpointCorruptError(path, "the integrity record (kura_dagster.integrity) is missing or damaged") from None
        if pf.metadata.num_rows != rows or meta.get("rows") != rows:
            raise CheckpointCorruptError(path, f"holds {pf.metadata.num_rows} rows but was saved with {rows}")
        footer_start = size - 8 - pf.metadata.serialized_size
        if footer_start != data_bytes:
            raise CheckpointCorruptError(path, f"the data region is {footer_start} bytes but was saved as {data_bytes}")
        if blob is not None:
            footer = blob[footer_start:]
        else:
            with (open(storage.local_path(path), "rb") if storage.is_local(path) else path.open("rb")) as fh:
                fh.seek(footer_start)
                footer = fh.read()
        try:
            at, digest = _footer_checksum(footer)
        except ValueError:
            raise CheckpointCorruptError(path, "the footer checksum is missing") from None
        if footer[at:at + 32].decode("ascii", "replace") != digest:
            raise CheckpointCorruptError(path, "footer checksum mismatch: the file's metadata was changed or damaged")
        if verify:
            if blob is not None:
                hasher = arrow.new_hasher()
                hasher.update(memoryview(blob)[:data_bytes])
                actual = arrow.checksum_text(hasher)
            else:
                actual = arrow.hash_file(self._hash_target(path), 0, data_bytes)
            if actual != checksum:
                raise CheckpointCorruptError(path, f"checksum mismatch ({actual} != saved {checksum}): the file was "
                                             "changed or damaged after it was saved")
        return pf, meta

    def _hash_target(self, path: UPath) -> Any:
        return storage.local_path(path) if storage.is_local(path) else path

    # --- read ------------------------------------------------------------------------------------------
    def _read_table(self, pf: pq.ParquetFile, path: UPath, columns: list[str] | None = None) -> pa.Table:
        try:
            return pf.read(columns=columns)
        except (pa.ArrowException, OSError) as exc:
            raise CheckpointCorruptError(path, f"damaged data ({exc})") from None

    def _read(self, path: UPath, model: type[T], **_: Any) -> list[T]:
        return arrow.read_consistently(path, lambda: self._read_once(path, model))

    def _read_once(self, path: UPath, model: type[T]) -> list[T]:
        pf, meta = self.open_verified(path)
        if _kura_columns(meta):
            return arrow.kura_table_to_models(self._read_table(pf, path), model, path)
        # Row group by row group: the peak is the models plus one decoded row group, not the whole table.
        models: list[T] = []
        try:
            for g in range(pf.metadata.num_row_groups):
                group = pf.read_row_group(g)
                models += arrow.table_to_models(group, meta, model, path, row_offset=len(models))
                del group
        except (pa.ArrowException, OSError) as exc:
            raise CheckpointCorruptError(path, f"damaged data ({exc})") from None
        return models

    def _batches(self, pf: pq.ParquetFile, path: UPath, batch_size: int) -> Iterator[pa.RecordBatch]:
        try:
            yield from pf.iter_batches(batch_size=batch_size)
        except (pa.ArrowException, OSError) as exc:
            raise CheckpointCorruptError(path, f"damaged data ({exc})") from None

    def _iter(self, path: UPath, model: type[T], *, batch_size: int) -> Iterator[T]:
        pf, meta = self.open_verified(path)
        if _kura_columns(meta):
            offset = 0
            for batch in self._batches(pf, path, batch_size):
                yield from arrow.kura_table_to_models(pa.Table.from_batches([batch]), model, path, row_offset=offset)
                offset += batch.num_rows
            return
        yield from arrow.iter_batches_as_models(self._batches(pf, path, batch_size), meta, model, path)

    def _iter_rows(self, path: UPath) -> Iterator[dict[str, Any]]:
        pf, meta = self.open_verified(path)
        if _kura_columns(meta):
            model = self._stored_model(path)
            for batch in self._batches(pf, path, 10_000):
                yield from arrow.kura_rows(pa.Table.from_batches([batch]), model)
            return
        for batch in self._batches(pf, path, 10_000):
            yield from arrow.table_rows(pa.Table.from_batches([batch]), meta)

    def read_table(self, filename: str, columns: list[str] | None = None) -> pa.Table | None:
        """The verified Arrow table (optionally only ``columns``), for DuckDB/Polars/pandas or the columnar path."""
        path = self.get_checkpoint_path(filename)
        if not self.enabled or not self._exists(path):
            return None
        pf, _ = self.open_verified(path)
        return self._read_table(pf, path, columns)

    def _describe(self, path: UPath) -> dict[str, Any]:
        pf, meta = self.open_verified(path, verify=False)
        md = pf.metadata
        codec = md.row_group(0).column(0).compression.lower() if md.num_row_groups and md.num_columns else None
        info: dict[str, Any] = {
            "num_rows": md.num_rows,
            "num_row_groups": md.num_row_groups,
            "features": arrow.features_of(pf.schema_arrow, meta),
            "model": (meta or {}).get("model"),
            "compression": codec,
            "writer": "kura_dagster" if meta else "kura",
            "layout": "kura" if _kura_columns(meta) else "native",
        }
        if meta:
            info["schema_version"] = meta.get("schema_version")
            info["checksum"] = json.loads(md.metadata[INTEGRITY_KEY])["checksum"]
        return info

    def _is_checkpoint(self, path: UPath) -> bool:
        return path.name.endswith(self.suffix) and path.is_file()
