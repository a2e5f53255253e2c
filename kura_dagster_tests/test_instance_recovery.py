"""A crashed run never wedges the pipeline (issue 17, item 1), with the project's own ``dagster.yaml``
(``pools: default_limit: 1``) as the instance: the slots of a ``kill -9``-ed run are freed by the next run,
a step that waits for a slot says which run holds it and how to free it, SIGTERM ends a waiting run, a live
run is never touched, and ``kura-dagster instance free-slots`` frees a dead run by hand."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import dagster as dg
import pytest

from kura_dagster.orchestration import recovery
from kura_dagster_tests.fake_openai import FakeOpenAIServer, fake_conversations

ROOT = Path(__file__).resolve().parent.parent
API_KEY = "sk-test-recovery-3f9a"
BIN = Path(sys.executable).parent


# --- which process, and is it alive: hand-made identities --------------------------------------------------------

def test_process_state_tells_live_dead_reused_and_foreign_processes() -> None:
    me = recovery.process_identity()
    assert recovery.process_state(me) == ("alive", f"pid {os.getpid()} on {me['host']} is running")

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        theirs = recovery.process_identity(child.pid)
        assert recovery.process_state(theirs)[0] == "alive"
    finally:
        child.kill()
        child.wait()
    assert recovery.process_state(theirs) == ("dead", f"pid {child.pid} on {me['host']}: no such process "
                                                      "(killed or crashed)")
    # the same pid, started at another time: another process now
    assert recovery.process_state({**me, "start": me["start"] - 3600})[0] == "dead"
    assert recovery.process_state({**me, "boot": "another-boot-id"})[0] == "dead"  # rebooted since
    # another host or container: never judged from here
    assert recovery.process_state({**me, "host": "build-07"})[0] == "unknown"
    assert recovery.process_state({**me, "pidns": "pid:[1]"})[0] == "unknown"


def test_run_state_needs_the_process_tag_and_ends_with_the_run() -> None:
    me = json.dumps(recovery.process_identity())
    run = dg.DagsterRun(job_name="kura_job", status=dg.DagsterRunStatus.STARTED, tags={recovery.PROCESS_TAG: me})
    assert recovery.run_state(run)[0] == "alive"
    assert recovery.run_state(run.with_status(dg.DagsterRunStatus.CANCELED)) == ("ended", "the run has ended (CANCELED)")
    assert recovery.run_state(dg.DagsterRun(job_name="kura_job", status=dg.DagsterRunStatus.STARTED))[0] == "unknown"
    assert recovery.run_state(None)[0] == "gone"
    gone = json.dumps({**json.loads(me), "start": json.loads(me)["start"] - 60})
    assert recovery.run_state(run.with_tags({recovery.PROCESS_TAG: gone}))[0] == "dead"
    # a step process of the multiprocess executor still running keeps the run alive
    step = json.dumps([[os.getpid(), json.loads(me)["start"]]])
    assert recovery.run_state(run.with_tags({recovery.PROCESS_TAG: gone, recovery.STEP_PROCESSES_TAG: step}))[0] == "alive"


def test_free_dead_runs_frees_only_runs_that_are_provably_over(tmp_path: Path) -> None:
    """Five runs hold kura_llm slots: only the one whose process is gone and the one that has ended are freed."""
    shutil.copy(ROOT / "dagster.yaml", tmp_path / "dagster.yaml")
    me = recovery.process_identity()
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    dead = recovery.process_identity(child.pid)
    child.wait()
    tags = {
        "dead": {recovery.PROCESS_TAG: json.dumps(dead)},
        "live": {recovery.PROCESS_TAG: json.dumps(me)},
        "elsewhere": {recovery.PROCESS_TAG: json.dumps({**me, "host": "build-07", "pid": 1})},
        "untagged": {},
        "ended": {recovery.PROCESS_TAG: json.dumps(me)},
    }
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        storage = instance.event_log_storage
        storage.set_concurrency_slots("kura_llm", 5)
        ids = {}
        for name, run_tags in tags.items():
            run = instance.add_run(dg.DagsterRun(job_name=f"{name}_job", status=dg.DagsterRunStatus.STARTED,
                                                 tags=run_tags))
            ids[name] = run.run_id
            assert storage.claim_concurrency_slot("kura_llm", run.run_id, "summaries").is_claimed
        instance.report_run_failed(instance.get_run_by_id(ids["ended"]))  # ended, its slot left behind

        freed = recovery.free_dead_runs(instance, dry_run=True)
        assert sorted(h.run_id for h in freed) == sorted([ids["dead"], ids["ended"]])
        assert len(recovery.slot_holders(instance)) == 5  # a dry run frees nothing

        recovery.free_dead_runs(instance)
        assert set(recovery.slot_holders(instance)) == {ids["live"], ids["elsewhere"], ids["untagged"]}
        assert {name: instance.get_run_by_id(i).status.value for name, i in ids.items()} == {
            "dead": "FAILURE", "live": "STARTED", "elsewhere": "STARTED", "untagged": "STARTED", "ended": "FAILURE"}
        failure = instance.all_logs(ids["dead"], of_type=dg.DagsterEventType.RUN_FAILURE)[0]
        assert failure.message == (f"Marked failed by kura-dagster: pid {child.pid} on {me['host']}: no such process "
                                   "(killed or crashed). Its pool slots were freed.")


# --- end to end: CLI runs on the project's dagster.yaml ----------------------------------------------------------

class Run:
    """``dagster asset materialize`` of the standalone location in its own session, its output read as it comes."""

    def __init__(self, env: dict[str, str], select: str = "conversations,summaries") -> None:
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [str(BIN / "dagster"), "asset", "materialize", "-m", "kura_dagster.definitions", "--select", select],
            env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self._reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True)
        self._reader.start()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, text: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output:
            assert self.proc.poll() is None or text in self.output, f"ended before {text!r}:\n{self.output}"
            assert time.monotonic() < deadline, f"no {text!r} within {timeout} s:\n{self.output}"
            time.sleep(0.1)

    def finish(self, timeout: float = 180) -> int:
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return code

    def kill9(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.finish(30)


@pytest.fixture
def project(fake_openai: FakeOpenAIServer, tmp_path: Path):
    """DAGSTER_HOME with a copy of the project's dagster.yaml, 24 conversations and the fake model server."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    assert "default_limit: 1" in (home / "dagster.yaml").read_text()
    source = tmp_path / "conversations.jsonl"
    source.write_text("".join(c.model_dump_json() + "\n" for c in fake_conversations(24)))
    env = {**os.environ, "DAGSTER_HOME": str(home), "KURA_LLM": "openai:fake-model", "OPENAI_BASE_URL": fake_openai.url,
           "OPENAI_API_KEY": API_KEY, "KURA_CONVERSATIONS": str(source), "KURA_CHECKPOINT_DIR": str(tmp_path / "ckpt"),
           "KURA_LLM_MAX_CONCURRENCY": "1"}
    runs: list[Run] = []

    def start(**extra: str) -> Run:
        runs.append(Run({**env, **extra}))
        return runs[-1]

    yield fake_openai, home, start
    for run in runs:
        if run.proc.poll() is None:
            run.kill9()


