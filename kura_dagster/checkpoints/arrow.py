"""Pydantic models ↔ Arrow tables with native types: what the Parquet and HF-datasets formats share.

Encoding (recorded per column in the schema's ``kura_dagster`` key-value metadata, so a reader never guesses):

* ``str``/``Literal`` → ``string``; ``int`` → ``int64``; ``float`` → ``float64``; ``bool`` → ``bool``;
  ``Optional[X]`` → nullable ``X``; ``list[X]`` → ``list<X>`` (``None`` is a null list, ``[]`` an empty one);
  nested models → ``struct``.
* ``datetime`` → ``timestamp[us]``: naive values stay naive (no tz); aware values keep their zone (the
  column's ``ZoneInfo`` key or fixed offset). A column mixing naive and aware values, or several zones,
  is stored as JSON (ISO 8601 strings that keep each value's own offset).
* Embeddings (a ``list[float]`` field named ``embedding``) → ``fixed_size_list<float32>[d]`` when every
  non-null vector has ``d`` values (else ``list<float32>``); ``embedding_dtype="float64"`` keeps full
  precision. float32 keeps ~7 significant digits: a value that is not a float32 is rounded, and the save
  reports how many were (``SavedCheckpoint.extra["embedding_rounded"]``).
* Free-form dicts (``metadata``) → a ``struct`` with one natively typed child per key (bool, int64,
  float64, string, or a list of one of them), so DuckDB/Polars/pandas query ``metadata.model`` directly.
  A null child means "key absent" or "value None", whichever the column records (``keys`` map). When a
  key's values do not share one Arrow type (an int in one row and a float in another, nested dicts,
  more than 256 keys, or a key that is both absent and None), the whole column falls back to one JSON
  string per row (``encoding: json``), which keeps every JSON type exactly.
* Computed fields (``Cluster.count``) are stored for queries and ignored when loading.

Kura's own files (no ``kura_dagster`` metadata) are read by :func:`kura_rows`: its Parquet stores JSON
strings for lists/dicts; its HF datasets store metadata as ``{keys, values}`` strings, roles as class
labels, and ``''``/``0``/``[]`` for ``None``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gc
import json
import operator
import types
import typing
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Literal, TypeVar, Union

import numpy as np
import pyarrow as pa
import pydantic_core
import xxhash
from pydantic import BaseModel, TypeAdapter

from kura_dagster.checkpoints.base import SCHEMA_VERSION, identity_of
from kura_dagster.checkpoints.errors import CheckpointCorruptError
from kura_dagster.checkpoints.models import models_to_rows, rows_to_models

META_KEY = b"kura_dagster"
FORMAT_TAG = "kura-dagster/arrow"
EMBEDDING_DTYPES = {"float32": pa.float32(), "float64": pa.float64()}
MAX_DICT_KEYS = 256
_NONE_TYPES = (type(None),)


def warm_up() -> None:
    """pyarrow imports pandas (if installed, ~0.5 s) the first time it converts Python objects: do it now. For fork
    servers, so that forked writers inherit it. Not done at import: a process that never converts (JSONL
    checkpoints, a rerun that reuses its stages, each step subprocess of the multiprocess executor) never pays."""
    pa.array([None], type=pa.string())


R = TypeVar("R")


class _NeedsJSON(Exception):
    """This column's values have no single lossless Arrow type: store JSON strings."""


# --- hashing ---------------------------------------------------------------------------------------------
CHECKSUM_PREFIX = "xxh3_128:"


def new_hasher() -> Any:
    """The checksum the formats record: XXH3-128 (several GB/s, so verifying on every load is cheap)."""
    return xxhash.xxh3_128()


def checksum_text(hasher: Any) -> str:
    """How a checksum is written in the files' metadata: ``xxh3_128:<hex digest>``."""
    return CHECKSUM_PREFIX + hasher.hexdigest()


