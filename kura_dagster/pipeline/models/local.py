"""Offline default models: no network, no key, deterministic for a given seed.

* ``LocalSummaryModel`` writes an extractive summary from the user's own words, detects natural and
  programming languages, and files the conversation under one of a dozen topics by keywords. Scores that
  nothing here really measures (concern, frustration, assistant errors) stay ``None``.
* ``LocalEmbeddingModel`` hashes words and word pairs (scikit-learn's ``HashingVectorizer``) and projects
  them with a seeded sparse random projection. Every text's embedding depends only on the text and the
  seed, never on the rest of the corpus, so cached summaries stay valid as data grows.
* ``LocalClusterNamingModel`` names a group by its distinctive terms (class-based TF-IDF against the other
  groups), with its most typical request as the example.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

import numpy as np

from kura_dagster.pipeline.models.base import Progress
from kura_dagster.types import Cluster, Conversation, ConversationSummary, GeneratedCluster, GeneratedSummary

_SENTENCE = re.compile(r"(?<=[.!?])\s+")
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]+")

TOPICS: dict[str, tuple[str, ...]] = {
    "software development": ("code", "python", "function", "bug", "error", "javascript", "api", "program",
                             "sql", "database", "compile", "class", "algorithm", "git", "docker", "regex"),
    "mathematics": ("equation", "solve", "integral", "probability", "math", "prime", "derivative", "geometry",
                    "triangle", "sum", "number", "matrix", "calculate", "area"),
    "creative writing": ("story", "poem", "write", "character", "novel", "limerick", "plot", "fiction",
                         "narrative", "haiku", "short", "captivating", "describe"),
    "health and medicine": ("pain", "doctor", "symptom", "medicine", "diet", "health", "treatment", "sleep",
                            "exercise", "pregnancy", "allergy", "diagnosis"),
    "business and marketing": ("marketing", "business", "email", "customer", "startup", "sales", "brand",
                               "pitch", "investor", "product", "headline", "advertisement", "company"),
    "travel": ("trip", "travel", "hotel", "flight", "itinerary", "visit", "destination", "beach", "tour"),
    "cooking and food": ("recipe", "cook", "bake", "ingredient", "dinner", "vegan", "oven", "flour", "meal"),
    "science": ("physics", "chemistry", "biology", "energy", "reaction", "atom", "photosynthesis", "gravity",
                "experiment", "climate", "renewable"),
    "education and learning": ("learn", "study", "exam", "teacher", "student", "lesson", "course", "homework"),
    "law and policy": ("law", "legal", "contract", "court", "rights", "regulation", "policy", "tenant"),
    "personal finance": ("budget", "savings", "loan", "invest", "tax", "mortgage", "retirement", "debt"),
    "language and editing": ("grammar", "translate", "rewrite", "edit", "paragraph", "sentence", "proofread",
                             "pronoun", "spelling"),
    "role play and games": ("pretend", "role", "roleplay", "game", "character", "act", "imagine", "play"),
    "career and productivity": ("resume", "interview", "job", "career", "manager", "productivity", "meeting"),
}

_LANG_STOPWORDS: dict[str, frozenset[str]] = {
    "english": frozenset("the and is to of a in that it you for with this are be what how".split()),
    "spanish": frozenset("el la de que y en los se del las por un una para es con".split()),
    "french": frozenset("le la les de et un une des est pour que dans qui pas avec".split()),
    "german": frozenset("der die das und ist nicht ein eine mit ich zu den von wie".split()),
    "portuguese": frozenset("o os de que e do da em um uma para com não é se".split()),
    "italian": frozenset("il di che e la per un una non sono con del della gli".split()),
}

_CODE_LANGUAGES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("python", re.compile(r"```python|\bdef \w+\(|\bimport \w+|\bprint\(", re.I)),
    ("javascript", re.compile(r"```(?:js|javascript)|\bconst \w+ =|\bfunction \w+\(|console\.log", re.I)),
    ("sql", re.compile(r"```sql|\bSELECT\b.+\bFROM\b", re.S)),
    ("java", re.compile(r"```java\b|public static void main")),
    ("c++", re.compile(r"```(?:cpp|c\+\+)|#include\s*<|std::")),
    ("bash", re.compile(r"```(?:bash|sh)\b|\$ \w+")),
    ("rust", re.compile(r"```rust|\bfn main\(\)")),
    ("html", re.compile(r"```html|<div\b|<html\b", re.I)),
)


def _first_sentence(text: str, max_words: int = 30) -> str:
    text = " ".join(text.split())
    sentence = _SENTENCE.split(text, maxsplit=1)[0] if text else ""
    words = sentence.split()
    if len(words) > max_words:
        sentence = " ".join(words[:max_words]) + "…"
    return sentence.rstrip(" .!?") if not sentence.endswith("…") else sentence


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:] if text[:1].isupper() and not text[1:2].isupper() else text


def detect_languages(text: str) -> list[str]:
    words = [w.lower() for w in _WORD.findall(text[:20_000])]
    found: list[str] = []
    if words:
        scores = {lang: sum(w in stop for w in words) for lang, stop in _LANG_STOPWORDS.items()}
        best = max(scores, key=lambda k: scores[k])
        found.append(best if scores[best] else "english")
    found += [name for name, pattern in _CODE_LANGUAGES if pattern.search(text)]
    return found or ["english"]


def classify_topic(text: str) -> str:
    words = Counter(w.lower() for w in _WORD.findall(text[:20_000]))
    scores = {topic: sum(words[k] for k in keys) for topic, keys in TOPICS.items()}
    best = max(scores, key=lambda k: scores[k])
    return best if scores[best] else "general conversation"


class LocalSummaryModel:
    """Extractive summaries from the user's own words."""

    identity = "local-summary/v1"

    def summarise_one(self, conversation: Conversation) -> GeneratedSummary:
        users = [m.content for m in conversation.messages if m.role == "user"]
        assistants = [m.content for m in conversation.messages if m.role == "assistant"]
        ask = _first_sentence(users[0]) if users else "start a conversation"
        follow = _first_sentence(users[1], 20) if len(users) > 1 else ""
        first = f"The user asked the assistant to {_lower_first(ask)}" if users else "The user sent no message"
        if follow:
            second = f"They followed up asking to {_lower_first(follow)}, and the assistant replied {len(assistants)} times."
        else:
            second = f"The assistant replied {len(assistants)} time{'s' if len(assistants) != 1 else ''}."
        text = "\n".join(users + assistants)
        return GeneratedSummary(
            summary=f"{first.rstrip('.')}. {second}",
            request=f"The user's overall request for the assistant is to {_lower_first(ask)}.",
            topic=classify_topic("\n".join(users)),
            languages=detect_languages(text),
            task=f"The task is to respond to the request: {ask}.",
        )

    def summarise(self, conversations: Sequence[Conversation], progress: Progress | None = None) -> list[GeneratedSummary]:
        out = []
        total = len(conversations)
        for i, conversation in enumerate(conversations, start=1):
            out.append(self.summarise_one(conversation))
            if progress is not None and (i % 1000 == 0 or i == total):
                progress(i, total)
        return out