def _instance(home: Path) -> dg.DagsterInstance:
    return dg.DagsterInstance.from_config(str(home))


def _holders(home: Path) -> dict[str, dict[str, list[str]]]:
    with _instance(home) as instance:
        return {r: {p: sorted(set(s)) for p, s in h.pools.items()}
                for r, h in recovery.slot_holders(instance, claimed_only=False).items()}


def _status(home: Path, run_id: str) -> str:
    with _instance(home) as instance:
        return instance.get_run_by_id(run_id).status.value


def _only_run_id(home: Path, exclude: tuple[str, ...] = ()) -> str:
    with _instance(home) as instance:
        (run_id,) = [r.run_id for r in instance.get_runs() if r.run_id not in exclude]
    return run_id


@pytest.mark.slow
def test_a_kill_9_during_summaries_does_not_block_the_next_run(project) -> None:
    """Multiprocess (the in-process executor is covered by test_resume's kill -9 test): the killed run keeps its
    kura_llm slot; the next run marks it failed, frees the slot and finishes."""
    server, home, start = project
    server.set_delay(0.3)
    first = start(KURA_EXECUTOR="multiprocess")
    deadline = time.monotonic() + 120
    while server.count("chat") < 2:
        assert first.proc.poll() is None and time.monotonic() < deadline, first.output
        time.sleep(0.05)
    first.kill9()
    killed = _only_run_id(home)
    assert _holders(home) == {killed: {"kura_llm": ["summaries"]}}  # what wedged every later run
    assert _status(home, killed) == "STARTED"

    server.set_delay(0.0)
    second = start(KURA_EXECUTOR="multiprocess")
    assert second.finish() == 0, second.output
    assert f"Freed the pool slots of run {killed} of job __ASSET_JOB (pool 'kura_llm': summaries)" in second.output
    assert "no such process (killed or crashed)" in second.output
    assert _status(home, killed) == "FAILURE" and _holders(home) == {}
    with _instance(home) as instance:
        rerun = _only_run_id(home, exclude=(killed,))
        assert instance.get_run_by_id(rerun).is_success
        tags = instance.get_run_by_id(rerun).tags
        assert json.loads(tags[recovery.PROCESS_TAG])["pid"] == second.proc.pid
        started = instance.all_logs(rerun, of_type=dg.DagsterEventType.STEP_WORKER_STARTED)
        assert len(started) >= 2  # conversations, summaries (and their checks)
        assert [pid for pid, _ in json.loads(tags[recovery.STEP_PROCESSES_TAG])] == [e.dagster_event.pid for e in started]


