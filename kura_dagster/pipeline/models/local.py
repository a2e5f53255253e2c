"""Offline default models: no network, no key, deterministic for a given seed.

* ``LocalSummaryModel`` writes an extractive summary from the user's own words: the sentence that carries
  the request (greetings skipped), rephrased as a third-person instruction ("How do I X?" becomes "explain
  how to X", "my code" becomes "their code"). It detects natural and programming languages and files the
  conversation under one of a dozen topics by keywords. Scores that nothing here really measures (concern,
  frustration, assistant errors) stay ``None``.
* ``LocalEmbeddingModel`` hashes words (scikit-learn's ``HashingVectorizer``, summary boilerplate ignored)
  and projects them with a seeded sparse random projection. Every text's embedding depends only on the
  text and the seed, never on the rest of the corpus, so cached summaries stay valid as data grows.
* ``LocalClusterNamingModel`` names a group after its most typical request, cut to a short imperative
  sentence, and gives it a slug and description from its distinctive terms (class-based TF-IDF against
  the other groups). Meta clusters are named by their children's main verb and distinctive terms.
"""

from __future__ import annotations

import functools
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
                             "sql", "database", "compile", "class", "algorithm", "git", "docker", "regex",
                             "query", "table", "index", "react", "typescript", "component", "css", "html",
                             "app", "script", "traceback", "frontend", "backend"),
    "mathematics": ("equation", "solve", "integral", "probability", "math", "maths", "prime", "derivative",
                    "geometry", "triangle", "sum", "number", "matrix", "calculate", "area", "algebra", "calculus",
                    "statistics", "quadratic", "proof", "eigenvalues", "limit", "volume"),
    "creative writing": ("story", "poem", "write", "character", "novel", "limerick", "plot", "fiction",
                         "narrative", "haiku", "short", "captivating", "describe", "fable", "ending", "rhyme"),
    "health and fitness": ("pain", "doctor", "symptom", "medicine", "diet", "health", "treatment", "sleep",
                           "exercise", "pregnancy", "allergy", "diagnosis", "workout", "training", "routine",
                           "strength", "run", "squat", "fitness", "knees", "stretch"),
    "mental wellbeing": ("stress", "anxiety", "anxious", "lonely", "burnout", "motivation", "grief", "cope",
                         "overthinking", "procrastination", "breathing", "counsellor", "struggling"),
    "business and marketing": ("marketing", "business", "email", "customer", "startup", "sales", "brand",
                               "pitch", "investor", "product", "headline", "advertisement", "company", "client",
                               "supplier", "message", "draft"),
    "travel": ("trip", "travel", "hotel", "flight", "itinerary", "visit", "destination", "beach", "tour",
               "neighbourhood", "sights"),
    "cooking and food": ("recipe", "cook", "bake", "ingredient", "dinner", "vegan", "oven", "flour", "meal",
                         "kitchen", "leftovers", "freeze"),
    "science": ("physics", "chemistry", "biology", "energy", "reaction", "atom", "photosynthesis", "gravity",
                "experiment", "climate", "renewable", "vaccines", "immune", "dna", "tectonics", "rainbows",
                "fusion", "greenhouse", "entanglement", "selection", "sky"),
    "education and learning": ("learn", "study", "exam", "teacher", "student", "lesson", "course", "homework"),
    "law and policy": ("law", "legal", "contract", "court", "rights", "regulation", "policy", "tenant", "landlord",
                       "lawyer", "claim", "employer", "invoice"),
    "personal finance": ("budget", "savings", "loan", "invest", "tax", "mortgage", "retirement", "debt", "income",
                         "salary", "fund", "earn", "credit", "pension"),
    "language and editing": ("grammar", "translate", "rewrite", "edit", "paragraph", "sentence", "proofread",
                             "pronoun", "spelling", "say", "spanish", "french", "german", "japanese", "korean",
                             "mandarin", "italian", "portuguese", "dutch", "turkish", "pronounce", "formally"),
    "role play and games": ("pretend", "role", "roleplay", "game", "character", "act", "imagine", "play"),
    "career and productivity": ("resume", "interview", "job", "career", "manager", "productivity", "meeting",
                                "raise", "portfolio", "mentor", "offer", "promotion", "interviewer"),
    "pets and animals": ("dog", "cat", "puppy", "kitten", "rabbit", "parrot", "hamster", "vet", "pet", "pets",
                         "lead", "barking", "litter"),
    "home and garden": ("plant", "plants", "garden", "soil", "repot", "leaves", "watering", "flowers", "tomato",
                        "seedlings", "fertiliser", "pot", "houseplants", "bugs", "water", "prune", "neem"),
}

