"""Offline default models: no network, no key, deterministic for a given seed.

* ``LocalSummaryModel`` writes an extractive summary from the user's own words: the sentence that carries
  the request (greetings skipped), rephrased as a third-person instruction ("How do I X?" becomes "explain
  how to X", "my code" becomes "their code"). It detects natural and programming languages and files the
  conversation under one of a dozen topics by keywords. Scores that nothing here really measures (concern,
  frustration, assistant errors) stay ``None``.
* ``LocalEmbeddingModel`` (in ``local_embedding``, re-exported here): TF-IDF + LSA over the conversation's
  user turns and the start of the replies, fitted once per taxonomy build and stored as an artifact.
* ``LocalClusterNamingModel`` names a group after its most typical request, cut to a short imperative
  sentence, and gives it a slug and description from its distinctive terms (class-based TF-IDF against
  the other groups). Meta clusters are named by their children's main verb and distinctive terms.
"""

from __future__ import annotations

import functools
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

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
_POLITE = re.compile(r"^(?:(?:please\s+)?help\s*:\s*|(?:please|kindly)\s+|(?:can|could|would|will) you(?: please)?\s+|"
                     r"i was wondering if you could\s+|i'd like you to\s+|(?:a |one )?(?:quick )?question (?:about|on|regarding)\s+|"
                     r"(?:i\s+)?(?:need|want|am trying|'m trying|trying) to\s+(?=[a-z]))", re.I)
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
    first = text.split(maxsplit=1)[0] if text.strip() else ""
    if re.match(r"I\b", text) or not first.replace("'", "").isalpha() or any(ch.isupper() for ch in first[1:]):
        return text  # the pronoun, "W&B", "wandb.Table", "PyTorch": not a capital to drop
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
    elif m := re.match(r"(?:is there (?:a|any) way|is it possible|what(?:'s| is) the (?:way|workflow|process)) "
                       r"to (.+)$", s, re.I):
        out = f"explain how to {m.group(1)}"
    elif m := re.match(r"what(?:'s| is| are) the (best|right|fastest|easiest|recommended|cleanest|simplest|proper) "
                       r"(way|workflow|process|steps?) to (.+)$", s, re.I):
        out = f"explain the {m.group(1).lower()} {m.group(2).lower()} to {m.group(3)}"
    elif m := re.match(r"what(?:'s| is) (needed|required) (?:to|for) (.+)$", s, re.I):
        out = f"explain what is {m.group(1).lower()} to {m.group(2)}"
    elif m := re.match(r"(can|could|should|will|would) (the|a|an|this|our|my) (\S+) (.+)$", s, re.I):
        out = f"explain whether {m.group(2).lower()} {m.group(3)} {m.group(1).lower()} {m.group(4)}"
    elif m := re.match(r"what(?:'s| is| are) (.+)$", s, re.I):
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
        tail = rest(2)
        if first == "does" and re.match(r"[a-z]+(?<![sy])\b", tail):  # "does it log" -> "it logs"
            tail = re.sub(r"^([a-z]+)", r"\1s", tail)
        out = f"advise whether {words[1]}{verb} {tail}"
    elif first in _MODALS and len(words) > 2 and (words[1][:1].isupper() or words[1].lower() in _TOOL_WORDS):
        out = f"explain whether {words[1]} {first} {rest(2)}"  # "Can W&B send alerts?"
    elif first in _AUXILIARIES:
        out = f"answer whether {_lower_first(s)}"
    elif m := re.match(r"(?:i|we) (?:really )?(?:need|want|would like|'d like|have) to (.+)$", s, re.I):
        out = m.group(1)
    elif first in _FIRST_PERSON:
        out = f"help when {s}"
    elif first in _DROP_ME_AFTER and second == "me" and len(words) > 2:
        out = f"{_lower_first(words[0])} {rest(2)}"
    elif m := re.match(r"(?:the )?(differences?) between (.+)$", s, re.I):
        out = f"explain the {m.group(1).lower()} between {m.group(2)}"
    elif first.strip(",:;") in _IMPERATIVES or first in _SUBJECT_PRONOUNS or first == "let's":
        out = _lower_first(s)
    elif (k := _verb_after_topic(words)) is not None:  # "wandb config log hyperparameters"
        out = f"{words[k].lower()} {rest(k + 1)} in {_lower_first(' '.join(words[:k]))}"
    else:  # a query of a few words ("W&B best practices", "experiment tracking")
        out = f"help with {_lower_first(s)}"
    return third_person(out)


_MODALS = frozenset("is are can could should would will does".split()) - {"does"}
_TOOL_WORDS = frozenset("wandb weave it this that there".split())
_IMPERATIVES = frozenset("""
    accept access act add adapt behave embrace speak reply reduce free disable silence invite say ask cook bake grow
    repot prune sleep eat stretch negotiate apologise apologize memorise memorize practise practice pronounce adjust advise analyse analyze answer apply approve arrange ask assess assign assist
    assume avoid automate back balance brainstorm break build calculate call cancel categorize categorise change check
    choose clarify classify clean clear close collect combine come compare compile complete compose compute
    configure connect consider construct continue convert copy correct count craft create critique customise
    customize debug decide decode define delete demonstrate deploy derive describe design detail detect determine
    develop devise diagnose discuss display do double download draft draw edit elaborate email embed enable encode
    enhance estimate evaluate examine expand explain explore export extract find finish fix follow format formulate
    generate get give go group guess guide handle help highlight identify illustrate imagine implement import improve
    include increase infer install integrate interpret introduce investigate join keep label launch learn let link
    list load locate log look make manage map measure merge migrate mimic modify monitor move name navigate note
    obtain offer open optimise optimize order organise organize outline paraphrase parse pass paste pick plan play
    plot point polish predict prepare present pretend prevent print prioritize produce promote proofread propose
    prove provide publish pull push put rank rate read recommend refactor reformat register remove rename render
    reorder rephrase replace report reproduce request rerun reset resolve respond restart restructure resume retrieve
    return reverse review revise rewrite roleplay run save scale schedule score search select send separate set share
    show simplify simulate sketch solve sort specify split start stop store structure suggest summarise summarize
    supply suppose support swap switch sync take teach tell test think track train transform translate troubleshoot
    try tune turn update upgrade upload use validate verify version visualise visualize walk watch write
    """.split())
"""Verbs a request can start with ("Write …", "Log …"); a query starting otherwise is a topic ("help with …")."""

_ALSO_NOUNS = frozenset("""
    run report test version group sweep log chart plot name order score set map note launch train record sync export
    import alert email link label list plan design start display schedule watch store cache search sort filter
    return model table track query support update upgrade access account save share switch
    """.split())
"""Words of ``_IMPERATIVES`` that name things as often as actions ("a run", "the report"): they may be keywords."""

_NOUN_TOO = frozenset("run report test version group sweep train launch name order score set plot map note".split())
"""Verbs that are nouns just as often in a keyword query ("Trainer run wandb")."""


