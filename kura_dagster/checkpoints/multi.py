"""``MultiCheckpointManager``: one checkpoint kept by several backends, with Kura's strategies.

    multi = MultiCheckpointManager(
        [JSONLCheckpointManager("/fast/ssd"), build_manager("parquet", "/mnt/backup")],
        save_strategy="all_enabled",   # or "primary_only"
        load_strategy="first_found",   # or "priority"
    )
    multi.save_checkpoint("summaries", summaries)      # -> MultiSaveResult (who saved, bytes, failures)
    multi.load_checkpoint("summaries", ConversationSummary)

Kura's semantics (``kura/checkpoints/multi.py``), plus graceful degradation:

* ``all_enabled`` saves to every enabled child. A child that fails (full disk, denied permission, a Hub that
  is down) costs nothing in the others: its error is logged and recorded in the returned
  :class:`MultiSaveResult`, and the call raises :class:`MultiSaveError` only when *no* child saved.
  ``primary_only`` saves to the first enabled child only, and raises if that save fails.
* ``first_found`` tries the enabled children in order. A copy that is missing is skipped; a copy that is
  unreadable or corrupt is skipped with a warning that names the file, and the next child serves. If copies
  exist but none can be read, :class:`NoReadableCopyError` lists every problem (never ``None``: that would
  make a caller recompute and overwrite the evidence). ``priority`` reads the first enabled child only:
  ``None`` when it lacks the checkpoint, a clear :class:`CheckpointCorruptError` when its copy is damaged.

A multi manager is itself a :class:`BaseCheckpointManager` (so it can be nested or passed wherever a manager
is expected), but it delegates whole operations to its children instead of implementing the format hooks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, get_args

from pydantic import BaseModel
from upath import UPath

from kura_dagster.checkpoints import storage
from kura_dagster.checkpoints.base import BaseCheckpointManager, SavedCheckpoint
from kura_dagster.checkpoints.errors import CheckpointCorruptError, CheckpointError, CheckpointSaveError

logger = logging.getLogger(__name__)
T = TypeVar("T", bound=BaseModel)

SaveStrategy = Literal["all_enabled", "primary_only"]
LoadStrategy = Literal["first_found", "priority"]
SAVE_STRATEGIES: tuple[str, ...] = get_args(SaveStrategy)
LOAD_STRATEGIES: tuple[str, ...] = get_args(LoadStrategy)


def _describe_error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


@dataclass
class ChildFailure:
    """One child that could not save or read a checkpoint."""

    label: str
    path: str
    error: str
    exception: BaseException | None = field(default=None, repr=False, compare=False)


@dataclass
class MultiSaveResult:
    """What a multi save did: which children saved (with what each wrote), which failed, which were skipped."""

    name: str
    save_strategy: str
    saved: dict[str, SavedCheckpoint] = field(default_factory=dict)
    failed: dict[str, ChildFailure] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # label -> reason ("disabled", "primary_only")

    @property
    def ok(self) -> bool:
        return bool(self.saved)

    @property
    def rows(self) -> int:
        return next(iter(self.saved.values())).rows if self.saved else 0

    @property
    def bytes(self) -> int:
        """Bytes written by all children together."""
        return sum(s.bytes for s in self.saved.values())

    @property
    def primary(self) -> SavedCheckpoint | None:
        """The first child (in priority order) that saved."""
        return next(iter(self.saved.values()), None)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "save_strategy": self.save_strategy,
            "saved": {k: v.as_dict() for k, v in self.saved.items()},
            "failed": {k: {"path": f.path, "error": f.error} for k, f in self.failed.items()},
            "skipped": dict(self.skipped),
            "bytes": self.bytes,
        }


@dataclass
class MultiLoadResult:
    """A multi load: the models, the child that served them, and the copies skipped on the way."""

    data: list[Any]
    label: str
    path: str
    format: str
    missing: list[str] = field(default_factory=list)  # labels of children without the checkpoint
    skipped: list[ChildFailure] = field(default_factory=list)  # unreadable copies passed over


class MultiSaveError(CheckpointSaveError):
    """No child saved the checkpoint. ``result`` holds every child's failure."""

    def __init__(self, result: MultiSaveResult):
        self.result = result
        details = "; ".join(f"{label} ({f.path}): {f.error}" for label, f in result.failed.items())
        super().__init__(f"Checkpoint {result.name!r} was not saved by any backend ({result.save_strategy}): {details}")