_LANG_STOPWORDS: dict[str, frozenset[str]] = {
    "english": frozenset("the and is to of a in that it you for with this are be what how".split()),
    "spanish": frozenset("el la de que y en los se del las por un una para es con".split()),
    "french": frozenset("le la les de et un une des est pour que dans qui pas avec".split()),
    "german": frozenset("der die das und ist nicht ein eine mit ich zu den von wie".split()),
    "portuguese": frozenset("o os de que e do da em um uma para com não é se".split()),
    "italian": frozenset("il di che e la per un una non sono con del della gli".split()),
}

_CODE_LANGUAGES = re.compile("|".join((
    r"(?P<python>(?i:```python|\bdef \w+\(|\bimport \w+|\bprint\())",
    r"(?P<javascript>(?i:```(?:js|javascript)|\bconst \w+ =|\bfunction \w+\(|console\.log))",
    r"(?P<sql>```sql|\bSELECT\b[^;]*?\bFROM\b)",
    r"(?P<java>```java\b|public static void main)",
    r"(?P<cpp>```(?:cpp|c\+\+)|#include\s*<|std::)",
    r"(?P<bash>```(?:bash|sh)\b|\$ \w+)",
    r"(?P<rust>```rust|\bfn main\(\))",
    r"(?P<html>(?i:```html|<div\b|<html\b))",
)))
"""One pass over the text finds every programming language it shows (group name -> language)."""
_CODE_NAMES = {"python": "python", "javascript": "javascript", "sql": "sql", "java": "java", "cpp": "c++",
               "bash": "bash", "rust": "rust", "html": "html"}

_GREETING = re.compile(r"^(?:hi|hello|hey|hiya|greetings|good (?:morning|afternoon|evening)|thanks|thank you|"
                       r"quick question|dear \w+)\b", re.I)
_POLITE = re.compile(r"^(?:(?:please|kindly)\s+|(?:can|could|would|will) you(?: please)?\s+|"
                     r"i was wondering if you could\s+|i'd like you to\s+)", re.I)
_QUESTION_WORDS = frozenset("how what why where when which who whom whose what's how's".split())
_AUXILIARIES = frozenset("is are am was were do does did should can could would will shall may might must has have".split())
_SUBJECT_PRONOUNS = frozenset("i it we this that there you they he she".split())
_FIRST_PERSON = frozenset("i i'm i've i'd i'll my we we're we've our me".split())
_DROP_ME_AFTER = frozenset("give help show tell walk teach send get find let".split())
_QUOTED = re.compile(r"""((?<![A-Za-z])'[^']+'(?![A-Za-z])|"[^"]*"|“[^”]*”)""")
_THIRD_PERSON_WORDS = {"i am": "they are", "i was": "they were", "i'm": "they're", "i've": "they've",
                       "i'd": "they'd", "i'll": "they'll", "i": "they", "my": "their", "mine": "theirs",
                       "myself": "themselves", "me": "them"}
_THIRD_PERSON = re.compile(r"\b(?:I am|I was|I'm|[Ii]'ve|[Ii]'d|[Ii]'ll|I|[Mm]y|mine|myself|me)\b")


def _sentences(text: str, limit: int = 6) -> list[str]:
    text = " ".join(text[:5_000].split())
    return [s for s in _SENTENCE.split(text, maxsplit=limit)[:limit] if s]


def _is_statement(sentence: str) -> bool:
    first = sentence.split(maxsplit=1)[0].lower() if sentence.strip() else ""
    return first in _FIRST_PERSON and not sentence.rstrip().endswith("?")


def key_sentence(text: str, max_words: int = 30) -> str:
    """The sentence of a message that carries the request: greetings are skipped, and a short statement
    ("I'm learning Spanish.") gives way to the question or instruction after it."""
    sentences = _sentences(text)
    content = [s for s in sentences if not (_GREETING.match(s) and len(s.split()) <= 4)] or sentences
    if not content:
        return ""
    chosen = content[0]
    if _is_statement(chosen) and len(chosen.split()) <= 5:
        chosen = next((s for s in content[1:3] if not _is_statement(s) and len(s.split()) >= 5), chosen)
    words = chosen.split()
    if len(words) > max_words:
        return " ".join(words[:max_words]) + "…"
    return chosen.rstrip(" .!?:;")