class LocalEmbeddingModel:
    """Hashed word and word-pair counts, sublinear-scaled, randomly projected to ``dims`` dimensions."""

    n_features = 2**20

    def __init__(self, dims: int = 256, seed: int = 0) -> None:
        from sklearn.feature_extraction.text import HashingVectorizer
        from sklearn.random_projection import SparseRandomProjection
        from scipy import sparse

        self.dims, self.seed = dims, seed
        self.identity = f"local-hash-embedding/v1/dims={dims}/seed={seed}"
        self._vectorizer = HashingVectorizer(
            n_features=self.n_features, alternate_sign=False, norm=None, stop_words="english",
            ngram_range=(1, 2), token_pattern=r"(?u)\b[a-zA-Z][a-zA-Z0-9_]+\b",
        )
        self._projection = SparseRandomProjection(n_components=dims, dense_output=True, random_state=seed)
        self._projection.fit(sparse.csr_matrix((1, self.n_features), dtype=np.float32))

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not len(texts):
            return np.zeros((0, self.dims), dtype=np.float32)
        counts = self._vectorizer.transform(texts).astype(np.float32)
        counts.data = 1.0 + np.log(counts.data)
        out = np.asarray(self._projection.transform(counts), dtype=np.float32)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        norms[norms == 0] = 1.0
        return out / norms


