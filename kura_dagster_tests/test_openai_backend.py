"""The OpenAI-compatible backend against a local fake server: structured output, JSON-mode fallback,
bounded concurrency, retries (429/500/malformed/timeouts), clear errors, the API key kept secret."""

from __future__ import annotations

import json
import logging
import urllib.request

import numpy as np
import pytest

from kura_dagster.pipeline.models.base import ClusterNamingModel, EmbeddingModel, SummaryModel
from kura_dagster.pipeline.models.openai import (
    LLMError,
    OpenAIClusterNamingModel,
    OpenAIConfig,
    OpenAIEmbeddingModel,
    OpenAISummaryModel,
    parse_backend,
)
from kura_dagster.pipeline.summarise import StreamingSummaryModel
from kura_dagster.orchestration.resources import KuraPipelineResource
from kura_dagster.types import Cluster, ConversationSummary, GeneratedCluster, GeneratedSummary
from kura_dagster_tests.fake_openai import FakeOpenAIServer, fake_conversations, fake_embedding

API_KEY = "sk-test-do-not-log-4f1d9c"


@pytest.fixture
def server(fake_openai):
    return fake_openai


def config(server: FakeOpenAIServer, **kw) -> OpenAIConfig:
    return OpenAIConfig(**{"model": "fake-model", "base_url": server.url, "max_concurrency": 4, **kw})


def test_models_implement_the_protocols(server: FakeOpenAIServer) -> None:
    assert isinstance(OpenAISummaryModel(config(server)), SummaryModel)
    assert isinstance(OpenAISummaryModel(config(server)), StreamingSummaryModel)
    assert isinstance(OpenAIEmbeddingModel(config(server)), EmbeddingModel)
    assert isinstance(OpenAIClusterNamingModel(config(server)), ClusterNamingModel)


def test_structured_summaries_are_validated_deterministic_and_bounded(server: FakeOpenAIServer) -> None:
    convs = fake_conversations(24)
    server.set_delay(0.05)
    seen: list[tuple[int, int]] = []
    model = OpenAISummaryModel(config(server, max_concurrency=3))
    first = model.summarise(convs, progress=lambda d, t: seen.append((d, t)))
    assert all(isinstance(s, GeneratedSummary) and s.summary for s in first)
    assert first[5].summary != first[6].summary  # content follows the prompt
    assert "request 5" in first[5].summary.lower()  # … of that very conversation (input order kept)
    assert server.count("chat") == 24 and server.max_in_flight == 3  # bounded, and the bound is used
    assert seen[-1] == (24, 24)
    assert model.usage.requests == 24 and model.usage.retries == 0 and model.usage.prompt_tokens > 0
    assert all(r.status == 200 for r in server.records)
    again = OpenAISummaryModel(config(server)).summarise(convs)
    assert again == first


def test_429_500_and_malformed_output_are_retried(server: FakeOpenAIServer) -> None:
    convs = fake_conversations(6)
    clean = OpenAISummaryModel(config(server)).summarise(convs)
    server.reset()
    server.add_fault("status", status=429, times=2)
    server.add_fault("status", status=500, times=1)
    server.add_fault("malformed", times=1)
    model = OpenAISummaryModel(config(server))
    assert model.summarise(convs) == clean
    assert server.count("chat") == 6 + 4
    assert server.count("chat", status=429) == 2 and server.count("chat", status=500) == 1
    assert model.usage.requests == 10 and model.usage.retries == 4 and model.usage.failures == 4
    assert sum(r.retry_count > 0 for r in server.records) == 3  # the client's own retries of 429/500


def test_faults_can_be_injected_over_http(server: FakeOpenAIServer) -> None:
    """The control endpoint, for a server in another process (the benchmark's)."""
    base = server.url.rsplit("/v1", 1)[0]
    request = urllib.request.Request(f"{base}/_fake/faults", data=json.dumps({"kind": "status", "status": 500}).encode(),
                                     method="POST")
    urllib.request.urlopen(request, timeout=10).close()
    model = OpenAISummaryModel(config(server))
    model.summarise(fake_conversations(1))
    with urllib.request.urlopen(f"{base}/_fake/stats", timeout=10) as resp:
        stats = json.load(resp)
    assert [r["status"] for r in stats["requests"]] == [500, 200] and model.usage.retries == 1


def test_a_request_that_times_out_is_retried(server: FakeOpenAIServer) -> None:
    """Told by order, not by seconds: the first attempt's answer is held back for a minute (the server counts a
    request when it answers), so the answer the client got can only be the retry's."""
    convs = fake_conversations(1)
    server.add_fault("delay", seconds=60, times=1)
    model = OpenAISummaryModel(config(server, request_timeout=0.4))
    out = model.summarise(convs)
    assert out[0].summary
    assert model.usage.retries == 1 and model.usage.failures == 1 and model.usage.requests == 2
    # one answer so far, the retry's (x-stainless-retry-count 1); the first attempt is still unanswered
    assert [r.retry_count for r in server.records] == [1] and server.state.in_flight == 1


