"""Unit tests for the offline pipeline's building blocks: k-means (direct and two-level), the local summary
model's sentence handling, the cluster-name shaping, and the demo data generator."""

from __future__ import annotations

import math
import re
from collections import Counter
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from kura_dagster.pipeline import kmeans
from kura_dagster.pipeline.demo_data import TOPICS, demo_conversations
from kura_dagster.pipeline.kmeans import allocate, cluster_labels, distinct_rows
from kura_dagster.pipeline.models.local import (
    LocalClusterNamingModel,
    LocalSummaryModel,
    choose_request,
    code_languages,
    detect_natural_languages,
    has_person_words,
    key_phrases,
    message_candidates,
)
from kura_dagster.pipeline.models.local_text import class_tfidf, diverse_top, phrases, stop_words
from kura_dagster.types import Conversation, ConversationSummary, Message

# --- k-means -------------------------------------------------------------------------------------------


def _assert_dense(labels: np.ndarray) -> None:
    """Labels are 0..m-1, every one used, numbered in order of first appearance."""
    m = labels.max() + 1
    assert set(labels.tolist()) == set(range(m))
    _, first = np.unique(labels, return_index=True)
    assert (np.diff(first) > 0).all()


def test_direct_kmeans_recovers_separated_blobs() -> None:
    x, truth = make_blobs(n_samples=600, centers=12, n_features=8, cluster_std=0.3, center_box=(-20, 20),
                          random_state=3)
    labels = cluster_labels(x, 12, seed=0)
    _assert_dense(labels)
    assert labels.max() + 1 == 12
    assert adjusted_rand_score(truth, labels) > 0.99


def test_two_level_path_on_many_blobs() -> None:
    """k above DIRECT_LIMIT takes the two-level path: still exactly k clusters, still the right ones."""
    k = 400
    assert k > kmeans.DIRECT_LIMIT
    x, truth = make_blobs(n_samples=k * 10, centers=k, n_features=16, cluster_std=0.05, center_box=(-50, 50),
                          random_state=5)
    labels = cluster_labels(x, k, seed=0)
    _assert_dense(labels)
    assert labels.max() + 1 == k
    assert normalized_mutual_info_score(truth, labels) > 0.97
    assert np.array_equal(labels, cluster_labels(x, k, seed=0))


def test_two_level_path_splits_work_into_coarse_groups(monkeypatch: pytest.MonkeyPatch) -> None:
    """The large-k path never runs one k-means with the full k over all points (that would be n*k)."""
    calls: list[tuple[int, int]] = []
    real = kmeans._kmeans

    def spy(x, k, seed, weights=None):
        calls.append((len(x), k))
        return real(x, k, seed, weights)

    monkeypatch.setattr(kmeans, "_kmeans", spy)
    x, _ = make_blobs(n_samples=3000, centers=300, n_features=8, random_state=1)
    labels = cluster_labels(x, 300, seed=0)
    assert labels.max() + 1 == 300
    coarse_k = math.ceil(math.sqrt(300))
    assert calls[0] == (3000, coarse_k)
    assert sum(k for _, k in calls[1:]) == 300
    assert max(n * k for n, k in calls) < 3000 * 300 / 4


def test_identical_rows_share_a_cluster_and_few_distinct_rows_are_each_their_own() -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(size=(5, 4))
    x = base[rng.integers(0, 5, size=200)]
    labels = cluster_labels(x, 20, seed=0)  # 5 distinct rows < k
    assert labels.max() + 1 == 5
    for row in base:
        same = (x == row).all(axis=1)
        assert len(set(labels[same].tolist())) == 1
    # with more distinct rows than k, duplicates still land together
    y = np.vstack([rng.normal(size=(50, 4)), x])
    labels = cluster_labels(y, 10, seed=0)
    for row in base:
        same = (y == row).all(axis=1)
        assert len(set(labels[same].tolist())) == 1


