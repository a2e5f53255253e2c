"""Unit tests for the offline pipeline's building blocks: k-means (direct and two-level), the local summary
model's sentence handling, the cluster-name shaping, and the demo data generator."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from kura_dagster.pipeline import kmeans
from kura_dagster.pipeline.demo_data import TOPICS, demo_conversations
from kura_dagster.pipeline.kmeans import allocate, cluster_labels, distinct_rows
from kura_dagster.pipeline.models.local import (
    _plural,
    _short_name,
    _shorten,
    as_instruction,
    choose_request,
    detect_languages,
    key_sentence,
    message_candidates,
    third_person,
)

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


# --- the local summary model's sentence handling --------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("Hi! Write a haiku about autumn leaves.", "write a haiku about autumn leaves"),
        ("Could you please summarise this article?", "summarise this article"),
        ("How do I reverse a list in Python?", "explain how to reverse a list in Python"),
        ("How does photosynthesis work?", "explain how photosynthesis works"),
        ("Is it safe to use neem oil on basil?", "advise whether it is safe to use neem oil on basil"),
        ("Do I need a lawyer for this?", "advise whether they need a lawyer for this"),
        ("What should I do about tomato plants that are wilting?", "advise on tomato plants that are wilting"),
        ("Any tips for orchids that keep dropping leaves?", "give tips for orchids that keep dropping leaves"),
        ("I need to email my landlord about a broken heater.", "email their landlord about a broken heater"),
        ("My dog keeps barking at night. What should I do?", "help when their dog keeps barking at night"),
        ("I am a nurse. Give me advice on asking for a raise.", "give advice on asking for a raise"),
        ("Translate 'I am hungry' into German.", "translate 'I am hungry' into German"),
    ],
)
def test_requests_become_third_person_instructions(message: str, expected: str) -> None:
    assert as_instruction(key_sentence(message)) == expected


def test_key_sentence_truncates_long_sentences() -> None:
    long = "Write " + " ".join(f"word{i}" for i in range(60)) + "."
    out = key_sentence(long, max_words=30)
    assert out.endswith("…") and len(out.split()) == 30


def test_third_person_leaves_quotes_alone() -> None:
    assert third_person("my plan, \"my words\" and I'm done") == "their plan, \"my words\" and they're done"


def test_detect_languages_finds_natural_and_programming_languages() -> None:
    assert detect_languages("¿Dónde está la estación? Quiero ir con los amigos a la playa.") == ["spanish"]
    assert detect_languages("Here is the fix:\n```python\ndef f(x):\n    return x\n```") == ["english", "python"]
    assert detect_languages("Run SELECT name FROM users; to list them.") == ["english", "sql"]


@pytest.mark.parametrize(
    ("instruction", "expected"),
    [
        ("compose an engaging travel blog post about a recent trip to Hawaii, highlighting culture",
         "Compose an engaging travel blog post about a recent trip"),
        ("explain how to say 'nice to meet you' in Japanese", "Explain how to say 'nice to meet you' in Japanese"),
        ("write write a poem about the sea and the", "Write a poem about the sea"),
        ("edit the following paragraph. It has errors", "Edit the following paragraph, It has errors"),
    ],
)
def test_short_names_are_at_most_ten_words_and_end_cleanly(instruction: str, expected: str) -> None:
    name = _short_name(instruction)
    assert name == expected
    assert len(name.split()) <= 10


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


def test_long_names_end_where_a_clause_ends() -> None:
    assert _short_name("help plan a one-week visit to Hanoi that fits a modest budget and more") == \
        "Help plan a one-week visit to Hanoi"
    assert _short_name("help when their Python script raises a ValueError when they read a CSV file") == \
        "Help when their Python script raises a ValueError"
    # never inside a quotation
    assert _short_name("explain the casual way to say 'the bill, please' in Japanese to a waiter politely") == \
        "Explain the casual way to say 'the bill, please'"


# --- issue 14: real-world requests ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("W&B best practices", "help with W&B best practices"),
        ("experiment tracking", "help with experiment tracking"),
        ("difference between allow and auto in wandb", "explain the difference between allow and auto in wandb"),
        ("Is there a way to group runs by a config value?", "explain how to group runs by a config value"),
        ("What's the best way to log images during training?", "explain the best way to log images during training"),
        ("Can W&B send alerts to Slack?", "explain whether W&B can send alerts to Slack"),
        ("Can the Trainer report metrics to wandb?", "explain whether the Trainer can report metrics to wandb"),
        ("Does it log the model graph?", "advise whether it logs the model graph"),
        ("please help: my sweep agent hangs", "help when their sweep agent hangs"),
        ("need to continue logging to an existing run", "continue logging to an existing run"),
        ("wandb config log hyperparameters", "log hyperparameters in wandb config"),
        ("model registry link a model version", "link a model version in model registry"),
        ("hugging face Trainer run wandb", "help with hugging face Trainer run wandb"),
        ("pytorch learning rate scheduler wandb", "help with pytorch learning rate scheduler wandb"),
        ("runs show as crashed even though they finished", "help with runs show as crashed even though they finished"),
    ],
)
def test_queries_and_questions_become_instructions(message: str, expected: str) -> None:
    assert as_instruction(choose_request(message_candidates(message, None))) == expected


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("Hey team, I'm new to wandb. log images wandb", "log images wandb"),
        ("I have a question about W&B.", "I have a question about W&B."),
        ("Our training runs on SLURM. How do I resume a crashed run?", "How do I resume a crashed run?"),
        ("Edit the following paragraph to correct any errors:\nShe dont like it.",
         "Edit the following paragraph to correct any errors:"),
        ("> quoted error line\nWhy is my run marked as crashed?", "Why is my run marked as crashed?"),
    ],
)
def test_the_request_sentence_is_chosen_over_context_and_material(message: str, expected: str) -> None:
    assert choose_request(message_candidates(message, None)) == expected


def test_names_are_cut_only_where_a_phrase_ends() -> None:
    assert _shorten("imagine you are writing a blog post comparing two popular smartphone models") == \
        ("Imagine you are writing a blog post", True)
    assert _shorten("write a captivating short story beginning with the sentence: The old house") == \
        ("Write a captivating short story", True)
    assert _shorten("help construct a catchy, yet scientifically accurate, headline for an article on energy") == \
        ("Help construct a catchy, yet scientifically accurate, headline", True)
    name, whole = _shorten("summarise these twelve very long unbroken words one two three four five six")
    assert not whole and len(name.split()) <= 10


def test_plurals_for_meta_names() -> None:
    assert [_plural(p) for p in ("blog post", "itinerary", "email", "W&B best practices", "sketch", "PyTorch")] == \
        ["blog posts", "itineraries", "emails", "W&B best practices", "sketches", "PyTorch"]
