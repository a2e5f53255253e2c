"""The offline embedding (TF-IDF + LSA fitted once and stored pickle-free), the meta clusters formed in its
space, and the ``sentence-transformers:`` backend (issue 18, items 1, 3 and 5)."""

from __future__ import annotations

import json
import math
import pickle
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from kura_dagster.checkpoints.artifacts import (
    ARTIFACTS_DIR,
    ArtifactCorruptError,
    FittedState,
    load_state,
    save_state,
)
from kura_dagster.orchestration.resources import KuraPipelineResource, fit_local_embedding, refit_local_embedding
from kura_dagster.pipeline import PipelineSettings, demo_conversations, generate_base_clusters, summarise_conversations
from kura_dagster.pipeline.meta_cluster import balance, cluster_centroids, reduce_clusters
from kura_dagster.pipeline.models.local import LocalClusterNamingModel, LocalSummaryModel
from kura_dagster.pipeline.models.local_embedding import (
    ARTIFACT_NAME,
    USER_CHARS,
    LocalEmbeddingModel,
    conversation_text,
)
from kura_dagster.types import Conversation, Message

BERLIN = timezone(timedelta(hours=1))


def conv(chat_id: str, *turns: str) -> Conversation:
    at = datetime(2026, 3, 1, 9, 30, tzinfo=BERLIN)
    roles = ["user", "assistant"] * len(turns)
    return Conversation(chat_id=chat_id, created_at=at, metadata={},
                        messages=[Message(created_at=at, role=r, content=t) for r, t in zip(roles, turns)])


# --- what is embedded -----------------------------------------------------------------------------------


def test_the_text_is_the_user_turns_and_a_short_request_gets_the_replies_start() -> None:
    long_ask = "How should I index a PostgreSQL table that is queried by customer and by date range? " * 3
    c = conv("a", long_ask, "Use a composite B-tree index on (customer_id, created_at).", "And for text search?")
    text = conversation_text(c)
    assert text == long_ask.strip() + "\nAnd for text search?"  # enough user text: replies are left out
    short = conv("b", "why?", "Because the sky scatters blue light more than red light, by Rayleigh scattering.")
    text = conversation_text(short)
    assert text.startswith("why?\nBecause the sky scatters blue light")
    pasted = conv("c", "x" * 50_000, "ok", "Now explain the stack trace above please")
    text = conversation_text(pasted)
    assert len(text) <= USER_CHARS + 1 and text.endswith("Now explain the stack trace above please")


PREAMBLE = "You are the help desk of a garden shop. Answer only from the passages below."
PASSAGES = ["Roses need six hours of sun.", "Water tomatoes at the base in the morning.", "Compost feeds the soil."]
QUESTIONS = ["when should I prune an apple tree", "How deep do I plant tulip bulbs?", "why are my basil leaves yellow",
             "Can lavender survive a frost?", "what eats holes in hosta leaves", "How often to feed lemon trees?"]


def templated(i: int, question: str, passage: str = "") -> str:
    """A retrieval prompt: a fixed preamble and passages the corpus repeats around the user's question."""
    docs = "\n".join([*PASSAGES, passage] if passage else PASSAGES)
    return f"{PREAMBLE}\n\nPassages:\n{docs}\n\nQuestion: {question}\nAnswer:"


