"""Steps on other workers: ``KURA_EXECUTOR=dask`` and ``k8s``, and the ``kura_llm`` pool that keeps parallel runs
under one LLM rate limit.

* The executors: their choice, their config from the environment, and the error when an extra is missing.
* Kubernetes: the Definitions load with ``KURA_EXECUTOR=k8s`` and the README's run config validates against
  dagster-k8s's executor (no cluster needed).
* Dask (slow): a CLI run whose steps execute in Dask worker processes that share nothing with the run process
  except moto's S3 server on 127.0.0.1 (input and checkpoints on ``s3://``; no local checkpoint dir).
* The pool (slow): two partition runs at once against the suite's fake OpenAI server never have more requests in
  flight than the pool limit (the project's ``dagster.yaml``) times ``KURA_LLM_MAX_CONCURRENCY``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from kura_dagster.orchestration.automation import dask_cluster_config, executor_for

ROOT = Path(__file__).resolve().parent.parent


def _extra(module: str, extra: str) -> Any:
    """The module of an optional extra; a skip without it on a developer's machine, a failure under CI (which
    installs the extras, see .ci/run)."""
    try:
        return __import__(module)
    except ImportError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"{module} is missing under CI ({exc}); .ci/run installs '.[dev,dask,k8s]'")
        pytest.skip(f"needs the {extra} extra: pip install -e '.[{extra}]'")


def _cli_env(**extra: str) -> dict[str, str]:
    """A subprocess environment without the developer's KURA_*/AWS_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KURA_", "AWS_", "DAGSTER_"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def _events(home: Path) -> list[tuple[str, dg.EventLogEntry]]:
    """(job name, entry) of every event of every run in the instance at ``home``."""
    with dg.DagsterInstance.from_config(str(home)) as instance:
        return [(r.dagster_run.job_name, e) for r in instance.get_run_records()
                for e in instance.all_logs(r.dagster_run.run_id)]


def _blocked(events: list[tuple[str, dg.EventLogEntry]]) -> bool:
    return any("blocked by limit for pool kura_llm" in (e.user_message or "") for _, e in events)


def _step_windows(events: list[tuple[str, dg.EventLogEntry]], step: str) -> list[tuple[float, float, int]]:
    """(start, end, pid) of each execution of ``step``, in all runs."""
    starts: dict[str, tuple[float, int]] = {}
    out = []
    for _, e in events:
        ev = e.dagster_event
        if ev is None or ev.step_key != step:
            continue
        if ev.event_type == dg.DagsterEventType.STEP_START:
            starts[e.run_id] = (e.timestamp, ev.pid)
        elif ev.event_type == dg.DagsterEventType.STEP_SUCCESS:
            start, pid = starts.pop(e.run_id)
            out.append((start, e.timestamp, pid))
    return out


# --- choosing an executor ---------------------------------------------------------------------------------------
def test_executor_choices_and_the_error_naming_a_missing_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from kura_dagster.orchestration import recovery  # Dagster's two, with crash recovery for pool slots

    assert executor_for("in_process") is recovery.in_process_executor is executor_for(dg.in_process_executor)
    assert executor_for(" Multiprocess ") is recovery.multiprocess_executor is executor_for(dg.multiprocess_executor)
    with pytest.raises(ValueError, match="use one of in_process, multiprocess, dask, k8s"):
        executor_for("celery", "KURA_EXECUTOR")
    for module, extra in (("dagster_dask", "dask"), ("dagster_k8s", "k8s")):
        with monkeypatch.context() as mp:
            mp.setitem(sys.modules, module, None)  # what an environment without the extra sees: ImportError
            with pytest.raises(ImportError, match=re.escape(f"pip install 'kura-dagster[{extra}]'")) as info:
                executor_for(extra, "KURA_EXECUTOR")
            assert f"KURA_EXECUTOR={extra!r}" in str(info.value)


