"""Metadata a person wants to see in the Dagster UI for a checkpoint: rows, bytes, path, schema, preview."""

from __future__ import annotations

import json
import typing
from collections.abc import Mapping, Sequence
from typing import Any

import dagster as dg
from pydantic import BaseModel

from kura_dagster.checkpoints.base import SavedCheckpoint

PREVIEW_ROWS = 5
PREVIEW_CHARS = 120


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if origin is typing.Union:
        return _type_name(args[0]) if len(args) == 1 else "union"
    if origin in (list, typing.List):  # noqa: UP006
        return f"list<{_type_name(args[0])}>" if args else "list"
    if origin in (dict, typing.Dict) or tp is dict:  # noqa: UP006
        return "map"
    if isinstance(tp, type):
        return {"str": "string", "int": "int", "float": "float", "bool": "bool", "datetime": "timestamp"}.get(
            tp.__name__, tp.__name__
        )
    return str(tp)


def table_schema(model: type[BaseModel]) -> dg.TableSchema:
    columns = [
        dg.TableColumn(name, _type_name(field.annotation), description=field.description or None)
        for name, field in model.model_fields.items()
    ]
    columns += [dg.TableColumn(name, _type_name(f.return_type)) for name, f in model.model_computed_fields.items()]
    return dg.TableSchema(columns=columns)


def _cell(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, list) and value and all(isinstance(v, float) for v in value):
        text = f"[{len(value)} floats]"
    else:
        text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= PREVIEW_CHARS else text[: PREVIEW_CHARS - 1] + "…"


def preview_table(models: Sequence[BaseModel], model: type[BaseModel], rows: int = PREVIEW_ROWS) -> dg.TableMetadataValue:
    schema = dg.TableSchema(columns=[dg.TableColumn(c.name, "string" if c.type not in ("int", "float", "bool") else c.type)
                                     for c in table_schema(model).columns])
    records = [dg.TableRecord({k: _cell(v) for k, v in m.model_dump(mode="json").items()}) for m in models[:rows]]
    return dg.MetadataValue.table(records=records, schema=schema)


def checkpoint_metadata(
    models: Sequence[BaseModel], model: type[BaseModel] | None, saved: SavedCheckpoint | None
) -> dict[str, Any]:
    """Row count, bytes, format, checksum, column schema and a preview, for one saved output."""
    md: dict[str, Any] = {"dagster/row_count": dg.MetadataValue.int(len(models))}
    if saved is not None:
        md["kura/format"] = dg.MetadataValue.text(saved.format)
        md["kura/bytes"] = dg.MetadataValue.int(saved.bytes)
        if saved.checksum:
            md["kura/checksum"] = dg.MetadataValue.text(saved.checksum)
        for key, value in saved.extra.items():
            md[f"kura/{key}"] = value if isinstance(value, (int, float, str, bool)) else dg.MetadataValue.json(value)
    if model is not None:
        md["kura/model"] = dg.MetadataValue.text(f"{model.__module__}.{model.__qualname__}")
        md["dagster/column_schema"] = table_schema(model)
        if models:
            md["preview"] = preview_table(models, model)
    return md


def add_partition_metadata(context: dg.OutputContext, per_partition: Mapping[str, Mapping[str, Any]]) -> None:
    """Each partition's own metadata (rows, bytes, path …) on that partition's materialization, for an output
    that covers several partitions (a single-run backfill).

    ``OutputContext.add_output_metadata`` is one dict for the whole output, and Dagster 1.13 copies it onto the
    materialization of every partition in the run; per-partition metadata goes through the step's
    ``add_asset_metadata(metadata, asset_key=, partition_key=)``, which Dagster merges over the output's metadata
    when it builds each partition's materialization (``execute_step._get_output_asset_events``), so a day's
    ``dagster/row_count`` is that day's rows, not the range's. Without a step (an IO manager called from a
    test's ``build_output_context``) there are no materializations to attach it to.
    """
    try:
        step = context.step_context
    except dg.DagsterInvariantViolationError:
        return
    for key, metadata in per_partition.items():
        step.add_asset_metadata(dict(metadata), asset_key=context.asset_key, partition_key=key)