def hash_file(path: Any, start: int = 0, length: int | None = None, chunk: int = 8 << 20) -> str:
    """XXH3-128 of ``length`` bytes of a file (local path or UPath) from ``start``, read in chunks."""
    h = new_hasher()
    opener = open(path, "rb") if isinstance(path, str) else path.open("rb")
    with opener as fh:
        fh.seek(start)
        remaining = length
        while remaining is None or remaining > 0:
            block = fh.read(chunk if remaining is None else min(chunk, remaining))
            if not block:
                break
            h.update(block)
            if remaining is not None:
                remaining -= len(block)
    return checksum_text(h)


def read_consistently(path: Any, read: Callable[[], R], attempts: int = 10) -> R:
    """``read()``, again if the checkpoint at ``path`` was replaced while it ran (a writer's atomic rename
    landed between the files or checks a read opens): a healthy checkpoint is never reported corrupt
    because it changed mid-read. Damage that is still there on an unchanged checkpoint is raised. (A retry happens
    only when the checkpoint changed meanwhile, so many attempts cost nothing on a quiet checkpoint; on S3 a
    replaced HF version is deleted as soon as its successor is published, so a reader racing a busy writer may
    need several.)"""
    from kura_dagster.checkpoints import storage

    def identity() -> Any:  # inode and mtime locally; the pointer or ETag on object stores
        return storage.version_token(path)

    for attempt in range(attempts):
        before = identity()
        try:
            return read()
        except CheckpointCorruptError:
            if attempt + 1 < attempts and before is not None and identity() != before:
                continue
            raise
    raise AssertionError("unreachable")  # pragma: no cover


# --- annotations -----------------------------------------------------------------------------------------
def _strip_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin is Union or origin is types.UnionType:
        args = [a for a in typing.get_args(tp) if a not in _NONE_TYPES]
        has_none = len(args) < len(typing.get_args(tp))
        if len(args) == 1:
            return args[0], has_none
        return tp, has_none
    return tp, False


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _is_embedding(name: str, tp: Any) -> bool:
    inner, _ = _strip_optional(tp)
    return name == "embedding" and typing.get_origin(inner) is list and typing.get_args(inner) in ((float,),)


# --- encoding: values → Arrow ----------------------------------------------------------------------------
def _timestamp_type(values: Iterable[Any]) -> pa.DataType:
    aware, naive, zones, offsets = False, False, set(), set()
    for v in values:
        if v is None:
            continue
        if not isinstance(v, dt.datetime):
            raise _NeedsJSON
        if v.tzinfo is None or v.utcoffset() is None:
            naive = True
        else:
            aware = True
            zones.add(getattr(v.tzinfo, "key", None))
            offsets.add(v.utcoffset())
    if aware and naive:
        raise _NeedsJSON
    if not aware:
        return pa.timestamp("us")
    if len(zones) == 1 and None not in zones:
        return pa.timestamp("us", tz=next(iter(zones)))
    if len(offsets) == 1:
        off = next(iter(offsets))
        if off.total_seconds() % 60:
            raise _NeedsJSON  # a historical offset with seconds: Arrow's "+HH:MM" cannot hold it
        if off == dt.timedelta(0):
            return pa.timestamp("us", tz="UTC")
        sign = "-" if off < dt.timedelta(0) else "+"
        minutes = abs(int(off.total_seconds())) // 60
        return pa.timestamp("us", tz=f"{sign}{minutes // 60:02d}:{minutes % 60:02d}")
    raise _NeedsJSON  # several zones in one column: ISO strings keep each value's own offset


_KIND_TYPES = {"bool": pa.bool_(), "int": pa.int64(), "float": pa.float64(), "str": pa.string()}


_PY_KINDS = {bool: "bool", int: "int", float: "float", str: "str"}


