"""Resumable, incremental summaries through Dagster: reruns pay only for new conversations, and a
``kill -9`` of ``dagster asset materialize`` in the middle of ``summaries`` loses at most the answers in flight; the next
materialization (on the project's own ``dagster.yaml``, whose pool slot the killed run still holds) frees that slot,
asks only for what was not saved and ends with the checkpoint an uninterrupted run writes."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from kura_dagster.orchestration.assets import conversations, summaries
from kura_dagster.checkpoints.summary_cache import SummaryCache
from kura_dagster.io_managers import JSONLIOManager
from kura_dagster.orchestration.resources import ConversationSource, KuraPipelineResource
from kura_dagster_tests.fake_openai import FakeOpenAIServer, fake_conversations

API_KEY = "sk-test-resume-7c1e"
MODEL = "fake-model"


@pytest.fixture
def server(fake_openai):
    return fake_openai


def write_jsonl(path: Path, convs) -> Path:
    path.write_text("".join(c.model_dump_json() + "\n" for c in convs))
    return path


def materialize(server: FakeOpenAIServer, checkpoint_dir: Path, source: Path, instance: dg.DagsterInstance,
                **kura) -> dict:
    resources = {
        "io_manager": JSONLIOManager(base_dir=str(checkpoint_dir)),
        "kura": KuraPipelineResource(llm=f"openai:{MODEL}", base_url=server.url, checkpoint_dir=str(checkpoint_dir),
                                     **{"max_concurrency": 4, **kura}),
        "source": ConversationSource(path=str(source)),
    }
    result = dg.materialize([conversations, summaries], resources=resources, instance=instance)
    event = next(e for e in result.get_asset_materialization_events() if e.asset_key.path == ["summaries"])
    meta = {k: v.value for k, v in event.materialization.metadata.items()}
    meta["logs"] = [e.user_message for e in instance.all_logs(result.run_id) if "summaries:" in e.user_message]
    return meta


def test_asset_rerun_with_new_conversations_pays_only_for_them(server: FakeOpenAIServer, tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    server.add_fault("status", status=429, times=1)
    server.add_fault("malformed", times=1)
    with dg.DagsterInstance.ephemeral() as instance:
        first = materialize(server, ckpt, write_jsonl(tmp_path / "a.jsonl", fake_conversations(40)), instance)
        assert server.count("chat") == 42
        assert (first["requests"], first["retries"], first["failures"], first["cache_hits"]) == (42, 2, 2, 0)
        assert first["summaries_generated"] == 40 and first["tokens"] > 0 and first["llm_prompt_tokens"] > 0
        assert any("summaries: 40/40 conversations (0 from cache)" in m for m in first["logs"])
        assert all("conversations/s, ETA" in m for m in first["logs"])
        before = (ckpt / "summaries.jsonl").read_text().splitlines()

        server.reset()
        convs = fake_conversations(40) + fake_conversations(4, start=40)  # 10% new
        second = materialize(server, ckpt, write_jsonl(tmp_path / "b.jsonl", convs), instance)
        assert server.count("chat") == 4
        assert (second["requests"], second["cache_hits"], second["summaries_generated"]) == (4, 40, 4)
        assert any("summaries: 44/44 conversations (40 from cache)" in m for m in second["logs"])
        assert second["deduplicated"] == 0
        assert (ckpt / "summaries.jsonl").read_text().splitlines()[:40] == before


def test_openai_embeddings_are_cached_too(server: FakeOpenAIServer, tmp_path: Path, monkeypatch) -> None:
    source = write_jsonl(tmp_path / "a.jsonl", fake_conversations(20))
    monkeypatch.setenv("KURA_REUSE", "0")  # the stage itself runs again (else it reuses its output: test_reuse.py)
    with dg.DagsterInstance.ephemeral() as instance:
        first = materialize(server, tmp_path / "ckpt", source, instance, embeddings="openai:fake-emb",
                            embedding_batch_size=8)
        assert server.count("embeddings") == 3 and first["embedding_requests"] == 3 and first["embedding_dims"] == 16
        server.reset()
        second = materialize(server, tmp_path / "ckpt", source, instance, embeddings="openai:fake-emb")
        assert server.count(None) == 0 and second["embedding_cache_hits"] == 20 and second["requests"] == 0


def _cached(checkpoint_dir: Path, convs) -> int:
    identity = KuraPipelineResource(llm=f"openai:{MODEL}").summary_model().identity
    return sum(s is not None for s in SummaryCache(checkpoint_dir).get_summaries(identity, convs))


def _in_group(p, pgid: int) -> bool:
    """``p`` is a live (not zombie) process of the process group ``pgid``."""
    import psutil

    try:
        return os.getpgid(p.pid) == pgid and p.status() != psutil.STATUS_ZOMBIE
    except (ProcessLookupError, psutil.Error):
        return False


def _materialize_cli(env: dict[str, str]) -> subprocess.Popen:
    dagster = os.path.join(os.path.dirname(sys.executable), "dagster")
    return subprocess.Popen(
        [dagster, "asset", "materialize", "-m", "kura_dagster.definitions", "--select", "conversations,summaries"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,  # its own process group: kill -9 reaches the step subprocesses too
    )


@pytest.mark.slow
def test_kill_9_in_the_middle_of_summaries_then_resume(server: FakeOpenAIServer, tmp_path: Path) -> None:
    """Concurrency 4 and 50 ms answers: every answer is journaled as it arrives, so the next run repeats at
    most the requests in flight plus the answers of the last ~200 ms (with batch-wise saving it was 28)."""
    n, concurrency, delay = 160, 4, 0.05
    convs = fake_conversations(n)
    source = write_jsonl(tmp_path / "conversations.jsonl", convs)
    ckpt, home = tmp_path / "ckpt", tmp_path / "dagster_home"
    home.mkdir()
    # the project's own instance: pools default_limit 1, so the killed run's kura_llm slot must be freed by the next
    shutil.copy(Path(__file__).resolve().parent.parent / "dagster.yaml", home / "dagster.yaml")
    env = {**os.environ, "KURA_LLM": f"openai:{MODEL}", "OPENAI_BASE_URL": server.url, "OPENAI_API_KEY": API_KEY,
           "KURA_CONVERSATIONS": str(source), "KURA_CHECKPOINT_DIR": str(ckpt), "DAGSTER_HOME": str(home),
           "KURA_LLM_MAX_CONCURRENCY": str(concurrency)}  # compaction every 8 × 4 = 32 summaries
    server.set_delay(delay)  # ~2 s of summarising: time to kill it part-way

    proc = _materialize_cli(env)
    try:
        deadline = time.monotonic() + 120
        while _cached(ckpt, convs) < 45:  # past the first compaction, into the second batch
            assert proc.poll() is None, f"the run ended before it could be killed:\n{proc.stdout.read()}"
            assert time.monotonic() < deadline, "summaries never started"
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    # Told by state, not by waiting 0.5 s: no process of the run's group is left (none can send more), and the
    # requests in flight at the kill have been answered (and counted) before they are counted.
    import psutil

    assert [p.pid for p in psutil.process_iter() if _in_group(p, proc.pid)] == [], "a step process survived the kill"
    deadline = time.monotonic() + 60
    while server.state.in_flight and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.state.in_flight == 0
    killed_requests = server.count("chat")
    done = _cached(ckpt, convs)
    assert 0 < done < n and not (ckpt / "summaries.jsonl").exists()

    server.reset()
    server.set_delay(0.0)
    rerun = _materialize_cli(env)
    output, _ = rerun.communicate(timeout=180)
    assert rerun.returncode == 0, output
    assert "Freed the pool slots of run" in output and "no such process (killed or crashed)" in output
    assert server.count("chat") == n - done  # only the conversations not saved before the kill
    repeated = killed_requests + server.count("chat") - n
    print(f"kill -9: repeated={repeated} saved={done}")
    assert 0 <= repeated <= concurrency + round(concurrency * 0.2 / delay), repeated  # in flight + last 200 ms

    server.reset()
    with dg.DagsterInstance.ephemeral() as instance:
        reference = materialize(server, tmp_path / "uninterrupted", source, instance, max_concurrency=concurrency)
    assert reference["requests"] == n
    assert (ckpt / "summaries.jsonl").read_bytes() == (tmp_path / "uninterrupted" / "summaries.jsonl").read_bytes()


def test_an_unchanged_rerun_of_every_asset_sends_no_request(server: FakeOpenAIServer, tmp_path: Path) -> None:
    """Summaries, summary embeddings, base-cluster names, meta-cluster names and cluster-text embeddings are all
    cached: the second run of the whole pipeline over the same conversations asks the server nothing."""
    from kura_dagster.orchestration.assets import kura_assets

    convs = fake_conversations(30)
    twins = [c.model_copy(update={"chat_id": f"{c.chat_id}-twin"}) for c in convs[:10]]
    source = write_jsonl(tmp_path / "a.jsonl", convs + twins)  # 10 with the same messages as others

    def run(rebuild: bool = False) -> dict[str, dict]:
        kura = KuraPipelineResource(llm=f"openai:{MODEL}", embeddings="openai:fake-emb", base_url=server.url,
                                    checkpoint_dir=str(tmp_path / "ckpt"), max_clusters=2, max_concurrency=4,
                                    min_conversations=1,  # every k-means group named (privacy thresholds off)
                                    rebuild_taxonomy=rebuild)
        result = dg.materialize(kura_assets, resources={
            "io_manager": JSONLIOManager(base_dir=str(tmp_path / "ckpt")), "kura": kura,
            "source": ConversationSource(path=str(source))})
        assert result.success
        return {e.asset_key.path[-1]: {k: v.value for k, v in e.materialization.metadata.items()}
                for e in result.get_asset_materialization_events()}

    first = run()
    assert first["summaries"]["deduplicated"] == 10 and first["summaries"]["llm_requests"] == 30
    assert first["clusters"]["naming_requests"] == 4 and first["meta_clusters"]["naming_requests"] >= 1
    before = (tmp_path / "ckpt" / "dimensionality.jsonl").read_bytes()
    server.reset()
    second = run()  # the stored taxonomy keeps every cluster and its name: nothing is even looked up
    assert server.count(None) == 0
    assert second["summaries"]["cache_hits"] == 40
    assert second["clusters"]["naming_requests"] == second["clusters"]["naming_cache_hits"] == 0
    assert second["meta_clusters"]["naming_requests"] == second["projected_clusters"]["embedding_requests"] == 0
    assert (tmp_path / "ckpt" / "dimensionality.jsonl").read_bytes() == before
    third = run(rebuild=True)  # a rebuild names the same k-means groups again: every name comes from the cache
    assert server.count(None) == 0
    assert third["clusters"]["naming_requests"] == 0 and third["clusters"]["naming_cache_hits"] == 4
    assert third["meta_clusters"]["naming_requests"] == third["projected_clusters"]["embedding_requests"] == 0
