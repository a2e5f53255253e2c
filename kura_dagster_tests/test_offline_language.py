"""The offline models' language on corpora of four real-world shapes (issue 18 items 2 and 4).

The corpora (``quality_corpora``: templated RAG, long pasted code, six languages, "You are …" role-play) use
subjects the package never mentions. Targets: at most 5% of summaries and 2% of base-cluster names with a
first- or second-person word, languages detected by a library, names made of words the members used.
``benchmarks/quality.py`` reports the same shares with AMI/NMI/ARI beside a TF-IDF baseline.
"""

from __future__ import annotations

import re

import pytest

from kura_dagster_tests.quality_corpora import CORPORA
from kura_dagster_tests.test_templated_quality import run_offline

# written here, independently of the package's own list
PERSON = re.compile(r"(?<![\w'])(?:I|I'm|I've|I'd|me|my|mine|myself|we|our|us|you|you're|your|yours|yourself)"
                    r"(?![\w'])", re.I)


@pytest.fixture(scope="module", params=sorted(CORPORA))
def run(request: pytest.FixtureRequest):
    conversations, labels = CORPORA[request.param]()
    out = run_offline(conversations)
    return request.param, conversations, labels, out.summaries, out.clusters, out.meta


def test_summaries_and_names_speak_of_the_user_in_the_third_person(run) -> None:
    name, _, _, summaries, clusters, meta = run
    with_person = [s.summary for s in summaries if PERSON.search(s.summary)]
    assert len(with_person) <= 0.05 * len(summaries), (name, with_person[:3])
    names = [c.name for c in clusters if PERSON.search(c.name)]
    assert len(names) <= 0.02 * len(clusters), (name, names[:3])
    for s in summaries:
        assert "assistant to you" not in s.summary.lower() and "to i " not in s.summary.lower(), s.summary
    assert not [c.name for c in meta if PERSON.search(c.name)]


def test_base_names_use_the_members_words(run) -> None:
    """Each name's terms come from its own members' user messages (case and spacing aside)."""
    _, conversations, _, _, clusters, _ = run
    text = {c.chat_id: " ".join(" ".join(m.content.split()) for m in c.messages if m.role == "user").lower()
            for c in conversations}
    for c in clusters:
        members = " ".join(text[cid] for cid in c.chat_ids)
        for term in re.split(r", | and ", c.name.lower()):
            assert term in members, (c.name, members[:200])


def test_role_play_prompts_are_told_by_their_persona(run) -> None:
    name, conversations, _, summaries, _, _ = run
    if name != "roleplay":
        pytest.skip("role-play corpus only")
    # "You are a weathered lighthouse keeper …": the persona's words are in the summary, the "You are" is not
    for conv, s in zip(conversations, summaries):
        persona = conv.messages[0].content.split(". ")[0]
        assert persona.startswith("You are ") and s.summary.startswith("The user asked about "), s.summary
        long_words = {w.lower() for w in re.findall(r"[A-Za-z-]{6,}", persona)}
        assert long_words & set(re.findall(r"[a-z-]{6,}", s.summary.lower())), (persona, s.summary)
        assert "you are" not in s.summary.lower()


def test_languages_are_detected(run) -> None:
    name, _, labels, summaries, _, _ = run
    if name != "multilingual":
        pytest.skip("multilingual corpus only")
    codes = {"en": "english", "es": "spanish", "fr": "french", "de": "german", "pt": "portuguese", "it": "italian"}
    right = sum(s.languages[0] == codes[label[-3:-1]] for s, label in zip(summaries, labels))
    assert right >= 0.95 * len(summaries)