def test_the_corpus_template_is_left_out_and_the_request_outweighs_the_rest(tmp_path: Path) -> None:
    corpus = [conv(f"t{i}", templated(i, q)) for i, q in enumerate(QUESTIONS * 3)]
    unique = "My greenhouse in Oslo stays at 4 degrees overnight."
    corpus.append(conv("extra", templated(99, "Which vegetables grow in winter?", unique)))
    model, how = fit_local_embedding(str(tmp_path), corpus, dims=8)
    assert how == "fitted"
    # every line the corpus repeats (preamble, passages, labels) is gone; the question after the label stays
    assert model.conversation_text(corpus[1]) == "How deep do I plant tulip bulbs?"
    assert conversation_text(corpus[1]) != "How deep do I plant tulip bulbs?"  # (without the corpus's template)
    # context that is the user's own (not template) stays, and the request is weighted above it
    q = "Which vegetables grow in winter?"
    assert model.conversation_text(corpus[-1]) == f"{q}\n{q}\n{unique}\n{q}"
    # a later run loads the stored template with the vocabulary and reads new conversations the same way
    later, how = fit_local_embedding(str(tmp_path), corpus[:2], dims=8)
    assert how == "loaded" and later.conversation_text(corpus[-1]) == model.conversation_text(corpus[-1])
    # the stored template is digests: no line of it is kept as text
    stored = (tmp_path / ARTIFACTS_DIR / ARTIFACT_NAME / later.state.version / "params.json").read_text()
    assert "garden shop" not in stored and "Roses" not in stored and "tomatoes" not in stored
    assert json.loads(stored)["params"]["template"]["heads"] == ["question"]


def test_embeddings_of_templated_conversations_do_not_change_when_a_new_partition_arrives(tmp_path: Path) -> None:
    day1 = [conv(f"a{i}", templated(i, q)) for i, q in enumerate(QUESTIONS * 2)]
    day2 = [conv(f"b{i}", f"Preface line {i}\n" + templated(i, q.upper())) for i, q in enumerate(QUESTIONS)]
    model1, _ = fit_local_embedding(str(tmp_path), day1, dims=8)
    before = model1.embed([model1.conversation_text(c) for c in day1])
    model2, how = fit_local_embedding(str(tmp_path), day2, dims=8)  # a new process on the next day
    assert how == "loaded"
    model2.embed([model2.conversation_text(c) for c in day2])
    after = model2.embed([model2.conversation_text(c) for c in day1])
    assert np.array_equal(after, before)


# --- stable across partitions, stored without pickle ----------------------------------------------------


def test_existing_embeddings_do_not_change_when_a_new_partition_arrives(tmp_path: Path) -> None:
    day1, day2 = demo_conversations(120, seed=1), demo_conversations(80, seed=2)
    model1, how1 = fit_local_embedding(str(tmp_path), day1, dims=32)
    before = summarise_conversations(day1, LocalSummaryModel(), model1)
    # the next day's run (a new process: a fresh model) finds the stored fit and embeds its own partition with it
    model2, how2 = fit_local_embedding(str(tmp_path), day2, dims=32)
    assert (how1, how2) == ("fitted", "loaded") and model2.identity == model1.identity
    summarise_conversations(day2, LocalSummaryModel(), model2)
    after = summarise_conversations(day1, LocalSummaryModel(), model2)  # a rerun of day 1
    assert [s.embedding for s in after] == [s.embedding for s in before]
    # what a fit on day 2 alone would give differs: the stored fit, not the day's data, decides the space
    fresh = LocalEmbeddingModel(dims=32)
    fresh.fit([fresh.conversation_text(c) for c in day2])
    assert fresh.identity != model1.identity
    x = np.array([s.embedding for s in before], dtype=np.float32)
    assert x.shape == (120, 32) and np.allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)


def test_refit_is_a_new_version_and_other_settings_replace_the_fit(tmp_path: Path) -> None:
    day1, day2 = demo_conversations(60, seed=1), demo_conversations(60, seed=2)
    first, _ = fit_local_embedding(str(tmp_path), day1, dims=16)
    version = refit_local_embedding(str(tmp_path), day2, dims=16)
    assert version != first.state.version and load_state(str(tmp_path), ARTIFACT_NAME).version == version
    other, how = fit_local_embedding(str(tmp_path), day1, dims=24)
    assert how == "replaced" and other.embed(["a question about dinner recipes"]).shape == (1, 24)
    resource = KuraPipelineResource(checkpoint_dir=str(tmp_path), embedding_dims=24)
    assert resource.embedding_model().identity == other.identity  # later stages read the stored fit