class NoReadableCopyError(CheckpointCorruptError):
    """Copies of the checkpoint exist, but none could be read. ``failures`` names each file and its problem."""

    def __init__(self, name: str, failures: list[ChildFailure]):
        self.failures = failures
        details = "; ".join(f"{f.label} ({f.path}): {f.error}" for f in failures)
        super().__init__(
            failures[0].path,
            f"checkpoint {name!r}: no backend holds a readable copy ({details}). "
            "Restore a good copy, or delete the damaged ones to recompute.",
        )


def default_labels(managers: Sequence[BaseCheckpointManager]) -> list[str]:
    """``jsonl``, ``parquet`` …; a repeated format gets its position: ``jsonl``, ``jsonl_2``."""
    labels, seen = [], {}
    for mgr in managers:
        base = getattr(mgr, "format_name", type(mgr).__name__)
        seen[base] = seen.get(base, 0) + 1
        labels.append(base if seen[base] == 1 else f"{base}_{seen[base]}")
    return labels


class MultiCheckpointManager(BaseCheckpointManager):
    """Coordinates several checkpoint managers (any formats, any directories) as one."""

    format_name = "multi"
    suffix = ""

    def __init__(
        self,
        managers: Sequence[BaseCheckpointManager],
        *,
        save_strategy: SaveStrategy = "all_enabled",
        load_strategy: LoadStrategy = "first_found",
        labels: Sequence[str] | None = None,
    ) -> None:
        managers = list(managers)
        if not managers:
            raise ValueError(
                "At least one checkpoint manager must be provided, e.g. "
                "MultiCheckpointManager([JSONLCheckpointManager(dir), ParquetCheckpointManager(dir)])"
            )
        if save_strategy not in SAVE_STRATEGIES:
            raise ValueError(f"Unknown save strategy {save_strategy!r}: choose from {', '.join(SAVE_STRATEGIES)}")
        if load_strategy not in LOAD_STRATEGIES:
            raise ValueError(f"Unknown load strategy {load_strategy!r}: choose from {', '.join(LOAD_STRATEGIES)}")
        labels = list(labels) if labels is not None else default_labels(managers)
        if len(labels) != len(managers) or len(set(labels)) != len(labels):
            raise ValueError(f"labels must be unique and one per manager; got {labels} for {len(managers)} managers")
        self.managers = managers
        self.labels = labels
        self.save_strategy: str = save_strategy
        self.load_strategy: str = load_strategy
        # Kura: the primary's directory stands for the whole (for code that only reads checkpoint_dir).
        self.checkpoint_dir = managers[0].checkpoint_dir
        logger.debug("MultiCheckpointManager over %s (save=%s, load=%s)", labels, save_strategy, load_strategy)

    @property
    def enabled(self) -> bool:  # type: ignore[override]
        """Enabled if any child is (a child switched on or off later counts)."""
        return any(m.enabled for m in self.managers)

    @enabled.setter
    def enabled(self, value: bool) -> None:
        raise AttributeError("enable or disable the child managers; a MultiCheckpointManager is enabled if any child is")

    def __repr__(self) -> str:
        return (f"MultiCheckpointManager({self.labels}, save_strategy={self.save_strategy!r}, "
                f"load_strategy={self.load_strategy!r})")

    def _enabled(self) -> list[tuple[str, BaseCheckpointManager]]:
        return [(label, m) for label, m in zip(self.labels, self.managers) if m.enabled]

    # --- names and paths ---------------------------------------------------------------------------------
    def checkpoint_name(self, filename: str) -> str:
        """``summaries``, ``summaries.jsonl`` and ``summaries.parquet`` all name the checkpoint ``summaries``."""
        name = storage.validate_name(filename)
        for suffix in {m.suffix for m in self.managers if m.suffix}:
            if name.endswith(suffix) and len(name) > len(suffix):
                return name[: -len(suffix)]
        return name

    def get_checkpoint_path(self, filename: str) -> UPath:
        """The primary child's path (Kura: for compatibility; each child has its own)."""
        return self.managers[0].get_checkpoint_path(self.checkpoint_name(filename))

    def setup_checkpoint_dir(self) -> None:
        for _, mgr in self._enabled():
            mgr.setup_checkpoint_dir()

    def has_checkpoint(self, filename: str) -> bool:
        name = self.checkpoint_name(filename)
        children = self._enabled()
        if self.load_strategy == "priority":
            children = children[:1]
        return any(m.has_checkpoint(name) for _, m in children)

    # --- save -------------------------------------------------------------------------------------------
    def save_checkpoint(  # type: ignore[override]
        self, filename: str, data: Sequence[BaseModel], checkpoint_type: str | None = None, **kwargs: Any
    ) -> MultiSaveResult | None:
        """Save to the children chosen by ``save_strategy``. Returns a :class:`MultiSaveResult`, or ``None``
        when every child is disabled. Raises :class:`MultiSaveError` if no child saved."""
        if self.save_strategy not in SAVE_STRATEGIES:
            raise ValueError(f"Unknown save strategy {self.save_strategy!r}: choose from {', '.join(SAVE_STRATEGIES)}")
        if not self.enabled:
            logger.debug("%r: every child is disabled, not saving %s", self, filename)
            return None
        name = self.checkpoint_name(filename)
        models = list(data)
        result = MultiSaveResult(name=name, save_strategy=self.save_strategy)
        targets = self._enabled()
        if self.save_strategy == "primary_only":
            for label, _ in targets[1:]:
                result.skipped[label] = "primary_only"
            targets = targets[:1]
        for label, mgr in zip(self.labels, self.managers):
            if not mgr.enabled:
                result.skipped[label] = "disabled"
        for label, mgr in targets:
            try:
                saved = mgr.save_checkpoint(name, models, checkpoint_type, **dict(kwargs))
            except Exception as exc:  # noqa: BLE001 - any failure of one backend is recorded; the others still save
                path = self._path_of(mgr, name)
                logger.error("Saving checkpoint %r to %s (%s) failed: %s", name, label, path, _describe_error(exc))
                result.failed[label] = ChildFailure(label, path, _describe_error(exc), exc)
                continue
            if saved is not None:
                result.saved[label] = saved
        if not result.saved:
            raise MultiSaveError(result)
        if result.failed:
            logger.warning("Checkpoint %r saved to %s only; failed: %s", name, ", ".join(result.saved),
                           ", ".join(result.failed))
        else:
            logger.info("Saved checkpoint %r to %s", name, ", ".join(result.saved))
        return result

    # --- load -------------------------------------------------------------------------------------------
    def load_with_source(
        self, filename: str, model_class: type[T] | None = None, *,
        loader: Callable[[BaseCheckpointManager, str], Any] | None = None, **kwargs: Any
    ) -> MultiLoadResult | None:
        """Like :meth:`load_checkpoint`, but also says which child served the load and what was skipped.
        ``loader(child, name)`` replaces ``child.load_checkpoint(name, model_class)`` (e.g. the columnar path,
        :func:`~kura_dagster.checkpoints.columnar.load_summary_columns`), under the same strategies."""
        if self.load_strategy not in LOAD_STRATEGIES:
            raise ValueError(f"Unknown load strategy {self.load_strategy!r}: choose from {', '.join(LOAD_STRATEGIES)}")
        if not self.enabled:
            return None
        name = self.checkpoint_name(filename)
        children = self._enabled()
        load = loader or (lambda mgr, name: mgr.load_checkpoint(name, model_class, **kwargs))
        if self.load_strategy == "priority":
            label, mgr = children[0]
            try:
                data = load(mgr, name)
            except CheckpointCorruptError as exc:
                raise CheckpointCorruptError(
                    exc.path, f"{exc.problem} (the primary backend {label!r}; load_strategy='priority' does not "
                    "fall back to other copies: use 'first_found' to read the next backend, or repair this copy)",
                    line=exc.line, row=exc.row,
                ) from exc
            if data is None:
                logger.debug("Checkpoint %r not found in the primary backend %s", name, label)
                return None
            return MultiLoadResult(data, label, self._path_of(mgr, name), mgr.format_name)
        missing: list[str] = []
        failures: list[ChildFailure] = []
        for label, mgr in children:
            try:
                data = load(mgr, name)
            except Exception as exc:  # noqa: BLE001 - an unreadable copy is reported and the next backend serves
                path = self._path_of(mgr, name)
                logger.warning("Skipping the unreadable copy of checkpoint %r in %s (%s): %s", name, label, path,
                               _describe_error(exc))
                failures.append(ChildFailure(label, path, _describe_error(exc), exc))
                continue
            if data is None:
                missing.append(label)
                continue
            logger.info("Loaded checkpoint %r from %s", name, label)
            return MultiLoadResult(data, label, self._path_of(mgr, name), mgr.format_name, missing, failures)
        if failures:
            raise NoReadableCopyError(name, failures)
        logger.debug("No checkpoint %r in any backend", name)
        return None

    def load_checkpoint(self, filename: str, model_class: type[T] | None = None, **kwargs: Any) -> list[T] | None:
        result = self.load_with_source(filename, model_class, **kwargs)
        return None if result is None else result.data

    def _serving_child(self, name: str) -> BaseCheckpointManager | None:
        children = self._enabled()
        if self.load_strategy == "priority":
            children = children[:1]
        return next((m for _, m in children if m.has_checkpoint(name)), None)

    def iter_checkpoint(
        self, filename: str, model_class: type[T] | None = None, *, batch_size: int = 10_000
    ) -> Iterator[T] | None:
        """Stream from the first child (by the load strategy) that holds the checkpoint."""
        name = self.checkpoint_name(filename)
        mgr = self._serving_child(name)
        return None if mgr is None else mgr.iter_checkpoint(name, model_class, batch_size=batch_size)

    def filter_checkpoint(
        self,
        filename: str,
        predicate: Callable[[dict[str, Any]], bool],
        model_class: type[T] | None = None,
        checkpoint_type: str | None = None,
        **kwargs: Any,
    ) -> list[T] | None:
        name = self.checkpoint_name(filename)
        mgr = self._serving_child(name)
        return None if mgr is None else mgr.filter_checkpoint(name, predicate, model_class, checkpoint_type, **kwargs)

    def get_checkpoint_info(self, filename: str) -> dict[str, Any] | None:
        """The serving child's info, plus ``copies``: each enabled child's path and bytes."""
        name = self.checkpoint_name(filename)
        mgr = self._serving_child(name)
        if mgr is None:
            return None
        info = dict(mgr.get_checkpoint_info(name) or {})
        info["copies"] = {label: {"path": self._path_of(m, name), "size_bytes": m.get_file_size(name)}
                          for label, m in self._enabled() if m.has_checkpoint(name)}
        return info

    def get_file_size(self, filename: str) -> int:
        """Bytes of every enabled child's copy together (the storage this checkpoint costs)."""
        name = self.checkpoint_name(filename)
        return sum(m.get_file_size(name) for _, m in self._enabled())

    # --- listing, deleting, stats -------------------------------------------------------------------------
    def list_checkpoints(self) -> list[str]:
        """The union of the enabled children's checkpoint names, sorted."""
        names: set[str] = set()
        for _, mgr in self._enabled():
            names.update(mgr.list_checkpoints())
        return sorted(names)

    def delete_checkpoint(self, filename: str) -> bool:
        """Delete from every enabled child; ``True`` if at least one copy was deleted."""
        name = self.checkpoint_name(filename)
        deleted = [label for label, mgr in self._enabled() if mgr.delete_checkpoint(name)]
        if deleted:
            logger.info("Deleted checkpoint %r from %s", name, ", ".join(deleted))
        return bool(deleted)

    def get_stats(self) -> dict[str, Any]:
        managers = []
        for label, mgr in zip(self.labels, self.managers):
            stats = {
                "label": label,
                "type": type(mgr).__name__,
                "format": getattr(mgr, "format_name", None),
                "checkpoint_dir": str(mgr.checkpoint_dir),
                "enabled": mgr.enabled,
                "checkpoint_count": len(mgr.list_checkpoints()) if mgr.enabled else 0,
            }
            managers.append(stats)
        return {
            "enabled": self.enabled,
            "save_strategy": self.save_strategy,
            "load_strategy": self.load_strategy,
            "num_managers": len(self.managers),
            "enabled_managers": sum(1 for m in self.managers if m.enabled),
            "managers": managers,
        }

    @staticmethod
    def _path_of(mgr: BaseCheckpointManager, name: str) -> str:
        try:
            return str(mgr.get_checkpoint_path(name))
        except CheckpointError as exc:
            return f"<{exc}>"

    # --- format hooks: not used, a multi manager delegates whole operations ------------------------------
    def _write(self, path: UPath, models: list[BaseModel], model: type[BaseModel] | None, **kwargs: Any) -> SavedCheckpoint:
        raise NotImplementedError("MultiCheckpointManager delegates saves to its children")

    def _read(self, path: UPath, model: type[T], **kwargs: Any) -> list[T]:
        raise NotImplementedError("MultiCheckpointManager delegates loads to its children")

    def _describe(self, path: UPath) -> dict[str, Any]:
        raise NotImplementedError("MultiCheckpointManager delegates get_checkpoint_info to its children")

    def _is_checkpoint(self, path: UPath) -> bool:
        raise NotImplementedError("MultiCheckpointManager delegates has_checkpoint to its children")
