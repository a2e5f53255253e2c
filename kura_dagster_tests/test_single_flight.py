"""Single flight: within one run, identical summary requests (same cache key) and identical embedding texts are
sent once; every conversation sharing the key gets the answer under its own chat_id and metadata."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kura_dagster.checkpoints.summary_cache import SummaryCache
from kura_dagster.pipeline.inputs import read_conversations
from kura_dagster.pipeline.models.cached import CachedEmbeddingModel, RequestCounts
from kura_dagster.pipeline.models.openai import OpenAIConfig, OpenAIEmbeddingModel, OpenAISummaryModel
from kura_dagster.pipeline.summarise import SummaryCounts, content_key, summarise_conversations
from kura_dagster_tests.fake_openai import FakeOpenAIServer, fake_conversations

API_KEY = "sk-test-single-flight"


def models(server: FakeOpenAIServer, concurrency: int = 4):
    return (OpenAISummaryModel(OpenAIConfig(model="fake-model", base_url=server.url, max_concurrency=concurrency)),
            OpenAIEmbeddingModel(OpenAIConfig(model="fake-emb", base_url=server.url), batch_size=8))


def with_duplicates():
    """30 conversations with 10 distinct contents: each content three times, under other ids and metadata."""
    base = fake_conversations(10)
    out = []
    for copy in range(3):
        for c in base:
            out.append(c.model_copy(update={"chat_id": f"{c.chat_id}-copy{copy}", "metadata": {"copy": copy}}))
    return out


@pytest.mark.parametrize("cached", [False, True], ids=["no-cache", "cache"])
def test_duplicate_conversations_are_summarised_and_embedded_once(fake_openai: FakeOpenAIServer, tmp_path,
                                                                  cached: bool) -> None:
    convs = with_duplicates()
    model, embedder = models(fake_openai)
    counts = SummaryCounts()
    cache = SummaryCache(tmp_path) if cached else None
    out = summarise_conversations(convs, model, embedder, cache=cache, batch_size=4, counts=counts)
    assert fake_openai.count("chat") == 10 and model.usage.requests == 10  # one request per distinct content
    assert fake_openai.count("embeddings") == 2  # 10 distinct texts, 8 a request
    assert counts.summaries == RequestCounts(items=30, cache_hits=0, deduplicated=20, requested=10)
    assert counts.embeddings == RequestCounts(items=30, cache_hits=0, deduplicated=20, requested=10)
    # every conversation keeps its own id and metadata, and shares its twins' answer
    assert [s.chat_id for s in out] == [c.chat_id for c in convs]
    assert [s.metadata["copy"] for s in out] == [c.metadata["copy"] for c in convs]
    for i in range(10):
        twins = [out[i], out[i + 10], out[i + 20]]
        assert len({(s.summary, s.request, tuple(s.embedding)) for s in twins}) == 1
    assert out[0].summary != out[1].summary
    # … exactly what sending every duplicate would have returned
    fake_openai.reset()
    alone = summarise_conversations(convs[:10], *models(fake_openai), cache=None)
    assert [s.summary for s in out[20:]] == [s.summary for s in alone]
    np.testing.assert_array_equal(np.asarray([s.embedding for s in out[20:]]), np.asarray([s.embedding for s in alone]))


def test_duplicates_of_cached_conversations_count_as_cache_hits(fake_openai: FakeOpenAIServer, tmp_path) -> None:
    convs = with_duplicates()
    summarise_conversations(convs[:10], *models(fake_openai), cache=SummaryCache(tmp_path))
    fake_openai.reset()
    counts = SummaryCounts()
    summarise_conversations(convs + fake_conversations(2, start=10) * 2, *models(fake_openai),
                            cache=SummaryCache(tmp_path), counts=counts)
    assert fake_openai.count("chat") == 2  # the two new contents, once each
    assert (counts.summaries.cache_hits, counts.summaries.deduplicated, counts.summaries.requested) == (30, 2, 2)


def test_cached_embedding_model_sends_each_text_once(fake_openai: FakeOpenAIServer, tmp_path) -> None:
    texts = ["alpha", "beta", "alpha", "gamma", "beta", "alpha"]
    embedder = CachedEmbeddingModel(models(fake_openai)[1], SummaryCache(tmp_path))
    out = embedder.embed(texts)
    assert fake_openai.count("embeddings") == 1 and embedder.usage.requests == 1
    assert embedder.counts == RequestCounts(items=6, cache_hits=0, deduplicated=3, requested=3)
    np.testing.assert_array_equal(out[0], out[2])
    assert not np.array_equal(out[0], out[1])
    fake_openai.reset()
    again = CachedEmbeddingModel(models(fake_openai)[1], SummaryCache(tmp_path))
    np.testing.assert_array_equal(again.embed(texts), out)
    assert fake_openai.count(None) == 0 and again.counts.cache_hits == 6


def test_all_1000_mtbench_conversations_send_one_request_per_distinct_content(
        fake_openai: FakeOpenAIServer, shared_data: Path, tmp_path) -> None:
    convs = read_conversations(shared_data / "conversations.jsonl").conversations
    distinct = len({content_key(c) for c in convs})
    assert len(convs) == 1000 and distinct <= 75
    model, _ = models(fake_openai, concurrency=8)
    counts = SummaryCounts()
    out = summarise_conversations(convs, model, None, cache=SummaryCache(tmp_path), batch_size=64, counts=counts)
    # the target is "at most 75 plus the requests in flight"; single flight sends exactly one per content
    assert fake_openai.count("chat") == distinct == counts.summaries.requested
    assert counts.summaries.deduplicated == 1000 - distinct and counts.summaries.cache_hits == 0
    assert [s.chat_id for s in out] == [c.chat_id for c in convs]
    assert len({s.chat_id for s in out}) == 1000


def test_flight_is_cache_then_single_flight_then_fan_out() -> None:
    """The one piece of bookkeeping behind cached summaries, embeddings and names, on hand-written keys."""
    from kura_dagster.pipeline.models.cached import Flight

    counts = RequestCounts()
    flight = Flight(["cached-p", None, None, None, None, None], ["p", "q", "r", "q", "s", "q"], counts,
                    ("naming model", "names", "requests"))
    assert flight.leaders == [1, 2, 4] and flight.free == 3
    assert counts == RequestCounts(items=6, cache_hits=1, deduplicated=2, requested=3)
    assert [list(b) for b in flight.batches(2)] == [[1, 2], [4]]
    flight.take([1, 2], ["Q", "R"])
    with pytest.raises(ValueError, match="the naming model returned 2 names for 1 requests"):
        flight.take([4], ["S", "extra"])
    flight.take([4], ["S"])
    assert flight.answers == ["cached-p", "Q", "R", "Q", "S", "Q"]
