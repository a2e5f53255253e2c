"""Copy checkpoints between formats and directories without recomputing, and see what each format costs.

    from kura_dagster.checkpoints.migrate import migrate, open_location, storage_overview
    report = migrate(open_location("jsonl:./kura_checkpoints"), open_location("parquet:./checkpoints"))
    print(report.as_markdown())
    print(storage_overview("./checkpoints").as_markdown())

No Dagster import here (the job lives in :mod:`kura_dagster.orchestration.migration_job`, the command in :mod:`kura_dagster.cli`).

Every copy is verified: the destination is read back and compared with the source row by row (``model_dump``
equality; embeddings at float32 precision when the destination stores float32, which the save reports), and
a copy that does not verify is deleted and reported with the first differing row. A directory Kura wrote can
be imported: Kura's files do not record their model, so the standard Kura checkpoint names decide
(``summaries`` → ``ConversationSummary``, ``dimensionality`` → ``ProjectedCluster`` …), and the format readers
recognise Kura's own Parquet and HF layouts by their schema.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel
from upath import UPath

from kura_dagster.checkpoints.base import BaseCheckpointManager
from kura_dagster.checkpoints.errors import CheckpointError
from kura_dagster.checkpoints.registry import FORMATS, build_manager
from kura_dagster.checkpoints.storage import resolve_location, to_upath
from kura_dagster.types import KURA_CHECKPOINT_MODELS, resolve_model

logger = logging.getLogger(__name__)



class MigrationError(CheckpointError):
    """A checkpoint could not be copied, or its copy did not verify."""


# --- locations -------------------------------------------------------------------------------------------------
def parse_location(spec: str) -> tuple[str, str]:
    """``"parquet:/data/ckpt"`` → ``("parquet", "/data/ckpt")``; URLs work too (``"hf:s3://bucket/kura"``)."""
    fmt, sep, directory = spec.partition(":")
    fmt = fmt.strip().lower()
    if not sep or not directory or fmt not in FORMATS:
        raise ValueError(
            f"Invalid checkpoint location {spec!r}: write FORMAT:DIR with FORMAT one of {', '.join(FORMATS)}, "
            "e.g. 'jsonl:./checkpoints' or 'parquet:s3://bucket/kura'"
        )
    return fmt, directory


def open_location(spec: str, **options: Any) -> BaseCheckpointManager:
    """The checkpoint manager for ``FORMAT:DIR`` (``options`` go to the format, e.g. ``compression="zstd"``)."""
    fmt, directory = parse_location(spec)
    return build_manager(fmt, resolve_location(directory), **options)


# --- content comparison ----------------------------------------------------------------------------------------
def content_digest(models: Iterable[BaseModel]) -> str:
    """SHA-256 over each model's JSON, one per line: equal digests mean equal content (format-independent)."""
    h = hashlib.sha256()
    for m in models:
        h.update(m.__pydantic_serializer__.to_json(m))
        h.update(b"\n")
    return "sha256:" + h.hexdigest()


def _float32_equal(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is b
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return x.shape == y.shape and bool(np.array_equal(x.astype(np.float32), y.astype(np.float32)))


def first_difference(
    expected: Sequence[BaseModel], actual: Sequence[BaseModel] | None, *, float32_embeddings: bool = False
) -> str | None:
    """``None`` if ``actual`` holds the same rows as ``expected``, else a description of the first difference.
    With ``float32_embeddings``, an ``embedding`` field is compared after rounding both sides to float32."""
    if actual is None:
        return "the copy is missing"
    if len(actual) != len(expected):
        return f"the copy holds {len(actual)} rows, the source {len(expected)}"
    for i, (a, b) in enumerate(zip(expected, actual)):
        da, db = a.model_dump(), b.model_dump()
        if da == db:
            continue
        if float32_embeddings and "embedding" in da and "embedding" in db:
            ea, eb = da.pop("embedding"), db.pop("embedding")
            if da == db and _float32_equal(ea, eb):
                continue
        fields = sorted(k for k in set(da) | set(db) if da.get(k) != db.get(k))
        return f"row {i} differs in {', '.join(fields) or 'its type'}"
    return None


# --- migration -------------------------------------------------------------------------------------------------
@dataclass
class MigratedCheckpoint:
    """One checkpoint's migration: ``copied``, ``unchanged`` (the destination already held the same rows) or
    ``conflict`` (the destination holds different rows and ``overwrite`` was off)."""

    name: str
    model: str
    status: str
    rows: int
    source_path: str
    destination_path: str
    source_bytes: int
    destination_bytes: int
    content: str
    note: str = ""


@dataclass
class MigrationReport:
    source: str
    destination: str
    checkpoints: list[MigratedCheckpoint] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.status != "conflict" for c in self.checkpoints)

    @property
    def conflicts(self) -> list[str]:
        return [c.name for c in self.checkpoints if c.status == "conflict"]

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source, "destination": self.destination, "ok": self.ok,
                "checkpoints": [asdict(c) for c in self.checkpoints]}

    def as_markdown(self) -> str:
        lines = [f"Migration {self.source} → {self.destination}", "",
                 "| checkpoint | model | status | rows | source bytes | destination bytes | note |",
                 "|---|---|---|---:|---:|---:|---|"]
        for c in self.checkpoints:
            lines.append(f"| {c.name} | {c.model.rsplit('.', 1)[-1]} | {c.status} | {c.rows:,} | "
                         f"{c.source_bytes:,} | {c.destination_bytes:,} | {c.note} |")
        return "\n".join(lines)


