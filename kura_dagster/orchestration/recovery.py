"""Crash recovery for concurrency pools: a run that was killed never blocks the runs after it.

A step in a pool (``kura_llm``) claims a slot in the instance's storage and frees it when it ends. A run whose
process is killed (``kill -9``, the OOM killer, a reboot) keeps its slots, and with ``pools: default_limit: 1``
every later run waits for them forever. Dagster frees the slots of *ended* runs only in its daemon
(``run_monitoring: free_slots_after_run_end_seconds``), and a killed CLI run never ends by itself.

The executors Kura chooses (:func:`recovering_executor`, used by ``executor_for`` and so by ``KURA_EXECUTOR``
and ``build_kura_defs(executor=…)``) therefore:

* record where the run executes as the run tag ``kura/process`` (host, boot id, pid namespace, pid and the
  process's start time), and the step processes of the multiprocess executor as ``kura/step_processes``;
* before the run's first step and whenever one of its steps waits for a slot, free the slots of every run that
  holds one and is **provably** over: ended (success, failure, canceled), deleted, or started on this machine
  by a process that no longer exists (the same pid with another start time is another process; another boot
  id means the machine rebooted). Such a run is first marked failed, saying why. A run on another host or
  without the tag is never touched: it cannot be checked from here;
* say, while a step waits, which run holds the slot, whether its process is alive, and how to free it
  (``kura-dagster instance free-slots``);
* in process: wait for a slot without spinning (Dagster 1.13 polls in a busy loop) and end on SIGTERM/SIGINT
  while waiting (Dagster's in-process loop never looks at the signal it captured).

``kura-dagster instance free-slots`` does the same by hand; ``--run ID`` frees a run that cannot be checked.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

import dagster as dg
from dagster._core.errors import DagsterExecutionInterruptedError
from dagster._core.events import DagsterEvent, DagsterEventType, EngineEventData
from dagster._core.execution.plan.instance_concurrency_context import InstanceConcurrencyContext
from dagster._core.executor.base import Executor
from dagster._core.executor.in_process import InProcessExecutor
from dagster._utils.interrupts import check_captured_interrupt

PROCESS_TAG = "kura/process"
"""JSON: ``host``, ``boot`` (boot id), ``pidns`` (pid namespace), ``pid`` and ``start`` of the run's process."""
STEP_PROCESSES_TAG = "kura/step_processes"
"""JSON list of ``[pid, start]`` of the step processes the multiprocess executor started."""

FREE_COMMAND = "kura-dagster instance free-slots"
WATCH_SECONDS = 2.0
"""How often a run checks, while one of its steps waits for a pool slot, whether the holders are still alive."""
MAX_WAIT_SLEEP = 0.5
"""Longest sleep of the in-process wait loop between checks (so a SIGTERM ends it within this time)."""

Verdict = Literal["alive", "dead", "ended", "gone", "unknown"]


# ---------------------------------------------------------------------------------------------------------------
# Which process, and is it still there?


def _read(path: str) -> Optional[str]:
    try:
        with open(path) as fh:
            return fh.read().strip()
    except OSError:
        return None


def this_machine() -> dict[str, Any]:
    """Host name, boot id and pid namespace of this process: a pid means the same process only within all three."""
    import psutil

    boot = _read("/proc/sys/kernel/random/boot_id") or f"boot-time:{psutil.boot_time():.0f}"
    try:
        pidns: Optional[str] = os.readlink("/proc/self/ns/pid")
    except OSError:
        pidns = None
    return {"host": socket.gethostname(), "boot": boot, "pidns": pidns}


def process_start(pid: int) -> Optional[float]:
    """The start time of process ``pid`` (seconds since the epoch), or None when there is no such process."""
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None


def process_identity(pid: Optional[int] = None) -> dict[str, Any]:
    pid = os.getpid() if pid is None else pid
    return {**this_machine(), "pid": pid, "start": process_start(pid)}


def process_state(identity: dict[str, Any], machine: Optional[dict[str, Any]] = None) -> tuple[Verdict, str]:
    """``alive``, ``dead`` or ``unknown`` (another host or pid namespace: not checkable here), with the reason."""
    machine = machine or this_machine()
    pid = identity.get("pid")
    where = f"pid {pid} on {identity.get('host')}"
    if identity.get("host") != machine["host"] or identity.get("pidns") != machine["pidns"]:
        return "unknown", f"{where}, another host or container: it cannot be checked from here"
    if identity.get("boot") != machine["boot"]:
        return "dead", f"{where}: the machine has rebooted since the run started"
    start = process_start(int(pid))
    if start is None:
        return "dead", f"{where}: no such process (killed or crashed)"
    recorded = identity.get("start")
    if recorded is not None and abs(start - float(recorded)) > 1.0:
        return "dead", f"{where}: that pid is now another process (the run's process is gone)"
    return "alive", f"{where} is running"