def _lower_first(text: str) -> str:
    if re.match(r"I\b", text):  # the pronoun, not a capital to drop
        return text
    return text[:1].lower() + text[1:] if text[:1].isupper() and not text[1:2].isupper() else text


def third_person(text: str) -> str:
    """"my script" -> "their script", "I'm stuck" -> "they're stuck" (quoted phrases are left alone)."""
    def swap(m: re.Match[str]) -> str:
        return _THIRD_PERSON_WORDS[m.group(0).lower()]

    parts = _QUOTED.split(text) if ("'" in text or '"' in text or "“" in text) else [text]
    for i in range(0, len(parts), 2):
        parts[i] = _THIRD_PERSON.sub(swap, parts[i])
    return "".join(parts)


def as_instruction(sentence: str) -> str:
    """A request sentence as the clause after "asked the assistant to …": "How do I X?" -> "explain how to
    X", "Can you write Y?" -> "write Y", "My dog barks." -> "help when their dog barks"."""
    s = _POLITE.sub("", sentence.strip().rstrip(" .!?:;"))
    if m := re.match(r"as (an? [^,]{3,60}), (.+)$", s, re.I):  # "As a tenant, what can I do …"
        return f"{as_instruction(m.group(2))} as {third_person(m.group(1))}"
    words = s.split()
    if not words:
        return "start a conversation"
    first, second = words[0].lower(), (words[1].lower() if len(words) > 1 else "")
    rest = lambda k: " ".join(words[k:])  # noqa: E731
    if first == "how" and second in ("do", "can", "should", "would", "could") and len(words) > 3 \
            and words[2].lower() in ("i", "we"):
        out = f"explain how to {rest(3)}"
    elif m := re.match(r"how (does|do) (.+) work$", s, re.I):
        out = f"explain how {m.group(2)} work{'s' if m.group(1).lower() == 'does' else ''}"
    elif m := re.match(r"what (?:is|are) (.+)$", s, re.I):
        out = f"explain {m.group(1)}"
    elif m := re.match(r"what should (?:i|we) do (about|with|if|when) (.+)$", s, re.I):
        out = f"advise on {m.group(2)}" if m.group(1).lower() == "about" else f"advise what to do {m.group(1)} {m.group(2)}"
    elif m := re.match(r"any (tips|advice|ideas|suggestions|recommendations) (?:for|on|about) (.+)$", s, re.I):
        out = f"give {m.group(1).lower()} for {m.group(2)}"
    elif m := re.match(r"(what|where|how|why|when|which) (am|is|are|can|should|could|would|will|do|does|did) "
                       r"(I|we|you|it) (.+)$", s, re.I):  # "what can I do" -> "what they can do"
        verb = "" if m.group(2).lower() in ("do", "does", "did") else f" {m.group(2).lower()}"
        out = f"explain {m.group(1).lower()} {m.group(3)}{verb} {m.group(4)}"
    elif first in _QUESTION_WORDS:
        out = f"explain {_lower_first(s)}"
    elif first in _AUXILIARIES and second in _SUBJECT_PRONOUNS and len(words) > 2:
        verb = "" if first in ("do", "does", "did") else f" {first}"
        out = f"advise whether {words[1]}{verb} {rest(2)}"
    elif first in _AUXILIARIES:
        out = f"answer whether {_lower_first(s)}"
    elif m := re.match(r"(?:i|we) (?:really )?(?:need|want|would like|'d like|have) to (.+)$", s, re.I):
        out = m.group(1)
    elif first in _FIRST_PERSON:
        out = f"help when {s}"
    elif first in _DROP_ME_AFTER and second == "me" and len(words) > 2:
        out = f"{_lower_first(words[0])} {rest(2)}"
    else:
        out = _lower_first(s)
    return third_person(out)


_CODE_HINTS = ("```", "def ", "import ", "print(", "const ", "function ", "console.log", "select", "public static",
               "#include", "std::", "$ ", "fn main", "<div", "<html")
"""Cheap substring checks: the code regex only runs on text that shows one of these."""


def _inverted(table: dict[str, Sequence[str]]) -> dict[str, tuple[str, ...]]:
    out: dict[str, list[str]] = {}
    for label, words in table.items():
        for w in words:
            out.setdefault(w, []).append(label)
    return {w: tuple(labels) for w, labels in out.items()}


