"""The per-conversation summary cache, alone and through the summaries stage against the fake server:
reruns pay only for new conversations, settings changes invalidate, batches are atomic segments."""

from __future__ import annotations

import os

import numpy as np
import pytest

from kura_dagster.checkpoints.errors import CheckpointCorruptError
from kura_dagster.checkpoints.storage import TMP_MARK
from kura_dagster.checkpoints.summary_cache import CACHE_DIRNAME, SummaryCache, conversation_hash
from kura_dagster.pipeline.models.openai import LLMError, OpenAIConfig, OpenAIEmbeddingModel, OpenAISummaryModel
from kura_dagster.pipeline.summarise import summarise_conversations
from kura_dagster.types import GeneratedSummary
from kura_dagster_tests.fake_openai import FakeOpenAIServer, fake_conversations

IDENTITY = "openai:m/summary-v1/temperature=0.2"


def gen(i: int) -> GeneratedSummary:
    return GeneratedSummary(summary=f"summary {i}", request=f"request {i}", languages=["english"], concerning_score=1)


def segments(root, kind: str = "summaries") -> list[str]:
    base = os.path.join(root, CACHE_DIRNAME, kind)
    return sorted(f for d in os.listdir(base) for f in os.listdir(os.path.join(base, d)) if f.startswith("seg-"))


def test_round_trip_and_keys(tmp_path) -> None:
    convs = fake_conversations(5)
    cache = SummaryCache(tmp_path)
    assert cache.get_summaries(IDENTITY, convs) == [None] * 5
    cache.put_summaries(IDENTITY, convs[:3], [gen(i) for i in range(3)])
    fresh = SummaryCache(tmp_path)  # a new process sees what was persisted
    assert fresh.get_summaries(IDENTITY, convs) == [gen(0), gen(1), gen(2), None, None]
    assert (fresh.stats.summary_hits, fresh.stats.summary_misses) == (3, 2)
    # keyed by content: same messages under another id and metadata hit; changed content misses
    renamed = convs[0].model_copy(update={"chat_id": "other", "metadata": {"x": 1}})
    edited = convs[0].model_copy(update={"messages": convs[0].messages[:1]})
    assert fresh.get_summaries(IDENTITY, [renamed, edited]) == [gen(0), None]
    assert conversation_hash(renamed) == conversation_hash(convs[0]) != conversation_hash(edited)
    # settings are part of the key: another temperature, prompt version or model finds nothing
    for other in ("openai:m/summary-v1/temperature=0.7", "openai:m/summary-v2/temperature=0.2",
                  "openai:n/summary-v1/temperature=0.2"):
        assert fresh.get_summaries(other, convs[:3]) == [None] * 3


def test_embeddings_are_exact_and_keyed_by_text_and_model(tmp_path) -> None:
    vectors = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
    cache = SummaryCache(tmp_path)
    cache.put_embeddings("emb-a", ["x", "y", "z"], vectors)
    got = SummaryCache(tmp_path).get_embeddings("emb-a", ["z", "x", "new"])
    np.testing.assert_array_equal(got[0], vectors[2])
    np.testing.assert_array_equal(got[1], vectors[0])
    assert got[2] is None and got[0].dtype == np.float32
    assert SummaryCache(tmp_path).get_embeddings("emb-b", ["x"]) == [None]


def test_each_batch_is_one_atomic_segment_and_leftovers_are_ignored(tmp_path) -> None:
    convs = fake_conversations(6)
    cache = SummaryCache(tmp_path)
    cache.put_summaries(IDENTITY, convs[:2], [gen(0), gen(1)])
    cache.put_summaries(IDENTITY, convs[2:4], [gen(2), gen(3)])
    assert len(segments(tmp_path)) == 2 and cache.stats.segments_written == 2
    ns_dir = cache.namespace("summaries", IDENTITY).directory
    # what a kill -9 in the middle of a write leaves behind: a temporary file, never a half segment
    with open(os.path.join(str(ns_dir), f"{TMP_MARK}seg-x.jsonl-1-abc"), "w") as fh:
        fh.write('{"k": "trunc')
    assert SummaryCache(tmp_path).get_summaries(IDENTITY, convs) == [gen(0), gen(1), gen(2), gen(3), None, None]


def test_a_damaged_segment_is_reported_with_file_and_line(tmp_path) -> None:
    convs = fake_conversations(2)
    cache = SummaryCache(tmp_path)
    cache.put_summaries(IDENTITY, convs, [gen(0), gen(1)])
    path = os.path.join(str(cache.namespace("summaries", IDENTITY).directory), segments(tmp_path)[0])
    with open(path, "a") as fh:
        fh.write("not json\n")
    with pytest.raises(CheckpointCorruptError, match=r"seg-.*\.jsonl line 3: unreadable cache record"):
        SummaryCache(tmp_path).get_summaries(IDENTITY, convs)


