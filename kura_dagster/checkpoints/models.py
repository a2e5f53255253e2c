"""Rows to models and back: the conversion every format shares, with errors that name the row or line."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, TypeVar

from pydantic import BaseModel, TypeAdapter, ValidationError

from kura_dagster.checkpoints.errors import CheckpointCorruptError

T = TypeVar("T", bound=BaseModel)


@functools.lru_cache(maxsize=64)
def list_adapter(model: type[BaseModel]) -> TypeAdapter[list[Any]]:
    return TypeAdapter(list[model])  # type: ignore[valid-type]


def model_class_of(data: Sequence[BaseModel], default: type[BaseModel] | None = None) -> type[BaseModel] | None:
    """The single model class of ``data``; a mixed list is refused (a checkpoint holds one type)."""
    if not data:
        return default
    cls = type(data[0])
    if not isinstance(data[0], BaseModel):
        raise TypeError(f"Checkpoints hold pydantic models; got {cls.__name__} at index 0")
    for i, item in enumerate(data):
        if type(item) is not cls:
            raise TypeError(
                f"A checkpoint holds one model type: item 0 is {cls.__name__} but item {i} is {type(item).__name__}"
            )
    return cls


def describe_validation_error(err: ValidationError, limit: int = 3) -> tuple[int | None, str]:
    """(index of the first bad item, readable text of the first few problems) for a list validation error."""
    problems, first = [], None
    for e in err.errors()[:limit]:
        loc = list(e.get("loc", ()))
        idx = loc.pop(0) if loc and isinstance(loc[0], int) else None
        if first is None:
            first = idx
        field = ".".join(str(p) for p in loc) or "(record)"
        problems.append(f"{field}: {e.get('msg')}")
    more = err.error_count() - limit
    return first, "; ".join(problems) + (f" (and {more} more problems)" if more > 0 else "")


def rows_to_models(rows: list[dict[str, Any]], model: type[T], source: object, *, row_offset: int = 0) -> list[T]:
    """Validate plain rows into ``model`` instances. A bad row raises :class:`CheckpointCorruptError` naming it."""
    try:
        return list_adapter(model).validate_python(rows)
    except ValidationError as err:
        idx, text = describe_validation_error(err)
        row = None if idx is None else idx + row_offset
        raise CheckpointCorruptError(source, f"not a valid {model.__name__}: {text}", row=row) from None


def models_to_rows(models: Sequence[BaseModel]) -> list[dict[str, Any]]:
    """Plain python rows (datetimes stay datetimes, computed fields included), as ``model_dump`` gives them."""
    if not models:
        return []
    return list_adapter(type(models[0])).dump_python(list(models))