def run_state(run: Optional[dg.DagsterRun], machine: Optional[dict[str, Any]] = None) -> tuple[Verdict, str]:
    """Whether the run holding a slot is provably over (``ended``, ``gone``, ``dead``), ``alive`` or ``unknown``."""
    if run is None:
        return "gone", "the run no longer exists"
    if run.is_finished:
        return "ended", f"the run has ended ({run.status.value})"
    raw = run.tags.get(PROCESS_TAG)
    if not raw:
        return "unknown", (f"the run ({run.status.value}) was started without Kura's executor, so its process is not "
                           "recorded and cannot be checked")
    machine = machine or this_machine()
    verdict, reason = process_state(json.loads(raw), machine)
    if verdict == "dead":
        # multiprocess: a step process outlives a killed parent and may still be working with its slot
        for pid, start in json.loads(run.tags.get(STEP_PROCESSES_TAG) or "[]"):
            step_verdict, step_reason = process_state({**json.loads(raw), "pid": pid, "start": start}, machine)
            if step_verdict != "dead":
                return step_verdict, f"its run process is gone but its step process {step_reason}"
    return verdict, reason


# ---------------------------------------------------------------------------------------------------------------
# Who holds the slots, and freeing those of runs that are over


@dataclass
class Holder:
    run_id: str
    pools: dict[str, list[str]] = field(default_factory=dict)
    """pool → step keys holding (or waiting for) a slot of it."""
    verdict: Verdict = "unknown"
    reason: str = ""
    job_name: Optional[str] = None
    freed: bool = False

    def describe(self) -> str:
        steps = "; ".join(f"pool {pool!r}: {', '.join(sorted(set(keys)))}" for pool, keys in sorted(self.pools.items()))
        job = f" of job {self.job_name}" if self.job_name else ""
        return f"run {self.run_id}{job} ({steps}): {self.reason}"


def slot_holders(instance: dg.DagsterInstance, pools: Optional[Iterable[str]] = None,
                 claimed_only: bool = True) -> dict[str, Holder]:
    """Runs holding slots of ``pools`` (default: every pool), with their steps; with ``claimed_only=False`` also
    runs whose steps are only waiting (their queue entries are freed with them)."""
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return {}
    holders: dict[str, Holder] = {}
    keys = sorted(pools) if pools is not None else sorted(storage.get_concurrency_keys())
    for pool, info in storage.get_concurrency_infos(keys).items():
        entries = [(s.run_id, s.step_key) for s in info.claimed_slots]
        if not claimed_only:
            entries += [(s.run_id, s.step_key) for s in info.pending_steps]
        for run_id, step_key in entries:
            holders.setdefault(run_id, Holder(run_id)).pools.setdefault(pool, []).append(step_key)
    return holders


def judge(instance: dg.DagsterInstance, holders: dict[str, Holder]) -> dict[str, Holder]:
    machine = this_machine()
    for holder in holders.values():
        run = instance.get_run_by_id(holder.run_id)
        holder.job_name = run.job_name if run is not None else None
        holder.verdict, holder.reason = run_state(run, machine)
    return holders


def free_run(instance: dg.DagsterInstance, run_id: str, reason: str) -> None:
    """Mark the run failed (when it has not ended) saying why, and free every pool slot it holds or waits for."""
    run = instance.get_run_by_id(run_id)
    if run is not None and not run.is_finished:
        instance.report_run_failed(run, message=f"Marked failed by kura-dagster: {reason}. Its pool slots were freed.")
    instance.event_log_storage.free_concurrency_slots_for_run(run_id)


def free_dead_runs(instance: dg.DagsterInstance, exclude: Iterable[str] = (), dry_run: bool = False) -> list[Holder]:
    """Free the slots of every run that is provably over (ended, deleted, or its process gone); never a live run
    nor one that cannot be checked. Returns the runs freed (or that would be, with ``dry_run``)."""
    skip = set(exclude)
    holders = judge(instance, {k: v for k, v in slot_holders(instance, claimed_only=False).items() if k not in skip})
    freed = []
    for holder in holders.values():
        if holder.verdict in ("dead", "ended", "gone"):
            if not dry_run:
                free_run(instance, holder.run_id, holder.reason)
                holder.freed = True
            freed.append(holder)
    return freed