def test_one_conversations_rare_tokens_never_enter_the_vocabulary(tmp_path: Path) -> None:
    convs = [conv(f"c{i}", f"How do I bake sourdough bread at home, attempt {i}?") for i in range(6)]
    convs.append(conv("secret", "My colleague zanzibarquux wrote a recipe for bread, how do I bake it?"))
    model, _ = fit_local_embedding(str(tmp_path), convs, dims=4)
    vocabulary = set(model.state.params["vocabulary"])
    assert {"bake", "bread", "sourdough"} <= vocabulary and "zanzibarquux" not in vocabulary
    assert "colleague" not in vocabulary  # (also used by one conversation only)


def test_the_artifact_is_arrays_and_json_and_loads_without_pickle(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    model, _ = fit_local_embedding(str(tmp_path), demo_conversations(50, seed=4), dims=8)
    root = tmp_path / ARTIFACTS_DIR / ARTIFACT_NAME
    pointer = json.loads((root / "current.json").read_text())
    assert sorted(pointer["files"]) == ["components.npy", "idf.npy", "params.json", "template_counts.npy",
                                        "template_digests.npy"]
    for name in ("components", "idf"):
        arr = np.load(root / pointer["version"] / f"{name}.npy", allow_pickle=False)
        assert arr.dtype == np.float32
    assert json.loads((root / pointer["version"] / "params.json").read_text())["params"]["vocabulary"]

    def no_pickle(*_a, **_k):
        raise AssertionError("pickle used")

    monkeypatch.setattr(pickle, "loads", no_pickle)
    monkeypatch.setattr(pickle, "load", no_pickle)
    loaded = load_state(str(tmp_path), ARTIFACT_NAME)
    texts = ["how do I cook pasta", "a poem about the sea"]
    assert np.array_equal(LocalEmbeddingModel(dims=8, state=loaded).embed(texts), model.embed(texts))
    with pytest.raises(TypeError, match="not objects"):
        save_state(str(tmp_path), "bad", FittedState(kind="x", params={}, arrays={"a": np.array([{}], dtype=object)}))


def test_a_damaged_artifact_is_a_clear_error(tmp_path: Path) -> None:
    fit_local_embedding(str(tmp_path), demo_conversations(40, seed=5), dims=8)
    root = tmp_path / ARTIFACTS_DIR / ARTIFACT_NAME
    version = json.loads((root / "current.json").read_text())["version"]
    components = root / version / "components.npy"
    data = bytearray(components.read_bytes())
    data[-3] ^= 0xFF
    components.write_bytes(bytes(data))
    with pytest.raises(ArtifactCorruptError, match=r"components\.npy: checksum mismatch"):
        load_state(str(tmp_path), ARTIFACT_NAME)
    components.unlink()
    with pytest.raises(ArtifactCorruptError, match=r"components\.npy: missing"):
        load_state(str(tmp_path), ARTIFACT_NAME)
    (root / "current.json").write_text("{not json")
    with pytest.raises(ArtifactCorruptError, match=r"current\.json: not a valid artifact pointer"):
        load_state(str(tmp_path), ARTIFACT_NAME)


def test_the_artifact_lives_on_fsspec_urls() -> None:
    url = "memory://kura-h6a-artifacts/run"
    model, how = fit_local_embedding(url, demo_conversations(40, seed=6), dims=8)
    again, how2 = fit_local_embedding(url, demo_conversations(10, seed=7), dims=8)
    assert (how, how2) == ("fitted", "loaded") and again.identity == model.identity


# --- meta clusters in the same space ----------------------------------------------------------------------


def test_balance_splits_a_group_far_larger_than_its_siblings() -> None:
    # six points: one group of four heavy ones (two far-apart pairs) and two light singletons
    x = np.array([[1, 0], [0.99, 0.1], [0, 1], [0.1, 0.99], [-1, 0], [0, -1]], dtype=np.float32)
    w = np.array([30, 30, 30, 30, 5, 5], dtype=np.float64)
    groups = balance([[0, 1, 2, 3], [4], [5]], x, w, k=3, seed=0)
    # cap = 2.5 * 130 / 3 = 108: the 120-heavy group is split along its two pairs; then 4 groups > k = 3, and of
    # the merges under the cap the closest pair is the two singletons (cosine 0; each pair with a singleton: < 0)
    assert sorted(map(sorted, groups)) == [[0, 1], [2, 3], [4, 5]]


def test_no_root_swallows_a_mixed_corpus_and_roots_form_in_the_base_space() -> None:
    convs = demo_conversations(600, seed=9)
    settings = PipelineSettings(embedding_dims=64)
    model = LocalEmbeddingModel(dims=64)
    summaries = summarise_conversations(convs, LocalSummaryModel(), model)
    namer = LocalClusterNamingModel()
    base = generate_base_clusters(summaries, namer, settings)
    centroids = cluster_centroids(base, [s.chat_id for s in summaries],
                                  np.array([s.embedding for s in summaries], dtype=np.float32))
    meta = reduce_clusters(base, namer, None, settings, centroids=centroids)
    roots = [c for c in meta if c.parent_id is None]
    assert 2 <= len(roots) <= settings.max_clusters
    assert max(len(r.chat_ids) for r in roots) <= 0.35 * len(convs)
    # each root's vector is close to its members': base clusters of one topic mostly share a root
    topic = {c.chat_id: c.metadata["demo_topic"] for c in convs}
    root_of = {cid: r.id for r in roots for cid in r.chat_ids}
    per_topic = {}
    for cid, t in topic.items():
        per_topic.setdefault(t, []).append(root_of[cid])
    majority = sum(max(rs.count(r) for r in set(rs)) for rs in per_topic.values()) / len(convs)
    assert majority >= 0.7
    assert math.isclose(sum(len(r.chat_ids) for r in roots), len(convs))


# --- sentence-transformers: a tiny static model built here ------------------------------------------------


def test_sentence_transformers_backend_runs_a_local_static_model(tmp_path: Path) -> None:
    pytest.importorskip("model2vec")
    from model2vec import StaticModel
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.normalizers import Lowercase
    from tokenizers.pre_tokenizers import Whitespace

    from kura_dagster.checkpoints.summary_cache import SummaryCache
    from kura_dagster.pipeline.models.cached import CachedEmbeddingModel

    vocab = {"[UNK]": 0, "[PAD]": 1, "python": 2, "code": 3, "cake": 4, "bake": 5}
    tokenizer = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer, tokenizer.normalizer = Whitespace(), Lowercase()
    vectors = np.array([[0, 0, 0], [0, 0, 0], [3, 0, 4], [0, 1, 0], [1, 1, 0], [0, 0, 2]], dtype=np.float32)
    StaticModel(vectors=vectors, tokenizer=tokenizer, normalize=True).save_pretrained(str(tmp_path / "tiny"))

    resource = KuraPipelineResource(embeddings=f"sentence-transformers:{tmp_path / 'tiny'}",
                                    checkpoint_dir=str(tmp_path / "ckpt"), embedding_batch_size=2)
    inner = resource.embedding_model()
    assert inner.runtime == "model2vec" and inner.identity.startswith("sentence-transformers:tiny@")
    cached = CachedEmbeddingModel(inner, SummaryCache(str(tmp_path / "ckpt"), summaries=False, embeddings=True))
    out = cached.embed(["python", "Python code", "bake cake", "python"])
    # mean of the token vectors, L2-normalised (by hand): python = (3,0,4)/5; python+code = (3,1,4)/2 ...
    expected = np.array([[0.6, 0, 0.8], np.array([3, 1, 4]) / math.sqrt(26), np.array([1, 1, 2]) / math.sqrt(6),
                         [0.6, 0, 0.8]], dtype=np.float32)
    assert out.dtype == np.float32 and np.allclose(out, expected, atol=1e-5)
    assert cached.counts.requested == 3 and cached.counts.deduplicated == 1
    again = CachedEmbeddingModel(resource.embedding_model(),
                                 SummaryCache(str(tmp_path / "ckpt"), summaries=False, embeddings=True))
    assert np.array_equal(again.embed(["bake cake"]), expected[2:3]) and again.counts.cache_hits == 1


def test_sentence_transformers_needs_its_library_for_a_non_static_model(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "modules.json").write_text(json.dumps([{"type": "sentence_transformers.models.Transformer"}]))
    from kura_dagster.pipeline.models.sentence_transformers import SentenceTransformerEmbeddingModel

    model = SentenceTransformerEmbeddingModel(str(tmp_path / "m"))
    assert model.runtime == "sentence-transformers"
    try:
        import sentence_transformers  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match=r"kura-dagster\[sentence-transformers-torch\]"):
            model.embed(["hello"])