def _location(mgr: BaseCheckpointManager) -> str:
    return f"{mgr.format_name}:{mgr.checkpoint_dir}"


def model_for_checkpoint(
    mgr: BaseCheckpointManager, name: str, models: Mapping[str, type[BaseModel] | str] | None = None
) -> type[BaseModel]:
    """The model of checkpoint ``name``: an explicit mapping, else the identity the file records, else Kura's
    standard checkpoint names."""
    if models and name in models:
        chosen = models[name]
        return resolve_model(chosen) if isinstance(chosen, str) else chosen
    info = mgr.get_checkpoint_info(name) or {}
    if info.get("model"):
        return resolve_model(str(info["model"]))
    if name in KURA_CHECKPOINT_MODELS:
        return KURA_CHECKPOINT_MODELS[name]
    raise MigrationError(
        f"{mgr.get_checkpoint_path(name)} does not record its model and {name!r} is not one of Kura's checkpoint "
        f"names ({', '.join(KURA_CHECKPOINT_MODELS)}): pass models={{{name!r}: 'ConversationSummary'}} "
        "(CLI: --model NAME=MODEL)"
    )


def migrate(
    source: BaseCheckpointManager,
    destination: BaseCheckpointManager,
    names: Sequence[str] | None = None,
    *,
    overwrite: bool = False,
    models: Mapping[str, type[BaseModel] | str] | None = None,
) -> MigrationReport:
    """Copy checkpoints ``names`` (default: every checkpoint in ``source``) to ``destination`` and verify each copy.

    A checkpoint the destination already holds with the same rows is left alone (``unchanged``); one it holds
    with different rows is a ``conflict`` unless ``overwrite``. Raises :class:`MigrationError` when a named
    checkpoint is absent, or when a copy does not read back equal (the bad copy is deleted first).
    """
    report = MigrationReport(_location(source), _location(destination))
    if not source.enabled or not destination.enabled:
        raise MigrationError(f"Both managers must be enabled to migrate ({source!r} → {destination!r})")
    if _location(source) == _location(destination):
        raise MigrationError(f"Source and destination are the same location: {_location(source)}")
    wanted = [source.checkpoint_name(n) for n in names] if names else source.list_checkpoints()
    if not wanted:
        logger.warning("No checkpoints of format %s in %s", source.format_name, source.checkpoint_dir)
    for name in wanted:
        if not source.has_checkpoint(name):
            raise MigrationError(f"No {source.format_name} checkpoint {name!r} in {source.checkpoint_dir} "
                                 f"(it holds: {', '.join(source.list_checkpoints()) or 'nothing'})")
        model = model_for_checkpoint(source, name, models)
        data = source.load_checkpoint(name, model)
        assert data is not None
        f32 = getattr(destination, "embedding_dtype", None) == "float32"
        entry = MigratedCheckpoint(
            name=name, model=f"{model.__module__}.{model.__qualname__}", status="copied", rows=len(data),
            source_path=str(source.get_checkpoint_path(name)), destination_path=str(destination.get_checkpoint_path(name)),
            source_bytes=source.get_file_size(name), destination_bytes=0, content=content_digest(data),
        )
        if destination.has_checkpoint(name):
            try:
                existing = destination.load_checkpoint(name, model)
                difference = first_difference(data, existing, float32_embeddings=f32)
            except CheckpointError as exc:
                difference = f"the existing copy is unreadable ({exc})"
            if difference is None:
                entry.status, entry.destination_bytes = "unchanged", destination.get_file_size(name)
                entry.note = "destination already holds these rows"
                report.checkpoints.append(entry)
                continue
            if not overwrite:
                entry.status, entry.destination_bytes = "conflict", destination.get_file_size(name)
                entry.note = f"destination differs ({difference}); use overwrite to replace it"
                report.checkpoints.append(entry)
                continue
            entry.note = f"replaced a different copy ({difference})"
        saved = destination.save_checkpoint(name, data, model_class=model)
        assert saved is not None
        f32 = saved.extra.get("embedding_dtype") == "float32"
        difference = first_difference(data, destination.load_checkpoint(name, model), float32_embeddings=f32)
        if difference is not None:
            destination.delete_checkpoint(name)
            raise MigrationError(f"The {destination.format_name} copy of {name!r} at {saved.path} did not verify "
                                 f"against {entry.source_path}: {difference}. The copy was deleted.")
        entry.destination_bytes = saved.bytes
        if saved.extra.get("embedding_rounded"):
            entry.note = (entry.note + "; " if entry.note else "") + (
                f"{saved.extra['embedding_rounded']} embedding values rounded to float32")
        logger.info("Migrated %s (%d rows) to %s", name, len(data), saved.path)
        report.checkpoints.append(entry)
    return report