def _dict_struct(values: Sequence[dict[str, Any] | None]) -> tuple[pa.DataType, dict[str, str]]:
    """A struct type for heterogeneous dicts, plus what a null child means per key ('absent' or 'none').

    One pass collects the (key, Python type) pairs; only list values are looked into. Ints too large for
    int64 make ``pa.array`` raise, and the caller then stores the column as JSON.
    """
    shapes: dict[tuple[tuple[Any, ...], tuple[type, ...]], int] = {}  # (keys, value types) → rows
    for d in values:
        if d is None:
            continue
        if type(d) is not dict:
            raise _NeedsJSON
        shape = (tuple(d), tuple(map(type, d.values())))
        shapes[shape] = shapes.get(shape, 0) + 1
    pairs: set[tuple[str, type]] = set()
    present: dict[str, int] = {}
    for (ks, ts), count in shapes.items():
        for k, t in zip(ks, ts):
            pairs.add((k, t))
            present[k] = present.get(k, 0) + count
    rows = sum(shapes.values())
    list_kinds: dict[str, set[type]] = {}
    for k in {k for k, t in pairs if t is list}:
        elems = list_kinds.setdefault(k, set())
        for d in values:
            v = d.get(k) if d is not None else None
            if type(v) is list:
                elems.update(map(type, v))
    keys = list(present)
    if not keys or len(keys) > MAX_DICT_KEYS or any(type(k) is not str for k in keys):
        raise _NeedsJSON
    by_key: dict[str, set[type]] = {}
    for k, t in pairs:
        by_key.setdefault(k, set()).add(t)
    fields, null_modes = [], {}
    for k in keys:
        ts = by_key[k]
        has_none = type(None) in ts
        ts = ts - {type(None)}
        if len(ts) > 1:
            raise _NeedsJSON  # e.g. int in one row and float in another, or a list and a scalar
        if ts == {list}:
            elems = list_kinds.get(k, set())
            if len(elems) > 1 or not elems <= set(_PY_KINDS):
                raise _NeedsJSON
            typ = pa.list_(_KIND_TYPES[_PY_KINDS[elems.pop()]] if elems else pa.string())
        elif ts:
            t = ts.pop()
            if t not in _PY_KINDS:
                raise _NeedsJSON  # nested dicts, datetimes…
            typ = _KIND_TYPES[_PY_KINDS[t]]
        else:
            typ = pa.string()  # only ever None
        if has_none and present[k] < rows:
            raise _NeedsJSON  # absent in one row and None in another: a null could not tell them apart
        null_modes[k] = "none" if has_none else "absent"
        fields.append(pa.field(k, typ))
    return pa.struct(fields), null_modes


def _arrow_type(tp: Any, values: list[Any]) -> pa.DataType:
    """The Arrow type for values of annotation ``tp`` (values decide timestamps' zones)."""
    tp, _ = _strip_optional(tp)
    origin = typing.get_origin(tp)
    if tp is bool:
        return pa.bool_()
    if tp is int:  # int32 when every value fits (half the bytes, and what Kura's datasets hold), else int64
        present = [v for v in values if v is not None]
        fits = not present or (-(1 << 31) <= min(present) and max(present) < (1 << 31))
        return pa.int32() if fits else pa.int64()
    if tp is float:
        return pa.float64()
    if tp is str or origin is Literal and all(isinstance(a, str) for a in typing.get_args(tp)):
        return pa.string()
    if tp is dt.datetime:
        return _timestamp_type(values)
    if origin is list and len(typing.get_args(tp)) == 1:
        flat = [x for v in values if v is not None for x in v]
        return pa.list_(_arrow_type(typing.get_args(tp)[0], flat))
    if _is_model(tp):
        return pa.struct([
            pa.field(name, _arrow_type(f.annotation, [v.get(name) if v is not None else None for v in values]))
            for name, f in tp.model_fields.items()
        ])
    raise _NeedsJSON


def _json_array(values: list[Any]) -> pa.Array:
    return pa.array([None if v is None else pydantic_core.to_json(v).decode() for v in values], pa.string())


