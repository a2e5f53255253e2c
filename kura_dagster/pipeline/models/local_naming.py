"""The offline cluster-naming model: names are topic phrases chosen against the rest of the corpus.

* **Base clusters.** Each member's summary gives its key phrases (runs of words between stop words, so never
  "I", "you" or "my"); each phrase also counts its shorter runs ("travel blog post" -> "blog post"). The
  cluster's terms are scored by class-based TF-IDF (c-TF-IDF, as BERTopic does) against the other clusters
  of the same call, and the best terms that share no word with a better one (a simple maximal-marginal-
  relevance choice) make the name ("Tubeless tyre sealant"), the description and the slug.
* **Meta clusters.** The same over the children's names and descriptions, against the sibling groups, with
  each term weighted by the share of children that mention it: a parent is named by what its children
  share. When no term is shared by children holding 60% of the conversations the name says so with the two
  best terms ("A and B").
* A parent of a single child takes the child's name (and slug) when no sibling opens the same way.
* Names are unique among the clusters of one call, and siblings never open with the same three words.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from collections.abc import Sequence

from kura_dagster.pipeline.models.local_text import (
    ascii_words,
    class_tfidf,
    diverse_top,
    join_phrases,
    phrases,
    stop_words,
)
from kura_dagster.types import Cluster, ConversationSummary, GeneratedCluster

FRAME_WORDS = frozenset("""
    user user's users assistant assistant's asked asking ask overall request requests task help respond
    followed follow ups conversation conversations mostly cluster clusters related cover covers covered together
    short message clear sent replied times once twice english
    explain write tell give show make create describe provide suggest generate say know find get try trying
    use work works working way ways thing things good best better new come came going go really thanks thank