# --- storage overview (the seed's compare_checkpoint_sizes) ----------------------------------------------------
@dataclass
class StorageOverview:
    """Bytes of each checkpoint in each format under one directory, and the totals per format."""

    directory: str
    sizes: dict[str, dict[str, int]] = field(default_factory=dict)  # checkpoint -> format -> bytes
    unavailable: dict[str, str] = field(default_factory=dict)  # format -> why it could not be inspected

    @property
    def formats(self) -> list[str]:
        return [f for f in FORMATS if any(f in by_fmt for by_fmt in self.sizes.values())]

    @property
    def totals(self) -> dict[str, int]:
        return {f: sum(by_fmt.get(f, 0) for by_fmt in self.sizes.values()) for f in self.formats}

    def as_dict(self) -> dict[str, Any]:
        return {"directory": self.directory, "sizes": self.sizes, "totals": self.totals,
                "unavailable": self.unavailable}

    def as_markdown(self) -> str:
        fmts = self.formats
        if not fmts:
            return f"No checkpoints in {self.directory}"
        head = "| checkpoint | " + " | ".join(f"{f} bytes" for f in fmts) + " |"
        lines = [f"Checkpoint storage in {self.directory}", "", head, "|---|" + "---:|" * len(fmts)]
        for name in sorted(self.sizes):
            lines.append(f"| {name} | " + " | ".join(
                f"{self.sizes[name][f]:,}" if f in self.sizes[name] else "–" for f in fmts) + " |")
        totals = self.totals
        lines.append("| **total** | " + " | ".join(f"**{totals[f]:,}**" for f in fmts) + " |")
        if "jsonl" in totals and totals["jsonl"]:
            lines.append("| vs jsonl | " + " | ".join(f"{totals[f] / totals['jsonl']:.0%}" for f in fmts) + " |")
        for fmt, why in self.unavailable.items():
            lines.append(f"\n{fmt}: not inspected ({why})")
        return "\n".join(lines)


def storage_overview(directory: str | UPath, storage_options: dict[str, Any] | None = None) -> StorageOverview:
    """Sizes of every checkpoint of every format in ``directory`` (side by side, as in the seed's file layout)
    and in per-format subdirectories ``directory/jsonl``, ``/parquet``, ``/hf`` (the seed's
    ``compare_checkpoint_sizes`` layout)."""
    root = to_upath(directory, storage_options)
    if not root.is_dir():
        raise FileNotFoundError(f"No checkpoint directory at {root}")
    overview = StorageOverview(str(root))
    for fmt in FORMATS:
        for where in (root, root / fmt):
            if not where.is_dir():
                continue
            try:
                mgr = build_manager(fmt, where)
            except ImportError as exc:  # a format whose optional dependency is missing is reported, not hidden
                overview.unavailable[fmt] = str(exc)
                break
            for name in mgr.list_checkpoints():
                by_fmt = overview.sizes.setdefault(name, {})
                by_fmt[fmt] = by_fmt.get(fmt, 0) + mgr.get_file_size(name)
    return overview
