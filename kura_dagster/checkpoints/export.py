"""Export a checkpoint directory to Kura's single-file layout, for Kura and Kura's UI.

A partitioned pipeline stores ``conversations/2026-11-28.jsonl``, ``summaries/2026-11-28.parquet`` … one file
per partition; Kura reads one ``conversations.jsonl``, ``summaries.jsonl``, ``clusters.jsonl``,
``meta_clusters.jsonl`` and ``dimensionality.jsonl``. :func:`export_kura` writes those, streaming: each
checkpoint is read batch by batch through its format's manager (verified as any load is) and written to one
atomic file (or dataset), so memory stays bounded by a batch whatever the size of the history.

``format="jsonl"`` (the default) writes what Kura's ``JSONLCheckpointManager`` and Kura's UI read;
``format="parquet"`` / ``"hf"`` write ``<name>.parquet`` / ``<name>/`` in the layout Kura 0.5.4's own
``ParquetCheckpointManager`` / ``HFDatasetCheckpointManager`` read (``layout="kura"``, see :mod:`.kura_layout`).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Optional

from kura_dagster.checkpoints import kura_layout, storage
from kura_dagster.checkpoints.base import BaseCheckpointManager
from kura_dagster.checkpoints.registry import build_manager
from kura_dagster.types import KURA_CHECKPOINT_MODELS

logger = logging.getLogger(__name__)

FORMAT_ORDER = ("jsonl", "parquet", "hf")
EXPORT_FORMATS = ("jsonl", "parquet", "hf")
BATCH = 5_000


@dataclass
class ExportedFile:
    name: str
    rows: int
    bytes: int
    path: str
    format: str
    partitions: list[str] = field(default_factory=list)


@dataclass
class ExportReport:
    files: list[ExportedFile] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    format: str = "jsonl"

    def as_markdown(self) -> str:
        lines = [f"Written as {self.format} in Kura's layout.", "",
                 "| checkpoint | rows | bytes | read from | partitions |", "|---|---:|---:|---|---:|"]
        for f in self.files:
            lines.append(f"| {f.name} | {f.rows:,} | {f.bytes:,} | {f.format} | {len(f.partitions) or '-'} |")
        for name in self.missing:
            lines.append(f"| {name} | — | — | not found | - |")
        return "\n".join(lines)


def _find(root: Any, name: str, storage_options: Optional[dict]) -> Optional[tuple[BaseCheckpointManager, list[str], str]]:
    """(manager, checkpoint names in order, format) for ``name``: the unpartitioned checkpoint if there is one,
    else its partitions (``<name>/<partition>`` in one format), sorted by partition key."""
    opts = {"storage_options": storage_options} if storage_options else {}
    partitions_dir = root / name
    if partitions_dir.is_dir():  # partitions first: a pipeline that became partitioned may keep an old whole file
        for fmt in FORMAT_ORDER:
            manager = build_manager(fmt, partitions_dir, **opts)
            keys = manager.list_checkpoints()
            if keys:
                return manager, sorted(keys), fmt
    for fmt in FORMAT_ORDER:
        manager = build_manager(fmt, root, **opts)
        if manager.has_checkpoint(name):
            return manager, [name], fmt
    return None


def _rows(manager: BaseCheckpointManager, names: list[str], model: type) -> Iterator[Any]:
    """The models of ``names`` in order, read batch by batch."""
    for name in names:
        rows = manager.iter_checkpoint(name, model, batch_size=BATCH)
        if rows is None:
            raise FileNotFoundError(f"{manager.get_checkpoint_path(name)} disappeared during the export")
        yield from rows


def _lines(manager: BaseCheckpointManager, names: list[str], model: type) -> Iterator[bytes]:
    for row in _rows(manager, names, model):
        yield row.__pydantic_serializer__.to_json(row) + b"\n"


def _batches(manager: BaseCheckpointManager, names: list[str], model: type) -> Iterator[list[Any]]:
    rows = _rows(manager, names, model)
    while batch := list(itertools.islice(rows, BATCH)):
        yield batch


def export_kura(checkpoint_dir: Any, out_dir: Any, *, format: str = "jsonl", storage_options: Optional[dict] = None,
                out_storage_options: Optional[dict] = None) -> ExportReport:
    """Write Kura's single-file layout of ``checkpoint_dir`` (any format, partitioned or not) to ``out_dir``: JSONL
    (``format="jsonl"``), or Parquet / HF datasets in the layout Kura 0.5.4's own managers read."""
    if format not in EXPORT_FORMATS:
        raise ValueError(f"export format must be one of {', '.join(EXPORT_FORMATS)}; got {format!r}")
    root = storage.to_upath(checkpoint_dir, storage_options)
    out = storage.to_upath(out_dir, out_storage_options)
    if storage.is_local(root) and not root.exists():
        raise FileNotFoundError(f"{checkpoint_dir}: no such checkpoint directory")
    report = ExportReport(format=format)
    writer = None
    if format != "jsonl":
        opts = {"storage_options": out_storage_options} if out_storage_options else {}
        writer = build_manager(format, out, layout="kura", **opts)
    for name, model in KURA_CHECKPOINT_MODELS.items():
        found = _find(root, name, storage_options)
        if found is None:
            report.missing.append(name)
            continue
        manager, names, fmt = found
        partitions = names if names != [name] else []
        if writer is not None:
            saved = kura_layout.save_stream(writer, name, model, _batches(manager, names, model))
            report.files.append(ExportedFile(name, saved.rows, saved.bytes, saved.path, fmt, partitions))
            logger.info("Exported %s: %d rows from %s to %s (%s, Kura's layout)", name, saved.rows, fmt, saved.path,
                        format)
            continue
        target = out / f"{name}.jsonl"
        count = 0

        def write(fh: Any) -> None:
            nonlocal count
            for line in _lines(manager, names, model):
                fh.write(line)
                count += 1

        size = storage.atomic_write_file(target, write)
        report.files.append(ExportedFile(name, count, size, str(target), fmt, partitions))
        logger.info("Exported %s: %d rows from %s%s to %s", name, count, fmt,
                    f" ({len(partitions)} partitions)" if partitions else "", target)
    return report
