"""Which pydantic model an IO manager should build: annotations first, then metadata, then the file."""

from __future__ import annotations

import typing
from typing import Any, Optional, Union

import dagster as dg
from pydantic import BaseModel

from kura_dagster.types import model_identity, resolve_model

MODEL_METADATA_KEY = "kura/model"
CHECKPOINT_NAME_KEY = "kura/checkpoint_name"


def model_from_annotation(tp: Any) -> Optional[type[BaseModel]]:
    """``list[M]``, ``dict[str, list[M]]``, ``Optional[list[M]]``, ``Sequence[M]`` … → ``M``."""
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return tp
    origin = typing.get_origin(tp)
    if origin is None:
        return None
    args = typing.get_args(tp)
    if origin is Union:
        found = [m for m in (model_from_annotation(a) for a in args) if m is not None]
        return found[0] if found else None
    if args:
        return model_from_annotation(args[-1])
    return None


def _typing_type(ctx: Any) -> Any:
    dagster_type = getattr(ctx, "dagster_type", None)
    return getattr(dagster_type, "typing_type", None)


def output_model(context: dg.OutputContext) -> Optional[type[BaseModel]]:
    model = model_from_annotation(_typing_type(context))
    if model is None and context.definition_metadata and MODEL_METADATA_KEY in context.definition_metadata:
        model = resolve_model(str(context.definition_metadata[MODEL_METADATA_KEY]))
    return model


def input_model(context: dg.InputContext) -> Optional[type[BaseModel]]:
    """The model for a load: the input's annotation, the upstream's annotation (when it ran in this run),
    the upstream's ``kura/model`` metadata, or ``None`` (then the identity stored in the file decides)."""
    model = model_from_annotation(_typing_type(context))
    if model is not None:
        return model
    upstream = context.upstream_output
    if upstream is not None:
        try:
            model = model_from_annotation(_typing_type(upstream))
        except dg.DagsterInvariantViolationError:  # the upstream step is not part of this run
            model = None
        if model is not None:
            return model
        metadata = upstream.definition_metadata or {}
        if MODEL_METADATA_KEY in metadata:
            return resolve_model(str(metadata[MODEL_METADATA_KEY]))
    return None


def model_metadata(model: type[BaseModel]) -> dict[str, str]:
    """Asset metadata that lets a downstream load find the model even without annotations."""
    return {MODEL_METADATA_KEY: model_identity(model)}