def test_labels_depend_on_seed_only_through_kmeans() -> None:
    x, _ = make_blobs(n_samples=500, centers=30, n_features=6, cluster_std=3.0, random_state=2)
    a, b = cluster_labels(x, 30, seed=0), cluster_labels(x, 30, seed=0)
    assert np.array_equal(a, b)
    assert cluster_labels(np.zeros((0, 3)), 4).shape == (0,)
    assert cluster_labels(x[:1], 4).tolist() == [0]
    assert set(cluster_labels(x, 1).tolist()) == {0}


def test_allocate_is_proportional_bounded_and_exact() -> None:
    shares = allocate(np.array([50.0, 30.0, 20.0]), np.array([50, 30, 20]), 10)
    assert shares.tolist() == [5, 3, 2]
    # every group gets at least one, none more than its cap, and the total is k
    w = np.array([1000.0, 1.0, 1.0, 1.0, 3.0])
    caps = np.array([1000, 1, 1, 1, 3])
    shares = allocate(w, caps, 40)
    assert shares.sum() == 40 and (shares >= 1).all() and (shares <= caps).all()
    # k beyond the capacity is clipped to it
    assert allocate(np.array([2.0, 2.0]), np.array([2, 2]), 10).tolist() == [2, 2]


def test_distinct_rows_matches_numpy_unique() -> None:
    rng = np.random.default_rng(4)
    x = rng.integers(0, 3, size=(300, 3)).astype(np.float64)
    first, inverse, counts = distinct_rows(x)
    assert np.array_equal(x[first][inverse], x)
    assert len(first) == len(np.unique(x, axis=0))
    assert counts.sum() == 300 and (np.diff(first) > 0).all()


# --- the local summary model: key phrases, third person, languages ----------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("How do I reverse a list in Python?", ["reverse", "list", "Python"]),
        ("Compose an engaging travel blog post about a recent trip to Hawaii, highlighting must-see attractions.",
         ["Compose", "engaging travel blog post", "recent trip", "Hawaii", "highlighting must-see attractions"]),
        ("You are a weathered lighthouse keeper. Tell me about your night shift.",
         ["weathered lighthouse keeper", "Tell", "night shift"]),
        ("My C++ build fails: undefined reference to vtable", ["C++ build fails", "undefined reference", "vtable"]),
    ],
)
def test_key_phrases_are_runs_between_stop_words(text: str, expected: list[str]) -> None:
    assert phrases(text, stop_words("english")) == expected


def test_key_phrases_of_other_languages_drop_their_stop_words() -> None:
    assert phrases("Wie bekomme ich einen Rotweinfleck aus einer weißen Tischdecke?", stop_words("german")) == \
        ["bekomme", "Rotweinfleck", "weißen Tischdecke"]
    assert key_phrases(["¿Cómo quito una mancha de vino tinto de un mantel?"], "spanish") == \
        ["quito", "mancha", "vino tinto", "mantel"]


@pytest.mark.parametrize("text", ["I am stuck", "Help me", "fix my code", "you're right", "Can we go?",
                                  "Is this yours?", "I’m here"])
def test_person_words_are_found(text: str) -> None:
    assert has_person_words(text)


@pytest.mark.parametrize("text", ["The user asked about tyre sealant.", "Imports from the US", "Iowa is big"])
def test_third_person_text_has_no_person_words(text: str) -> None:
    assert not has_person_words(text)


def _conversation(*turns: str) -> Conversation:
    at = datetime(2026, 5, 2, 8, 15, tzinfo=timezone(timedelta(hours=9)))
    roles = ["user", "assistant"] * len(turns)
    return Conversation(chat_id="c1", created_at=at, metadata={},
                        messages=[Message(created_at=at, role=r, content=t) for r, t in zip(roles, turns)])


