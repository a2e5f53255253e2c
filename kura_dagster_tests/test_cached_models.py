"""Every LLM and embedding request of the cluster stages is cached, keyed by what shapes the answer: an
unchanged rerun sends no request at all, and a change to one cluster re-asks only what depends on it."""

from __future__ import annotations

import numpy as np

from kura_dagster.checkpoints.summary_cache import SummaryCache
from kura_dagster.pipeline.cluster import generate_base_clusters
from kura_dagster.pipeline.dimensionality import project_clusters
from kura_dagster.pipeline.meta_cluster import reduce_clusters
from kura_dagster.pipeline.models.base import RequestNamingModel
from kura_dagster.pipeline.models.cached import CachedEmbeddingModel, CachedNamingModel, RequestCounts
from kura_dagster.pipeline.models.local import LocalClusterNamingModel, LocalEmbeddingModel
from kura_dagster.pipeline.models.openai import (
    OpenAIClusterNamingModel,
    OpenAIConfig,
    OpenAIEmbeddingModel,
    naming_score,
)
from kura_dagster.pipeline.settings import PipelineSettings
from kura_dagster.types import ConversationSummary
from kura_dagster_tests.fake_openai import FakeOpenAIServer

API_KEY = "sk-test-cached-models"
SETTINGS = PipelineSettings(clusters_per_group=10, max_clusters=3, seed=0)
TOPICS = ("python sorting", "haiku about rain", "mountain trip", "sql query", "photosynthesis", "landlord email",
          "sourdough bread", "job interview")