def _embedding_array(values: list[Any], dtype: str) -> tuple[pa.Array, dict[str, Any]]:
    arrow_dtype = EMBEDDING_DTYPES[dtype]
    lengths = {len(v) for v in values if v is not None}
    info: dict[str, Any] = {"encoding": "embedding", "dtype": dtype}
    if len(lengths) == 1 and (d := lengths.pop()) > 0:
        mask = np.fromiter((v is None for v in values), dtype=bool, count=len(values))
        filler = [0.0] * d
        mat = np.array([filler if v is None else v for v in values], dtype=np.float64)
        stored = mat.astype(np.float32 if dtype == "float32" else np.float64, copy=False)
        if dtype == "float32":
            info["rounded"] = int(np.count_nonzero(stored != mat))  # null rows are zeros: never rounded
        del mat
        flat = pa.array(stored.reshape(-1), type=arrow_dtype)
        arr = pa.FixedSizeListArray.from_arrays(flat, d, mask=pa.array(mask) if mask.any() else None)
        info["dim"] = d
        return arr, info
    arr = pa.array(values, type=pa.list_(arrow_dtype))
    if dtype == "float32":
        stored = arr.flatten().to_numpy(zero_copy_only=False).astype(np.float64)
        orig = np.fromiter((x for v in values if v is not None for x in v), dtype=np.float64, count=len(stored))
        info["rounded"] = int(np.count_nonzero(stored != orig))
    return arr, info


def _contains_model(tp: Any) -> bool:
    if _is_model(tp):
        return True
    return any(_contains_model(a) for a in typing.get_args(tp))


def _column_values(models: Sequence[BaseModel], fields: dict[str, Any]) -> Any:
    """A function ``name → list of that field's values``, as ``model_dump()`` would give them.

    Column-wise and without copies: plain fields are read off the models (an embedding's list is the model's
    own list, not a copy of millions of floats), nested models are dumped per column. Models with custom
    serializers go through ``model_dump`` as a whole.
    """
    if not models:
        return lambda name: []
    cls = type(models[0])
    decorators = cls.__pydantic_decorators__
    if decorators.field_serializers or decorators.model_serializers:
        rows = models_to_rows(models)
        return lambda name: [r.get(name) for r in rows]
    annotations = {name: f.annotation for name, f in cls.model_fields.items()}
    dicts = [m.__dict__ for m in models]

    def values(name: str) -> list[Any]:
        if name not in annotations:  # a computed field
            return [getattr(m, name) for m in models]
        raw = list(map(operator.itemgetter(name), dicts))
        tp = annotations[name]
        if _contains_model(tp):
            return TypeAdapter(list[tp]).dump_python(raw)  # type: ignore[valid-type]
        return raw

    return values


def check_embedding_dtype(embedding_dtype: str) -> str:
    """``embedding_dtype`` if it is one we store (``float32`` or ``float64``), else a ``ValueError``."""
    if embedding_dtype not in EMBEDDING_DTYPES:
        raise ValueError(f"embedding_dtype must be one of {sorted(EMBEDDING_DTYPES)}, got {embedding_dtype!r}")
    return embedding_dtype


def models_to_table(
    models: Sequence[BaseModel], model: type[BaseModel] | None, *, embedding_dtype: str = "float32"
) -> pa.Table:
    """Build the Arrow table for ``models`` with the ``kura_dagster`` schema metadata (no checksum yet)."""
    check_embedding_dtype(embedding_dtype)
    columns: dict[str, pa.Array] = {}
    encodings: dict[str, Any] = {}
    fields: dict[str, Any] = {}
    computed: list[str] = []
    if model is not None:
        fields = {name: f.annotation for name, f in model.model_fields.items()}
        for name, cf in model.model_computed_fields.items():
            fields[name] = cf.return_type
            computed.append(name)
    column_values = _column_values(models, fields)
    for name, tp in fields.items():
        inner, _ = _strip_optional(tp)
        values = column_values(name)
        if _is_embedding(name, tp):
            columns[name], encodings[name] = _embedding_array(values, embedding_dtype)
            continue
        try:
            if inner is dict or typing.get_origin(inner) is dict:
                struct, null_modes = _dict_struct(values)
                columns[name] = pa.array(values, type=struct)
                encodings[name] = {"encoding": "dict", "keys": null_modes}
                continue
            columns[name] = pa.array(values, type=_arrow_type(tp, values))
        except (_NeedsJSON, pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError):
            columns[name] = _json_array(values)
            encodings[name] = {"encoding": "json"}
    meta = {
        "format": FORMAT_TAG,
        "schema_version": SCHEMA_VERSION,
        "model": identity_of(model),
        "rows": len(models),
        "columns": encodings,
        "computed": computed,
    }
    if not columns and models:
        raise TypeError(f"Cannot store rows of {model!r}: it has no fields")
    return pa.table(columns, metadata={META_KEY: json.dumps(meta).encode()})


