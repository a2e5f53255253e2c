"""Kura 0.5.4's own column layouts for Parquet and HF datasets: the tables Kura's managers read.

``layout="kura"`` on :class:`~kura_dagster.checkpoints.parquet.ParquetCheckpointManager` and
:class:`~kura_dagster.checkpoints.hf.HFDatasetCheckpointManager` writes these instead of our native Arrow types,
so that ``kura.checkpoints.ParquetCheckpointManager`` / ``HFDatasetCheckpointManager`` (Kura 0.5.4, pandas 2.3,
datasets 3.6) load every stage. Our loaders read them back (with Kura's decoding, after our integrity checks).

* Parquet (``kura.checkpoints.parquet``): lists and dicts as JSON strings, ``created_at`` as an ISO string,
  embeddings ``list<double>``. Lossless for our models: optional lists are written as JSON (``"[]"`` stays an
  empty list, ``null`` is None), which Kura's reader decodes exactly; a zone name becomes its UTC offset.
* HF (``kura.checkpoints.hf_dataset``): Kura's ``Features``, written in the datasets 3.x vocabulary
  (``Sequence``, not datasets 4+'s ``List``) to ``dataset_info.json`` and to the Arrow file's schema, so Kura's
  pinned datasets 3.6 loads it. Kura's encoding is lossy and its reader decodes it as it does: ``""``, ``0`` and
  ``[]`` mean None in a summary's optional fields (so an empty string or list there reads back as None),
  embeddings and coordinates are float32, message roles class labels, metadata ``{keys, values}`` strings (we
  write each value as JSON, which both Kura's reader and ours decode exactly). Timestamps are ``timestamp[ns]``:
  with ``tz=UTC`` when the values are aware (Kura's own writer drops the zone), naive when they are naive; one
  checkpoint cannot mix both. What the encoding changes is counted per save (:attr:`KuraBatch.changes`).

Only Kura's four models have a Kura layout (``Conversation``, ``ConversationSummary``, ``Cluster``,
``ProjectedCluster``); any other model is stored in the native layout (Kura has no reader for it anyway).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import BaseModel

from kura_dagster.checkpoints import storage
from kura_dagster.types import Cluster, Conversation, ConversationSummary, ProjectedCluster

logger = logging.getLogger(__name__)

LAYOUTS = ("native", "kura")
ROLES = ["user", "assistant"]


def check_layout(layout: str) -> str:
    """``layout`` if it is one we write (``native`` or ``kura``), else a ``ValueError`` naming the choices."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)} (kura: the columns Kura 0.5.4's own managers "
                         f"read; native: typed Arrow columns for DuckDB/Polars and speed); got {layout!r}")
    return layout


def kind_of(model: type[BaseModel] | None) -> str | None:
    """Kura's checkpoint type for one of its models (exactly that class: a subclass may hold more fields than
    Kura's columns), else ``None``."""
    return {Conversation: "conversations", ConversationSummary: "summaries", Cluster: "clusters",
            ProjectedCluster: "projected_clusters"}.get(model)  # type: ignore[arg-type]


def save_stream(manager: Any, filename: str, model: type[BaseModel], batches: Iterable[Sequence[BaseModel]]) -> Any:
    """Save batches of ``model`` as one checkpoint of ``manager`` (a Parquet or HF manager) in Kura's layout, batch by
    batch (memory: one batch), for ``kura-dagster export --format parquet|hf``. Returns the ``SavedCheckpoint``."""
    kind = kind_of(model)
    if kind is None:
        raise ValueError(f"{model.__name__} has no Kura layout (Kura reads only Conversation, ConversationSummary, "
                         "Cluster and ProjectedCluster)")
    name = manager.checkpoint_name(filename)
    path = manager.get_checkpoint_path(name)
    with storage.checkpoint_lock(path):
        saved = manager._write_kura(path, model, kind, batches)  # noqa: SLF001 - the formats' own writer
    saved.name = name
    return saved


