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
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dagster as dg

from kura_dagster.orchestration import recovery
from kura_dagster.orchestration.names import KuraNames
from kura_dagster.orchestration.resources import ConversationSource

DEFAULT_CRON = "0 3 * * *"
CRON_ENV = "KURA_SCHEDULE_CRON"

def build_kura_job(names: KuraNames = KuraNames()) -> dg.UnresolvedAssetJobDefinition:
    """``<prefix>_job`` (``kura_job`` standalone): every asset of the pipeline, with its checks."""
    from kura_dagster.orchestration.facets import facets_key
    from kura_dagster.orchestration.growth import growth_key

    return dg.define_asset_job(
        names.name("job"),
        selection=dg.AssetSelection.assets(*names.keys(), facets_key(names), growth_key(names)),
        description=f"Materialize every asset of the Kura pipeline {names.stem!r}: conversations → summaries → "
        "clusters → meta_clusters → projected_clusters.",
    )


kura_job = build_kura_job()


EXECUTOR_ENV = "KURA_EXECUTOR"


EXECUTORS = ("in_process", "multiprocess", "dask", "k8s")

DASK_ADDRESS_ENV = "KURA_DASK_ADDRESS"
"""``tcp://host:8786``: run the steps on an existing Dask cluster instead of a local one."""
DASK_WORKERS_ENV = "KURA_DASK_WORKERS"
"""Worker processes of the local Dask cluster (default: Dask's choice for the machine's cores)."""
DASK_DASHBOARD_ENV = "KURA_DASK_DASHBOARD"
"""``host:port`` of the local cluster's dashboard (``127.0.0.1:0`` for a free loopback port); unset: no dashboard."""


def _optional_executor(module: str, attribute: str, extra: str, what: str) -> dg.ExecutorDefinition:
    """An executor from an optional extra, imported only when chosen, with the install command if it is missing."""
    import importlib

    try:
        return getattr(importlib.import_module(module), attribute)
    except ImportError as exc:
        raise ImportError(
            f"{what}={extra!r} needs {module.replace('_', '-')}, which is not installed ({exc}); install the extra: "
            f"pip install 'kura-dagster[{extra}]'"
        ) from exc