def test_dask_cluster_config_from_the_environment() -> None:
    local = dask_cluster_config({})["cluster"]["local"]
    # worker processes, one thread each, on loopback, and no dashboard (Dask's default is 0.0.0.0:8787)
    assert local == {"processes": True, "threads_per_worker": 1, "host": "127.0.0.1", "dashboard_address": None}
    local = dask_cluster_config({"KURA_DASK_WORKERS": "2", "KURA_DASK_DASHBOARD": "127.0.0.1:0"})["cluster"]["local"]
    assert (local["n_workers"], local["dashboard_address"]) == (2, "127.0.0.1:0")
    assert dask_cluster_config({"KURA_DASK_ADDRESS": " tcp://10.0.0.5:8786 ", "KURA_DASK_WORKERS": "3"}) == {
        "cluster": {"existing": {"address": "tcp://10.0.0.5:8786"}}}
    for bad in ("0", "two", "-1"):
        with pytest.raises(ValueError, match=f"KURA_DASK_WORKERS={bad!r}"):
            dask_cluster_config({"KURA_DASK_WORKERS": bad})


def test_dask_executor_config_validates(monkeypatch: pytest.MonkeyPatch) -> None:
    _extra("dagster_dask", "dask")
    for env in ({}, {"KURA_DASK_ADDRESS": "tcp://127.0.0.1:8786"}):
        with monkeypatch.context() as mp:
            for k, v in env.items():
                mp.setenv(k, v)
            executor = executor_for("dask")
            assert executor.name == "dask"
            resolved = executor.config_schema.resolve_config({})
            assert resolved.success, resolved.errors
            assert resolved.value["config"] == dask_cluster_config(env)


# --- Kubernetes -------------------------------------------------------------------------------------------------
def _readme_yaml(marker: str) -> dict[str, Any]:
    """The README's one ```yaml block containing ``marker``, parsed."""
    import yaml

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = [b for b in re.findall(r"```yaml\n(.*?)```", text, flags=re.S) if marker in b]
    assert len(blocks) == 1, f"README: expected one ```yaml block containing {marker!r}, found {len(blocks)}"
    return yaml.safe_load(blocks[0])


def test_the_readme_k8s_run_launcher_config_validates() -> None:
    _extra("dagster_k8s", "k8s")
    from dagster._config import process_config
    from dagster._config.field import resolve_to_config_type
    from dagster_k8s import K8sRunLauncher

    instance_yaml = _readme_yaml("class: K8sRunLauncher")
    launcher = instance_yaml["run_launcher"]
    assert (launcher["module"], launcher["class"]) == ("dagster_k8s", "K8sRunLauncher")
    schema = resolve_to_config_type(K8sRunLauncher.config_type())
    result = process_config(schema, launcher["config"])
    assert result.success, result.errors
    assert not process_config(schema, {**launcher["config"], "job_namspace": "kura"}).success


def test_k8s_definitions_load_and_the_executor_config_validates() -> None:
    _extra("dagster_k8s", "k8s")
    from kura_dagster.definitions import build_definitions

    defs = build_definitions({"KURA_EXECUTOR": "k8s", "KURA_CHECKPOINT_DIR": "s3://kura-bucket/kura"})
    job = defs.resolve_job_def("kura_job")
    assert job.executor_def.name == "k8s"
    assert {a.key.to_user_string() for a in defs.resolve_all_asset_specs()} >= {"summaries", "projected_clusters"}

    run_config = _readme_yaml("k8s_job_executor run config")
    assert run_config["execution"]["config"]["job_namespace"]
    given = run_config["execution"]["config"]
    resolved = dg.validate_run_config(job, run_config)["execution"]["k8s"]  # keyed by the executor's name
    assert resolved["job_namespace"] == given["job_namespace"]
    assert resolved["env_secrets"] == given["env_secrets"]
    assert resolved["step_k8s_config"]["container_config"]["resources"] == given["step_k8s_config"]["container_config"]["resources"]
    assert dg.validate_run_config(job, {})  # no config at all: the run launcher supplies image and namespace

    for bad in ({"max_concurrent": "four"}, {"job_namespce": "kura"}, {"step_k8s_config": {"container": {}}}):
        with pytest.raises(dg.DagsterInvalidConfigError):
            dg.validate_run_config(job, {"execution": {"config": bad}})