def _best(words: Counter, index: dict[str, tuple[str, ...]], labels: Sequence[str]) -> tuple[str, int]:
    """The label whose words occur most often in ``words`` (ties: the first label)."""
    scores = dict.fromkeys(labels, 0)
    for w, n in words.items():
        for label in index.get(w, ()):
            scores[label] += n
    best = max(labels, key=lambda k: scores[k])
    return best, scores[best]


def _word_counts(text: str, limit: int = 4_000) -> Counter:
    """Word counts of the first ``limit`` characters (plenty to vote on a language or a topic)."""
    return Counter(_WORD.findall(text[:limit].lower()))


def detect_languages(text: str) -> list[str]:
    words = _word_counts(text)
    found: list[str] = []
    if words:
        best, score = _best(words, _LANG_INDEX, list(_LANG_STOPWORDS))
        found.append(best if score else "english")
    lowered = text.lower()
    if any(h in lowered for h in _CODE_HINTS):
        seen = {m.lastgroup for m in _CODE_LANGUAGES.finditer(text)}
        found += [_CODE_NAMES[g] for g in _CODE_NAMES if g in seen]
    return found or ["english"]


def classify_topic(text: str) -> str:
    best, score = _best(_word_counts(text), _TOPIC_INDEX, list(TOPICS))
    return best if score else "general conversation"


_LANG_INDEX = _inverted(_LANG_STOPWORDS)
_TOPIC_INDEX = _inverted(TOPICS)


class LocalSummaryModel:
    """Extractive summaries from the user's own words, in the third person."""

    identity = "local-summary/v2"

    def summarise_one(self, conversation: Conversation) -> GeneratedSummary:
        users = [m.content for m in conversation.messages if m.role == "user"]
        assistants = [m.content for m in conversation.messages if m.role == "assistant"]
        ask = as_instruction(key_sentence(users[0])) if users else "start a conversation"
        follow = as_instruction(key_sentence(users[1], 20)) if len(users) > 1 else ""
        first = f"The user asked the assistant to {ask}" if users else "The user sent no message"
        replies = f"the assistant replied {len(assistants)} time{'s' if len(assistants) != 1 else ''}"
        if follow:
            second = f"They followed up asking the assistant to {follow}, and {replies}."
        else:
            second = f"{replies[:1].upper()}{replies[1:]}."
        text = "\n".join(users + assistants)
        return GeneratedSummary(
            summary=f"{first.rstrip('.…')}. {second}",
            request=f"The user's overall request for the assistant is to {ask.rstrip('.…')}.",
            topic=classify_topic("\n".join(users)),
            languages=detect_languages(text),
            task=f"The task is to {ask.rstrip('.…')}.",
        )

    def summarise(self, conversations: Sequence[Conversation], progress: Progress | None = None) -> list[GeneratedSummary]:
        out = []
        total = len(conversations)
        for i, conversation in enumerate(conversations, start=1):
            out.append(self.summarise_one(conversation))
            if progress is not None and (i % 1000 == 0 or i == total):
                progress(i, total)
        return out


@functools.lru_cache(maxsize=8)
def _fitted_projection(n_features: int, dims: int, seed: int, per_feature: int = 8):
    """The seeded projection: each hashed feature goes to ``per_feature`` random dimensions with random
    signs (a sparse Johnson-Lindenstrauss / count-sketch matrix, ``n_features x dims``, in CSR).

    Every feature reaches several dimensions, so no word is dropped (scikit-learn's default density for
    2**20 features, ``1/sqrt(n_features)``, leaves about three words in four with no dimension at all).
    Built once per process with numpy's seeded generator: ~0.2 s and ~16 MB for 2**18 x 8.
    """
    from scipy import sparse

    rng = np.random.default_rng(seed)
    rows = np.repeat(np.arange(n_features, dtype=np.int32), per_feature)
    cols = rng.integers(0, dims, size=n_features * per_feature, dtype=np.int32)
    signs = np.where(rng.random(n_features * per_feature) < 0.5, -1.0, 1.0).astype(np.float32)
    return sparse.csr_matrix((signs / np.sqrt(per_feature), (rows, cols)), shape=(n_features, dims))