# --- through Dagster: partitions ---------------------------------------------------------------------------


def test_a_new_partition_leaves_the_embeddings_of_earlier_days_alone(tmp_path: Path) -> None:
    import dagster as dg

    from kura_dagster import build_kura_defs
    from kura_dagster.orchestration.partitions import utc_day
    from kura_dagster.types import ConversationSummary

    convs = demo_conversations(160)
    days = sorted({utc_day(c.created_at) for c in convs})
    (tmp_path / "logs.jsonl").write_text("".join(c.model_dump_json() + "\n" for c in convs))
    defs = build_kura_defs("e", conversations=str(tmp_path / "logs.jsonl"), partitions="daily",
                           partition_start=days[0], checkpoint_dir=str(tmp_path / "ck"), embedding_dims=16)
    job = defs.resolve_implicit_global_asset_job_def().get_subset(
        asset_selection={dg.AssetKey(["e", "conversations"]), dg.AssetKey(["e", "summaries"])})
    day_file = tmp_path / "ck" / "summaries" / f"{days[0]}.jsonl"

    def run(day: str) -> str:
        result = job.execute_in_process(instance=instance, partition_key=day)
        assert result.success
        md = next(e.materialization.metadata for e in result.get_asset_materialization_events()
                  if e.asset_key.path[-1] == "summaries")
        return md["embedding_fit"].value

    with dg.instance_for_test() as instance:
        assert run(days[0]) == "fitted"
        before = [s.embedding for s in map(ConversationSummary.model_validate_json, day_file.read_text().splitlines())]
        assert run(days[1]) == "loaded" and run(days[0]) == "loaded"  # a new day, then a rerun of the first
        after = [s.embedding for s in map(ConversationSummary.model_validate_json, day_file.read_text().splitlines())]
    assert before and after == before and len(before[0]) == 16


