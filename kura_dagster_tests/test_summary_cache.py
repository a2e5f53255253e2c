"""The per-conversation summary cache, alone and through the summaries stage against the fake server:
reruns pay only for new conversations, settings changes invalidate, batches are atomic segments."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from kura_dagster.checkpoints.errors import CheckpointCorruptError
from kura_dagster.checkpoints.storage import TMP_MARK
from kura_dagster.checkpoints.summary_cache import CACHE_DIRNAME, SummaryCache, conversation_hash
from kura_dagster.pipeline.models.openai import LLMError, OpenAIConfig, OpenAIEmbeddingModel, OpenAISummaryModel
from kura_dagster.pipeline.summarise import SummaryCounts, summarise_conversations
from kura_dagster.types import Conversation, GeneratedSummary, Message
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


def _said(chat_id: str, *turns: tuple[str, str]) -> Conversation:
    at = datetime(2026, 3, 1, 9, 0, tzinfo=timezone(timedelta(hours=1)))
    return Conversation(chat_id=chat_id, created_at=at, metadata={},
                        messages=[Message(created_at=at, role=role, content=text) for role, text in turns])


# The same two texts, said by other speakers: a summary of one is not a summary of the other.
ASKED = _said("asked", ("user", "Is the bridge open?"), ("assistant", "Yes, until 22:00."))
SWAPPED = _said("swapped", ("assistant", "Is the bridge open?"), ("user", "Yes, until 22:00."))
ECHOED = _said("echoed", ("user", "Is the bridge open?"), ("user", "Yes, until 22:00."))


def test_the_key_holds_each_message_role() -> None:
    # by hand: sha256(b'[["user","Is the bridge open?"],["assistant","Yes, until 22:00."]]')
    assert conversation_hash(ASKED) == "7fe0c066157ad072d11f4ab0d4fa02181d2983f6941adf412582258c5ebe5dcd"
    assert len({conversation_hash(c) for c in (ASKED, SWAPPED, ECHOED)}) == 3


def test_conversations_differing_only_in_roles_do_not_share_a_cache_entry(tmp_path) -> None:
    cache = SummaryCache(tmp_path)
    cache.put_summaries(IDENTITY, [ASKED], [gen(1)])
    cache.commit()
    assert SummaryCache(tmp_path).get_summaries(IDENTITY, [ASKED, SWAPPED, ECHOED]) == [gen(1), None, None]


def test_embeddings_are_exact_and_keyed_by_text_and_model(tmp_path) -> None:
    vectors = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
    cache = SummaryCache(tmp_path)
    cache.put_embeddings("emb-a", ["x", "y", "z"], vectors)
    got = SummaryCache(tmp_path).get_embeddings("emb-a", ["z", "x", "new"])
    np.testing.assert_array_equal(got[0], vectors[2])
    np.testing.assert_array_equal(got[1], vectors[0])
    assert got[2] is None and got[0].dtype == np.float32
    assert SummaryCache(tmp_path).get_embeddings("emb-b", ["x"]) == [None]


def journals(root, kind: str = "summaries") -> list[str]:
    base = os.path.join(root, CACHE_DIRNAME, kind)
    return sorted(f for d in os.listdir(base) for f in os.listdir(os.path.join(base, d)) if f.startswith("journal-"))


def test_answers_are_journaled_at_once_and_each_commit_is_one_atomic_segment(tmp_path) -> None:
    convs = fake_conversations(6)
    cache = SummaryCache(tmp_path)
    cache.put_summaries(IDENTITY, convs[:1], [gen(0)])
    cache.put_summaries(IDENTITY, convs[1:2], [gen(1)])
    assert segments(tmp_path) == [] and len(journals(tmp_path)) == 1  # one journal, appended per answer
    assert SummaryCache(tmp_path).get_summaries(IDENTITY, convs[:2]) == [gen(0), gen(1)]  # readable at once
    cache.commit()  # a batch boundary: the journal becomes one atomic segment
    assert len(segments(tmp_path)) == 1 and journals(tmp_path) == [] and cache.stats.segments_written == 1
    cache.put_summaries(IDENTITY, convs[2:4], [gen(2), gen(3)])
    cache.commit()
    cache.commit()  # nothing new: no empty segment
    assert len(segments(tmp_path)) == 2 and cache.stats.segments_written == 2
    ns_dir = cache.namespace("summaries", IDENTITY).directory
    # what a kill -9 in the middle of a compaction leaves behind: a temporary file, never a half segment
    with open(os.path.join(str(ns_dir), f"{TMP_MARK}seg-x.jsonl-1-abc"), "w") as fh:
        fh.write('{"k": "trunc')
    assert SummaryCache(tmp_path).get_summaries(IDENTITY, convs) == [gen(0), gen(1), gen(2), gen(3), None, None]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_torn_last_journal_line_is_ignored_and_a_dead_writers_journal_is_folded(tmp_path) -> None:
    convs = fake_conversations(3)
    cache = SummaryCache(tmp_path)
    cache.put_summaries(IDENTITY, convs[:2], [gen(0), gen(1)])
    ns_dir = str(cache.namespace("summaries", IDENTITY).directory)
    mine = os.path.join(ns_dir, journals(tmp_path)[0])
    # a journal as a writer killed mid-line leaves it: two whole lines, then a torn one
    dead = os.path.join(ns_dir, f"journal-{0:020d}-{_dead_pid()}-deadbeef.jsonl")
    shutil.copy(mine, dead)
    with open(dead, "ab") as fh:
        fh.write(b'{"k":"' + conversation_hash(convs[2]).encode() + b'","v":{"summ')
    fresh = SummaryCache(tmp_path)
    assert fresh.get_summaries(IDENTITY, convs) == [gen(0), gen(1), None]  # the torn answer is simply not there
    assert not os.path.exists(dead) and os.path.exists(mine)  # folded into a segment; a live writer's stays
    assert len(segments(tmp_path)) == 1
    # a bad line that is not the last one is damage, reported with file and line
    with open(mine, "ab") as fh:
        fh.write(b"not json\n" + json.dumps({"k": "x", "v": 1}).encode() + b"\n")
    with pytest.raises(CheckpointCorruptError, match=r"journal-.*\.jsonl line 3: unreadable cache record"):
        SummaryCache(tmp_path).get_summaries(IDENTITY, convs)


def test_group_commit_syncs_at_most_once_per_interval(tmp_path) -> None:
    convs = fake_conversations(400)
    cache = SummaryCache(tmp_path, commit_interval=0.2)
    started = time.monotonic()
    for i, c in enumerate(convs):  # an answer every ~2 ms for ~0.8 s
        cache.put_summaries(IDENTITY, [c], [gen(i)])
        time.sleep(0.002)
    journal = cache.namespace("summaries", IDENTITY).journal
    deadline = time.monotonic() + 5
    while journal.dirty and time.monotonic() < deadline:  # the last answers are synced by the next commit
        time.sleep(0.02)
    elapsed = time.monotonic() - started
    assert not journal.dirty
    assert 1 <= journal.syncs <= elapsed / 0.2 + 1, (journal.syncs, elapsed)  # not one fsync per answer
    cache.commit()
    assert cache.stats.journal_commits == journal.syncs or cache.stats.journal_commits >= 1
    assert SummaryCache(tmp_path).get_summaries(IDENTITY, convs) == [gen(i) for i in range(400)]


def test_an_object_store_gets_a_small_segment_per_group_commit(tmp_path) -> None:
    url = f"memory://kura-cache-test-{uuid.uuid4().hex[:8]}/ckpt"
    convs = fake_conversations(5)
    cache = SummaryCache(url, commit_interval=0.05)
    cache.put_summaries(IDENTITY, convs[:2], [gen(0), gen(1)])
    ns = cache.namespace("summaries", IDENTITY)
    deadline = time.monotonic() + 5
    while ns.journal.dirty and time.monotonic() < deadline:
        time.sleep(0.01)
    small = [p.name for p in ns.directory.iterdir() if p.name.startswith("seg-")]
    assert len(small) == 1  # no append on an object store: the group commit wrote a segment object
    assert SummaryCache(url).get_summaries(IDENTITY, convs) == [gen(0), gen(1), None, None, None]
    cache.put_summaries(IDENTITY, convs[2:3], [gen(2)])
    cache.commit()  # compaction: one segment for both answers of this run instead of the small ones
    assert len([p for p in ns.directory.iterdir() if p.name.startswith("seg-")]) == 1
    assert SummaryCache(url).get_summaries(IDENTITY, convs) == [gen(0), gen(1), gen(2), None, None]


def test_many_segments_are_compacted_without_losing_entries(tmp_path) -> None:
    convs = fake_conversations(12)
    cache = SummaryCache(tmp_path)
    for i, c in enumerate(convs):
        cache.put_summaries(IDENTITY, [c], [gen(i)])
        cache.commit()
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


def test_conversations_differing_only_in_roles_are_each_asked_once(server: FakeOpenAIServer, tmp_path) -> None:
    """Neither single flight nor the cache may merge them: three requests, then none on a rerun."""
    convs = [ASKED, SWAPPED, ECHOED, ASKED.model_copy(update={"chat_id": "asked-again"})]
    counts = SummaryCounts()
    first = summarise_conversations(convs, models(server)[0], None, cache=SummaryCache(tmp_path), counts=counts)
    assert server.count("chat") == 3
    assert (counts.summaries.requested, counts.summaries.deduplicated, counts.summaries.cache_hits) == (3, 1, 0)
    assert first[3].summary == first[0].summary
    server.reset()
    again = SummaryCounts()
    summarise_conversations(convs, models(server)[0], None, cache=SummaryCache(tmp_path), counts=again)
    assert server.count("chat") == 0 and again.summaries.cache_hits == 4


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


CHILD = """
import sys
from kura_dagster.checkpoints.summary_cache import SummaryCache
from kura_dagster.pipeline.models.openai import OpenAIConfig, OpenAISummaryModel
from kura_dagster.pipeline.summarise import summarise_conversations
from kura_dagster_tests.fake_openai import fake_conversations