# --- decoding: Arrow → rows → models ---------------------------------------------------------------------
def kura_meta(schema: pa.Schema | dict[bytes, bytes] | None) -> dict[str, Any] | None:
    """Our metadata from a schema (or raw key-value metadata), or ``None`` for a file we did not write (Kura's)."""
    kv = schema.metadata if isinstance(schema, pa.Schema) else schema
    raw = (kv or {}).get(META_KEY)
    if raw is None:
        return None
    meta = json.loads(raw)
    if meta.get("format") != FORMAT_TAG:
        raise ValueError(f"unknown kura_dagster format tag {meta.get('format')!r}")
    if int(meta.get("schema_version", 0)) > SCHEMA_VERSION:
        raise ValueError(
            f"written with schema version {meta['schema_version']}, newer than this kura_dagster "
            f"({SCHEMA_VERSION}): upgrade kura_dagster to read it"
        )
    return meta


def _embedding_rows(col: pa.ChunkedArray) -> list[Any]:
    out: list[Any] = []
    for chunk in col.chunks:
        n = len(chunk)
        if pa.types.is_fixed_size_list(chunk.type):
            d = chunk.type.list_size
            flat = chunk.values.slice(chunk.offset * d, n * d).to_numpy(zero_copy_only=False)
            rows = flat.reshape(n, d).tolist()
            if chunk.null_count:
                valid = chunk.is_valid().to_numpy(zero_copy_only=False)
                rows = [r if ok else None for r, ok in zip(rows, valid)]
            out.extend(rows)
        else:
            out.extend(chunk.to_pylist())
    return out


def _dict_rows(col: pa.ChunkedArray, null_modes: dict[str, str]) -> list[Any]:
    values = col.to_pylist()
    absent = [k for k, mode in null_modes.items() if mode == "absent"]
    if not absent or col.type.num_fields == 0:
        return values
    child_nulls = any(
        chunk.field(i).null_count for chunk in col.chunks for i in range(chunk.type.num_fields)
    )
    if not child_nulls:
        return values
    absent_set = set(absent)
    return [
        None if d is None else {k: v for k, v in d.items() if v is not None or k not in absent_set}
        for d in values
    ]


def table_rows(table: pa.Table, meta: dict[str, Any]) -> list[dict[str, Any]]:
    """Plain rows (model fields only) from a table we wrote, decoded per the recorded encodings."""
    encodings = meta.get("columns", {})
    skip = set(meta.get("computed", []))
    names = [n for n in table.column_names if n not in skip]
    cols = []
    for name in names:
        col = table.column(name)
        enc = encodings.get(name, {}).get("encoding")
        if enc == "embedding":
            cols.append(_embedding_rows(col))
        elif enc == "dict":
            cols.append(_dict_rows(col, encodings[name].get("keys", {})))
        elif enc == "json":
            cols.append([None if v is None else pydantic_core.from_json(v) for v in col.to_pylist()])
        else:
            cols.append(col.to_pylist())
    return [dict(zip(names, vals)) for vals in zip(*cols)] if names else [{} for _ in range(table.num_rows)]


def _can_construct(table: pa.Table, meta: dict[str, Any], model: type[BaseModel]) -> bool:
    """May rows of this verified file become ``model`` instances without re-validation?

    Yes when the file was written from this very model class (its identity is recorded, and the checksum was
    verified), every column decodes to exactly the Python type the field holds (no JSON fallback columns), the
    model is flat (no nested models) and has no validators, private attributes, post-init or extra fields: then
    validation could only re-check values that passed it when they were saved, and skipping it is both exact and
    several times faster. Anything else is validated.
    """
    if meta.get("model") != identity_of(model) or model.__pydantic_root_model__:
        return False
    decorators = model.__pydantic_decorators__
    if decorators.field_validators or decorators.model_validators or decorators.validators or decorators.root_validators:
        return False
    if model.__private_attributes__ or model.__pydantic_post_init__ or model.model_config.get("extra") == "allow":
        return False
    if any(enc.get("encoding") == "json" for enc in meta.get("columns", {}).values()):
        return False
    names = [n for n in table.column_names if n not in meta.get("computed", [])]
    if set(names) != set(model.model_fields):
        return False
    return not any(_contains_model(f.annotation) for f in model.model_fields.values())


