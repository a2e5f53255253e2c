"""The summaries' embeddings are requested while the summaries still arrive (one embedder batch at a time),
with the same vectors, order, counts and cache contents as embedding them all after the last summary."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence

import numpy as np
import pytest

from kura_dagster.checkpoints.summary_cache import SummaryCache
from kura_dagster.pipeline.models.cached import RequestCounts
from kura_dagster.pipeline.models.openai import LLMError, OpenAIConfig, OpenAIEmbeddingModel, OpenAISummaryModel
from kura_dagster.pipeline.summarise import SummaryCounts, embedding_text, summarise_conversations
from kura_dagster.types import GeneratedSummary
from kura_dagster_tests.fake_openai import FakeOpenAIServer, fake_conversations

API_KEY = "sk-test-embedding-stream"


def vector(text: str) -> np.ndarray:
    """A deterministic unit vector per text, independent of which batch carries it."""
    raw = np.frombuffer(hashlib.sha256(text.encode()).digest(), dtype=np.uint8)[:8].astype(np.float32) + 1.0
    return raw / np.linalg.norm(raw)


class Embedder:
    """Records every ``embed`` call; ``first_batch`` is set once a call arrived."""

    waits_on_server = True
    identity = "test-embedder"

    def __init__(self, batch_size: int = 4) -> None:
        self.batch_size = batch_size
        self.calls: list[list[str]] = []
        self.lock = threading.Lock()
        self.first_batch = threading.Event()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        with self.lock:
            self.calls.append(list(texts))
        self.first_batch.set()
        return np.stack([vector(t) for t in texts])


class AfterAll(Embedder):
    """The same embedder, embedded after the last summary (the path taken by embedders that compute locally)."""

    waits_on_server = False


class Summariser:
    """A streaming summary model: answers in input order; before its last answer it waits (up to 60 s, a hang
    guard only) for the embedder's first call, so the test sees whether embedding overlapped the summaries."""

    identity = "test-summariser"

    def __init__(self, embedder: Embedder, wait: bool) -> None:
        self.embedder, self.wait = embedder, wait
        self.asked: list[str] = []
        self.embed_calls_before_last: int | None = None

    def answer(self, content: str) -> GeneratedSummary:
        n = int(content.rsplit(" ", 1)[-1]) % 7  # 7 distinct summaries: texts repeat across conversations
        return GeneratedSummary(summary=f"summary {n}", request=f"request {n}", task=f"task {n}")

    def summarise_streaming(self, conversations, on_result, progress=None) -> list[GeneratedSummary]:
        out = []
        for i, c in enumerate(conversations):
            if i == len(conversations) - 1 and self.wait:
                assert self.embedder.first_batch.wait(60), "no embedding request before the last summary"
                self.embed_calls_before_last = len(self.embedder.calls)
            self.asked.append(c.chat_id)
            out.append(self.answer(c.messages[0].content))
            if on_result is not None:
                on_result(i, out[-1])
        return out

    def summarise(self, conversations, progress=None) -> list[GeneratedSummary]:
        return self.summarise_streaming(conversations, None, progress)


def conversations(n: int):
    convs = fake_conversations(n)
    return [c.model_copy(update={"messages": [c.messages[0].model_copy(update={"content": f"question {i}"}),
                                              *c.messages[1:]]}) for i, c in enumerate(convs)]