def kind_to_write(layout: str, model: type[BaseModel] | None, path: object) -> str | None:
    """The Kura type to write ``model`` as under ``layout``, or ``None`` for the native layout (logged when the Kura
    layout was asked for a model Kura has no reader for)."""
    if layout != "kura":
        return None
    kind = kind_of(model)
    if kind is None:
        logger.info("%s: %s has no Kura layout (Kura reads only its four checkpoint models): stored in the native "
                    "layout", path, getattr(model, "__name__", model))
    return kind


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _dump(models: Sequence[BaseModel]) -> list[dict[str, Any]]:
    """JSON-mode dumps (datetimes as ISO strings), as Kura's JSONL holds them."""
    return [m.model_dump(mode="json") for m in models]


# --- Parquet -------------------------------------------------------------------------------------------------
_CLUSTER_PARQUET = [("id", pa.string()), ("name", pa.string()), ("description", pa.string()),
                    ("slug", pa.string()), ("chat_ids", pa.string()), ("parent_id", pa.string())]
PARQUET_SCHEMAS: dict[str, pa.Schema] = {  # kura.checkpoints.parquet.ParquetCheckpointManager._define_schemas
    "conversations": pa.schema([("chat_id", pa.string()), ("created_at", pa.string()), ("messages", pa.string()),
                                ("metadata", pa.string())]),
    "summaries": pa.schema([("chat_id", pa.string()), ("summary", pa.string()), ("request", pa.string()),
                            ("topic", pa.string()), ("languages", pa.string()), ("task", pa.string()),
                            ("concerning_score", pa.int32()), ("user_frustration", pa.int32()),
                            ("assistant_errors", pa.string()), ("metadata", pa.string()),
                            ("embedding", pa.list_(pa.float64()))]),
    "clusters": pa.schema(_CLUSTER_PARQUET),
    "projected_clusters": pa.schema(_CLUSTER_PARQUET + [("x_coord", pa.float64()), ("y_coord", pa.float64()),
                                                        ("level", pa.int32())]),
}


def parquet_table(models: Sequence[BaseModel], kind: str) -> pa.Table:
    """One batch of models as Kura's Parquet table (see the module docstring)."""
    rows = _dump(models)
    cols: dict[str, list[Any]]
    if kind == "conversations":
        cols = {"chat_id": [r["chat_id"] for r in rows], "created_at": [r["created_at"] for r in rows],
                "messages": [_json(r["messages"]) for r in rows], "metadata": [_json(r["metadata"]) for r in rows]}
    elif kind == "summaries":
        cols = {name: [r[name] for r in rows] for name in PARQUET_SCHEMAS[kind].names}
        for name in ("languages", "assistant_errors"):  # Kura: json.loads(v) if v else None
            cols[name] = [None if v is None else _json(v) for v in cols[name]]
        cols["metadata"] = [_json(v) for v in cols["metadata"]]
    else:
        cols = {name: [r[name] for r in rows] for name in PARQUET_SCHEMAS[kind].names}
        cols["chat_ids"] = [_json(v) for v in cols["chat_ids"]]
    return pa.table(cols, schema=PARQUET_SCHEMAS[kind])


# --- HF datasets ---------------------------------------------------------------------------------------------
def _value(dtype: str) -> dict[str, Any]:
    return {"dtype": dtype, "_type": "Value"}


def _sequence(feature: Any) -> dict[str, Any]:
    return {"feature": feature, "_type": "Sequence"}


_KEYS_VALUES = {"keys": _sequence(_value("string")), "values": _sequence(_value("string"))}
_CLUSTER_FEATURES = {"id": _value("string"), "name": _value("string"), "description": _value("string"),
                     "slug": _value("string"), "chat_ids": _sequence(_value("string")),
                     "parent_id": _value("string")}