def _distinctive_terms(docs: Sequence[str], top: int = 3, seed: int = 0) -> list[list[str]]:
    """Class-based TF-IDF: the terms that set each document (a whole group's text) apart from the others."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    vec = TfidfVectorizer(stop_words=sorted(_NAMING_STOPWORDS), token_pattern=r"(?u)\b[a-z][a-z0-9]{2,}\b",
                          sublinear_tf=True, lowercase=True, max_df=0.9 if len(docs) > 3 else 1.0)
    try:
        matrix = vec.fit_transform(docs).tocsr()
    except ValueError:  # every word was a stop word
        return [["general", "user", "requests"] for _ in docs]
    vocab = np.asarray(vec.get_feature_names_out())
    out = []
    for i in range(matrix.shape[0]):
        row = matrix.getrow(i)
        order = np.lexsort((vocab[row.indices], -row.data))
        terms = [str(t) for t in vocab[row.indices[order]][:top]]
        terms += ["general", "user", "requests"][: top - len(terms)]
        out.append(terms)
    return out


_NAMING_STOPWORDS = frozenset(
    __import__("sklearn.feature_extraction.text", fromlist=["ENGLISH_STOP_WORDS"]).ENGLISH_STOP_WORDS
) | {"user", "users", "assistant", "asked", "replied", "times", "time", "request", "requests", "overall",
     "followed", "asking", "task", "respond", "help", "want", "like", "need", "use", "make", "using",
     "general", "conversation", "conversations", "clusters", "cluster", "including", "didn", "doesn", "don",
     "isn", "wasn", "aren", "won", "wouldn", "couldn", "shouldn", "haven", "hasn", "material", "group",
     "brings", "covering", "following", "previous", "response", "answer", "question", "questions"}

_VERBS = ("write", "compose", "explain", "solve", "describe", "create", "draft", "edit", "rewrite", "help",
          "suggest", "summarize", "translate", "calculate", "design", "generate", "plan", "analyze",
          "compare", "implement", "debug", "imagine", "pretend", "evaluate", "identify", "list", "provide")


def _main_verb(texts: Sequence[str]) -> str:
    counts = Counter()
    for text in texts:
        for word in _WORD.findall(text.lower())[:40]:
            if word in _VERBS:
                counts[word] += 1
                break
    return counts.most_common(1)[0][0] if counts else "help with"


def _join(terms: Sequence[str]) -> str:
    return f"{', '.join(terms[:-1])} and {terms[-1]}" if len(terms) > 1 else terms[0]


class LocalClusterNamingModel:
    """Names groups by their distinctive terms, with the most common request verb."""

    identity = "local-cluster-naming/v1"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def _name(self, terms: list[str], verb: str, example: str, n: int, kind: str, extra: str) -> GeneratedCluster:
        slug = "_".join(re.sub(r"[^a-z0-9]", "", t) or "topic" for t in terms[:3])
        name = f"{verb.capitalize()} {_join(terms)}"
        example = example if len(example) <= 140 else example[:139] + "…"
        description = (
            f"The {n} {kind} in this group asked the assistant to {verb} material about {_join(terms)}, "
            f"for example: \"{example}\". {extra}"
        )
        return GeneratedCluster(name=name, summary=description, slug=slug)

    def name_clusters(self, groups: Sequence[Sequence[ConversationSummary]]) -> list[GeneratedCluster]:
        docs = [" ".join(f"{s.request or ''} {s.summary}" for s in g) for g in groups]
        all_terms = _distinctive_terms(docs, seed=self.seed)
        out = []
        for group, terms in zip(groups, all_terms):
            requests = [s.request or s.summary for s in group]
            example = min(requests, key=lambda r: (len(r), r)) if requests else ""
            example = re.sub(r"^The user's overall request for the assistant is to ", "", example).rstrip(".")
            topics = Counter(s.topic for s in group if s.topic)
            langs = Counter(lang for s in group for lang in (s.languages or []))
            extra = (
                f"Most were about {topics.most_common(1)[0][0] if topics else 'general topics'} and written in "
                f"{langs.most_common(1)[0][0] if langs else 'english'}."
            )
            out.append(self._name(terms, _main_verb(requests), example, len(group), "conversations", extra))
        return out

    def name_meta_clusters(self, groups: Sequence[Sequence[Cluster]]) -> list[GeneratedCluster]:
        docs = [" ".join(f"{c.name} {c.slug.replace('_', ' ')} {c.description}" for c in g) for g in groups]
        all_terms = _distinctive_terms(docs, seed=self.seed)
        out = []
        for group, terms in zip(groups, all_terms):
            biggest = max(group, key=lambda c: (len(c.chat_ids), c.name))
            n_chats = len({cid for c in group for cid in c.chat_ids})
            extra = f"It brings together {len(group)} clusters covering {n_chats} conversations."
            verbs = [c.name for c in group]
            out.append(self._name(terms, _main_verb(verbs), biggest.name, len(group), "clusters", extra))
        return out