@pytest.mark.parametrize("cached", [False, True], ids=["no-cache", "cache"])
def test_embeddings_start_before_the_last_summary_and_match_embedding_afterwards(tmp_path, cached: bool) -> None:
    convs = conversations(20)  # 7 distinct texts: summary n for question i with i % 7 == n
    streamed, after = Embedder(batch_size=4), AfterAll(batch_size=4)
    counts_streamed, counts_after = SummaryCounts(), SummaryCounts()
    cache_a = SummaryCache(tmp_path / "a") if cached else None
    cache_b = SummaryCache(tmp_path / "b") if cached else None
    model = Summariser(streamed, wait=True)
    out = summarise_conversations(convs, model, streamed, cache=cache_a, counts=counts_streamed)
    ref = summarise_conversations(convs, Summariser(after, wait=False), after, cache=cache_b, counts=counts_after)

    # the first 4 distinct texts went out while the summaries were still arriving (before the last one)
    assert model.embed_calls_before_last == 1
    texts = [f"request {n} summary {n} task {n}" for n in range(7)]
    assert streamed.calls == [texts[:4], texts[4:]]  # the rest (3 texts) in one call at the end
    assert after.calls == [texts]
    assert embedding_text(GeneratedSummary(summary="summary 0", request="request 0", task="task 0")) == texts[0]
    # the same output, in input order, with the same counts: 20 texts, 7 distinct, 13 duplicates
    assert [s.chat_id for s in out] == [c.chat_id for c in convs]
    assert [s.model_dump() for s in out] == [s.model_dump() for s in ref]
    np.testing.assert_array_equal(np.asarray([s.embedding for s in out], dtype=np.float32),
                                  np.stack([vector(texts[i % 7]) for i in range(20)]))
    assert counts_streamed.embeddings == counts_after.embeddings == RequestCounts(20, 0, 13, 7)
    if cached:
        # both caches now answer every text; a rerun sends nothing and counts 20 cache hits
        again = Embedder(batch_size=4)
        counts = SummaryCounts()
        rerun = summarise_conversations(convs, Summariser(again, wait=False), again, cache=SummaryCache(tmp_path / "a"),
                                        counts=counts)
        assert again.calls == [] and counts.embeddings == RequestCounts(20, 20, 0, 0)
        assert [s.model_dump() for s in rerun] == [s.model_dump() for s in out]


def test_texts_of_cached_summaries_are_looked_up_and_only_new_ones_sent(tmp_path) -> None:
    convs = conversations(14)
    first = Embedder(batch_size=4)
    summarise_conversations(convs[:7], Summariser(first, wait=False), first, cache=SummaryCache(tmp_path))
    assert first.calls == [[f"request {n} summary {n} task {n}" for n in range(4)],
                           [f"request {n} summary {n} task {n}" for n in range(4, 7)]]
    second = Embedder(batch_size=4)
    counts = SummaryCounts()
    cache = SummaryCache(tmp_path)
    summarise_conversations(convs, Summariser(second, wait=False), second, cache=cache, counts=counts)
    assert second.calls == []  # questions 7-13 repeat the 7 summaries already embedded
    assert counts.summaries == RequestCounts(14, 7, 0, 7)
    assert counts.embeddings == RequestCounts(14, 14, 0, 0)


@pytest.fixture
def server(fake_openai):
    return fake_openai


def test_a_failing_embedding_request_fails_the_stage_and_keeps_every_summary(server: FakeOpenAIServer,
                                                                                 tmp_path) -> None:
    convs = fake_conversations(24)
    server.add_fault("status", endpoint="embeddings", status=400, times=None)
    model = OpenAISummaryModel(OpenAIConfig(model="fake-model", base_url=server.url, max_concurrency=4))
    embedder = OpenAIEmbeddingModel(OpenAIConfig(model="fake-emb", base_url=server.url), batch_size=8)
    with pytest.raises(LLMError, match="Embedding texts"):
        summarise_conversations(convs, model, embedder, cache=SummaryCache(tmp_path))
    assert server.count("chat") == 24
    server.reset()
    server.state.faults.clear()
    model = OpenAISummaryModel(OpenAIConfig(model="fake-model", base_url=server.url, max_concurrency=4))
    embedder = OpenAIEmbeddingModel(OpenAIConfig(model="fake-emb", base_url=server.url), batch_size=8)
    out = summarise_conversations(convs, model, embedder, cache=SummaryCache(tmp_path))
    assert server.count("chat") == 0 and server.count("embeddings") == 3  # 24 texts, 8 a request
    assert [s.chat_id for s in out] == [c.chat_id for c in convs] and all(len(s.embedding) == 16 for s in out)