def test_a_long_paste_is_read_at_its_start_and_end_only() -> None:
    from kura_dagster.pipeline.models import local_text
    from kura_dagster.pipeline.models.local_embedding import conversation_text as text_of
    from kura_dagster.pipeline.models.local_summary import message_candidates

    assert local_text.bounded_message("abcdefgh", 4) == "ab\ngh"
    assert local_text.bounded_message("abcd", 4) == "abcd"
    # a 60,000-character log pasted between the greeting and the question: the question (at the end) is still
    # read, and the middle of the paste (its distinctive token) is never read
    paste = "\n".join(f"worker {i} finished step {i % 7}" for i in range(2_000))
    middle = "zebracornmarker"
    lines = paste.split("\n")
    lines[1_000] = f"worker {middle} finished"
    message = "Hello.\n" + "\n".join(lines) + "\nWhy does the nightly build stop after the linker step?"
    assert len(message) > 4 * local_text.READ_CHARS
    found = [c.text for c in message_candidates(message, None)]
    assert found[-1] == "Why does the nightly build stop after the linker step?"
    assert not any(middle in t for t in found)
    conv = Conversation(chat_id="long", created_at=datetime(2026, 1, 1, tzinfo=timezone.utc), messages=[
        Message(created_at=datetime(2026, 1, 1, tzinfo=timezone.utc), role="user", content=message)], metadata={})
    assert middle not in text_of(conv)