_SUMMARY_BOILERPLATE = frozenset((
    "user", "users", "assistant", "asked", "asking", "replied", "times", "request", "overall", "task",
    "followed", "respond", "explain", "advise", "whether", "help", "give", "tips",
    # and the frame of the local cluster descriptions, which meta-clustering embeds
    "conversation", "conversations", "mostly", "concerned", "mentioned", "often", "english", "cluster", "clusters",
    "related", "covered", "together",
))
"""Words every local summary (or cluster description) uses to frame the request ("The user asked the
assistant to explain …"): they say nothing about what was asked, so the embedding ignores them like stop
words."""


@functools.lru_cache(maxsize=1)
def _embedding_stopwords() -> list[str]:
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return sorted(ENGLISH_STOP_WORDS | _SUMMARY_BOILERPLATE)


class LocalEmbeddingModel:
    """Hashed word counts, sublinear-scaled, randomly projected to ``dims`` dimensions.

    Words only: on the demo data word pairs made clusters less topical (each pair adds projection noise),
    and 2**18 hash buckets keep collisions rare for any realistic vocabulary.
    """

    n_features = 2**18

    def __init__(self, dims: int = 256, seed: int = 0) -> None:
        from sklearn.feature_extraction.text import HashingVectorizer
        self.dims, self.seed = dims, seed
        self.identity = f"local-hash-embedding/v2/dims={dims}/seed={seed}"  # v2: words, 8 dims each
        self._vectorizer = HashingVectorizer(
            n_features=self.n_features, alternate_sign=False, norm=None, stop_words=_embedding_stopwords(),
            ngram_range=(1, 1), token_pattern=r"(?u)\b[a-zA-Z][a-zA-Z0-9_]+\b", dtype=np.float32,
        )
        self._projection = _fitted_projection(self.n_features, dims, seed)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not len(texts):
            return np.zeros((0, self.dims), dtype=np.float32)
        counts = self._vectorizer.transform(texts)
        counts.data = 1.0 + np.log(counts.data)
        out = np.asarray((counts @ self._projection).toarray(), dtype=np.float32)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        norms[norms == 0] = 1.0
        return out / norms