def test_a_plain_request_is_quoted_and_a_personal_one_is_told_by_its_key_phrases() -> None:
    model = LocalSummaryModel()
    plain = model.summarise_one(_conversation("Write a haiku about autumn leaves.", "Leaves fall..."))
    assert plain.summary == "The user asked: “Write a haiku about autumn leaves.” The assistant replied once."
    assert plain.request == "The user's overall request for the assistant is to help with write, haiku and autumn leaves."
    personal = model.summarise_one(_conversation(
        "You are a weathered lighthouse keeper. Tell me about your worst storm.", "It was 1890...",
        "What did you eat that night?", "Hard biscuits."))
    assert personal.summary == ("The user asked about weathered lighthouse keeper, tell and worst storm. "
                                "They followed up about eat and night, and the assistant replied twice.")
    assert not has_person_words(personal.summary + personal.request + personal.task)
    german = model.summarise_one(_conversation("Wie bekomme ich einen Rotweinfleck aus einer weißen Tischdecke?"))
    assert german.languages == ["german"]
    assert german.summary == "The user asked (in German) about bekomme, Rotweinfleck and weißen Tischdecke."
    # the sentence's own capital goes ("Write" -> "write"); a name's stays
    assert key_phrases(["Hawaii trip ideas for June"]) == ["Hawaii trip ideas", "June"]
    assert key_phrases(["Write the story in June"]) == ["write", "story", "June"]


def test_requests_in_other_scripts_are_told_by_their_phrases() -> None:
    model = LocalSummaryModel()
    japanese = model.summarise_one(_conversation("東京の天気はどうですか？明日は雨ですか？"))
    assert japanese.languages == ["japanese"]
    assert japanese.summary == "The user asked (in Japanese) about 東京の天気はどうですか and 明日は雨ですか."
    arabic = model.summarise_one(_conversation("مرحبا، كيف يمكنني تعلم البرمجة بلغة بايثون؟"))
    assert arabic.languages == ["arabic"] and "تعلم البرمجة بلغة بايثون" in arabic.summary
    # a 30,000-character "word" is no phrase
    assert model.summarise_one(_conversation("a" * 30_000)).summary.startswith("The user sent a short message")


def test_detect_natural_and_programming_languages() -> None:
    assert detect_natural_languages(["¿Dónde está la estación? Quiero ir con los amigos a la playa.",
                                     "Where is the station? I want to go to the beach with my friends.",
                                     "Wo ist der Bahnhof? Ich möchte mit meinen Freunden an den Strand.", "1234"]) == \
        ["spanish", "english", "german", "unknown"]
    assert code_languages("Here is the fix:\n```py\ndef f(x):\n    return x\n```\nand\n```sql\nSELECT 1;\n```") == \
        ["python", "sql"]
    assert code_languages("Run SELECT name FROM users; to list them.") == []


# --- demo data ------------------------------------------------------------------------------------------


def test_demo_data_is_deterministic_varied_and_covers_many_topics() -> None:
    convs = demo_conversations()
    assert 200 <= len(convs) <= 1000
    assert [c.model_dump() for c in convs] == [c.model_dump() for c in demo_conversations()]
    assert [c.model_dump() for c in convs] != [c.model_dump() for c in demo_conversations(seed=8)]
    topics = {c.metadata["demo_topic"] for c in convs}
    assert len(topics) >= 12 and topics == set(TOPICS)
    texts = ["\n".join(m.content for m in c.messages) for c in convs]
    assert len(set(texts)) == len(texts), "every demo conversation is different"
    assert len({c.messages[0].content for c in convs}) > 0.95 * len(convs)
    assert len({c.messages[1].content for c in convs}) > 0.9 * len(convs), "assistant answers vary too"
    assert len({c.chat_id for c in convs}) == len(convs)
    assert {len(c.messages) for c in convs} >= {2, 4, 6}
    for c in convs:
        assert [m.role for m in c.messages] == ["user", "assistant"] * (len(c.messages) // 2)
        assert all(a.created_at <= b.created_at for a, b in zip(c.messages, c.messages[1:]))
        assert not re.search(r"\{[a-z]\}", " ".join(m.content for m in c.messages)), "unfilled slot"


def test_demo_generator_scales_to_distinct_texts() -> None:
    convs = demo_conversations(2_000, seed=1)
    texts = {"\n".join(m.content for m in c.messages) for c in convs}
    assert len(texts) > 0.99 * len(convs)


# --- real-world requests: which sentence states the request ------------------------------------------------


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("Hey team, I'm new to this tracker. log images from a notebook", "log images from a notebook"),
        ("I have a question about the tracker.", "I have a question about the tracker."),
        ("Our training runs on a cluster. How do I resume a crashed run?", "How do I resume a crashed run?"),
        ("Edit the following paragraph to correct any errors:\nShe dont like it.",
         "Edit the following paragraph to correct any errors:"),
        ("> quoted error line\nWhy is my run marked as crashed?", "Why is my run marked as crashed?"),
        ("See the notes below.\nWhy does the export hang on large tables?", "Why does the export hang on large tables?"),
        ("[1] (source: wiki/page-12)\nSome retrieved text.\n\nHow long does a glaze firing take?",
         "Some retrieved text."),
    ],
)
def test_the_request_sentence_is_chosen_over_context_and_material(message: str, expected: str) -> None:
    assert choose_request(message_candidates(message, None)) == expected