def summaries() -> list[ConversationSummary]:
    """80 summaries in 8 well-separated topics (k-means finds the same 8 base clusters every time)."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((len(TOPICS), 32))
    out = []
    for i in range(80):
        t = i % len(TOPICS)
        v = centres[t] + 0.05 * rng.standard_normal(32)
        out.append(ConversationSummary(
            chat_id=f"c{i:03d}", summary=f"summary {i}", metadata={},
            request=f"The user's overall request for the assistant is to help with {TOPICS[t]} (case {i}).",
            embedding=(v / np.linalg.norm(v)).astype(np.float32).tolist()))
    return out


def _local_embedding() -> LocalEmbeddingModel:
    """The offline embedding with one fixed fit (as a pipeline's stored artifact), so both runs embed alike."""
    model = LocalEmbeddingModel(dims=64)
    model.fit([s.request for s in summaries()] * 2)
    return model


class Run:
    def __init__(self, server: FakeOpenAIServer, ckpt, data: list[ConversationSummary], local_embeddings=False) -> None:
        cache = SummaryCache(ckpt)
        self.namer = CachedNamingModel(OpenAIClusterNamingModel(
            OpenAIConfig(model="fake-model", base_url=server.url, max_concurrency=4), seed=0), cache)
        inner = (_local_embedding() if local_embeddings
                 else OpenAIEmbeddingModel(OpenAIConfig(model="fake-emb", base_url=server.url), batch_size=16))
        self.embedder = CachedEmbeddingModel(inner, cache)
        before = server.count("chat"), server.count("embeddings")
        self.base = generate_base_clusters(data, self.namer, SETTINGS)
        self.base_names = self.namer.counts.requested
        self.meta = reduce_clusters(self.base, self.namer, self.embedder, SETTINGS)
        self.meta_embedded = self.embedder.counts.requested
        self.projected = project_clusters(self.meta, self.embedder, SETTINGS)
        self.chat = server.count("chat") - before[0]
        self.embedding_requests = server.count("embeddings") - before[1]


def test_an_unchanged_rerun_sends_no_request(fake_openai: FakeOpenAIServer, tmp_path) -> None:
    data = summaries()
    first = Run(fake_openai, tmp_path, data)
    assert len(first.base) == 8 and len(first.meta) > 8
    assert first.chat == len(first.meta) == first.namer.counts.requested  # one request per cluster named
    assert first.embedding_requests >= 2
    second = Run(fake_openai, tmp_path, data)
    assert (second.chat, second.embedding_requests) == (0, 0)
    assert second.namer.counts == RequestCounts(items=len(first.meta), cache_hits=len(first.meta))
    assert second.embedder.counts.requested == 0 and second.embedder.counts.cache_hits > 0
    assert second.projected == first.projected  # the same names, tree and map


def _edit_non_representative(data: list[ConversationSummary], chat_ids: list[str]) -> list[ConversationSummary]:
    """``data`` with one member of the cluster ``chat_ids`` reworded, keeping the cluster's representative (its
    lowest-scoring statement, which other clusters' requests quote as a contrastive example)."""
    members = [s for s in data if s.chat_id in set(chat_ids)]
    rep = min(naming_score(0, s.request) for s in members)
    victim = max(members, key=lambda s: naming_score(0, s.request))
    for n in range(100):
        text = f"{victim.request} Reworded {n}."
        if naming_score(0, text) > rep:
            break
    return [s.model_copy(update={"request": text}) if s.chat_id == victim.chat_id else s for s in data]


def _children(meta) -> dict[str, tuple[str, ...]]:
    """Each parent's children, as its naming request quotes them (name and description)."""
    return {p.id: tuple(f"{c.name}: {c.description}" for c in meta if c.parent_id == p.id)
            for p in meta if any(c.parent_id == p.id for c in meta)}


def test_a_change_to_one_cluster_re_asks_only_what_depends_on_it(fake_openai: FakeOpenAIServer, tmp_path) -> None:
    # cluster texts embedded by a semantic (word-based) model, so that a reworded name stays near the old one,
    # as with a real embedding model (the fake server's vectors are random per text)
    data = summaries()
    first = Run(fake_openai, tmp_path, data, local_embeddings=True)
    edited = _edit_non_representative(data, first.base[0].chat_ids)
    second = Run(fake_openai, tmp_path, edited, local_embeddings=True)
    assert [c.chat_ids for c in second.base] == [c.chat_ids for c in first.base]
    changed = [i for i, (a, b) in enumerate(zip(first.base, second.base)) if a.name != b.name]
    assert changed == [0] and second.base_names == 1  # only the edited cluster is named again
    assert second.meta_embedded == 1  # only its new name and description are embedded again
    # above it: exactly the meta clusters whose children's names changed are named again
    old_requests = set(_children(first.meta).values())
    new_parents = [k for k, v in _children(second.meta).items() if v not in old_requests]
    assert len(new_parents) == second.chat - 1 == 1
    assert second.chat < len(first.meta) / 4
    # a third run over the edited data is free again
    third = Run(fake_openai, tmp_path, edited, local_embeddings=True)
    assert third.chat == 0 and third.namer.counts.requested == third.embedder.counts.requested == 0


def test_a_request_depends_only_on_its_group_and_the_representatives(fake_openai: FakeOpenAIServer) -> None:
    model = OpenAIClusterNamingModel(OpenAIConfig(model="fake-model", base_url=fake_openai.url), seed=0)
    assert isinstance(model, RequestNamingModel)
    data = summaries()
    groups = [[s for s in data if int(s.chat_id[1:]) % 8 == t] for t in range(8)]
    before = [r.key for r in model.cluster_requests(groups)]
    assert len(set(before)) == 8
    # another order of the groups, or of the members, asks the same questions
    assert sorted(r.key for r in model.cluster_requests(groups[::-1])) == sorted(before)
    assert [r.key for r in model.cluster_requests([g[::-1] for g in groups])] == before
    edited = _edit_non_representative(data, [s.chat_id for s in groups[3]])
    after = [r.key for r in model.cluster_requests([[s for s in edited if int(s.chat_id[1:]) % 8 == t]
                                                    for t in range(8)])]
    assert [i for i in range(8) if before[i] != after[i]] == [3]
    assert fake_openai.count(None) == 0  # building requests sends nothing


def test_a_backend_that_hides_its_requests_is_called_as_it_is(tmp_path) -> None:
    data = summaries()
    local = LocalClusterNamingModel(seed=0)
    namer = CachedNamingModel(local, SummaryCache(tmp_path))
    groups = [data[:10], data[10:20]]
    assert namer.name_clusters(groups) == local.name_clusters(groups)
    assert namer.counts == RequestCounts(items=2, requested=2)


def test_names_are_stored_under_the_request_key(fake_openai: FakeOpenAIServer, tmp_path) -> None:
    run = Run(fake_openai, tmp_path, summaries())
    keys = [r.key for r in run.namer.inner.cluster_requests(
        [[s for s in summaries() if s.chat_id in set(c.chat_ids)] for c in run.base])]
    stored = SummaryCache(tmp_path).get_names(run.namer.identity, keys)
    assert [n.name for n in stored] == [c.name for c in run.base]
