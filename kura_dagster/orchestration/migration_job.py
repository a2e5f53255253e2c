"""Dagster jobs over :mod:`kura_dagster.checkpoints.migrate`: copy checkpoints between formats without recomputing, and show
the storage each format costs. Both put their tables in the run's metadata, so the UI shows them.

* ``migrate_checkpoints_job`` — config ``source``/``destination`` as ``FORMAT:DIR`` (``jsonl:/data/kura``),
  optional ``names``, ``overwrite``, ``destination_options`` and ``models``.
* ``checkpoint_storage_job`` — config ``directory`` (default: ``KURA_CHECKPOINT_DIR``).
"""

import os
from typing import Any, Optional

import dagster as dg
from pydantic import Field

from kura_dagster.checkpoints.storage import resolve_location
from kura_dagster.orchestration.names import KuraNames
from kura_dagster.checkpoints.migrate import StorageOverview, migrate, open_location, storage_overview


class MigrationConfig(dg.Config):
    source: str = Field(description="FORMAT:DIR to copy from, e.g. jsonl:/data/kura_checkpoints (Kura's own files work).")
    destination: str = Field(description="FORMAT:DIR to copy to, e.g. parquet:/data/checkpoints.")
    names: list[str] = Field(default_factory=list, description="Checkpoints to copy; empty = every one in the source.")
    overwrite: bool = Field(default=False, description="Replace destination checkpoints whose rows differ.")
    destination_options: dict[str, Any] = Field(
        default_factory=dict, description="Destination format options, e.g. {compression: zstd}."
    )
    models: dict[str, str] = Field(
        default_factory=dict, description="Model of a checkpoint whose file does not record it: {name: ConversationSummary}."
    )


class StorageConfig(dg.Config):
    directory: Optional[str] = Field(
        default=None,
        description="Checkpoint directory to inspect (formats side by side, or in jsonl/ parquet/ hf/ subdirectories); "
        "default KURA_CHECKPOINT_DIR.",
    )


def storage_metadata(overview: StorageOverview, prefix: str = "storage") -> dict[str, Any]:
    """The storage overview as UI metadata: a markdown table, and one plottable number per format total."""
    md: dict[str, Any] = {f"{prefix}/overview": dg.MetadataValue.md(overview.as_markdown())}
    for fmt, total in overview.totals.items():
        md[f"{prefix}/total_bytes/{fmt}"] = dg.MetadataValue.int(total)
    return md


@dg.op(out=dg.Out(dg.Nothing), description="Copy checkpoints between formats or directories, verified, no recompute.")
def migrate_checkpoints(context: dg.OpExecutionContext, config: MigrationConfig) -> dg.Output:
    source = open_location(config.source)
    destination = open_location(config.destination, **config.destination_options)
    report = migrate(source, destination, config.names or None, overwrite=config.overwrite, models=config.models)
    for c in report.checkpoints:
        context.log.info(f"{c.name}: {c.status}, {c.rows} rows, {c.source_bytes} → {c.destination_bytes} bytes"
                         + (f" ({c.note})" if c.note else ""))
    if not report.ok:
        raise dg.Failure(
            description=f"The destination holds different rows for {', '.join(report.conflicts)}; "
            "set overwrite: true to replace them.",
            metadata={"report": dg.MetadataValue.md(report.as_markdown())},
        )
    metadata: dict[str, Any] = {
        "report": dg.MetadataValue.md(report.as_markdown()),
        "copied": dg.MetadataValue.int(sum(c.status == "copied" for c in report.checkpoints)),
        "unchanged": dg.MetadataValue.int(sum(c.status == "unchanged" for c in report.checkpoints)),
        "rows": dg.MetadataValue.int(sum(c.rows for c in report.checkpoints)),
        **storage_metadata(storage_overview(destination.checkpoint_dir), prefix="destination_storage"),
    }
    return dg.Output(None, metadata=metadata)


@dg.op(out=dg.Out(dg.Nothing), description="Bytes of each checkpoint in each format, and the totals.")
def checkpoint_storage(context: dg.OpExecutionContext, config: StorageConfig) -> dg.Output:
    overview = storage_overview(resolve_location(config.directory or os.environ.get("KURA_CHECKPOINT_DIR") or "checkpoints"))
    context.log.info(overview.as_markdown())
    return dg.Output(None, metadata=storage_metadata(overview))


def build_checkpoint_jobs(names: Optional[KuraNames] = None, checkpoint_dir: Optional[str] = None) -> list[dg.JobDefinition]:
    """``<prefix>_migrate_checkpoints_job`` and ``<prefix>_checkpoint_storage_job`` for one pipeline (the storage
    job inspects the pipeline's checkpoint directory unless told otherwise); unprefixed names standalone."""
    prefix = f"{names.prefix}_" if names is not None and names.prefix else ""

    @dg.job(name=f"{prefix}migrate_checkpoints_job",
            description="Copy existing checkpoints to another format or directory without recomputing (verified).")
    def migrate_checkpoints_job() -> None:
        migrate_checkpoints()

    storage_config = (
        {"ops": {"checkpoint_storage": {"config": {"directory": checkpoint_dir}}}} if checkpoint_dir else None
    )

    @dg.job(name=f"{prefix}checkpoint_storage_job", config=storage_config,
            description="Storage overview: bytes of each checkpoint per format (the seed's compare_checkpoint_sizes).")
    def checkpoint_storage_job() -> None:
        checkpoint_storage()

    return [migrate_checkpoints_job, checkpoint_storage_job]


checkpoint_jobs = build_checkpoint_jobs()
migrate_checkpoints_job, checkpoint_storage_job = checkpoint_jobs