def hf_features(kind: str, timestamp: str = "timestamp[ns]") -> dict[str, Any]:
    """Kura's ``Features`` for ``kind`` (``kura.checkpoints.hf_dataset._define_schemas``) as datasets 3.x writes them
    to ``dataset_info.json``; ``timestamp`` is the conversations' timestamp dtype."""
    if kind == "conversations":
        return {"chat_id": _value("string"), "created_at": _value(timestamp),
                "messages": _sequence({"created_at": _value(timestamp),
                                       "role": {"names": ROLES, "_type": "ClassLabel"},
                                       "content": _value("string")}),
                "metadata": dict(_KEYS_VALUES)}
    if kind == "summaries":  # Kura's column order (model_dump's: GeneratedSummary's fields first)
        return {"summary": _value("string"), "request": _value("string"), "topic": _value("string"),
                "languages": _sequence(_value("string")), "task": _value("string"),
                "concerning_score": _value("int8"), "user_frustration": _value("int8"),
                "assistant_errors": _sequence(_value("string")), "chat_id": _value("string"),
                "metadata": dict(_KEYS_VALUES), "embedding": _sequence(_value("float32"))}
    if kind == "clusters":
        return {**_CLUSTER_FEATURES, "count": _value("int32")}
    return {**_CLUSTER_FEATURES, "x_coord": _value("float32"), "y_coord": _value("float32"),
            "level": _value("int32"), "count": _value("int32")}


def _arrow_of(feature: Any) -> pa.DataType:
    """The Arrow type datasets 3.x gives a feature (only the kinds Kura's features use)."""
    if isinstance(feature, dict) and feature.get("_type") == "Value":
        dtype = feature["dtype"]
        if dtype.startswith("timestamp[ns"):
            tz = dtype[len("timestamp[ns, tz="):-1] if "tz=" in dtype else None
            return pa.timestamp("ns", tz=tz)
        return {"string": pa.string(), "int8": pa.int8(), "int32": pa.int32(), "float32": pa.float32()}[dtype]
    if isinstance(feature, dict) and feature.get("_type") == "ClassLabel":
        return pa.int64()
    if isinstance(feature, dict) and feature.get("_type") == "Sequence":
        inner = feature["feature"]
        if isinstance(inner, dict) and "_type" not in inner:  # Sequence of a dict: a struct of lists
            return pa.struct([pa.field(k, pa.list_(_arrow_of(v))) for k, v in inner.items()])
        return pa.list_(_arrow_of(inner))
    return pa.struct([pa.field(k, _arrow_of(v)) for k, v in feature.items()])  # a plain dict of features


def hf_schema(features: dict[str, Any]) -> pa.Schema:
    """The Arrow schema of a dataset with ``features``, carrying them as datasets does (``huggingface`` key)."""
    return pa.schema([pa.field(k, _arrow_of(v)) for k, v in features.items()],
                     metadata={b"huggingface": json.dumps({"info": {"features": features}}).encode()})


def dataset_info(features: dict[str, Any]) -> dict[str, Any]:
    """``dataset_info.json`` as datasets 3.6's ``save_to_disk`` writes it."""
    return {"citation": "", "description": "", "features": features, "homepage": "", "license": ""}


def dataset_state(data_files: list[str], fingerprint: str) -> dict[str, Any]:
    """``state.json`` as datasets 3.6's ``save_to_disk`` writes it."""
    return {"_data_files": [{"filename": f} for f in data_files], "_fingerprint": fingerprint,
            "_format_columns": None, "_format_kwargs": {}, "_format_type": None, "_output_all_columns": False,
            "_split": None}


def _aware(value: dt.datetime) -> bool:
    return value.tzinfo is not None and value.utcoffset() is not None


@dataclass
class KuraBatch:
    """One batch of models in Kura's HF layout, and what Kura's encoding changed in it (label → values)."""

    table: pa.Table
    changes: dict[str, int] = field(default_factory=dict)