model = OpenAISummaryModel(OpenAIConfig(model="fake-model", base_url=sys.argv[1], max_concurrency=4))
summarise_conversations(fake_conversations(int(sys.argv[3])), model, None, cache=SummaryCache(sys.argv[2]),
                        batch_size=32)
"""


def test_kill_9_mid_summaries_repeats_only_the_requests_in_flight(server: FakeOpenAIServer, tmp_path) -> None:
    """Concurrency 4, 50 ms answers, compaction every 32 answers: a batch-wise cache would repeat up to 32
    answers after a kill -9; the journal keeps every answer that arrived."""
    n, concurrency, delay = 200, 4, 0.05
    convs = fake_conversations(n)
    identity = models(server)[0].identity
    server.set_delay(delay)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.Popen([sys.executable, "-c", CHILD, server.url, str(tmp_path), str(n)], cwd=root,
                            env={**os.environ, "PYTHONPATH": root}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, "no answer was saved"
            if sum(s is not None for s in SummaryCache(tmp_path).get_summaries(identity, convs)) >= 45:
                break  # past a compaction (32) and well into the next batch
            time.sleep(0.02)
        proc.kill()  # SIGKILL
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    deadline = time.monotonic() + 60  # requests in flight at the kill are answered (and counted) before we count
    while server.state.in_flight and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.state.in_flight == 0
    sent_before = server.count("chat")
    saved = sum(s is not None for s in SummaryCache(tmp_path).get_summaries(identity, convs))
    assert 45 <= saved < n
    server.reset()
    server.set_delay(0.0)
    out = summarise_conversations(convs, models(server)[0], None, cache=SummaryCache(tmp_path), batch_size=32)
    repeated = sent_before + server.count("chat") - n
    allowed = concurrency + round(concurrency * 0.2 / delay)  # in flight + the answers of the last ~200 ms
    print(f"kill -9: repeated={repeated} allowed={allowed} saved={saved}")
    assert 0 <= repeated <= allowed, (repeated, sent_before, saved)
    assert server.count("chat") == n - saved  # the rerun asks exactly for what was not saved
    server.reset()
    assert out == summarise_conversations(convs, models(server)[0], None)  # as an uninterrupted run
    assert not any(f.startswith("journal-") for f in journals(tmp_path))  # the dead run's journal was folded


def test_cache_keys_and_the_staleness_hash_agree_on_what_shapes_an_answer() -> None:
    """``base_url`` and ``structured_output`` change how an answer is fetched, not what is asked: neither the
    cache identities nor the staleness hash take them; the model, prompt version and temperature shape both."""
    from kura_dagster.orchestration.resources import KuraPipelineResource
    from kura_dagster.orchestration.versioning import effective_settings

    def both(**kw):
        kura = KuraPipelineResource(**{"llm": "openai:m", "embeddings": "openai:e", **kw})
        ids = (kura.summary_model().identity, kura.naming_model().identity, kura.embedding_model().identity)
        return effective_settings(kura), ids

    settings, ids = both()
    for change in ({"base_url": "http://127.0.0.1:9/v1"}, {"structured_output": "json_object"}):
        assert both(**change) == (settings, ids), change
    for change in ({"temperature": 0.7}, {"llm": "openai:other"}):
        other_settings, other_ids = both(**change)
        assert other_settings != settings and other_ids[:2] != ids[:2], change