""".split())
"""Words of the frames the offline models write around the content ("The user's overall request for the
assistant is to help with …", "Conversations about …"), and the generic verbs and words of any request to an
assistant ("explain", "write", "best way"): never part of a topic."""
MAX_NGRAM = 4
"""The longest term scored (a phrase's runs of up to this many words)."""
SHARED = 0.6
"""A parent is named by one term when children holding this share of its conversations mention it; else by two."""
MULTIWORD_BONUS = 1.0
"""A term of several words counts this much more ("tyre sealant" over "sealant" unless "sealant" is twice as
distinctive): a phrase names a topic, a lone word is often a verb or an adjective."""


@functools.lru_cache(maxsize=64)
def _stop(language: str) -> frozenset[str]:
    return stop_words(language) | FRAME_WORDS  # (once per language: a union per member cost ~1 s at 100k)


_REQUEST_FRAME = "The user's overall request for the assistant is to "


def _summary_text(s: ConversationSummary) -> str:
    text = s.request or s.summary or ""
    return text[len(_REQUEST_FRAME):] if text.startswith(_REQUEST_FRAME) else text  # (Kura's frame too)


def _terms(text: str, language: str, store: list[str]) -> dict[str, int]:
    """The terms (lower-case keys) of one member's text, each with the index of the first phrase it is in;
    the phrases are appended to ``store`` (for their spellings, see :func:`_spelling`)."""
    found: dict[str, int] = {}
    for k, p in enumerate(phrases(text, _stop(language))):
        store.append(p)
        words = p.lower().split()
        for n in range(1, min(MAX_NGRAM, len(words)) + 1):
            for i in range(len(words) - n + 1):
                found.setdefault(" ".join(words[i:i + n]) if n > 1 else words[i], k)
    return found


_QUOTED_NAMES = re.compile(r"“[^”]*”")
_LANGUAGE_NOTE = re.compile(r"The \d+ conversations? (?:were|was) mostly in [^.]*\.")


def _topic_text(description: str) -> str:
    """What a child cluster is about, from its description (its distinctive terms; the language note and the
    quoted example names, written in sentence case, are left out)."""
    return _LANGUAGE_NOTE.sub("", _QUOTED_NAMES.sub(",", description))


def _spelling(key: str, store: Sequence[str]) -> str:
    """The spelling of ``key`` most of a cluster's phrases use; lower case when they differ only in a
    sentence's first capital."""
    n = key.count(" ") + 1
    forms: Counter[str] = Counter()
    for p in store:
        if key in p.lower():
            words = p.split()
            lowered = [w.lower() for w in words]
            for i in range(len(words) - n + 1):
                if " ".join(lowered[i:i + n]) == key:
                    forms[" ".join(words[i:i + n])] += 1
    if not forms:
        return key
    best = sorted(forms.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]
    return key if forms.get(key, 0) * 2 >= forms[best] else best


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def _slug(terms: Sequence[str]) -> str:
    words: list[str] = []
    for t in terms:
        for w in ascii_words(t):
            if w not in words:
                words.append(w)
    words += [w for w in ("general", "topic", "requests") if w not in words]
    return "_".join(words[:3])


def _unique(candidates: Sequence[Sequence[str]], taken: set[str], opening_words: int | None = None) -> list[str]:
    """The first candidate name whose key (or first ``opening_words`` words) is not taken; else the first."""
    for terms in candidates:
        name = join_phrases(list(terms))
        key = " ".join(name.lower().split()[:opening_words]) if opening_words else name.lower()
        if key not in taken:
            taken.add(key)
            return list(terms)
    return list(candidates[0])


class LocalClusterNamingModel:
    """Names clusters by their distinctive topic phrases (c-TF-IDF over key phrases, diverse top terms)."""

    identity = "local-cluster-naming/v4"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed  # kept for the interface: naming is deterministic and needs no randomness

    def name_clusters(self, groups: Sequence[Sequence[ConversationSummary]]) -> list[GeneratedCluster]:
        stores: list[list[str]] = []
        classes: list[Counter] = []
        positions: list[dict[str, float]] = []
        languages: list[Counter] = []
        seen: dict[tuple[str, str], tuple[dict[str, int], list[str]]] = {}
        for group in groups:
            counts: Counter[str] = Counter()
            at: Counter[str] = Counter()
            langs: Counter[str] = Counter()
            store: list[str] = []
            for s in group:
                lang = (s.languages or ["english"])[0]
                langs[lang] += 1
                key = (_summary_text(s), lang)
                if (read := seen.get(key)) is None:  # a text repeated across members is read once
                    read = seen[key] = (_terms(key[0], lang, said := []), said)
                found, said = read
                store += said
                counts.update(found.keys())
                at.update(found)
            stores.append(store)
            classes.append(counts)
            positions.append({t: at[t] / n for t, n in counts.items()})
            languages.append(langs)
        scores = class_tfidf(classes)
        taken: set[str] = set()
        order = sorted(range(len(groups)), key=lambda i: (-len(groups[i]), i))  # big clusters choose first
        named: dict[int, GeneratedCluster] = {}
        for i in order:
            top = diverse_top(scores[i], 6, prefer_multiword=MULTIWORD_BONUS, positions=positions[i])
            shown = [_spelling(t, stores[i]) for t in top]
            if not shown:
                shown = ["short messages"]
            first = shown[:1] if " " in shown[0] or len(shown) == 1 else shown[:2]
            options = [first, *([shown[0], t] for t in shown[1:5])]  # never more than two terms
            terms = _unique(options, taken)
            n = len(groups[i])
            lang = languages[i].most_common(1)[0][0] if languages[i] else "english"
            description = (f"Conversations about {join_phrases(shown[:3])}. "
                           f"The {n} conversation{'s were' if n != 1 else ' was'} mostly in {lang.capitalize()}.")
            named[i] = GeneratedCluster(name=_capital(join_phrases(terms)), summary=description,
                                        slug=_slug(shown))
        return [named[i] for i in range(len(groups))]

    def name_meta_clusters(self, groups: Sequence[Sequence[Cluster]]) -> list[GeneratedCluster]:
        stores: list[list[str]] = []
        classes: list[Counter] = []
        coverage: list[dict[str, float]] = []
        for group in groups:
            counts: Counter[str] = Counter()
            weight: Counter[str] = Counter()
            size = sum(max(len(c.chat_ids), 1) for c in group)
            store: list[str] = []
            stores.append(store)
            for c in group:
                found = _terms(_topic_text(c.description), "english", store)
                counts.update(found.keys())
                for t in found:
                    weight[t] += max(len(c.chat_ids), 1)
            classes.append(counts)
            coverage.append({t: w / size for t, w in weight.items()})
        scores = class_tfidf(classes)
        taken: set[str] = set()
        named: dict[int, GeneratedCluster] = {}
        order = sorted(range(len(groups)), key=lambda i: (-sum(len(c.chat_ids) for c in groups[i]), i))
        for i in order:
            shared = {t: s * coverage[i].get(t, 0.0) for t, s in scores[i].items()}
            top = diverse_top(shared, 6, prefer_multiword=MULTIWORD_BONUS)
            shown = [_spelling(t, stores[i]) for t in top] or ["short messages"]
            lead = shown[:1] if coverage[i].get(top[0] if top else "", 0.0) >= SHARED or len(shown) == 1 else shown[:2]
            options = [lead, *([t] for t in shown[1:4]), *([shown[0], t] for t in shown[2:5])]
            group = groups[i]
            if len(group) == 1:  # one child: its own name says what the parent holds
                options = [[group[0].name[:1].lower() + group[0].name[1:]], *options]
            terms = _unique(options, taken, opening_words=3)
            n_chats = len({cid for c in group for cid in c.chat_ids})
            biggest = sorted(group, key=lambda c: (-len(c.chat_ids), c.name))[:2]
            examples = " and ".join(f"“{c.name}”" for c in biggest)
            kids = f"{len(group)} related clusters" if len(group) != 1 else "One cluster"
            description = (f"{kids} about {join_phrases(shown[:3])}, such as {examples}. "
                           f"Together they cover {n_chats} conversation{'s' if n_chats != 1 else ''}.")
            own = len(group) == 1 and _capital(join_phrases(terms)) == group[0].name
            named[i] = GeneratedCluster(name=_capital(join_phrases(terms)), summary=description,
                                        slug=group[0].slug if own else _slug(shown))
        return [named[i] for i in range(len(groups))]