_DETERMINERS = frozenset("a an the my our their this that these those all every each multiple several two".split())
_TOOL_VERBS = frozenset("""log add delete remove export import install link embed create use update upgrade configure
    deploy track resume sync compare plot download upload share reduce transfer change send get find disable enable
    store version move rename restore convert visualize visualise""".split())
"""Verbs that start an instruction in a keyword query even without an article after them ("log metrics")."""


def _verb_after_topic(words: Sequence[str]) -> int | None:
    """Where a keyword query's instruction starts after the thing it is about: "model registry link a model
    version" -> 2 (so: "link a model version in model registry"); None when it has no such shape."""
    stop = _stopword_set()
    for k in range(1, min(4, len(words) - 1)):
        w = words[k].lower()
        nxt = words[k + 1].lower()
        if w in _IMPERATIVES and w not in _NOUN_TOO and nxt not in _PHRASE_STARTS and nxt not in _AUXILIARIES \
                and (nxt in _DETERMINERS or w in _TOOL_VERBS) \
                and not any(x.lower() in stop or x.lower() in _IMPERATIVES for x in words[:k]):
            return k
    return None


_CODE_HINTS = ("```", "def ", "import ", "print(", "const ", "function ", "console.log", "select", "public static",
               "#include", "std::", "$ ", "fn main", "<div", "<html")
"""Cheap substring checks: the code regex only runs on text that shows one of these."""
_CODE_HINT = re.compile("|".join(map(re.escape, _CODE_HINTS)))


def _inverted(table: dict[str, Sequence[str]]) -> dict[str, tuple[str, ...]]:
    out: dict[str, list[str]] = {}
    for label, words in table.items():
        for w in words:
            out.setdefault(w, []).append(label)
    return {w: tuple(labels) for w, labels in out.items()}


def _best(words: Counter, index: dict[str, tuple[str, ...]], labels: Sequence[str]) -> tuple[str, int]:
    """The label whose words occur most often in ``words`` (ties: the first label)."""
    scores: dict[str, int] = {}
    for w in words.keys() & index.keys():
        n = words[w]
        for label in index[w]:
            scores[label] = scores.get(label, 0) + n
    if not scores:
        return labels[0], 0
    top = max(scores.values())
    return next(label for label in labels if scores.get(label) == top), top


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
    if _CODE_HINT.search(lowered):
        seen = {m.lastgroup for m in _CODE_LANGUAGES.finditer(text)}
        found += [_CODE_NAMES[g] for g in _CODE_NAMES if g in seen]
    return found or ["english"]


def classify_topic(text: str) -> str:
    best, score = _best(_word_counts(text), _TOPIC_INDEX, list(TOPICS))
    return best if score else "general conversation"


_LANG_INDEX = _inverted(_LANG_STOPWORDS)
_TOPIC_INDEX = _inverted(TOPICS)


# --- finding the request: the corpus pass (template detection) and per-message cleaning ------------------

_FENCE = re.compile(r"```.*?(?:```|\Z)", re.S)
_SLOW_PATH = re.compile(r"[\n`#*|>\[]|https?://|www\.|:")
"""Messages without any of these are a plain sentence or two: no markup, template label or code to remove."""
_HEAD = re.compile(r"^(?:[#>*_\s-]*)([A-Za-z][\w'&/ -]{0,40}?)\s*:(?!//)\s*")
"""A line's label: "User Query: …", "Retrieved Information :", "Question:" (at most five words)."""
_SKIP_LINE = re.compile(
    r"^(?:#{1,6}\s|\||>|[-*_=]{3,}\s*$|<[a-z/!]|!\[|"  # heading, table row, quote, rule, HTML, image
    r"Traceback \(most recent|File \"|\s*at [\w.$]+\(|"  # tracebacks
    r"[\w.]*(?:Error|Exception|Warning)\b:?|wandb: (?:ERROR|WARNING)|"  # error lines
    r"(?:import |from [\w.]+ import |def |class |return |print\(|@\w|%\w|!pip |\$ |>>> |\w+(?:\.\w+)*\s*=\s*\S|"
    r"\w+(?:\.\w+)+\(|[\w.]+\(.*\)\s*$|[{}\[\]();]+\s*$))"  # code-looking lines
)
_LIST_ITEM = re.compile(r"^(?:[-*+•]|\d{1,2}[.)])\s+")
_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
_URL = re.compile(r"(?:https?://|www\.)\S+")
_EMPHASIS = re.compile(r"(\*\*|__|\*|`+)")
_LONG_QUOTE = re.compile(r"""["“][^"”]{80,}["”]|'[^']{80,}'""")
_GREETING_PREFIX = re.compile(r"^(?:(?:hi|hello|hey|hiya|greetings|dear)(?: there| team| all| everyone| folks)?|"
                              r"good (?:morning|afternoon|evening))[,!.]*\s+(?=\S)", re.I)
_ACKNOWLEDGEMENT = re.compile(r"^(?:ok(?:ay)?|thanks?|thank you|thx|great|perfect|cool|nice|awesome|got it|"
                              r"that (?:worked|helps|works)|sounds good|yes|no|sure)\b[\w ,!.']{0,40}$", re.I)
_VAGUE = re.compile(r"^(?:(?:i|we) (?:have|got|had) (?:a|an|some|one more|another) (?:quick |small |short )?"
                    r"(?:question|issue|problem)s?(?: (?:about|regarding|on|with) [\w&. -]{1,30})?|"
                    r"(?:i|we) need (?:some )?help|can (?:you|someone|anyone) help(?: me| us)?|"
                    r"(?:is )?anyone (?:there|around)|i'?m stuck)[.!?]*$", re.I)
_NORM_STRIP = "#>*-|:_=` \t"
_CONTENT = re.compile(r"[A-Za-z][A-Za-z0-9&+#.-]{2,}")


def _norm(line: str) -> str:
    """A line or sentence as the corpus pass counts it: lower case, markup at its ends and spacing ignored."""
    return " ".join(line.lower().replace("**", "").replace("`", "").strip(_NORM_STRIP).split())


def _units(text: str) -> set[str]:
    """The lines of a message, and the sentences of lines that have several (what a template repeats)."""
    out = set()
    for line in text.split("\n"):
        n = _norm(line)
        if n:
            out.add(n)
            if _SENTENCE.search(n):
                out.update(s for s in (p.strip(_NORM_STRIP) for p in _SENTENCE.split(n)) if s)
    return out


