"""The interface every checkpoint format implements, with the seed's API.

A subclass declares ``format_name`` and ``suffix`` (``""`` for directory formats) and implements four
small methods: ``_write``, ``_read``, ``_describe`` and ``_is_checkpoint``. Everything else — names and
paths, the enabled switch, listing, deleting, info, filtering, stats — lives here once.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel
from upath import UPath

from kura_dagster.checkpoints import storage
from kura_dagster.checkpoints.models import model_class_of, rows_to_models
from kura_dagster.types import model_identity, resolve_model

logger = logging.getLogger(__name__)
T = TypeVar("T", bound=BaseModel)

SCHEMA_VERSION = 1


@dataclass
class SavedCheckpoint:
    """What one save wrote: returned by ``save_checkpoint`` (the seed returns ``None``; we return facts)."""

    name: str
    path: str
    format: str
    rows: int
    bytes: int
    model: str | None
    checksum: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class BaseCheckpointManager(ABC):
    format_name: ClassVar[str]
    suffix: ClassVar[str]

    def __init__(
        self,
        checkpoint_dir: str | UPath,
        *,
        enabled: bool = True,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        self.checkpoint_dir: UPath = storage.to_upath(checkpoint_dir, storage_options)
        self.enabled = enabled

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.checkpoint_dir)!r}, enabled={self.enabled})"

    # --- names and paths -------------------------------------------------------------------------------
    def checkpoint_name(self, filename: str) -> str:
        """``summaries`` and ``summaries.jsonl`` both name the checkpoint ``summaries``."""
        name = storage.validate_name(filename)
        if self.suffix and name.endswith(self.suffix) and len(name) > len(self.suffix):
            name = name[: -len(self.suffix)]
        return name

    def get_checkpoint_path(self, filename: str) -> UPath:
        return self.checkpoint_dir / f"{self.checkpoint_name(filename)}{self.suffix}"

    def setup_checkpoint_dir(self) -> None:
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)

    def _existing_path(self, filename: str) -> UPath | None:
        """The checkpoint's path if the manager is enabled and the checkpoint exists, else ``None``."""
        if not self.enabled:
            return None
        path = self.get_checkpoint_path(filename)
        return path if self._exists(path) else None

    def has_checkpoint(self, filename: str) -> bool:
        return self.enabled and self._is_checkpoint(self.get_checkpoint_path(filename))

    # --- the seed's API --------------------------------------------------------------------------------
    def save_checkpoint(
        self, filename: str, data: Sequence[BaseModel], checkpoint_type: str | None = None, **kwargs: Any
    ) -> SavedCheckpoint | None:
        """Save ``data`` atomically as checkpoint ``filename``. Returns what was written, or ``None`` when
        the manager is disabled. An empty list is saved as an empty checkpoint (Kura skips it; we do not
        silently drop a stage's output)."""
        if not self.enabled:
            logger.debug("%r is disabled: not saving %s", self, filename)
            return None
        name = self.checkpoint_name(filename)
        path = self.get_checkpoint_path(name)
        models = list(data)
        model = model_class_of(models, default=kwargs.pop("model_class", None))
        with storage.checkpoint_lock(path):
            saved = self._write(path, models, model, checkpoint_type=checkpoint_type, **kwargs)
        saved.name = name
        logger.info("Saved %d %s rows to %s (%d bytes)", saved.rows, self.format_name, saved.path, saved.bytes)
        return saved

    def load_checkpoint(
        self, filename: str, model_class: type[T] | None = None, **kwargs: Any
    ) -> list[T] | None:
        """Load checkpoint ``filename`` as a list of ``model_class``; ``None`` if it is absent or the manager
        is disabled. Without ``model_class`` the model identity stored in the checkpoint decides.
        A checkpoint that exists but is damaged raises :class:`CheckpointCorruptError`; it is never
        reported as absent and never returned in part."""
        path = self._existing_path(filename)
        if path is None:
            return None
        model = model_class or self._stored_model(path)
        kwargs.pop("checkpoint_type", None)
        result = self._read(path, model, **kwargs)
        logger.info("Loaded %d %s rows from %s", len(result), self.format_name, path)
        return result

    def iter_checkpoint(
        self, filename: str, model_class: type[T] | None = None, *, batch_size: int = 10_000
    ) -> Iterator[T] | None:
        """Yield models without materialising the whole checkpoint at once where the format allows it."""
        path = self._existing_path(filename)
        if path is None:
            return None
        model = model_class or self._stored_model(path)
        return self._iter(path, model, batch_size=batch_size)

    def list_checkpoints(self) -> list[str]:
        """Names (without extension) of the checkpoints of this format in ``checkpoint_dir``, sorted."""
        if not self.enabled or not self.checkpoint_dir.exists():
            return []
        names = []
        for entry in self.checkpoint_dir.iterdir():
            if entry.name.startswith(".") or not entry.name.endswith(self.suffix):
                continue
            if self._is_checkpoint(entry):
                names.append(entry.name[: len(entry.name) - len(self.suffix)] if self.suffix else entry.name)
        return sorted(names)

    def delete_checkpoint(self, filename: str) -> bool:
        path = self._existing_path(filename)
        if path is None:
            return False
        with storage.checkpoint_lock(path):
            storage.remove_path(path)
            for extra in self._companions(path):
                storage.remove_path(extra)
        logger.info("Deleted checkpoint %s", path)
        return True

    def get_checkpoint_info(self, filename: str) -> dict[str, Any] | None:
        """``num_rows``, ``size_bytes``, ``features`` (column → type), ``model``, ``path`` and ``format``."""
        path = self._existing_path(filename)
        if path is None:
            return None
        info = {"name": self.checkpoint_name(filename), "path": str(path), "format": self.format_name}
        info["size_bytes"] = storage.path_size(path)
        info.update(self._describe(path))
        return info

    def get_file_size(self, filename: str) -> int:
        return storage.path_size(self.get_checkpoint_path(filename)) if self.enabled else 0

    def filter_checkpoint(
        self,
        filename: str,
        predicate: Callable[[dict[str, Any]], bool],
        model_class: type[T] | None = None,
        checkpoint_type: str | None = None,
        **kwargs: Any,
    ) -> list[T] | None:
        """Rows for which ``predicate(row_dict)`` is true, as models. Only matching rows become models."""
        path = self._existing_path(filename)
        if path is None:
            return None
        model = model_class or self._stored_model(path)
        kept = [row for row in self._iter_rows(path) if predicate(row)]
        return rows_to_models(kept, model, path)

    def get_stats(self) -> dict[str, Any]:
        return {
            "type": type(self).__name__,
            "format": self.format_name,
            "checkpoint_dir": str(self.checkpoint_dir),
            "enabled": self.enabled,
            "checkpoint_count": len(self.list_checkpoints()),
        }

    # --- what a format implements ------------------------------------------------------------------------
    @abstractmethod
    def _write(
        self, path: UPath, models: list[BaseModel], model: type[BaseModel] | None, **kwargs: Any
    ) -> SavedCheckpoint:
        """Write ``models`` to ``path`` atomically (see :mod:`kura_dagster.checkpoints.storage`)."""

    @abstractmethod
    def _read(self, path: UPath, model: type[T], **kwargs: Any) -> list[T]:
        """Read and validate the whole checkpoint, or raise :class:`CheckpointCorruptError`."""

    @abstractmethod
    def _describe(self, path: UPath) -> dict[str, Any]:
        """At least ``num_rows``, ``features`` and ``model`` (identity string or ``None``)."""

    @abstractmethod
    def _is_checkpoint(self, path: UPath) -> bool:
        """Does ``path`` hold a checkpoint of this format?"""

    def _exists(self, path: UPath) -> bool:
        return self._is_checkpoint(path)

    def _iter_rows(self, path: UPath) -> Iterator[dict[str, Any]]:
        """Plain rows, for ``filter_checkpoint``; formats override this to avoid building models."""
        for m in self._read(path, self._stored_model(path)):
            yield m.model_dump()

    def _iter(self, path: UPath, model: type[T], *, batch_size: int) -> Iterator[T]:
        yield from self._read(path, model)

    def _companions(self, path: UPath) -> list[UPath]:
        """Files that belong to a checkpoint besides ``path`` itself (deleted with it)."""
        return []

    def _stored_model(self, path: UPath) -> type[BaseModel]:
        identity = self._describe(path).get("model")
        if not identity:
            raise LookupError(
                f"{path} does not record which model it holds (Kura's own files do not): "
                "pass model_class=..., e.g. load_checkpoint(name, ConversationSummary)."
            )
        return resolve_model(identity)


def identity_of(model: type[BaseModel] | None) -> str | None:
    return model_identity(model) if model is not None else None