@functools.lru_cache(maxsize=1)
def _stopword_set() -> frozenset[str]:
    """scikit-learn's English stop words and ours (imported lazily: sklearn is slow to import)."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return frozenset(ENGLISH_STOP_WORDS) | _NAMING_STOPWORDS


def _stopwords() -> list[str]:
    return sorted(_stopword_set())


def _distinctive_terms(docs: Sequence[str], top: int = 3, seed: int = 0,
                       exclude: Sequence[frozenset[str]] | None = None) -> list[list[str]]:
    """Class-based TF-IDF: the terms that set each document (a whole group's text) apart from the others.

    ``exclude[i]`` holds words not to use for document ``i`` (its name's verb, say), besides the verbs and
    stop words no group is described by.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer

    vec = TfidfVectorizer(stop_words=_stopwords(), token_pattern=r"(?u)\b[a-z][a-z0-9]{2,}\b",
                          sublinear_tf=True, lowercase=True, max_df=0.9 if len(docs) > 3 else 1.0)
    try:
        matrix = vec.fit_transform(docs).tocsr()
    except ValueError:  # every word was a stop word
        return [list(_FALLBACK_TERMS[:top]) for _ in docs]
    vocab = vec.get_feature_names_out()
    out = []
    for i in range(matrix.shape[0]):
        lo, hi = matrix.indptr[i], matrix.indptr[i + 1]
        idx, data = matrix.indices[lo:hi], matrix.data[lo:hi]
        skip = _VERBS | (exclude[i] if exclude else frozenset())
        terms: list[str] = []
        for j in np.lexsort((vocab[idx], -data)):
            term = str(vocab[idx[j]])
            if term not in skip:
                terms.append(term)
                if len(terms) == top:
                    break
        terms += [t for t in _FALLBACK_TERMS if t not in terms][: top - len(terms)]
        out.append(terms)
    return out


_FALLBACK_TERMS = ("general", "assistant", "requests")

_NAMING_STOPWORDS = frozenset({"user", "users", "assistant", "asked", "replied", "times", "time", "request", "requests", "overall",
     "followed", "asking", "task", "respond", "help", "want", "like", "need", "use", "make", "using",
     "general", "conversation", "conversations", "clusters", "cluster", "including", "didn", "doesn", "don",
     "isn", "wasn", "aren", "won", "wouldn", "couldn", "shouldn", "haven", "hasn", "material", "group",
     "brings", "covering", "following", "previous", "response", "answer", "question", "questions",
     "whether", "advise", "tips", "advice", "they", "their", "theirs", "them", "themselves", "does", "did",
     "doing", "way", "ways", "works", "uses", "finds"})

_VERBS = frozenset((
    "write", "compose", "explain", "solve", "describe", "create", "draft", "edit", "rewrite", "help", "suggest",
    "summarize", "summarise", "translate", "calculate", "design", "generate", "plan", "analyze", "analyse",
    "compare", "implement", "debug", "imagine", "pretend", "evaluate", "identify", "list", "provide", "give",
    "advise", "answer", "show", "tell", "walk", "craft", "develop", "construct", "embrace", "fix", "find", "get",
    "build", "prepare", "start", "make", "keep", "add", "check",
))
_ADVICE_VERBS = frozenset(("help", "advise", "answer", "give", "tell", "show", "walk", "suggest", "provide", "find",
                           "get", "make", "keep", "check"))
_REQUEST_PREFIX = re.compile(r"^\s*(?:the user'?s overall request for the assistant is to|"
                             r"the user asked the assistant to)\s+", re.I)
_DANGLING = frozenset("a an the to of about for with and or but in on at by from as into than that which who whose "
                      "their your my its our his her this these those is are was were be being when while if so "
                      "some any very more most someone something".split())
_TOKEN = re.compile(r"[a-z][a-z0-9]{2,}")
_CLAUSE_STARTS = frozenset("that which who whose where when whenever while if because so since whereas".split())


def _instruction(summary: ConversationSummary) -> str:
    """The summary's request as a bare instruction ("write a poem about …"), one sentence."""
    text = _REQUEST_PREFIX.sub("", (summary.request or summary.summary or "").strip())
    return _SENTENCE.split(text, maxsplit=1)[0].rstrip(" .!?…:;,") or "help with a general request"


def _clause(text: str) -> str:
    """Text safe to embed in a sentence: no sentence breaks inside, no trailing punctuation."""
    return re.sub(r"[.!?]+(?=\s)", ",", text).rstrip(" .!?…:;,")


def _short_name(instruction: str, max_words: int = 10) -> str:
    """At most ``max_words`` words, not ending on a dangling article or preposition, capitalised."""
    words = _clause(instruction).replace("…", "").split()
    if len(words) > max_words:  # prefer ending where a clause ends ("… visit to Hanoi | that fits …")
        cuts = [i for i in range(6, max_words + 1) if not _inside_quote(words[:i])
                and (words[i].lower() in _CLAUSE_STARTS or words[i - 1].endswith(","))]
        words = words[: max(cuts)] if cuts else words[:max_words]
    while len(words) > 2 and words[-1].lower().strip(",;:'\"“”") in _DANGLING:
        words.pop()
    words[-1] = words[-1].rstrip(",;:")
    deduped = [w for i, w in enumerate(words) if i == 0 or w.lower() != words[i - 1].lower()]
    name = " ".join(deduped)
    return name[:1].upper() + name[1:]


def _inside_quote(words: Sequence[str]) -> bool:
    """Whether a quotation opened in ``words`` is still open at their end."""
    depth = 0
    for w in words:
        depth += w[:1] in "'\"“" and len(w) > 1
        depth -= w.rstrip(",.;:!?")[-1:] in "'\"”" and not w.endswith("'s")
    return depth > 0


def _typical(instructions: Sequence[str]) -> int:
    """Index of the most typical instruction: its words are the most shared across the group."""
    tokens = [frozenset(_TOKEN.findall(t.lower())) - _stopword_set() for t in instructions]
    df = Counter(w for t in tokens for w in t)

    def key(i: int) -> tuple:
        t = tokens[i]
        mean_df = sum(df[w] for w in t) / len(t) if t else 0.0
        return (len(t) < 3, -mean_df, len(instructions[i]), instructions[i])

    return min(range(len(instructions)), key=key)


def _join(terms: Sequence[str]) -> str:
    return f"{', '.join(terms[:-1])} and {terms[-1]}" if len(terms) > 1 else terms[0]


def _slug(terms: Sequence[str]) -> str:
    return "_".join(re.sub(r"[^a-z0-9]", "", t) or "topic" for t in terms[:3])


class LocalClusterNamingModel:
    """Names a group after its most typical request, cut to a short imperative sentence; its slug and
    description use the terms that set the group apart from the others (class-based TF-IDF)."""

    identity = "local-cluster-naming/v2"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def name_clusters(self, groups: Sequence[Sequence[ConversationSummary]]) -> list[GeneratedCluster]:
        instructions = [[_instruction(s) for s in g] for g in groups]
        reps = [ins[_typical(ins)] if ins else "help with a general request" for ins in instructions]
        names = [_short_name(r) for r in reps]
        exclude = [frozenset(_TOKEN.findall(n.split(maxsplit=1)[0].lower())) for n in names]
        all_terms = _distinctive_terms([" ".join(ins) for ins in instructions], seed=self.seed, exclude=exclude)
        out = []
        for group, name, rep, terms in zip(groups, names, reps, all_terms):
            topics = Counter(s.topic for s in group if s.topic)
            langs = Counter(lang for s in group for lang in (s.languages or [])[:1])
            n = len(group)
            description = (
                f"Users asked the assistant to {_lower(_clause(' '.join(rep.split()[:25])))}. "
                f"The {n} conversation{'s' if n != 1 else ''} mostly concerned "
                f"{topics.most_common(1)[0][0] if topics else 'general topics'} in "
                f"{langs.most_common(1)[0][0] if langs else 'english'} and often mentioned {_join(terms)}."
            )
            out.append(GeneratedCluster(name=name, summary=description, slug=_slug(terms)))
        return out

    def name_meta_clusters(self, groups: Sequence[Sequence[Cluster]]) -> list[GeneratedCluster]:
        verbs = []
        for group in groups:
            weights = Counter()
            for c in group:
                weights[c.name.split(maxsplit=1)[0].lower() if c.name.strip() else "help"] += len(c.chat_ids)
            verbs.append(min(weights, key=lambda v: (-weights[v], v)))
        topics = [_main_topic(g) for g in groups]
        # a group's terms come from its children on its main topic (when it has one), so the name agrees
        docs = [" ".join(f"{c.name} {c.slug.replace('_', ' ')}" for c in g if not t or _topic_of(c) == t)
                for g, t in zip(groups, topics)]
        all_terms = _distinctive_terms(docs, seed=self.seed, exclude=[frozenset({v}) for v in verbs])
        out = []
        for group, verb, terms, topic in zip(groups, verbs, all_terms, topics):
            if topic:
                name = f"Help with {topic}: {_join(terms)}"
            else:
                name = f"{'Help with' if verb in _ADVICE_VERBS else verb.capitalize()} {_join(terms)}"
            about = f", mostly about {topic}" if topic else ""
            biggest = sorted(group, key=lambda c: (-len(c.chat_ids), c.name))[:2]
            examples = " and ".join(f"“{_clause(c.name)}”" for c in biggest)
            n_chats = len({cid for c in group for cid in c.chat_ids})
            if len(group) == 1:
                description = (f"Users asked the assistant to {_lower(name)}, as in the cluster {examples}. "
                               f"It covered {n_chats} conversation{'s' if n_chats != 1 else ''}{about}.")
            else:
                description = (
                    f"Users asked the assistant to {_lower(name)}, across {len(group)} related clusters such as "
                    f"{examples}. Together these clusters covered {n_chats} conversations{about}."
                )
            out.append(GeneratedCluster(name=name, summary=description, slug=_slug(terms)))
        return out


_TOPIC_IN_DESCRIPTION = re.compile(r"mostly (?:concerned|about) ([a-z][a-z ]+?)(?: in [a-z+#]+ and often mentioned|[.,])")


def _topic_of(cluster: Cluster) -> str | None:
    m = _TOPIC_IN_DESCRIPTION.search(cluster.description)
    return m.group(1) if m and not m.group(1).startswith("general ") else None


def _main_topic(group: Sequence[Cluster]) -> str | None:
    """The topic most of the group's conversations share, read off the children's descriptions (as this
    model writes them), or None when no topic covers at least half of them."""
    weights: Counter[str] = Counter()
    for c in group:
        if topic := _topic_of(c):
            weights[topic] += len(c.chat_ids)
    if not weights:
        return None
    topic = min(weights, key=lambda t: (-weights[t], t))
    return topic if 2 * weights[topic] >= sum(len(c.chat_ids) for c in group) else None


def _lower(text: str) -> str:
    return _lower_first(text)