@pytest.mark.slow
def test_a_waiting_run_names_the_holder_sigterm_ends_it_and_free_slots_frees_a_dead_one(project) -> None:
    server, home, start = project
    server.set_delay(6.0)  # 24 answers one at a time: the first run holds the slot for 144 s or more (it is killed)
    holder = start()
    deadline = time.monotonic() + 120
    while server.count("chat") < 1:
        assert holder.proc.poll() is None and time.monotonic() < deadline, holder.output
        time.sleep(0.05)
    holder_id = _only_run_id(home)

    waiting = start()
    waiting.wait_for("waits for a slot of pool 'kura_llm'")
    message = waiting.output
    assert f"Step summaries waits for a slot of pool 'kura_llm' (limit 1, 1 in use), held by:" in message
    assert f"run {holder_id} of job __ASSET_JOB (pool 'kura_llm': summaries): pid {holder.proc.pid} on " in message
    assert "is running" in message and "dagster instance concurrency set kura_llm <N>" in message
    waiting_id = _only_run_id(home, exclude=(holder_id,))
    assert _holders(home) == {holder_id: {"kura_llm": ["summaries"]}, waiting_id: {"kura_llm": ["summaries"]}}

    waiting.proc.send_signal(signal.SIGTERM)  # to the CLI process only, as `timeout` or systemd would
    assert waiting.finish(timeout=60) != 0, waiting.output
    assert _status(home, waiting_id) == "FAILURE"
    # the live holder is untouched; the waiting run left the queue
    assert _status(home, holder_id) == "STARTED" and _holders(home) == {holder_id: {"kura_llm": ["summaries"]}}
    assert holder.proc.poll() is None

    holder.kill9()
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    dry = subprocess.run([str(BIN / "kura-dagster"), "instance", "free-slots", "--dry-run"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert dry.returncode == 0, dry.stderr
    assert f"| {holder_id} | __ASSET_JOB | kura_llm: summaries | dead: pid {holder.proc.pid} on " in dry.stdout
    assert f"would free the slots of 1 run(s): {holder_id}" in dry.stdout and _status(home, holder_id) == "STARTED"
    done = subprocess.run([str(BIN / "kura-dagster"), "instance", "free-slots"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"freed the slots of 1 run(s): {holder_id}" in done.stdout
    assert _holders(home) == {} and _status(home, holder_id) == "FAILURE"