class TemplateStats:
    """What a corpus repeats around its requests, learnt from the corpus itself.

    A line or sentence that occurs in the user messages of at least ``threshold`` *distinct* conversations
    is template: a prompt preamble, a "Retrieved Information" header, pasted documentation, a stock "Here is
    my code:". A line label ("User Query:", "Question:") that starts lines in that many conversations, each
    time followed by different text, is a template label, and what follows it is the request. Conversations
    whose user messages are identical count once, so a question that many users send word for word
    (MT-Bench repeats each of its conversations ~80 times) is never mistaken for template.
    """

    def __init__(self, counts: dict[str, int], heads: frozenset[str], threshold: int, messages: int) -> None:
        self.counts = counts
        """Template line or sentence -> in how many distinct user messages it occurs."""
        self.units = frozenset(counts)
        self.heads, self.threshold, self.messages = heads, threshold, messages
        """``messages``: how many distinct conversations were counted."""

    @classmethod
    def fit(cls, conversations: Sequence[Conversation], sample: int = 30_000) -> TemplateStats:
        """Count over the first ``sample`` distinct conversations (by their user messages, in corpus order): a
        template repeats in most of them, so a sample finds it, and the pass costs the same for 30,000 or 3
        million. A message repeated word for word in many *different* conversations (a system-prompt-like
        first message) is template; the same conversation repeated (MT-Bench's questions) counts once."""
        distinct: dict[tuple[str, ...], None] = {}
        for c in conversations:
            distinct[tuple(dict.fromkeys(m.content for m in c.messages if m.role == "user"))] = None
            if len(distinct) >= sample:
                break
        threshold = max(3, min(20, math.ceil(0.01 * len(distinct))))
        units: Counter[str] = Counter()
        heads: Counter[str] = Counter()
        rests: dict[str, set[str]] = {}  # what follows each label: a template label is followed by many texts
        for texts in distinct:
            found: set[str] = set()
            labels: set[str] = set()
            for text in texts:
                if len(text) > _MAX_CHARS:
                    text = text[: _MAX_CHARS // 2] + "\n" + text[-_MAX_CHARS // 2:]
                if "\n" in text or _SENTENCE.search(text):
                    found |= _units(text)
                if ":" in text:
                    for line in text.split("\n"):
                        if (m := _HEAD.match(line)) and len(m.group(1).split()) <= 5:
                            head = _norm(m.group(1))
                            labels.add(head)
                            if len(rests.setdefault(head, set())) < 1_000:
                                rests[head].add(_norm(line[m.end():]))
            units.update(found)
            heads.update(labels)
        return cls({u: n for u, n in units.items() if n >= threshold},
                   frozenset(h for h, n in heads.items() if n >= threshold and h
                             and len(rests[h] - {""}) >= max(3, min(n, 1_000) // 2)), threshold, len(distinct))


_MAX_CHARS = 20_000
"""A longer message is read at its start and its end (where a template puts the question)."""


@dataclass(frozen=True)
class _Candidate:
    text: str
    slot: bool
    """It followed a template label ("User Query: <this>"): the strongest sign of the request."""
    material: bool
    """It sits in pasted material (after a markdown heading, in a list) rather than in the user's own words."""


def _clean_markup(line: str) -> str:
    line = _LINK.sub(r"\1", line)
    line = _URL.sub("", line)
    line = _LONG_QUOTE.sub("the quoted text", line)
    return _EMPHASIS.sub("", line).strip()


def message_candidates(text: str, stats: TemplateStats | None) -> list[_Candidate]:
    """The sentences of a user message that may state its request, in order, without template lines,
    code blocks, tracebacks, markdown markup, URLs and long quotations.

    When every line of the message is template (a question asked again and again around different pasted
    documents), the line the corpus repeats least is the one the user wrote."""
    if len(text) > _MAX_CHARS:
        text = text[: _MAX_CHARS // 2] + "\n" + text[-_MAX_CHARS // 2:]
    units = stats.units if stats is not None else frozenset()
    heads = stats.heads if stats is not None else frozenset()
    fast = not _SLOW_PATH.search(text)
    lines = [text] if fast else _FENCE.sub("\n", text).split("\n")
    out: list[_Candidate] = []
    pasted = False  # inside pasted documentation (after a markdown heading or in a list)
    introduced = False  # after "Here is the paragraph:", until a blank line
    repeated: list[str] = []
    for raw in lines:
        line = raw.strip()
        if not line:
            introduced = False
            continue
        slot = False
        if not fast:
            m = _HEAD.match(line)
            if m and _norm(m.group(1)) in heads:  # "User Query: <the request>"
                line, slot, pasted, introduced = line[m.end():].strip(), True, False, False
                if not line:
                    continue
            elif _norm(line) in units:
                pasted = introduced = False  # a template line ("### Question") ends the pasted material before it
                if not line.startswith("#"):
                    repeated.append(line)
                continue
            if line.startswith("#"):
                pasted = True
                continue
            if _SKIP_LINE.match(line):
                continue
            if _LIST_ITEM.match(line):
                line = _LIST_ITEM.sub("", line)
                pasted = pasted or not slot
            line = _clean_markup(line)
        for sentence in _SENTENCE.split(line) if _SENTENCE.search(line) else (line,):
            sentence = sentence.strip()
            if sentence and units and not slot and _norm(sentence) in units:
                continue
            if sentence and _CONTENT.search(sentence):
                out.append(_Candidate(sentence, slot, (pasted or introduced) and not slot))
        introduced = introduced or line.endswith(":")  # "Edit the following paragraph:" -> material follows
    if not out and repeated and stats is not None:
        rarest = min(repeated, key=lambda s: stats.counts.get(_norm(s), 0))
        if stats.counts.get(_norm(rarest), 0) <= max(stats.threshold, 0.2 * stats.messages):
            out = [_Candidate(_clean_markup(rarest), False, False)]  # not a preamble most conversations share
    return out


def _content_words(sentence: str) -> int:
    stop = _stopword_set()
    return sum(w.lower() not in stop for w in _CONTENT.findall(sentence))


def _is_question(sentence: str) -> bool:
    first = sentence.split(maxsplit=1)[0].lower().strip(",:") if sentence else ""
    return sentence.rstrip().endswith("?") or first in _QUESTION_WORDS or first in _AUXILIARIES


def choose_request(candidates: Sequence[_Candidate]) -> str:
    """The sentence that states the request: what follows a template label if anything does, else the
    user's own words before pasted material; greetings, acknowledgements and "Here is my code:" skipped,
    and a short statement of context gives way to the question or instruction after it."""
    if not candidates:
        return ""
    pool = [c for c in candidates if c.slot] or [c for c in candidates if not c.material] \
        or [c for c in candidates if _is_question(c.text)] or list(candidates)
    sentences = [_GREETING_PREFIX.sub("", c.text).strip() for c in pool]
    content = [s for s in sentences if s and not (_GREETING.match(s) and len(s.split()) <= 4)
               and not _ACKNOWLEDGEMENT.match(s)
               and not (s.endswith(":") and not _is_question(s) and not _looks_imperative(s))] or [s for s in sentences if s]
    if not content:
        return ""
    chosen = content[0]
    if not (_is_question(chosen) or _looks_imperative(chosen) or _is_statement(chosen) or _WANT.match(chosen)):
        # "See the docs below." then "Why does X hang?": the question states the request
        chosen = next((s for s in content[1:4] if _is_question(s) and _content_words(s) >= 2), chosen)
    elif (_is_statement(chosen) or _VAGUE.match(chosen)) and not _WANT.match(chosen):
        later = next((s for s in content[1:4] if (_is_question(s) or _looks_imperative(s))
                      and _content_words(s) >= 3), None)
        if later is not None and (len(chosen.split()) <= 5 or _VAGUE.match(chosen) or _is_question(later)
                                  and _content_words(later) >= _content_words(chosen)):
            chosen = later
        elif other := next((s for s in content[1:4] if not _is_statement(s) and _content_words(s) >= 2), None):
            chosen = other  # context first ("Our training runs on SLURM."), then the ask ("sweep agent crashes")
        elif len(chosen.split()) <= 5:
            chosen = next((s for s in content[1:3] if not _is_statement(s) and len(s.split()) >= 5), chosen)
    return chosen


_WANT = re.compile(r"^(?:i|we) (?:really )?(?:need|want|would like|'d like|am trying|'m trying|are trying|have) to\b",
                   re.I)


def _looks_imperative(sentence: str) -> bool:
    s = _POLITE.sub("", sentence.strip())
    first = s.split(maxsplit=1)[0].lower().strip(",:") if s else ""
    return first in _IMPERATIVES


def _clip(sentence: str, max_words: int) -> str:
    words = sentence.split()
    if len(words) > max_words:
        return " ".join(words[:max_words]) + "…"
    return sentence.rstrip(" .!?:;")


def _substantive(sentence: str) -> bool:
    """Whether a chosen sentence states a request (not "I have a question", "thanks", "ok")."""
    if not sentence or _VAGUE.match(sentence) or _ACKNOWLEDGEMENT.match(sentence):
        return False
    stop = _stopword_set()
    return any(w.lower() not in stop for w in _CONTENT.findall(sentence))


_as_instruction = functools.lru_cache(maxsize=65_536)(as_instruction)
"""Follow-ups repeat ("Can I freeze it?"): the rewrite is pure, so it is done once per distinct sentence."""


def _times(n: int) -> str:
    return {1: "once", 2: "twice"}.get(n, f"{n} times")


class LocalSummaryModel:
    """Extractive summaries from the user's own words, in the third person.

    Before summarising, :meth:`prepare` reads the whole corpus once (``summarise_conversations`` calls it)
    to learn its template text (see :class:`TemplateStats`); :meth:`summarise` without it learns from the
    conversations it is given. So a summary depends on the corpus around it: this model is not cached
    (only remote models are), and a cache for it would need the corpus in its key.
    """

    identity = "local-summary/v3"

    def __init__(self) -> None:
        self._stats: TemplateStats | None = None
        self._memo: dict[str, str] = {}  # message -> its request sentence, under ``_memo_stats``
        self._memo_stats: TemplateStats | None = None

    def prepare(self, conversations: Sequence[Conversation]) -> None:
        """Learn the corpus's template text (lines and labels many distinct user messages repeat)."""
        self._stats = TemplateStats.fit(conversations)

    def requests(self, conversation: Conversation, stats: TemplateStats | None = None) -> list[str]:
        """The main request and the follow-ups, as the user wrote them (template and material removed)."""
        stats = stats if stats is not None else self._stats
        out: list[str] = []
        for m in conversation.messages:
            if m.role == "user":
                sentence = self._memo.get(m.content) if stats is self._memo_stats else None
                if sentence is None:
                    sentence = choose_request(message_candidates(m.content, stats))
                    if stats is self._memo_stats:
                        if len(self._memo) >= 100_000:
                            self._memo.clear()
                        self._memo[m.content] = sentence
                if _substantive(sentence) and sentence.lower() not in (s.lower() for s in out):
                    out.append(sentence)
        return out

    def summarise_one(self, conversation: Conversation, stats: TemplateStats | None = None) -> GeneratedSummary:
        asks = self.requests(conversation, stats)
        n_users = sum(m.role == "user" for m in conversation.messages)
        n_replies = sum(m.role == "assistant" for m in conversation.messages)
        if asks:
            ask = _as_instruction(_clip(asks[0], 30))
            first = f"The user asked the assistant to {ask.rstrip('.…')}"
        elif n_users:
            ask = "help with a short message"
            first = "The user sent a short message with no clear request"
        else:
            ask, first = "start a conversation", "The user sent no message"
        follows = [_as_instruction(_clip(s, 20)).rstrip(".…") for s in asks[1:3]]
        replies = f"the assistant replied {_times(n_replies)}" if n_replies else ""
        if follows:
            second = f"They followed up asking the assistant to {', then to '.join(follows)}"
            second += f", and {replies}." if replies else "."
        else:
            second = f"{replies[:1].upper()}{replies[1:]}." if replies else ""
        request_text = " ".join(asks) if asks else "\n".join(m.content for m in conversation.messages
                                                             if m.role == "user")[:2_000]
        return GeneratedSummary(
            summary=f"{first.rstrip('.…')}. {second}".strip(),
            request=f"The user's overall request for the assistant is to {ask.rstrip('.…')}.",
            topic=classify_topic(request_text),
            languages=detect_languages("\n".join(m.content for m in conversation.messages)),
            task=f"The task is to {ask.rstrip('.…')}.",
        )

    def summarise(self, conversations: Sequence[Conversation], progress: Progress | None = None) -> list[GeneratedSummary]:
        stats = self._stats if self._stats is not None else TemplateStats.fit(conversations)
        if stats is not self._memo_stats:
            self._memo, self._memo_stats = {}, stats
        out = []
        total = len(conversations)
        for i, conversation in enumerate(conversations, start=1):
            out.append(self.summarise_one(conversation, stats))
            if progress is not None and (i % 1000 == 0 or i == total):
                progress(i, total)
        return out


@functools.lru_cache(maxsize=1)
def _stopword_set() -> frozenset[str]:
    """scikit-learn's English stop words and ours (imported lazily: sklearn is slow to import)."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return frozenset(ENGLISH_STOP_WORDS) | _NAMING_STOPWORDS


# --- terms: product names and multi-word names stay whole -------------------------------------------------

_TERM = re.compile(
    r"[A-Z][A-Za-z0-9]*(?:\s?&\s?[A-Z][A-Za-z0-9]*)+"  # "Weights & Biases", "W&B"
    r"|[A-Z][a-z0-9]+(?:\s[A-Z][a-z0-9]+)+"  # "Hugging Face", "Visual Studio Code"
    r"|[A-Za-z][A-Za-z0-9]*(?:[.+#-][A-Za-z0-9]+)*[+#]*"  # "PyTorch", "wandb.init", "scikit-learn", "C++"
)
"""A term as a person reads it: a word, a product name with ``&`` or ``.``, or a run of capitalised words
(names are tokenised with their first word lower-cased, so a sentence's capital never starts one)."""


@functools.lru_cache(maxsize=200_000)
def _term_key(surface: str) -> str | None:
    key = " ".join(surface.lower().split())
    if key in _stopword_set() or key in _VERBS or (key in _IMPERATIVES and key not in _ALSO_NOUNS) or key.isdigit():
        return None
    if len(key) < 3 and not any(ch in key for ch in "&+#"):
        return None
    return key


def _terms(text: str) -> list[tuple[str, str, int, int]]:
    """``(key, surface, start, end)`` for each term of ``text`` (stop words and verbs skipped)."""
    text = _lower_first(text)
    out = []
    for m in _TERM.finditer(text):
        surface, start = m.group(0), m.start()
        if surface.startswith(("The ", "A ", "An ")) and " " in surface:  # "The Big Bang Theory" -> "Big Bang Theory"
            cut = surface.index(" ") + 1
            surface, start = surface[cut:], start + cut
        if key := _term_key(surface):
            out.append((key, surface, start, m.end()))
    return out


_MULTIWORD = re.compile(r"[A-Z][A-Za-z0-9]*(?:\s?&\s?[A-Z][A-Za-z0-9]*)+|[A-Z][a-z0-9]+(?:\s[A-Z][a-z0-9]+)+")


def _multiword_key(text: str) -> str:
    key = re.sub(r"\s*(?:&|\band\b)\s*", " & ", text.lower())
    return " ".join(re.sub(r"^(?:the|a|an)\s+", "", key).split())


def _multiword_merger(docs: Sequence[str], limit: int = 200):
    """Multi-word names the corpus writes capitalised ("Hugging Face", "Weights & Biases") are learnt from
    it; the returned function rewrites their lower-case spellings ("hugging face", "weights and biases") to
    that form, so they stay one term. None when the corpus has no such names."""
    counts: Counter[str] = Counter()
    surfaces: Counter[tuple[str, str]] = Counter()
    for doc in docs:
        for m in _MULTIWORD.findall(doc):
            if " " in m:
                m = re.sub(r"^(?:The|A|An)\s+", "", m)
                if " " in m:
                    counts[_multiword_key(m)] += 1
                    surfaces[_multiword_key(m), m] += 1
    keys = [k for k, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:limit] if n >= 2]
    if not keys:
        return None
    canonical: dict[str, str] = {}
    for (k, s), _ in sorted(surfaces.items(), key=lambda kv: (-kv[1], kv[0][1])):
        canonical.setdefault(k, s)
    alternatives = "|".join(re.escape(k).replace(r"\ \&\ ", r"\s*(?:&|and)\s*").replace(r"\ ", r"\s+")
                            for k in sorted(keys, key=lambda k: (-len(k), k)))
    pattern = re.compile(rf"\b(?:{alternatives})\b", re.I)
    firsts = {k.split()[0] for k in keys}

    def merge(doc: str) -> str:
        lowered = doc.lower()
        if not any(f in lowered for f in firsts):
            return doc
        return pattern.sub(lambda m: canonical.get(_multiword_key(m.group(0)), m.group(0)), doc)

    return merge


@functools.lru_cache(maxsize=200_000)
def _keyed(surface: str) -> tuple[str, str] | None:
    """``(key, surface)`` of one matched term, or None for a stop word or verb."""
    if surface.startswith(("The ", "A ", "An ")) and " " in surface:
        surface = surface[surface.index(" ") + 1:]
    key = _term_key(surface)
    return (key, surface) if key else None


def _slug_part(key: str) -> str:
    return re.sub(r"[^a-z0-9]", "", key.replace("&", "and").replace("++", "pp").replace("#", "sharp"))


def _distinctive_terms(docs: Sequence[str], top: int = 3, seed: int = 0,
                       exclude: Sequence[frozenset[str]] | None = None) -> list[list[str]]:
    """Class-based TF-IDF: the terms that set each document (a whole group's text) apart from the others,
    as they are written ("Weights & Biases", "PyTorch"), never stop words or verbs.

    ``exclude[i]`` holds lower-case words not to use for document ``i`` (its name's verb, say).
    """
    from sklearn.feature_extraction.text import TfidfVectorizer

    seen: Counter[tuple[str, str]] = Counter()
    merge = _multiword_merger(docs)

    def analyse(doc: str) -> list[str]:
        if merge is not None:
            doc = merge(doc)
        pairs = [p for p in map(_keyed, _TERM.findall(_lower_first(doc))) if p is not None]
        seen.update(pairs)
        return [k for k, _ in pairs]

    vec = TfidfVectorizer(analyzer=analyse, sublinear_tf=True, max_df=0.9 if len(docs) > 3 else 1.0)
    try:
        matrix = vec.fit_transform(docs).tocsr()
    except ValueError:  # every word was a stop word
        return [list(_FALLBACK_TERMS[:top]) for _ in docs]
    vocab = vec.get_feature_names_out()
    shown: dict[str, str] = {}
    for (key, surface), n in sorted(seen.items(), key=lambda kv: (-kv[1], kv[0][1])):
        shown.setdefault(key, surface)  # the most common spelling ("PyTorch" over "pytorch")
    out = []
    for i in range(matrix.shape[0]):
        lo, hi = matrix.indptr[i], matrix.indptr[i + 1]
        idx, data = matrix.indices[lo:hi], matrix.data[lo:hi]
        skip = exclude[i] if exclude else frozenset()
        terms: list[str] = []
        parts: set[str] = set()
        for j in np.lexsort((vocab[idx], -data)):
            key = str(vocab[idx[j]])
            part = _slug_part(key)
            if key not in skip and part and part not in parts and not (set(key.split()) & skip):
                terms.append(shown.get(key, key))
                parts.add(part)
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
     "doing", "way", "ways", "works", "uses", "finds", "they're", "they've", "they'd", "they'll", "what's",
     "how's", "it's", "that's", "there's", "possible", "thing", "things", "needed", "required",
     "short", "message", "clear", "quoted", "text"})

_VERBS = frozenset((
    "write", "compose", "explain", "solve", "describe", "create", "draft", "edit", "rewrite", "help", "suggest",
    "summarize", "summarise", "translate", "calculate", "design", "generate", "plan", "analyze", "analyse",
    "compare", "implement", "debug", "imagine", "pretend", "evaluate", "identify", "list", "provide", "give",
    "advise", "answer", "show", "tell", "walk", "craft", "develop", "construct", "embrace", "fix", "find", "get",
    "build", "prepare", "start", "make", "keep", "add", "check",
))
_ADVICE_VERBS = frozenset(("help", "advise", "answer", "give", "tell", "show", "walk", "suggest", "provide", "find",
                           "get", "make", "keep", "check", "explain", "use", "do", "try", "go", "let", "need"))
_VERB_PHRASE = {"help": "Help with", "advise": "Advise on", "answer": "Explain", "give": "Advise on",
                "tell": "Explain", "walk": "Explain", "use": "Help with", "do": "Help with", "try": "Help with",
                "go": "Help with", "let": "Help with", "need": "Help with"}
_REQUEST_PREFIX = re.compile(r"^\s*(?:the user'?s overall request for the assistant is to|"
                             r"the user asked the assistant to)\s+", re.I)
_DANGLING = frozenset("a an the to of about for with and or but in on at by from as into than that which who whose "
                      "their your my its our his her this these those is are was were be being when while if so "
                      "some any very more most someone something".split())
_TOKEN = re.compile(r"[a-z][a-z0-9]{2,}")
_CLAUSE_STARTS = frozenset("that which who whose where when whenever while if because so since whereas".split())
_PHRASE_STARTS = _CLAUSE_STARTS | frozenset(
    "about for with to in on at from by into of and or but as using without including via after before than "
    "like during between across through under over against within".split())
"""Words a shorter name may end before: what follows them is a phrase of its own."""


def _instruction(summary: ConversationSummary) -> str:
    """The summary's request as a bare instruction ("write a poem about …"), one sentence."""
    text = _REQUEST_PREFIX.sub("", (summary.request or summary.summary or "").strip())
    return _SENTENCE.split(text, maxsplit=1)[0].rstrip(" .!?…:;,") or "help with a general request"


def _clause(text: str) -> str:
    """Text safe to embed in a sentence: no sentence breaks inside, no trailing punctuation."""
    return re.sub(r"[.!?]+(?=\s)", ",", text).rstrip(" .!?…:;,")


def _shorten(instruction: str, max_words: int = 10) -> tuple[str, bool]:
    """The instruction as a name of at most ``max_words`` words, capitalised, and whether it is whole: cut
    (if at all) only where a phrase ends, before a clause, a preposition or a comma, never inside a quote."""
    words = _clause(instruction).replace("…", "").split()
    if not words:
        return "Help with a general request", True
    whole = True
    if len(words) > max_words:
        open_at = _quote_depths(words[: max_words + 1])
        cuts = [i for i in range(3, max_words + 1) if not open_at[i]
                and words[i - 1].lower().strip(",;:") not in _DANGLING and _phrase_ends(words, i)]
        clauses = [i for i in cuts if i >= 6 and words[i].lower() in _CLAUSE_STARTS]
        if clauses or cuts:
            words = words[: max(clauses or cuts)]
        else:
            words, whole = words[:max_words], False
    while len(words) > 2 and words[-1].lower().strip(",;:'\"“”") in _DANGLING:
        words.pop()
    words[-1] = words[-1].rstrip(",;:")
    deduped = [w for i, w in enumerate(words) if i == 0 or w.lower() != words[i - 1].lower()]
    name = " ".join(deduped)
    return name[:1].upper() + name[1:], whole and len(deduped) >= 2 and not _inside_quote(deduped)


def _phrase_ends(words: Sequence[str], i: int) -> bool:
    """Whether a phrase ends before ``words[i]``: a clause, preposition or participle starts there ("… blog
    post | comparing two phones"), or a comma ends the words before it and a phrase follows it."""
    nxt, prev = words[i].lower().strip("\"'“("), words[i - 1].lower()
    if prev.rstrip(",").endswith("ing") and nxt in _PHRASE_STARTS:
        return False  # "beginning | with …": the participle needs what follows
    participle = nxt.endswith("ing") and len(nxt) > 5 and i >= 4 and prev.rstrip(",") not in _AUXILIARIES \
        and prev.rstrip(",") not in ("be", "been", "am", "to", "of", "for", "about", "by", "without")
    if prev.endswith(","):
        return nxt in _PHRASE_STARTS or participle
    return nxt in _PHRASE_STARTS or participle


def _short_name(instruction: str, max_words: int = 10) -> str:
    """At most ``max_words`` words, not ending on a dangling article or preposition, capitalised."""
    return _shorten(instruction, max_words)[0]


def _quote_depths(words: Sequence[str]) -> list[bool]:
    """``out[i]``: whether a quotation opened in ``words[:i]`` is still open after them."""
    out, depth = [False], 0
    for w in words:
        depth += w[:1] in "'\"“(" and len(w) > 1
        depth -= w.rstrip(",.;:!?")[-1:] in "'\"”)" and not w.endswith("'s")
        out.append(depth > 0)
    return out


def _inside_quote(words: Sequence[str]) -> bool:
    """Whether a quotation opened in ``words`` is still open at their end."""
    depth = 0
    for w in words:
        depth += w[:1] in "'\"“(" and len(w) > 1
        depth -= w.rstrip(",.;:!?")[-1:] in "'\"”)" and not w.endswith("'s")
    return depth > 0


def _ranked(instructions: Sequence[str], limit: int = 12) -> list[str]:
    """The group's distinct instructions, most typical first: their words are the most shared across the
    group; a full sentence beats a bare keyword query, then shorter beats longer."""
    distinct = Counter(instructions)
    stop = _stopword_set()
    tokens = {t: frozenset(_TOKEN.findall(t.lower())) - stop for t in distinct}
    df: Counter[str] = Counter()
    for t, n in distinct.items():
        df.update(dict.fromkeys(tokens[t], n))

    def key(t: str) -> tuple:
        words = tokens[t]
        mean_df = sum(df[w] for w in words) / len(words) if words else 0.0
        sentence_like = bool(_FUNCTION_WORDS.intersection(t.lower().split()[1:]))
        return (len(words) < 2, -mean_df * (1.0 if sentence_like else 0.7), len(t), t)

    return sorted(distinct, key=key)[:limit]


_FUNCTION_WORDS = frozenset("a an the to of in on for with from by about my their your this that how what why "
                            "which when".split())


def _join(terms: Sequence[str]) -> str:
    return f"{', '.join(terms[:-1])} and {terms[-1]}" if len(terms) > 1 else terms[0]


def _slug(terms: Sequence[str]) -> str:
    parts: list[str] = []
    for t in list(terms) + list(_FALLBACK_TERMS) + ["topic", "misc", "other"]:
        part = _slug_part(t.lower())
        if part and part not in parts:
            parts.append(part)
    return "_".join(parts[:3])


_CORE = re.compile(r"^(?:explain|show|tell|teach) (?:them )?how to ([a-z]+)\b|^help (?:them )?([a-z]+)\b", re.I)


def _action(name: str) -> tuple[str, str]:
    """A cluster name's action verb and the words it acts on: "Explain how to log images to W&B" ->
    ("log", "images to W&B"), "Write a persuasive email" -> ("write", "a persuasive email")."""
    m = _CORE.match(name)
    if m and (verb := (m.group(1) or m.group(2)).lower()) in _IMPERATIVES and verb not in ("with", "when"):
        return verb, name[m.end():].strip()
    words = name.split(maxsplit=1)
    verb = words[0].lower().strip(",:") if words else "help"
    rest = words[1] if len(words) > 1 else ""
    if verb in ("help", "advise", "answer", "explain"):
        rest = re.sub(r"^(?:with|on|about|when|whether|how|what|why|which)\s+", "", rest, flags=re.I)
    return verb, rest


def _phrases(text: str) -> dict[str, tuple[str, bool, bool]]:
    """Content phrases of one to three adjacent terms (key -> surface, countable, final), split at stop words
    and punctuation. A phrase that ends a run after "a"/"an" ("a blog post") is countable: a name may say
    "blog posts". A final phrase ends a run somewhere, as a noun phrase does ("bayesian" in "bayesian
    search" never does)."""
    text = _lower_first(text)
    runs: list[list[tuple[str, str]]] = []
    articles: list[bool] = []
    last_end = -1
    for key, surface, start, end in _terms(text):
        between = text[last_end:start] if last_end >= 0 else text[:start]
        if last_end < 0 or between.strip():
            runs.append([])
            articles.append(bool(re.search(r"\b(?:a|an|one|each|every)\s+$", between, re.I)))
        runs[-1].append((key, surface))
        last_end = end
    out: dict[str, tuple[str, bool, bool]] = {}
    for run, article in zip(runs, articles):
        for n in (1, 2, 3):
            for i in range(len(run) - n + 1):
                part = run[i: i + n]
                key, last = " ".join(k for k, _ in part), i + n == len(run)
                surface, countable, final = out.get(key, (" ".join(s for _, s in part), False, False))
                out[key] = (surface, countable or (article and last), final or last)
    return out


_ADJECTIVES = frozenset("best right good new different specific custom same other whole easy fastest simple "
                        "simplest easiest better quick clear proper correct main large small".split())
"""Words that describe what is asked about without naming it: a name never ends on one."""


def _verb_form(word: str, in_phrase: bool) -> bool:
    """"crashing", or "crashes"/"sets" ending a longer phrase ("env var sets"): a verb, not what is asked about."""
    if word.endswith("ing") or word in _ADJECTIVES:
        return True
    if not in_phrase or not word.endswith("s"):
        return False
    stem = word[:-2] if word.endswith(("ches", "shes", "xes", "sses")) else word[:-1]
    return stem in _IMPERATIVES and stem not in ("run", "report", "test", "version", "group", "log", "chart")


def _term_parts(phrase: str, multiword: set[str]) -> list[str]:
    """A phrase key's terms, multi-word names kept whole: "weights & biases sweeps" -> ["weights & biases",
    "sweeps"]."""
    words, out, i = phrase.split(" "), [], 0
    while i < len(words):
        for n in (3, 2, 1):
            part = " ".join(words[i: i + n])
            if n == 1 or part in multiword:
                out.append(part)
                i += n
                break
    return out


def _plural(phrase: str) -> str:
    """"blog post" -> "blog posts", "itinerary" -> "itineraries" (a lower-case last word only)."""
    head, _, last = phrase.rpartition(" ")
    if not last.isalpha() or not last.islower() or last.endswith("s"):
        return phrase
    if last.endswith(("x", "z", "ch", "sh")):
        last += "es"
    elif last.endswith("y") and last[-2:-1] not in "aeiou":
        last = last[:-1] + "ies"
    else:
        last += "s"
    return f"{head} {last}" if head else last


class LocalClusterNamingModel:
    """Names a group after its most typical request, as a whole short imperative phrase distinct from the
    other groups' names; slugs and descriptions use the terms that set the group apart (class-based TF-IDF).
    A meta cluster is named by what its children share: their main action and the phrases most of them
    mention ("Log and visualise images and tables"), never two siblings with the same opening words."""

    identity = "local-cluster-naming/v3"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def name_clusters(self, groups: Sequence[Sequence[ConversationSummary]]) -> list[GeneratedCluster]:
        instructions = [[_instruction(s) for s in g] for g in groups]
        names: list[str] = [""] * len(groups)
        reps: list[str] = [""] * len(groups)
        used: set[str] = set()
        for i in sorted(range(len(groups)), key=lambda i: (-len(groups[i]), i)):
            ranked = _ranked(instructions[i]) if instructions[i] else ["help with a general request"]
            options = []
            pick = None
            for rep in ranked:  # the most typical request that makes a whole name no other group has
                name, whole = _shorten(rep)
                options.append((rep, name, whole))
                if whole and name.lower() not in used:
                    pick = (rep, name)
                    break
            pick = pick or next(((r, n) for r, n, _ in options if n.lower() not in used), None) \
                or (options[0][0], options[0][1])  # every candidate is taken: a term tells them apart below
            reps[i], names[i] = pick
            used.add(names[i].lower())
        exclude = [frozenset({_action(n)[0], n.split(maxsplit=1)[0].lower()}) for n in names]
        all_terms = _distinctive_terms([" ".join(ins) for ins in instructions], seed=self.seed, exclude=exclude)
        seen: Counter[str] = Counter(n.lower() for n in names)
        out = []
        for group, name, rep, terms in zip(groups, names, reps, all_terms):
            if seen[name.lower()] > 1:  # the same request heads several groups: add what sets this one apart
                extra = next((t for t in terms if t.lower() not in name.lower()), None)
                if extra and len(name.split()) + len(extra.split()) + 1 <= 10:
                    name = f"{name} with {extra}" if len(extra.split()) < 4 else name
            langs = Counter(lang for s in group for lang in (s.languages or [])[:1])
            lang = langs.most_common(1)[0][0] if langs else "english"
            n = len(group)
            description = (
                f"Users asked the assistant to {_lower(_clause(' '.join(rep.split()[:25])))}. "
                f"The {n} conversation{'s' if n != 1 else ''} "
                f"{'were mostly in ' + lang.capitalize() + ' and ' if lang != 'english' else ''}"
                f"often mentioned {_join(terms)}."
            )
            out.append(GeneratedCluster(name=name, summary=description, slug=_slug(terms)))
        return out

    def name_meta_clusters(self, groups: Sequence[Sequence[Cluster]]) -> list[GeneratedCluster]:
        actions = [[(_action(c.name), max(len(c.chat_ids), 1)) for c in g] for g in groups]
        phrase_sets = [[_phrases(rest) for (_, rest), _ in acts] for acts in actions]
        multiword = {k for sets in phrase_sets for s in sets for k, (surface, _, _) in s.items()
                     if " " in k and len(_TERM.findall(surface)) == 1}  # "Weights & Biases", "Hugging Face"
        group_df: Counter[str] = Counter()
        for sets in phrase_sets:
            group_df.update({k for s in sets for k in s})
        n_groups = len(groups)
        used_leads: set[str] = set()
        results: list[GeneratedCluster | None] = [None] * n_groups
        for gi in sorted(range(n_groups), key=lambda i: (-sum(w for _, w in actions[i]), i)):
            acts, sets = actions[gi], phrase_sets[gi]
            total = sum(w for _, w in acts)
            verbs: Counter[str] = Counter()
            coverage: Counter[str] = Counter()
            surface: dict[str, str] = {}
            countable: Counter[str] = Counter()
            ends: Counter[str] = Counter()
            spellings: Counter[tuple[str, str]] = Counter()
            for ((verb, _), w), phrases in zip(acts, sets):
                verbs[_VERB_FAMILY.get(verb, verb)] += w
                for k, (s, count, final) in phrases.items():
                    coverage[k] += w
                    spellings[k, s] += w
                    countable[k] += w if count else 0
                    ends[k] += w if final else 0
            for (k, s), _ in sorted(spellings.items(), key=lambda kv: (-kv[1], kv[0][1])):
                surface.setdefault(k, s)  # the spelling most children use
            surface = {k: _plural(s) if countable[k] > 0 else s for k, s in surface.items()}
            verb_order = sorted(verbs, key=lambda v: (-verbs[v], v))
            scored = sorted(coverage, key=lambda k: (
                -(coverage[k] / total) ** 1.5 * math.log((1 + n_groups) / group_df[k])
                * (1 + 0.15 * (len(k.split()) - 1)), k))
            scored = [k for k in scored if ends[k] and not _verb_form(k.rsplit(" ", 1)[-1], " " in k)] or scored
            phrases = _distinct_phrases(scored, 4, coverage)
            verbs_of: dict[str, Counter] = {}
            children_of: dict[str, list[int]] = {}
            for ci, (((verb, _), w), found) in enumerate(zip(acts, sets)):
                for k in phrases:
                    if k in found:
                        verbs_of.setdefault(k, Counter())[_VERB_FAMILY.get(verb, verb)] += w
                        children_of.setdefault(k, []).append(ci)
            only = {c.name for c in groups[gi]}
            if len(only) == 1 and (lead := " ".join(next(iter(only)).lower().split()[:2])) not in used_leads:
                name = next(iter(only))  # one kind of request: the child's own name says what it is
            else:
                name, lead = _meta_name(verbs_of, verb_order, phrases, surface, used_leads, children_of)
            used_leads.update((lead, " ".join(name.lower().split()[:2]), lead.rsplit(" ", 1)[0]))
            group = groups[gi]
            biggest = sorted(group, key=lambda c: (-len(c.chat_ids), c.name))[:2]
            examples = " and ".join(f"“{_clause(c.name)}”" for c in biggest)
            n_chats = len({cid for c in group for cid in c.chat_ids})
            if len(group) == 1:
                description = (f"Users asked the assistant to {_lower(name)}, as in the cluster {examples}. "
                               f"It covered {n_chats} conversation{'s' if n_chats != 1 else ''}.")
            else:
                description = (f"Users asked the assistant to {_lower(name)}, across {len(group)} related clusters "
                               f"such as {examples}. Together these clusters covered {n_chats} conversations.")
            first = name.split(maxsplit=1)[0].lower()
            slug_terms = [t for k in list(phrases) + list(scored[:12]) for t in _term_parts(k, multiword)
                          if t != first]
            results[gi] = GeneratedCluster(name=name, summary=description, slug=_slug(slug_terms))
        return results  # type: ignore[return-value]


def _distinct_phrases(scored: Sequence[str], top: int, coverage: Counter | None = None) -> list[str]:
    """The best phrases that share no word with a better one; a phrase gives way to a longer one that
    contains it when that covers at least half as much ("best" -> "best practices")."""
    out: list[str] = []
    words: set[str] = set()
    for k in scored:
        if coverage is not None:
            longer = [e for e in scored[:200] if len(e) > len(k) and f" {k} " in f" {e} "
                      and coverage[e] >= 0.5 * coverage[k]]
            if longer:
                k = max(longer, key=lambda e: (coverage[e], len(e), e))
        parts = set(k.split())
        if not parts & words:
            out.append(k)
            words |= parts
            if len(out) == top:
                break
    return out


_VERB_FAMILY = {"compose": "write", "draft": "write", "craft": "write", "pen": "write", "rewrite": "edit",
                "revise": "edit", "proofread": "edit", "correct": "edit", "rephrase": "edit", "paraphrase": "edit",
                "polish": "edit", "debug": "fix", "troubleshoot": "fix", "resolve": "fix", "summarise": "summarize",
                "analyse": "analyze", "organise": "organize", "visualise": "visualize", "optimise": "optimize"}
"""Verbs a meta-cluster name may speak of together ("Write" for compose, draft and craft)."""

_ADVICE_HEADS = ("Help with", "Explain", "Advise on", "Answer questions on")


def _verb_phrase(verb: str) -> str:
    return _VERB_PHRASE.get(verb, verb.capitalize())


def _main_verb(verbs: Counter) -> str:
    """The verb most of these children share; a concrete one ("log", "write") when it has a third of them."""
    order = sorted(verbs, key=lambda v: (-verbs[v], v))
    if not order:
        return "help"
    strong = [v for v in order if v not in _ADVICE_VERBS]
    if order[0] in _ADVICE_VERBS and strong and verbs[strong[0]] * 3 >= sum(verbs.values()):
        return strong[0]
    return order[0]


def _meta_name(verbs_of: dict[str, Counter], verb_order: Sequence[str], phrases: Sequence[str],
               surface: dict[str, str], used_leads: set[str],
               children_of: dict[str, list[int]] | None = None) -> tuple[str, str]:
    """What a group's children share: the verb of the children that mention its main phrase, that phrase,
    and a second phrase when the same kind of request mentions it. Returns the name and its leading phrase
    (the verb phrase and the first word after it), which no sibling may share."""
    candidates: list[tuple[str, str, str]] = []
    children_of = children_of or {}
    for p in phrases or ["general requests"]:
        verb = _main_verb(verbs_of.get(p, Counter())) if phrases else (verb_order[0] if verb_order else "help")
        mine = verbs_of.get(p, Counter())
        heads = [_verb_phrase(verb)] + [_verb_phrase(v) for v in sorted(mine, key=lambda v: (-mine[v], v))
                                        if v != verb and v not in _ADVICE_VERBS and mine[v] * 4 >= sum(mine.values())]
        if verb in _ADVICE_VERBS:  # questions and advice: say so in words no sibling has used yet
            heads += [h for h in _ADVICE_HEADS if h not in heads]
        shown = surface.get(p, p)
        partners = [q for q in phrases if q != p and _main_verb(verbs_of.get(q, Counter())) == verb
                    and not set(children_of.get(q, ())) <= set(children_of.get(p, ()))]
        second = heads[1] if len(heads) > 1 and verb not in _ADVICE_VERBS and " " not in heads[1] else None
        if second:  # two kinds of request on the same thing: "Write and edit professional emails"
            candidates.append((f"{heads[0]} and {second.lower()} {shown}", f"{heads[0]} and".lower(), heads[0]))
        for head in heads:
            lead = f"{head} {shown.split()[0]}".lower()
            if partners:
                candidates.append((f"{head} {shown} and {surface.get(partners[0], partners[0])}", lead, head))
            candidates.append((f"{head} {shown}", lead, head))
    candidates = [c for c in candidates if len(c[0].split()) <= 10] or [("Help with general requests", "help with general", "")]
    fresh = lambda c: c[1] not in used_leads and " ".join(c[0].lower().split()[:2]) not in used_leads  # noqa: E731
    name, lead, _ = next((c for c in candidates if fresh(c)), None) \
        or next((c for c in candidates if c[1] not in used_leads), candidates[0])
    return name[:1].upper() + name[1:], lead


def _lower(text: str) -> str:
    return _lower_first(text)


from kura_dagster.pipeline.models.local_embedding import LocalEmbeddingModel  # noqa: E402,F401  (its home since issue 18)