def test_malformed_output_gives_up_with_an_error_naming_the_conversation(server: FakeOpenAIServer) -> None:
    convs = fake_conversations(5)
    server.add_fault("malformed", times=None, match="Request 3:")
    model = OpenAISummaryModel(config(server, max_output_retries=2))
    finished: list[int] = []
    with pytest.raises(LLMError) as info:
        model.summarise_streaming(convs, lambda i, s: finished.append(i))
    message = str(info.value)
    assert "1 of 5 conversations" in message and "conv-00003" in message and "malformed output 3 times" in message
    assert sorted(finished) == [0, 1, 2, 4]  # the work that succeeded was handed over as it finished
    assert server.count("chat") == 4 + 3
    assert model.usage.failures == 3 and model.usage.retries == 2


def test_exhausted_server_errors_name_the_conversation(server: FakeOpenAIServer) -> None:
    server.add_fault("status", status=503, times=None)
    model = OpenAISummaryModel(config(server, max_retries=2))
    with pytest.raises(LLMError, match=r"conv-00000.*HTTP 503.*after 2 retries"):
        model.summarise(fake_conversations(1))
    assert server.count("chat") == 3 and model.usage.requests == 3 and model.usage.failures == 3


def test_an_error_every_request_would_hit_stops_the_rest(server: FakeOpenAIServer) -> None:
    server.add_fault("status", status=401, times=None)  # e.g. a revoked key
    with pytest.raises(LLMError, match=r"12 of 12 conversations.*HTTP 401"):
        OpenAISummaryModel(config(server, max_concurrency=2)).summarise(fake_conversations(12))
    assert server.count("chat") <= 2  # the requests already in flight; the other ten were never sent


def test_falls_back_to_json_mode_when_structured_output_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    with FakeOpenAIServer(structured_output=False) as server:
        model = OpenAISummaryModel(config(server, max_concurrency=1))
        out = model.summarise(fake_conversations(5))
        assert all(isinstance(s, GeneratedSummary) and "request" in s.summary.lower() for s in out)
        assert server.count("chat", status=400) == 1  # refused once, then JSON mode for every request
        assert server.count("chat", status=200) == 5
        with pytest.raises(LLMError, match="HTTP 400"):  # forced structured output: a clear error
            OpenAISummaryModel(config(server, structured_output="json_schema")).summarise(fake_conversations(1))


def test_embeddings_are_batched_normalised_and_in_order(server: FakeOpenAIServer) -> None:
    texts = [f"text number {i}" for i in range(10)] + [""]
    model = OpenAIEmbeddingModel(config(server), batch_size=4)
    out = model.embed(texts)
    assert out.shape == (11, 16) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(out[7], fake_embedding("text number 7", 16), rtol=1e-5)
    assert server.count("embeddings") == 3 and model.usage.requests == 3
    assert model.identity == "openai-embedding:fake-model"


def test_cluster_naming_one_request_per_group(server: FakeOpenAIServer) -> None:
    summaries = [ConversationSummary(summary=f"s{i}", request=f"The user asked about topic {i}", chat_id=f"c{i}",
                                     metadata={}) for i in range(6)]
    model = OpenAIClusterNamingModel(config(server), seed=1)
    names = model.name_clusters([summaries[:3], summaries[3:]])
    assert len(names) == 2 and all(isinstance(n, GeneratedCluster) and n.name and n.slug for n in names)
    assert names[0] != names[1]
    clusters = [Cluster(name=f"Cluster {i}", description="d", slug="a_b_c", chat_ids=[f"c{i}"], parent_id=None)
                for i in range(3)]
    meta = model.name_meta_clusters([clusters[:2], clusters[2:]])
    assert len(meta) == 2
    assert server.count("chat") == 4
    assert model.name_clusters([summaries[:3], summaries[3:]]) == names  # seeded sampling: deterministic


