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

from kura_dagster.assets import GROUP
from kura_dagster.resources import ConversationSource

DEFAULT_CRON = "0 3 * * *"
CRON_ENV = "KURA_SCHEDULE_CRON"

kura_job = dg.define_asset_job(
    "kura_job",
    selection=dg.AssetSelection.groups(GROUP),
    description="Materialize every Kura asset: conversations → summaries → clusters → meta_clusters → projected_clusters.",
)


EXECUTOR_ENV = "KURA_EXECUTOR"


def executor_from_env() -> dg.ExecutorDefinition:
    """``KURA_EXECUTOR``: ``in_process`` (the default) or ``multiprocess``.

    The pipeline is a chain, so steps cannot run side by side anyway, and in one process a run saves the
    few seconds each step subprocess spends importing the project (a UI "Materialize all" takes seconds,
    not minutes). ``multiprocess`` isolates each step in its own process (one subprocess per step).
    """
    choice = os.environ.get(EXECUTOR_ENV, "").strip().lower() or "in_process"
    if choice in ("in_process", "in-process"):
        return dg.in_process_executor
    if choice == "multiprocess":
        return dg.multiprocess_executor
    raise ValueError(f"{EXECUTOR_ENV}={choice!r}: use 'in_process' (the default) or 'multiprocess'")


def schedule_cron() -> str:
    return os.environ.get(CRON_ENV, "").strip() or DEFAULT_CRON


def build_stale_refresh_schedule(cron: str | None = None) -> dg.ScheduleDefinition:
    """A schedule for ``kura_job`` that requests only stale or missing assets."""
    cron = cron or schedule_cron()

    try:

        @dg.schedule(
            job=kura_job,
            cron_schedule=cron,
            name="kura_stale_refresh",
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


def build_conversations_sensor(running: bool | None = None) -> dg.SensorDefinition:
    """A sensor that launches ``kura_job`` once per change of the conversations file's content."""
    if running is None:
        running = bool(os.environ.get("KURA_CONVERSATIONS"))

    @dg.sensor(
        job=kura_job,
        name="kura_conversations_changed",
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.RUNNING if running else dg.DefaultSensorStatus.STOPPED,
        description="Materialize every Kura asset when the content of KURA_CONVERSATIONS changes (by SHA-256).",
    )
    def kura_conversations_changed(
        context: dg.SensorEvaluationContext, source: ConversationSource
    ) -> dg.SensorResult | dg.SkipReason:
        if not source.path:
            return dg.SkipReason("No conversations file to watch: KURA_CONVERSATIONS is not set (the demo data is used).")
        path = Path(os.path.expanduser(source.path))
        if not path.is_file():
            return dg.SkipReason(f"{path}: no such file (KURA_CONVERSATIONS); waiting for it to appear.")
        digest = file_sha256(path)
        last, changes = _read_cursor(context.cursor)
        if digest == last:
            return dg.SkipReason(f"{path} is unchanged (sha256 {digest[:12]}…).")
        changes += 1
        context.log.info(f"{path} changed (sha256 {digest[:12]}…, change {changes}): launching kura_job")
        return dg.SensorResult(
            run_requests=[
                dg.RunRequest(
                    run_key=f"{digest}-{changes}",
                    tags={"kura/trigger": "sensor", "kura/conversations_sha256": digest},
                )
            ],
            cursor=json.dumps({"sha256": digest, "changes": changes}),
        )

    return kura_conversations_changed