def waiting_steps(instance: dg.DagsterInstance, run_id: str) -> dict[str, list[str]]:
    """pool → steps of ``run_id`` waiting for a slot of it."""
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return {}
    if run_id not in storage.get_concurrency_run_ids():
        return {}
    waiting: dict[str, list[str]] = {}
    for pool, info in storage.get_concurrency_infos(sorted(storage.get_concurrency_keys())).items():
        steps = [s.step_key for s in info.pending_steps if s.run_id == run_id and s.assigned_timestamp is None]
        if steps:
            waiting[pool] = steps
    return waiting


def blocked_message(instance: dg.DagsterInstance, run_id: str, waiting: dict[str, list[str]]) -> Optional[str]:
    """What the waiting steps of ``run_id`` wait for, and how to free it; None when nothing holds their pools."""
    storage = instance.event_log_storage
    lines = []
    for pool, steps in sorted(waiting.items()):
        info = storage.get_concurrency_info(pool)
        holders = judge(instance, {k: v for k, v in slot_holders(instance, [pool]).items() if k != run_id})
        if not holders:
            continue
        lines.append(f"Step {', '.join(sorted(steps))} waits for a slot of pool {pool!r} (limit {info.limit}, "
                     f"{info.active_slot_count} in use), held by:")
        lines += [f"  - {h.describe()}" for h in holders.values()]
        if any(h.verdict == "alive" for h in holders.values()):
            lines.append("  It runs when that run finishes (or raise the limit: "
                         f"dagster instance concurrency set {pool} <N>).")
        unknown = [h.run_id for h in holders.values() if h.verdict == "unknown"]
        if unknown:
            lines.append("  If that run is no longer running, free its slot (it is marked failed): "
                         + "; ".join(f"{FREE_COMMAND} --run {r}" for r in unknown)
                         + f" (with this DAGSTER_HOME), or cancel it in the Dagster UI. {FREE_COMMAND} without --run "
                         "frees every run whose process is provably gone.")
    return "\n".join(lines) or None


# ---------------------------------------------------------------------------------------------------------------
# The executors


def _add_step_process(instance: dg.DagsterInstance, run_id: str, pid: int) -> None:
    run = instance.get_run_by_id(run_id)
    known = json.loads((run.tags.get(STEP_PROCESSES_TAG) if run else None) or "[]")
    known.append([pid, process_start(pid)])
    instance.add_run_tags(run_id, {STEP_PROCESSES_TAG: json.dumps(known)})


class _SlotWatch:
    """While the run executes: every ``WATCH_SECONDS`` that one of its steps waits for a slot, free the slots of
    runs that are provably over and, when the holders change, log who holds the slot and how to free it."""

    def __init__(self, plan_context: Any) -> None:
        self.instance: dg.DagsterInstance = plan_context.instance
        self.run_id: str = plan_context.run_id
        self.log = plan_context.log
        self._stop = threading.Event()
        self._said: Optional[str] = None
        self._thread = threading.Thread(target=self._loop, name=f"kura-slot-watch-{self.run_id[:8]}", daemon=True)

    def check(self) -> None:
        waiting = waiting_steps(self.instance, self.run_id)
        if not waiting:
            self._said = None
            return
        for holder in free_dead_runs(self.instance, exclude=[self.run_id]):
            self.log.warning(f"Freed the pool slots of {holder.describe()}; it was marked failed.")
        message = blocked_message(self.instance, self.run_id, waiting)
        if message and message != self._said:
            self.log.warning(message)
        self._said = message

    def _loop(self) -> None:
        while not self._stop.wait(WATCH_SECONDS):
            try:
                self.check()
            except Exception as exc:  # noqa: BLE001 - reported, and the next check tries again
                self.log.warning(f"Could not check the holders of the pool slots this run waits for: "
                                 f"{type(exc).__name__}: {exc}")

    def __enter__(self) -> _SlotWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


@contextmanager
def recovery_scope(plan_context: Any) -> Iterator[None]:
    """Record the run's process, free the slots of runs that are over, and watch the slots while the run executes."""
    instance: dg.DagsterInstance = plan_context.instance
    instance.add_run_tags(plan_context.run_id, {PROCESS_TAG: json.dumps(process_identity())})
    for holder in free_dead_runs(instance, exclude=[plan_context.run_id]):
        plan_context.log.warning(f"Freed the pool slots of {holder.describe()}; it was marked failed.")
    with _SlotWatch(plan_context):
        yield