def test_api_key_comes_from_the_environment_and_is_never_logged(
    server: FakeOpenAIServer, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_LOG", "debug")
    server.add_fault("malformed", times=1)
    server.add_fault("status", status=500, times=None, match="Request 1:")
    model = OpenAISummaryModel(config(server, max_retries=1))
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(LLMError) as info:
            model.summarise(fake_conversations(2))
    assert caplog.records  # something was logged (retries, the client's debug output) …
    assert API_KEY not in caplog.text and API_KEY not in str(info.value) and API_KEY not in repr(model.config)
    assert "api_key" not in KuraPipelineResource.model_fields  # … and no place to put a key in config
    monkeypatch.delenv("OPENAI_API_KEY")
    with pytest.raises(LLMError, match="OPENAI_API_KEY"):
        OpenAISummaryModel(config(server)).summarise(fake_conversations(1))


def test_resource_selects_the_backend(server: FakeOpenAIServer) -> None:
    assert parse_backend("local", "llm") is None and parse_backend("openai:gpt-4o-mini", "llm") == "gpt-4o-mini"
    with pytest.raises(ValueError, match="openai:<model>"):
        parse_backend("anthropic:claude", "llm")
    kura = KuraPipelineResource(llm="openai:fake-model", embeddings="openai:fake-emb", base_url=server.url,
                                max_concurrency=3, temperature=0.5)
    summary = kura.summary_model()
    assert isinstance(summary, OpenAISummaryModel) and summary.config.max_concurrency == 3
    assert summary.identity == "openai:fake-model/summary-v1/temperature=0.5"
    assert isinstance(kura.embedding_model(), OpenAIEmbeddingModel)
    assert isinstance(kura.naming_model(), OpenAIClusterNamingModel)
    assert kura.summary_batch() == 24
    with pytest.raises(ValueError, match="Unknown llm backend"):
        KuraPipelineResource(llm="gpt-4o").summary_model()


def test_definitions_read_the_backend_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    from kura_dagster.definitions import build_definitions

    monkeypatch.setenv("KURA_CHECKPOINT_DIR", str(tmp_path))
    monkeypatch.setenv("KURA_LLM", "openai:fake-model")
    monkeypatch.setenv("KURA_EMBEDDINGS", "openai:fake-emb")
    monkeypatch.setenv("KURA_LLM_MAX_CONCURRENCY", "5")
    kura = build_definitions().resources["kura"]
    assert (kura.llm, kura.embeddings, kura.max_concurrency) == ("openai:fake-model", "openai:fake-emb", 5)


def test_every_asset_runs_on_the_openai_backend(server: FakeOpenAIServer, tmp_path) -> None:
    import dagster as dg

    from kura_dagster.orchestration.assets import kura_assets
    from kura_dagster.io_managers import JSONLIOManager
    from kura_dagster.orchestration.resources import ConversationSource

    source = tmp_path / "conversations.jsonl"
    source.write_text("".join(c.model_dump_json() + "\n" for c in fake_conversations(30)))
    kura = KuraPipelineResource(llm="openai:fake-model", embeddings="openai:fake-emb", base_url=server.url,
                                checkpoint_dir=str(tmp_path), max_clusters=2, min_conversations=1)  # every group named
    result = dg.materialize(kura_assets, resources={
        "io_manager": JSONLIOManager(base_dir=str(tmp_path)), "kura": kura, "source": ConversationSource(path=str(source))})
    assert result.success
    clusters = [Cluster.model_validate_json(line) for line in (tmp_path / "meta_clusters.jsonl").read_text().splitlines()]
    base = [c for c in clusters if not any(p.parent_id == c.id for p in clusters)]
    assert len(base) == 3 and len(clusters) > 3  # ceil(30 / 10) base clusters, then meta clusters …
    assert server.count("chat") == 30 + len(clusters)  # … one request per summary and per cluster named
    assert all(c.name.startswith("name: ") for c in clusters)  # every name came from the server
    assert server.count("embeddings") >= 2


def test_naming_saves_each_name_as_it_arrives_and_a_failure_keeps_the_others(server: FakeOpenAIServer,
                                                                             tmp_path) -> None:
    from kura_dagster.checkpoints.summary_cache import SummaryCache
    from kura_dagster.pipeline.models.cached import CachedNamingModel
    from kura_dagster.pipeline.models.openai import naming_score

    summaries = [ConversationSummary(summary=f"s{i}", request=f"The user asked about subject {i} in depth",
                                     chat_id=f"c{i}", metadata={}) for i in range(18)]
    groups = [summaries[i: i + 3] for i in range(0, 18, 3)]
    # a statement only group 2's request quotes: not its representative (which other groups quote)
    only_in_2 = max((s.request for s in groups[2]), key=lambda t: naming_score(0, t))
    server.add_fault("malformed", times=None, match=only_in_2)
    namer = CachedNamingModel(OpenAIClusterNamingModel(config(server, max_output_retries=0)), SummaryCache(tmp_path))
    with pytest.raises(LLMError, match="Naming base cluster 2"):
        namer.name_clusters(groups)
    assert server.count("chat") == 6
    server.reset()
    again = CachedNamingModel(OpenAIClusterNamingModel(config(server)), SummaryCache(tmp_path))
    names = again.name_clusters(groups)
    assert server.count("chat") == 1 and again.counts.cache_hits == 5  # only the one that failed
    assert names == OpenAIClusterNamingModel(config(server)).name_clusters(groups)