def _construct(model: type[BaseModel], rows: list[dict[str, Any]], names: list[str]) -> list[Any]:
    """``model.model_construct`` for many rows, minus its per-call Python overhead."""
    new, set_attr = model.__new__, object.__setattr__
    out = []
    for row in rows:
        m = new(model)
        set_attr(m, "__dict__", row)
        set_attr(m, "__pydantic_fields_set__", set(names))
        set_attr(m, "__pydantic_extra__", None)
        set_attr(m, "__pydantic_private__", None)
        out.append(m)
    return out


@contextlib.contextmanager
def _building_long_lived() -> Iterator[None]:
    """Build many containers (the models a load returns) with the cyclic GC off; nothing here forms cycles.

    On exit the new objects, which go back to the caller and live on, are moved straight to the oldest GC
    generation (``gc.freeze()`` then ``gc.unfreeze()``, both O(1) list splices) instead of being walked by a
    young-generation pass the moment the GC is back on: for 10k 1536-d embeddings that pass alone visits 15M list
    slots (~0.2 s) only to promote them. Full collections still see them. Skipped when the application has frozen
    objects itself (then ``gc.freeze`` state is its own and we leave it alone).
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if gc.get_freeze_count() == 0:
            gc.freeze()
            gc.unfreeze()
        if was_enabled:
            gc.enable()


def table_to_models(table: pa.Table, meta: dict[str, Any], model: type[BaseModel], source: object,
                    *, row_offset: int = 0) -> list[Any]:
    """Models from a table we wrote (see :func:`_can_construct` for when validation is skipped). Otherwise
    embedding columns still skip per-float validation: their Arrow type
    (float32/float64 lists) already guarantees ``list[float]``, so the lists numpy builds are set on the
    validated models directly (the slowest and largest part of a load, done once, without copies)."""
    encodings = meta.get("columns", {})
    if _can_construct(table, meta, model):
        with _building_long_lived():
            return _construct(model, table_rows(table, meta), [n for n in table.column_names
                                                               if n not in meta.get("computed", [])])
    direct = [name for name in table.column_names
              if encodings.get(name, {}).get("encoding") == "embedding" and name in model.model_fields
              and _is_embedding(name, model.model_fields[name].annotation)]
    with _building_long_lived():
        models = rows_to_models(table_rows(table.drop_columns(direct), meta), model, source, row_offset=row_offset)
        for name in direct:
            for m, vector in zip(models, _embedding_rows(table.column(name))):
                m.__dict__[name] = vector
                m.__pydantic_fields_set__.add(name)
    return models


def iter_batches_as_models(batches: Iterable[pa.RecordBatch], meta: dict[str, Any], model: type[BaseModel],
                           source: object) -> Iterator[Any]:
    offset = 0
    for batch in batches:
        table = pa.Table.from_batches([batch])
        yield from table_to_models(table, meta, model, source, row_offset=offset)
        offset += batch.num_rows


def features_of(schema: pa.Schema, meta: dict[str, Any] | None) -> dict[str, str]:
    """Column → type string, for ``get_checkpoint_info``."""
    encodings = (meta or {}).get("columns", {})
    return {
        f.name: (f"{f.type} (JSON)" if encodings.get(f.name, {}).get("encoding") == "json" else str(f.type))
        for f in schema
    }


# --- Kura's files ----------------------------------------------------------------------------------------
_KURA_HF_EMPTY_STR = ("request", "topic", "task", "parent_id")
_KURA_HF_ZERO_INT = ("concerning_score", "user_frustration")
_KURA_HF_EMPTY_LIST = ("languages", "assistant_errors", "embedding")


def _kura_metadata(value: Any) -> Any:
    """Kura HF stores metadata as ``{keys: [...], values: [str]}``; it json-decodes values where it can."""
    if not isinstance(value, dict) or set(value) != {"keys", "values"}:
        return value
    out = {}
    for k, v in zip(value["keys"] or [], value["values"] or []):
        try:
            out[k] = json.loads(v)
        except (ValueError, TypeError):
            out[k] = v
    return out


def _has_ns(t: pa.DataType) -> bool:
    return _us_timestamps(t) != t


def _us_timestamps(t: pa.DataType) -> pa.DataType:
    """``t`` with every ``timestamp[ns]`` (at any depth) replaced by ``timestamp[us]``."""
    if pa.types.is_timestamp(t) and t.unit == "ns":
        return pa.timestamp("us", tz=t.tz)
    if pa.types.is_struct(t):
        return pa.struct([pa.field(f.name, _us_timestamps(f.type), f.nullable) for f in t])
    if pa.types.is_large_list(t):
        return pa.large_list(_us_timestamps(t.value_type))
    if pa.types.is_list(t):
        return pa.list_(_us_timestamps(t.value_type))
    return t


def _transpose(value: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """HF ``Sequence({...})`` is stored as a dict of lists; a model wants a list of dicts."""
    keys = list(value)
    return [dict(zip(keys, vals)) for vals in zip(*(value[k] or [] for k in keys))]


def kura_rows(table: pa.Table, model: type[BaseModel], *, class_labels: dict[str, list[str]] | None = None
              ) -> list[dict[str, Any]]:
    """Rows from a file Kura 0.5 wrote (Parquet with JSON strings, or an HF dataset), decoded as Kura does."""
    # Kura's HF timestamps are timestamp[ns]; Python datetimes hold microseconds.
    cols = [table.column(f.name).cast(_us_timestamps(f.type), safe=False) if _has_ns(f.type) else table.column(f.name)
            for f in table.schema]
    table = pa.table(cols, names=table.column_names)
    model_fields = model.model_fields
    is_hf = class_labels is not None
    rows = table.to_pylist()
    role_names = (class_labels or {}).get("messages.role") or ["user", "assistant"]
    for row in rows:
        for name in list(row):
            if name not in model_fields:
                del row[name]  # e.g. Kura's HF ``count`` column
                continue
            v = row[name]
            ann, optional = _strip_optional(model_fields[name].annotation)
            if isinstance(v, str) and (typing.get_origin(ann) in (list, dict) or ann is dict):
                row[name] = json.loads(v) if v else None  # Kura Parquet: JSON-string columns
            elif isinstance(v, dict) and set(v) == {"keys", "values"}:
                row[name] = _kura_metadata(v)
            elif isinstance(v, dict) and typing.get_origin(ann) is list and all(
                    isinstance(x, list) or x is None for x in v.values()):
                row[name] = _transpose(v)
            if is_hf and optional:
                if name in _KURA_HF_EMPTY_STR and row[name] == "":
                    row[name] = None
                elif name in _KURA_HF_ZERO_INT and row[name] == 0:
                    row[name] = None
                elif name in _KURA_HF_EMPTY_LIST and row[name] == []:
                    row[name] = None
        for msg in row.get("messages") or []:
            if isinstance(msg, dict) and isinstance(msg.get("role"), int):
                msg["role"] = role_names[msg["role"]]
    return rows


def kura_table_to_models(table: pa.Table, model: type[BaseModel], source: object,
                         *, class_labels: dict[str, list[str]] | None = None, row_offset: int = 0) -> list[Any]:
    """Models from a table in Kura's layout (a file Kura wrote, or one we wrote with ``layout="kura"``)."""
    try:
        rows = kura_rows(table, model, class_labels=class_labels)
    except (ValueError, TypeError, KeyError, IndexError, pa.ArrowInvalid) as exc:
        raise CheckpointCorruptError(source, f"cannot decode Kura's {model.__name__} file: {exc!r}") from None
    return rows_to_models(rows, model, source, row_offset=row_offset)