class HFEncoder:
    """Encodes batches of one checkpoint into Kura's HF columns. The first batch with a timestamp decides whether
    the timestamps are aware (``tz=UTC``) or naive; a later value of the other kind is an error naming its row."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.aware: bool | None = None
        self.rows = 0

    @property
    def features(self) -> dict[str, Any]:
        return hf_features(self.kind, "timestamp[ns, tz=UTC]" if self.aware else "timestamp[ns]")

    def _check_times(self, models: Sequence[Any]) -> None:
        for i, c in enumerate(models):
            for where, value in [("created_at", c.created_at)] + [
                    (f"messages[{j}].created_at", m.created_at) for j, m in enumerate(c.messages)]:
                aware = _aware(value)
                if self.aware is None:
                    self.aware = aware
                elif aware != self.aware:
                    raise ValueError(
                        f"conversation {c.chat_id!r} (row {self.rows + i}): {where} is "
                        f"{'timezone-aware' if aware else 'naive'} but earlier timestamps are "
                        f"{'aware' if self.aware else 'naive'}; Kura's HF layout holds one kind per checkpoint "
                        "(make them all aware, or use the native layout)")

    def encode(self, models: Sequence[BaseModel]) -> KuraBatch:
        changes: dict[str, int] = {}
        if self.kind == "conversations":
            self._check_times(models)
        tz = "UTC" if self.aware else None
        if self.kind == "conversations":
            convs: Sequence[Any] = models
            cols: dict[str, Any] = {
                "chat_id": [c.chat_id for c in convs],
                "created_at": pa.array([c.created_at for c in convs], pa.timestamp("ns", tz=tz)),
                "messages": [{"created_at": [m.created_at for m in c.messages],
                              "role": [ROLES.index(m.role) for m in c.messages],
                              "content": [m.content for m in c.messages]} for c in convs],
                "metadata": [_keys_values(c.metadata) for c in convs],
            }
        elif self.kind == "summaries":
            rows = [m.model_dump() for m in models]
            for r in rows:  # Kura's stand-ins for None: "" / [] / 0, which its reader turns back into None
                for names, empty in ((("request", "topic", "task"), ""),
                                     (("languages", "assistant_errors", "embedding"), []),
                                     (("concerning_score", "user_frustration"), 0)):
                    for name in names:
                        if r[name] is None:
                            r[name] = empty
                        elif r[name] == empty:  # a real "" / [] / 0 (outside Kura's 1-5 scale) reads back as None
                            key = f"{name}: {empty!r} reads back as None"
                            changes[key] = changes.get(key, 0) + 1
                r["metadata"] = _keys_values(r["metadata"])
            cols = {name: [r[name] for r in rows] for name in hf_features("summaries")}
            _count_float32(changes, "embedding", [x for r in rows for x in r["embedding"]])
        else:
            cols = {name: [getattr(m, name) for m in models] for name in hf_features(self.kind)}
            cols["parent_id"] = ["" if v is None else v for v in cols["parent_id"]]
            empty = sum(1 for m in models if m.parent_id == "")  # type: ignore[attr-defined]
            if empty:
                changes["parent_id: '' reads back as None"] = empty
            if self.kind == "projected_clusters":
                _count_float32(changes, "x_coord/y_coord", cols["x_coord"] + cols["y_coord"])
        schema = hf_schema(self.features)
        table = pa.table({f.name: pa.array(cols[f.name], f.type) if not isinstance(cols[f.name], pa.Array)
                          else cols[f.name] for f in schema}, schema=schema)
        self.rows += len(models)
        return KuraBatch(table, changes)


def _keys_values(metadata: dict[str, Any]) -> dict[str, list[str]]:
    """Kura's HF metadata: ``{keys, values}``, each value as JSON (Kura's reader ``json.loads`` it back exactly)."""
    return {"keys": list(metadata), "values": [_json(v) for v in metadata.values()]}


def _count_float32(changes: dict[str, int], label: str, values: list[float]) -> None:
    if values:
        exact = np.asarray(values, dtype=np.float64)
        rounded = int(np.count_nonzero(exact.astype(np.float32).astype(np.float64) != exact))
        if rounded:
            changes[f"{label}: values rounded to float32"] = rounded