def dask_cluster_config(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The ``dask_executor`` config for the environment: the cluster at ``KURA_DASK_ADDRESS``, or else a
    ``distributed.LocalCluster`` of worker processes (one thread each) on 127.0.0.1, with ``KURA_DASK_WORKERS``
    workers and its dashboard off, or at ``KURA_DASK_DASHBOARD`` (never Dask's default, 0.0.0.0:8787)."""
    env = os.environ if environ is None else environ
    address = (env.get(DASK_ADDRESS_ENV) or "").strip()
    if address:
        return {"cluster": {"existing": {"address": address}}}
    local: dict[str, Any] = {"processes": True, "threads_per_worker": 1, "host": "127.0.0.1",
                             "dashboard_address": (env.get(DASK_DASHBOARD_ENV) or "").strip() or None}
    workers = (env.get(DASK_WORKERS_ENV) or "").strip()
    if workers:
        if not workers.isdigit() or int(workers) < 1:
            raise ValueError(f"{DASK_WORKERS_ENV}={workers!r}: give a whole number of worker processes, at least 1")
        local["n_workers"] = int(workers)
    return {"cluster": {"local": local}}


def pool_safe_dask_executor() -> dg.ExecutorDefinition:
    """dagster-dask's ``dask_executor`` (same config), made to work with steps in a concurrency pool.

    dagster-dask 0.29.27 hands the ``DagsterRun`` to ``Client.submit``, whose argument parser (dask's task
    spec) walks tuples, and the run is a named tuple: when steps are in a pool (``kura_llm``), the run holds a
    ``RunOpConcurrency`` record, which refuses iteration, and every run fails before its first step ("Iteration
    is not allowed on `@record` RunOpConcurrency"). That field only tells the run queue which pools a run
    uses (the queue reads it from the run storage, not from this object), and the steps' code never reads
    it, so the executor submits a copy of the run without it. Everything else is dagster-dask's.
    """
    import copy

    from dagster_dask.executor import DaskExecutor, dask_executor
    from dagster_shared.record import copy as copy_record

    class PoolSafeDaskExecutor(DaskExecutor):
        def execute(self, plan_context: Any, execution_plan: Any) -> Any:
            run = plan_context.dagster_run
            if run.run_op_concurrency is not None:
                plan_context = copy.copy(plan_context)
                plan_context._plan_data = plan_context.plan_data._replace(  # noqa: SLF001 - see the docstring
                    dagster_run=copy_record(run, run_op_concurrency=None))
            return super().execute(plan_context, execution_plan)

    def create(init_context: dg.InitExecutorContext) -> dg.Executor:
        base = dask_executor.executor_creation_fn(init_context)  # type: ignore[misc]
        return PoolSafeDaskExecutor(base.cluster_type, base.cluster_configuration)

    return dg.ExecutorDefinition(
        name="dask", config_schema=dask_executor.config_schema.as_field(), executor_creation_fn=create,
        requirements=dg.multiple_process_executor_requirements(), description=dask_executor.description,
    )


def executor_for(choice: str | dg.ExecutorDefinition, what: str = "executor") -> dg.ExecutorDefinition:
    """``in_process``, ``multiprocess``, ``dask`` or ``k8s`` (or an ``ExecutorDefinition``, returned as it is).

    The pipeline is a chain, so steps cannot run side by side anyway, and in one process a run saves the
    few seconds each step subprocess spends importing the project (a UI "Materialize all" takes seconds,
    not minutes). ``multiprocess`` isolates each step in its own process (one subprocess per step).
    ``dask`` runs each step as a task on Dask workers (:func:`dask_cluster_config`; extra ``[dask]``), ``k8s``
    each in its own Kubernetes Job (dagster-k8s's ``k8s_job_executor``, configured by run config or the
    K8sRunLauncher; extra ``[k8s]``). Steps on other machines share only the checkpoint store, so give those
    a ``checkpoint_dir`` on object storage (``s3://…``), and the instance a shared database.
    """
    if isinstance(choice, dg.ExecutorDefinition):
        known = {id(dg.in_process_executor): recovery.in_process_executor,
                 id(dg.multiprocess_executor): recovery.multiprocess_executor}
        return known.get(id(choice), choice)
    name = choice.strip().lower().replace("-", "_") or "in_process"
    # Kura's in_process and multiprocess free the pool slots of crashed runs and end on SIGTERM while waiting
    # for one (orchestration/recovery.py); wrap your own with recovery.recovering_executor
    if name == "in_process":
        return recovery.in_process_executor
    if name == "multiprocess":
        return recovery.multiprocess_executor
    if name == "dask":
        _optional_executor("dagster_dask", "dask_executor", "dask", what)
        return pool_safe_dask_executor().configured(dask_cluster_config(), name="dask")
    if name in ("k8s", "kubernetes"):
        return _optional_executor("dagster_k8s", "k8s_job_executor", "k8s", what)
    raise ValueError(f"{what}={choice!r}: use one of {', '.join(EXECUTORS)}")


def executor_from_env(environ: Mapping[str, str] | None = None) -> dg.ExecutorDefinition:
    """``KURA_EXECUTOR``: ``in_process`` (the default), ``multiprocess``, ``dask`` or ``k8s``."""
    env = os.environ if environ is None else environ
    return executor_for(env.get(EXECUTOR_ENV, ""), EXECUTOR_ENV)


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
    if len(files) == 1 and UPath(files[0], **(storage_options or {})).protocol in ("", "file", "local"):
        return file_sha256(Path(UPath(files[0]).path)), 1  # one local file: the SHA-256 of its bytes
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


def build_partition_sensor(
    names: KuraNames, job: dg.UnresolvedAssetJobDefinition, kind: str, partitions_def: dg.PartitionsDefinition,
    source: ConversationSource, running: bool = True,
) -> dg.SensorDefinition:
    """For a partitioned pipeline with a path source, one run per new or changed input file:

    * ``files``: each new file becomes a dynamic partition (added by the sensor) and gets a run; a changed
      file gets a new run of its partition;
    * ``daily`` with a ``{date}`` path template: each new or changed day file gets a run of its day.

    The cursor keeps each file's digest, so a file makes one run per distinct content."""
    from kura_dagster.orchestration.partitions import DATE_TEMPLATE, file_partitions

    @dg.sensor(
        job=job,
        name=names.name("new_files"),
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.RUNNING if running else dg.DefaultSensorStatus.STOPPED,
        description="Run the pipeline's job for the partition of each new or changed input file.",
    )
    def new_files(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
        location = source.location()
        if location is None:
            return dg.SkipReason("No conversations source to watch (the demo data is used).")
        pattern = location.replace(DATE_TEMPLATE, "*") if kind == "daily" else location
        from kura_dagster.sources import list_source_files

        try:
            files = list_source_files(pattern, source.fs_options or None)
        except FileNotFoundError:
            files = []
        if kind == "daily":
            prefix, _, suffix = location.partition(DATE_TEMPLATE)
            days = set(partitions_def.get_partition_keys())
            keyed = {}
            for f in files:
                day = f[len(prefix):len(f) - len(suffix)] if f.startswith(prefix) and f.endswith(suffix) else ""
                if day in days:
                    keyed[day] = f
        else:
            keyed = file_partitions(files)
        seen: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
        requests, changed = [], dict(seen)
        for key, f in sorted(keyed.items()):
            digest, _ = source_digest(f, source.fs_options or None)
            if seen.get(key) == digest:
                continue
            changed[key] = digest
            requests.append(dg.RunRequest(partition_key=key, run_key=f"{key}-{digest[:16]}",
                                          tags={"kura/trigger": "sensor", "kura/file": f}))
        if not requests:
            return dg.SkipReason(f"No new or changed files in {pattern} ({len(keyed)} known).")
        added = []
        if isinstance(partitions_def, dg.DynamicPartitionsDefinition):
            existing = set(context.instance.get_dynamic_partitions(partitions_def.name))
            added = [r.partition_key for r in requests if r.partition_key not in existing]
        context.log.info(f"{len(requests)} new or changed file(s): {[r.partition_key for r in requests][:10]}")
        return dg.SensorResult(
            run_requests=requests,
            dynamic_partitions_requests=[partitions_def.build_add_request(added)] if added else [],
            cursor=json.dumps(changed, sort_keys=True),
        )

    return new_files


def build_partitioned_refresh_schedule(
    cron: str, names: KuraNames, job: dg.UnresolvedAssetJobDefinition, kind: str
) -> dg.ScheduleDefinition:
    """Daily partitions: at ``cron``, a run of the last complete day (its conversations and summaries, then the
    unpartitioned stages). File partitions: the unpartitioned stages, when stale (the sensor runs new files)."""

    @dg.schedule(job=job, cron_schedule=cron, name=names.name("stale_refresh"),
                 default_status=dg.DefaultScheduleStatus.RUNNING,
                 description=f"Materialize the newest {kind} partition and what reads it, at {cron!r}.")
    def refresh(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
        if kind == "daily":
            from datetime import timedelta

            day = (context.scheduled_execution_time - timedelta(days=1)).date().isoformat()
            return dg.RunRequest(partition_key=day, run_key=f"{names.stem}-{day}", tags={"kura/trigger": "schedule"})
        return dg.RunRequest(asset_selection=[names.key(s) for s in ("clusters", "meta_clusters", "projected_clusters")],
                             stale_assets_only=True, tags={"kura/trigger": "schedule"})

    return refresh