def test_many_segments_are_compacted_without_losing_entries(tmp_path) -> None:
    convs = fake_conversations(12)
    cache = SummaryCache(tmp_path)
    for i, c in enumerate(convs):
        cache.put_summaries(IDENTITY, [c], [gen(i)])
    assert len(segments(tmp_path)) == 12
    compacting = SummaryCache(tmp_path, compact_after=4)
    assert compacting.get_summaries(IDENTITY, convs) == [gen(i) for i in range(12)]
    assert len(segments(tmp_path)) == 1
    assert SummaryCache(tmp_path).get_summaries(IDENTITY, convs) == [gen(i) for i in range(12)]


def test_disabled_halves_neither_hit_nor_write(tmp_path) -> None:
    convs = fake_conversations(2)
    cache = SummaryCache(tmp_path, summaries=False, embeddings=False)
    cache.put_summaries(IDENTITY, convs, [gen(0), gen(1)])
    cache.put_embeddings("e", ["a"], np.ones((1, 2), dtype=np.float32))
    assert cache.get_summaries(IDENTITY, convs) == [None, None]
    assert not os.path.exists(os.path.join(tmp_path, CACHE_DIRNAME))


# --- through the stage, against the fake server -------------------------------------------------------------
API_KEY = "sk-test-cache"


@pytest.fixture
def server(fake_openai):
    return fake_openai


def models(server: FakeOpenAIServer, temperature: float = 0.2):
    cfg = OpenAIConfig(model="fake-model", base_url=server.url, max_concurrency=4, temperature=temperature)
    return OpenAISummaryModel(cfg), OpenAIEmbeddingModel(OpenAIConfig(model="fake-emb", base_url=server.url),
                                                         batch_size=16)


def test_rerun_with_ten_percent_new_conversations_pays_only_for_those(server: FakeOpenAIServer, tmp_path) -> None:
    old, new = fake_conversations(90), fake_conversations(10, start=90)
    model, embedder = models(server)
    first = summarise_conversations(old, model, embedder, cache=SummaryCache(tmp_path), batch_size=16,
                                    embedding_batch_size=32)
    assert server.count("chat") == 90 and server.count("embeddings") == 6  # 3 batches of 32 texts, 16 a request
    assert len(segments(tmp_path)) == 6  # 16+16+16+16+16+10: persisted batch by batch

    server.reset()
    mixed = old[:45] + new + old[45:]  # new conversations anywhere: order follows the input
    model, embedder = models(server)
    cache = SummaryCache(tmp_path)
    second = summarise_conversations(mixed, model, embedder, cache=cache, batch_size=16, embedding_batch_size=32)
    assert server.count("chat") == 10 and model.usage.requests == 10
    assert server.count("embeddings") == 1  # only the 10 new texts
    assert cache.stats.summary_hits == 90 and cache.stats.embedding_hits == 90
    assert [s.chat_id for s in second] == [c.chat_id for c in mixed]
    assert second[:45] + second[55:] == first  # cached summaries and embeddings are returned unchanged

    server.reset()
    model, embedder = models(server)
    summarise_conversations(mixed, model, embedder, cache=SummaryCache(tmp_path), batch_size=16)
    assert server.count(None) == 0  # everything cached: no request at all


def test_changing_the_temperature_invalidates_the_cache(server: FakeOpenAIServer, tmp_path) -> None:
    convs = fake_conversations(8)
    summarise_conversations(convs, models(server)[0], None, cache=SummaryCache(tmp_path), batch_size=4)
    server.reset()
    hot, _ = models(server, temperature=0.9)
    summarise_conversations(convs, hot, None, cache=SummaryCache(tmp_path), batch_size=4)
    assert server.count("chat") == 8
    server.reset()
    summarise_conversations(convs, models(server)[0], None, cache=SummaryCache(tmp_path), batch_size=4)
    assert server.count("chat") == 0  # the old settings' entries are still there


def test_a_failed_batch_keeps_its_successes(server: FakeOpenAIServer, tmp_path) -> None:
    convs = fake_conversations(12)
    server.add_fault("malformed", times=None, match="Request 9:")
    with pytest.raises(LLMError, match="conv-00009"):
        summarise_conversations(convs, models(server)[0], None, cache=SummaryCache(tmp_path), batch_size=8)
    server.reset()
    out = summarise_conversations(convs, models(server)[0], None, cache=SummaryCache(tmp_path), batch_size=8)
    assert server.count("chat") == 1  # only conv-00009 was still to do
    assert [s.chat_id for s in out] == [c.chat_id for c in convs]