# --- Dask workers that share only S3 with the run ---------------------------------------------------------------
@pytest.fixture(scope="module")
def moto_s3() -> Iterator[dict[str, str]]:
    """moto's S3 server on a free 127.0.0.1 port (started and stopped here); yields the AWS_* variables."""
    pytest.importorskip("s3fs", reason="needs s3fs (pip install -e '.[dev]')")
    moto_server = pytest.importorskip("moto.server", reason="needs moto[server] (pip install -e '.[dev]')")
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "AKIAKURADASKTEST0001",
               "AWS_SECRET_ACCESS_KEY": "kura-dask-test-secret", "AWS_DEFAULT_REGION": "us-east-1",
               "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
               "AWS_EC2_METADATA_DISABLED": "true"}
    finally:
        server.stop()


@pytest.mark.slow
def test_steps_run_on_dask_workers_that_share_only_s3(
    moto_s3: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _extra("dagster_dask", "dask")
    import psutil
    import s3fs

    from kura_dagster.types import Conversation
    from kura_dagster_tests.fake_openai import fake_conversations

    for key, value in moto_s3.items():  # for this process's own s3fs client; the run gets them in its environment
        monkeypatch.setenv(key, value)
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.mkdir("kura-dask")
    fs.pipe_file("kura-dask/in/conversations.jsonl",
                 b"".join(c.model_dump_json().encode() + b"\n" for c in fake_conversations(16)))
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = _cli_env(**moto_s3, DAGSTER_HOME=str(home), KURA_EXECUTOR="dask", KURA_DASK_WORKERS="1",
                   KURA_CHECKPOINT_DIR="s3://kura-dask/checkpoints",
                   KURA_CONVERSATIONS="s3://kura-dask/in/conversations.jsonl")
    proc = subprocess.Popen([sys.executable, "-m", "dagster", "asset", "materialize", "-m", "kura_dagster.definitions",
                             "--select", "*"], env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    out, _ = proc.communicate(timeout=420)
    assert proc.returncode == 0, out[-4000:]

    events = _events(home)
    steps = {e.dagster_event.step_key: e.dagster_event.pid for _, e in events
             if e.dagster_event and e.dagster_event.event_type == dg.DagsterEventType.STEP_START}
    assert {"conversations", "summaries", "clusters", "meta_clusters", "projected_clusters"} <= set(steps)
    # every step ran in a Dask worker process: not the run's process (the CLI), and one worker (KURA_DASK_WORKERS=1)
    run_pids = {e.dagster_event.pid for _, e in events if e.dagster_event and e.dagster_event.event_type == dg.DagsterEventType.RUN_START}
    assert run_pids == {proc.pid}
    assert proc.pid not in set(steps.values())
    assert len(set(steps.values())) == 1, steps

    # the steps exchanged everything through S3: the five checkpoints are there, nothing was written locally
    stored = {p.rsplit("/", 1)[1] for p in fs.find("kura-dask/checkpoints")}
    assert {"conversations.jsonl", "summaries.jsonl", "clusters.jsonl", "meta_clusters.jsonl",
            "dimensionality.jsonl"} <= stored
    rows = fs.cat_file("kura-dask/checkpoints/conversations.jsonl").splitlines()
    assert sorted(Conversation.model_validate_json(r).chat_id for r in rows) == [c.chat_id for c in fake_conversations(16)]
    assert list(cwd.iterdir()) == []
    # the local cluster went away with the run: no worker process is left behind
    deadline = time.monotonic() + 15
    while any(psutil.pid_exists(p) for p in steps.values()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(psutil.pid_exists(p) for p in steps.values()), "a Dask worker outlived its run"


# --- one LLM rate limit for parallel runs -----------------------------------------------------------------------
def test_the_model_calling_steps_are_in_one_pool_for_every_pipeline() -> None:
    from kura_dagster.orchestration.assets import LLM_POOL
    from kura_dagster.orchestration.factory import build_kura_defs

    defs = dg.Definitions.merge(build_kura_defs("support", sensor=False), build_kura_defs("sales", sensor=False))
    pools = {a.key.to_user_string(): a.op.pool for a in defs.assets}  # type: ignore[union-attr]
    for prefix in ("support", "sales"):
        assert pools[f"{prefix}/conversations"] is None
        for stage in ("summaries", "clusters", "meta_clusters", "projected_clusters"):
            assert pools[f"{prefix}/{stage}"] == LLM_POOL == "kura_llm"


@pytest.mark.slow
def test_parallel_partition_runs_stay_within_the_pool_limit(fake_openai: Any, tmp_path: Path) -> None:
    """Two daily partitions materialized at once by two CLI processes sharing the project's dagster.yaml: the
    summaries steps take turns (pool ``kura_llm``), so the server never sees more than limit × max_concurrency
    requests at once, though each step alone keeps max_concurrency requests in flight."""
    from kura_dagster_tests.fake_openai import fake_conversations

    days, per_day, max_concurrency = ("2026-01-01", "2026-01-02"), 24, 2
    logs = tmp_path / "logs"
    logs.mkdir()
    for i, day in enumerate(days):
        at = datetime.fromisoformat(day).replace(hour=12, tzinfo=timezone.utc)
        convs = [c.model_copy(update={"created_at": at}) for c in fake_conversations(per_day, start=i * per_day)]
        (logs / f"{day}.jsonl").write_text("".join(c.model_dump_json() + "\n" for c in convs))
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")  # the project's instance config: its pool limit
    with dg.DagsterInstance.from_config(str(home)) as instance:
        limit = instance.event_log_storage.get_pool_config().default_pool_limit
    assert limit is not None, "dagster.yaml sets no pool limit (concurrency: pools: default_limit)"

    env = _cli_env(DAGSTER_HOME=str(home), KURA_CHECKPOINT_DIR=str(tmp_path / "checkpoints"),
                   KURA_PARTITIONS="daily", KURA_PARTITION_START=days[0], KURA_CONVERSATIONS=str(logs / "{date}.jsonl"),
                   KURA_LLM="openai:fake-chat", KURA_EMBEDDINGS="openai:fake-embed",
                   KURA_LLM_MAX_CONCURRENCY=str(max_concurrency), OPENAI_BASE_URL=fake_openai.url,
                   OPENAI_API_KEY=os.environ["OPENAI_API_KEY"])
    # The runs overlap by construction, not by timing: the server answers nothing until one summaries step has
    # its requests in flight and the other run's step waits for the pool; then it answers everything.
    fake_openai.hold()
    procs = [subprocess.Popen([sys.executable, "-m", "dagster", "asset", "materialize", "-m", "kura_dagster.definitions",
                               "--select", "conversations,summaries", "--partition", day], env=env, cwd=tmp_path,
                              stdout=(tmp_path / f"{day}.log").open("w"), stderr=subprocess.STDOUT) for day in days]
    try:
        deadline = time.monotonic() + 400  # a guard against a hang, not a speed goal
        while not (fake_openai.state.in_flight == max_concurrency and _blocked(_events(home))):
            assert all(p.poll() is None for p in procs), [(tmp_path / f"{d}.log").read_text()[-2000:] for d in days]
            assert fake_openai.state.in_flight <= limit * max_concurrency, "both steps sent requests: no pool limit"
            assert time.monotonic() < deadline, f"no step waited for the pool ({fake_openai.state.in_flight} in flight)"
            time.sleep(1.0)
        held = fake_openai.state.in_flight
    finally:
        fake_openai.release()
        for p in procs:
            p.wait(timeout=420)
    for p, day in zip(procs, days):
        assert p.returncode == 0, (tmp_path / f"{day}.log").read_text()[-4000:]
    assert held == limit * max_concurrency  # the step holding the slot filled its concurrency; the other sent none

    events = _events(home)
    windows = sorted(_step_windows(events, "summaries"))
    assert len(windows) == 2
    (start_a, end_a, _), (start_b, end_b, _) = windows
    assert end_a <= start_b, f"the two summaries steps overlapped: {windows}"
    assert fake_openai.count("chat") >= 2 * per_day
    assert fake_openai.max_in_flight == limit * max_concurrency  # never more, though the two runs overlapped
