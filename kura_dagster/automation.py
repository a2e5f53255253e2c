"""The job over every Kura asset, the schedule that refreshes what is stale, and the input-file sensor.

* ``kura_job`` materializes all five assets (and runs their checks).
* ``kura_stale_refresh`` runs at ``KURA_SCHEDULE_CRON`` (default ``0 3 * * *``, daily at 03:00) and asks only for
  assets that are stale or missing (``RunRequest(stale_assets_only=True)``; the daemon resolves which). With
  the settings folded into code versions (``versioning.py``) that covers settings changes.
* ``kura_conversations_changed`` watches the file the ``source`` resource reads (``KURA_CONVERSATIONS``) and
  launches ``kura_job`` when its bytes change. It tells a change by SHA-256: the cursor keeps the last hash
  and a change counter, and the ``run_key`` is ``<sha256>-<change number>``, so one change makes exactly one
  run even if a tick is retried, and reverting the file to an earlier content is still a change.

Both need the Dagster daemon (``dagster dev`` starts it). The sensor starts running by default when
``KURA_CONVERSATIONS`` is set; the schedule always does.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import dagster as dg

from kura_dagster.names import KuraNames
from kura_dagster.resources import ConversationSource

DEFAULT_CRON = "0 3 * * *"
CRON_ENV = "KURA_SCHEDULE_CRON"

def build_kura_job(names: KuraNames = KuraNames()) -> dg.UnresolvedAssetJobDefinition:
    """``<prefix>_job`` (``kura_job`` standalone): every asset of the pipeline, with its checks."""
    return dg.define_asset_job(
        names.name("job"),
        selection=dg.AssetSelection.assets(*names.keys()),
        description=f"Materialize every asset of the Kura pipeline {names.stem!r}: conversations → summaries → "
        "clusters → meta_clusters → projected_clusters.",
    )


kura_job = build_kura_job()


EXECUTOR_ENV = "KURA_EXECUTOR"


EXECUTORS = ("in_process", "multiprocess")


def executor_for(choice: str | dg.ExecutorDefinition, what: str = "executor") -> dg.ExecutorDefinition:
    """``in_process`` or ``multiprocess`` (or an ``ExecutorDefinition``, returned as it is).

    The pipeline is a chain, so steps cannot run side by side anyway, and in one process a run saves the
    few seconds each step subprocess spends importing the project (a UI "Materialize all" takes seconds,
    not minutes). ``multiprocess`` isolates each step in its own process (one subprocess per step).
    """
    if isinstance(choice, dg.ExecutorDefinition):
        return choice
    name = choice.strip().lower().replace("-", "_") or "in_process"
    if name == "in_process":
        return dg.in_process_executor
    if name == "multiprocess":
        return dg.multiprocess_executor
    raise ValueError(f"{what}={choice!r}: use one of {', '.join(EXECUTORS)}")


def executor_from_env() -> dg.ExecutorDefinition:
    """``KURA_EXECUTOR``: ``in_process`` (the default) or ``multiprocess``."""
    return executor_for(os.environ.get(EXECUTOR_ENV, ""), EXECUTOR_ENV)


def schedule_cron() -> str:
    return os.environ.get(CRON_ENV, "").strip() or DEFAULT_CRON


def build_stale_refresh_schedule(
    cron: str | None = None, names: KuraNames = KuraNames(), job: dg.UnresolvedAssetJobDefinition | None = None
) -> dg.ScheduleDefinition:
    """A schedule for the pipeline's job that requests only stale or missing assets."""
    cron = cron or schedule_cron()

    try:

        @dg.schedule(
            job=job or kura_job,
            cron_schedule=cron,
            name=names.name("stale_refresh"),
            default_status=dg.DefaultScheduleStatus.RUNNING,
            description=f"Re-materialize the Kura assets that are stale or missing, at {cron!r} ({CRON_ENV}).",
        )
        def kura_stale_refresh(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
            return dg.RunRequest(stale_assets_only=True, tags={"kura/trigger": "schedule"})

    except dg.DagsterInvalidDefinitionError as exc:
        raise ValueError(f"{CRON_ENV}={cron!r} is not a valid cron schedule (e.g. {DEFAULT_CRON!r}): {exc}") from None
    return kura_stale_refresh


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _read_cursor(cursor: str | None) -> tuple[str | None, int]:
    if not cursor:
        return None, 0
    try:
        state = json.loads(cursor)
        return str(state["sha256"]), int(state["changes"])
    except (ValueError, KeyError, TypeError):
        return None, 0  # a cursor from an older version: treat the file as new


def source_digest(path: str, storage_options: dict | None = None) -> tuple[str, int]:
    """A digest of what a source holds and its number of files: SHA-256 of each local file's bytes; for object
    storage, of each object's ETag (or size and modification time), so nothing is downloaded to notice a change."""
    from kura_dagster.sources import list_source_files
    from upath import UPath

    files = list_source_files(path, storage_options)
    h = hashlib.sha256()
    for name in files:
        h.update(name.encode() + b"\0")
        upath = UPath(name, **(storage_options or {}))
        if upath.protocol in ("", "file", "local"):
            h.update(file_sha256(Path(upath.path)).encode())
        else:
            info = upath.fs.info(upath.path)
            token = info.get("ETag") or info.get("etag") or f"{info.get('size')}:{info.get('LastModified') or info.get('mtime')}"
            h.update(str(token).encode())
    return h.hexdigest(), len(files)


def build_conversations_sensor(
    running: bool | None = None, names: KuraNames = KuraNames(), job: dg.UnresolvedAssetJobDefinition | None = None
) -> dg.SensorDefinition:
    """A sensor that launches the pipeline's job once per change of its conversations source's content."""
    if running is None:
        running = bool(os.environ.get("KURA_CONVERSATIONS"))
    source_key = names.source

    @dg.sensor(
        job=job or kura_job,
        name=names.name("conversations_changed"),
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.RUNNING if running else dg.DefaultSensorStatus.STOPPED,
        required_resource_keys={source_key},
        description="Materialize the pipeline's assets when the content of its conversations source changes.",
    )
    def conversations_changed(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
        source: ConversationSource = getattr(context.resources, source_key)
        if not source.path:
            where = "KURA_CONVERSATIONS is not set" if names.prefix is None else "conversations= is not a path"
            return dg.SkipReason(f"No conversations source to watch: {where} (the demo data is used).")
        location = source.path if "://" in source.path else os.path.expanduser(source.path)
        try:
            digest, files = source_digest(location, source.fs_options or None)
        except FileNotFoundError:
            files = 0
        if not files:
            return dg.SkipReason(f"{location}: no such file (yet); waiting for it to appear.")
        last, changes = _read_cursor(context.cursor)
        if digest == last:
            return dg.SkipReason(f"{location} is unchanged (sha256 {digest[:12]}…).")
        changes += 1
        context.log.info(f"{location} changed (sha256 {digest[:12]}…, change {changes}): launching {names.name('job')}")
        return dg.SensorResult(
            run_requests=[
                dg.RunRequest(
                    run_key=f"{digest}-{changes}",
                    tags={"kura/trigger": "sensor", "kura/conversations_sha256": digest},
                )
            ],
            cursor=json.dumps({"sha256": digest, "changes": changes}),
        )

    return conversations_changed