class _PatientConcurrencyContext(InstanceConcurrencyContext):
    """Dagster 1.13's in-process loop asks how long to sleep while a step waits for a slot, and gets ``<= 0``
    (``min([0, …])``; seen upstream in dagster-io/dagster PR #20367), so it spins on a core; and it never looks at
    the SIGTERM/SIGINT it captured. This sleeps
    until the next claim attempt (at most ``MAX_WAIT_SLEEP``) and ends the run when a signal came while waiting
    (in process, nothing else is in flight then)."""

    def interval_to_next_pending_claim_check(self) -> float:
        if check_captured_interrupt():
            raise DagsterExecutionInterruptedError("interrupted while waiting for a pool slot")
        if not self.has_pending_claims():
            return 0.0
        now = time.time()
        return max(0.0, min([MAX_WAIT_SLEEP, *[t - now for t in self._pending_timeouts.values()]]))


def _patient_in_process_iterator(job_context: Any, execution_plan: Any,
                                 instance_concurrency_context: Any = None) -> Iterator[DagsterEvent]:
    from dagster._core.execution.plan.execute_plan import inner_plan_execution_iterator

    with _PatientConcurrencyContext(job_context.instance, job_context.dagster_run) as context:
        yield from inner_plan_execution_iterator(job_context, execution_plan, context)


class RecoveringInProcessExecutor(InProcessExecutor):
    """Dagster's in-process executor, with :func:`recovery_scope` and a wait for slots that neither spins nor
    ignores SIGTERM."""

    def execute(self, plan_context: Any, execution_plan: Any) -> Iterator[DagsterEvent]:
        from dagster._core.execution.api import ExecuteRunWithPlanIterable
        from dagster._core.execution.context_creation_job import PlanExecutionContextManager

        yield DagsterEvent.engine_event(
            plan_context, f"Executing steps in process (pid: {os.getpid()})",
            event_specific_data=EngineEventData.in_process(os.getpid(), execution_plan.step_keys_to_execute),
        )
        with recovery_scope(plan_context):
            yield from ExecuteRunWithPlanIterable(
                execution_plan=plan_context.execution_plan,
                iterator=_patient_in_process_iterator,
                execution_context_manager=PlanExecutionContextManager(
                    job=plan_context.job, retry_mode=plan_context.retry_mode,
                    execution_plan=plan_context.execution_plan, run_config=plan_context.run_config,
                    dagster_run=plan_context.dagster_run, instance=plan_context.instance,
                    raise_on_error=plan_context.raise_on_error, output_capture=plan_context.output_capture,
                    step_dependency_config=self.step_dependency_config,
                ),
            )


class RecoveringExecutor(Executor):
    """Any executor (multiprocess, k8s, …) inside :func:`recovery_scope`; the multiprocess executor's step
    processes are recorded too (``kura/step_processes``), as a killed parent leaves them running."""

    def __init__(self, base: Executor) -> None:
        self._base = base

    @property
    def retries(self) -> Any:
        return self._base.retries

    @property
    def step_dependency_config(self) -> Any:
        return self._base.step_dependency_config

    def execute(self, plan_context: Any, execution_plan: Any) -> Iterator[DagsterEvent]:
        with recovery_scope(plan_context):
            for event in self._base.execute(plan_context, execution_plan):
                if event.event_type == DagsterEventType.STEP_WORKER_STARTED and event.pid is not None:
                    _add_step_process(plan_context.instance, plan_context.run_id, event.pid)
                yield event


def recovering_executor(base: dg.ExecutorDefinition) -> dg.ExecutorDefinition:
    """``base`` (same name and config) made crash-safe for pools: see the module docstring. Wrap your own
    executor with it when a Kura pipeline is merged into a project that sets one."""
    if getattr(base, "_kura_recovering", False):
        return base

    def create(init_context: dg.InitExecutorContext) -> Executor:
        made = base.executor_creation_fn(init_context)  # type: ignore[misc]
        if type(made) is InProcessExecutor:
            return RecoveringInProcessExecutor(made.retries, made.step_dependency_config, made.marker_to_close)
        return RecoveringExecutor(made)

    schema = base.config_schema
    wrapped = dg.ExecutorDefinition(
        name=base.name, config_schema=schema.as_field() if schema is not None else None,
        executor_creation_fn=create, requirements=base._requirements_fn,  # noqa: SLF001 - same requirements
        description=base.description,
    )
    wrapped._kura_recovering = True  # type: ignore[attr-defined]
    return wrapped


in_process_executor = recovering_executor(dg.in_process_executor)
"""Dagster's ``in_process_executor`` with crash recovery (one object, so merged Definitions agree on it)."""
multiprocess_executor = recovering_executor(dg.multiprocess_executor)
"""Dagster's ``multiprocess_executor`` with crash recovery."""