# --- names: class-based TF-IDF -----------------------------------------------------------------------------


def test_class_tfidf_scores_what_sets_a_class_apart() -> None:
    """Hand-computed: A = (3 + 3) / 2 = 3 terms per class; "tyre" is in both classes (f = 2), the others in one."""
    scores = class_tfidf([Counter({"tyre": 1, "sealant": 2}), Counter({"tyre": 2, "chain": 1})])
    assert scores[0]["sealant"] == pytest.approx(2 / 3 * math.log(1 + 3 / 2))
    assert scores[0]["tyre"] == pytest.approx(1 / 3 * math.log(1 + 3 / 3))
    assert scores[1]["chain"] == pytest.approx(1 / 3 * math.log(1 + 3 / 1))
    # the best terms share no word with a better one; a phrase outranks its own words at equal score
    assert diverse_top({"tubeless tyre": 1.0, "tyre": 1.0, "sealant": 0.9, "tyre sealant": 0.5}, 3) == \
        ["tubeless tyre", "sealant"]


def _summary(chat_id: str, request: str) -> ConversationSummary:
    return ConversationSummary(chat_id=chat_id, summary="s", request=request, languages=["english"], metadata={})


def test_base_names_are_the_distinctive_topic_phrases() -> None:
    groups = [
        [_summary("a1", "The user's overall request for the assistant is to help with tubeless tyre sealant."),
         _summary("a2", "The user's overall request for the assistant is to help with topping up tubeless tyre sealant."),
         _summary("a3", "The user's overall request for the assistant is to help with my tubeless tyre, rim tape.")],
        [_summary("b1", "The user's overall request for the assistant is to help with anchor chain scope."),
         _summary("b2", "The user's overall request for the assistant is to help with anchor chain in strong wind.")],
    ]
    named = LocalClusterNamingModel().name_clusters(groups)
    # "tubeless tyre" is in all three of the first group's requests, "tubeless tyre sealant" in two; "anchor
    # chain" in both of the second's: each is its group's best term, unique to it. The next term sharing no word
    # with it, by hand: the first group has 19 terms, the second 12 (A = 15.5); "rim tape" (1 member, only here):
    # 1/19 * ln(1 + 15.5) * 2 (a phrase) / 1.05 (2nd phrase) = 0.281; "sealant" (2 members, only here):
    # 2/19 * ln(1 + 15.5/2) / (1 + 0.05 * 2/3) = 0.221
    assert [n.name for n in named] == ["Tubeless tyre", "Anchor chain"]
    assert named[0].slug == "tubeless_tyre_rim" and named[1].slug.startswith("anchor_chain_")
    assert named[0].summary.startswith("Conversations about tubeless tyre, rim tape and sealant.")
    assert named[0].summary.endswith("The 3 conversations were mostly in English.")
