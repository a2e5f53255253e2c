"""Text helpers of the offline models: languages, key phrases, person words, class-based TF-IDF.

Nothing here knows a data set. Natural languages come from libraries made for it (CLD2 through ``pycld2``,
and ``lingua-language-detector`` where CLD2 is unsure; both ship their models in their wheels), stop words from scikit-learn (English) and the ``stop-words`` package (other languages), and
programming languages only from what a code fence declares (```` ```python ````). Key phrases are the runs
of words between stop words and punctuation (the RAKE idea: Rose et al., 2010), so a phrase never holds a
pronoun, and names are chosen by class-based TF-IDF (c-TF-IDF, as BERTopic does) over such phrases.
"""

from __future__ import annotations

import functools
import math
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence

# --- languages -----------------------------------------------------------------------------------------

LANGUAGES = ("ENGLISH", "SPANISH", "FRENCH", "GERMAN", "PORTUGUESE", "ITALIAN", "DUTCH", "RUSSIAN", "CHINESE",
             "JAPANESE", "KOREAN", "ARABIC", "TURKISH", "POLISH", "INDONESIAN", "VIETNAMESE")
"""The languages a summary may name (lingua's names): the most common ones in chat logs. Fewer candidates
make detection faster and stop rare look-alikes from winning short texts."""
DETECT_CHARS = 200
"""Characters of the request the detectors read (enough for a reliable vote; the cost grows with length)."""


@functools.lru_cache(maxsize=1)
def _detector():
    """One lingua detector per process, in its low-accuracy mode (trigram models only: several times faster,
    and accurate on sentence-length text), choosing among :data:`LANGUAGES`."""
    from lingua import Language, LanguageDetectorBuilder

    return (LanguageDetectorBuilder.from_languages(*(getattr(Language, name) for name in LANGUAGES))
            .with_low_accuracy_mode().build())


_CLD2_NAMES = {"ChineseT": "CHINESE"}


def _cld2(text: str) -> str | None:
    """CLD2's language when it is sure and the language is one of :data:`LANGUAGES`, else None."""
    import pycld2

    try:
        reliable, _, details = pycld2.detect(text.encode("utf-8", "replace").decode("utf-8"))
    except pycld2.error:  # text CLD2 cannot read (control bytes): lingua decides
        return None
    name = _CLD2_NAMES.get(details[0][0], details[0][0])
    return name if reliable and name in LANGUAGES else None


def detect_natural_languages(texts: Sequence[str]) -> list[str]:
    """The language of each text, lower-case ("english", "german"), or "unknown" when it has no letters to
    judge by. Google's CLD2 (``pycld2``, ~10 µs a text) answers where it is sure; lingua (``lingua-language-
    detector``, ~100 µs a text, better on short and mixed text) decides the rest, all of them in one parallel
    call. Lingua alone cost 9-13 CPU seconds per 100k requests, half the offline pipeline's CPU."""
    if not texts:
        return []
    clipped = [t[:DETECT_CHARS] for t in texts]
    found: list[str | None] = [_cld2(t) for t in clipped]
    unsure = [i for i, name in enumerate(found) if name is None]
    if unsure:
        for i, lang in zip(unsure, _detector().detect_languages_in_parallel_of([clipped[i] for i in unsure])):
            found[i] = lang.name if lang is not None else "UNKNOWN"
    return [name.lower() for name in found]  # type: ignore[union-attr]


_FENCE_INFO = re.compile(r"^[ \t]*```+[ \t]*([A-Za-z][\w+#.-]{0,20})", re.M)
_FENCE_ALIASES = {"py": "python", "python3": "python", "js": "javascript", "ts": "typescript", "sh": "bash",
                  "shell": "bash", "zsh": "bash", "c++": "cpp", "golang": "go", "rs": "rust", "yml": "yaml",
                  "console": "bash", "jsx": "javascript", "tsx": "typescript"}
"""Common short forms of a fence's info string (Markdown's own convention), so "py" and "python" agree."""


def code_languages(text: str) -> list[str]:
    """Programming languages the text's code fences declare, in order of first appearance."""
    if "```" not in text:
        return []
    out: dict[str, None] = {}
    for m in _FENCE_INFO.finditer(text):
        name = m.group(1).lower()
        out[_FENCE_ALIASES.get(name, name)] = None
    out.pop("text", None)
    out.pop("plaintext", None)
    return list(out)


# --- how much of a message is read -------------------------------------------------------------------

READ_CHARS = 6_000
"""The most characters of one message the offline models read (the template pass, the request finder and the
offline embedding): a longer message, a pasted file, log or document, is read at its first and last
``READ_CHARS // 2`` characters, where people put what they ask. Every step after this cut (line and sentence
splitting, the template look-ups, markup cleaning) costs time in proportion to what it reads, so this bounds
a conversation's cost whatever was pasted into it; the embedding uses at most ``USER_CHARS`` (4,000) characters
of a conversation's user text anyway. Measured on ``benchmarks/scale.py --lengths realistic`` (7.4 KB per
conversation on average, 1.5% above 50 KB), the summary and embedding models' CPU per later 10,000-conversation
partition: 8.7-9.0 s at 20,000, 6.2 s at 6,000, 5.5 s at 4,000. 4,000 cut three 4.1 KB messages of the quality
benchmark's code corpus: its quality table stayed the same, but ``benchmarks/taxonomy_days.py``'s incremental vs
rebuild AMI on the mixed corpus (min_conversations 10) went from 0.834 to 0.783; at 6,000 no message of those
corpora is cut and both tables are as at 20,000."""


def bounded_message(text: str, limit: int | None = None) -> str:
    """``text`` when it has at most ``limit`` (:data:`READ_CHARS`) characters, else its first and last
    ``limit // 2`` characters joined by a line break."""
    limit = READ_CHARS if limit is None else limit
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n{text[-half:]}"


# --- lines and sentences (what the summary model's template pass and the offline embedding count) ----------

SENTENCE_END = re.compile(r"(?<=[.!?])\s+|(?<=[。！？])\s*")
"""Where a sentence ends: ". " and the like, or a full-width 。！？ (no space follows in CJK text)."""
LINE_LABEL = re.compile(r"^(?:[#>*_\s-]*)([A-Za-z][\w'&/ -]{0,40}?)\s*:(?!//)\s*")
"""A line's label: "Question: …", "Context :", "Input:" (at most five words)."""
NORM_STRIP = "#>*-|:_=` \t"


def norm_line(line: str) -> str:
    """A line or sentence as the corpus pass counts it: lower case, markup at its ends and spacing ignored."""
    return " ".join(line.lower().replace("**", "").replace("`", "").strip(NORM_STRIP).split())


# --- person words and stop words -------------------------------------------------------------------------

PERSON_WORDS = frozenset("""
    i i'm i've i'd i'll me my mine myself we we're we've we'd we'll us our ours ourselves
    you you're you've you'd you'll your yours yourself yourselves
""".split())
"""English first- and second-person words: a summary speaks of the user in the third person, so these never
enter a key phrase or a name."""
_PERSON = re.compile(r"(?<![\w'])(?:" + "|".join(sorted(map(re.escape, PERSON_WORDS), key=len, reverse=True))
                     + r")(?![\w'])", re.I)


def has_person_words(text: str) -> bool:
    """Whether ``text`` has a first- or second-person word (English; "US" in capitals is the country)."""
    return any(m.group(0) != "US" for m in _PERSON.finditer(text.replace("’", "'")))


FUNCTION_WORDS = frozenset("did does doing having shall let lets let's just please want wants need needs using like "
                           "can't don't doesn't didn't isn't aren't won't wouldn't shouldn't couldn't what's "
                           "it's that's there's here's how's who's where's when's why's".split())
"""English auxiliaries, contractions and request verbs scikit-learn's list lacks (grammar, not topics)."""


@functools.lru_cache(maxsize=64)
def stop_words(language: str = "english") -> frozenset[str]:
    """scikit-learn's English stop words, :data:`FUNCTION_WORDS` and the person words, plus the ``stop-words``
    package's list for ``language`` when it has one (English text and code turn up in every language's chats)."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    words = set(ENGLISH_STOP_WORDS) | FUNCTION_WORDS | PERSON_WORDS
    if language not in ("english", "unknown"):
        from stop_words import AVAILABLE_LANGUAGES, get_stop_words

        if language in AVAILABLE_LANGUAGES:
            words |= {w.lower() for w in get_stop_words(language)}
    return frozenset(words)


# --- key phrases ---------------------------------------------------------------------------------------

_TOKEN = re.compile(r"[^\W_](?:[\w'.+#&-]*[\w+#])?")
"""A word as a person reads it: "must-see", "C++", "node.js", "O'Brien", "3.5"."""
_BREAK = re.compile(r"[,;:!?()\[\]{}\"“”«»<>|/\\=*`~、。，！？：；（）「」『』【】،؟]|(?<=\w)\.(?=\s|$)|\s[-–—]\s|\n")


MAX_WORD = 40
"""A longer "word" (a hash, a key, base64, a minified line) is never part of a phrase."""
_TOKEN_OR_BREAK = re.compile(f"({_TOKEN.pattern})|{_BREAK.pattern}")


def phrases(text: str, stop: frozenset[str], max_words: int = 4) -> list[str]:
    """The key phrases of ``text`` in order: maximal runs of words that are neither stop words nor
    punctuation, at most ``max_words`` long (a longer run keeps its last ``max_words`` words, where English
    puts the head noun), spelt as in the text ("Q&A", "Fish & Chips"). A run of numbers alone is no phrase."""
    text = text.replace("’", "'")
    out: list[str] = []
    run: list[re.Match[str]] = []
    for m in _TOKEN_OR_BREAK.finditer(text):
        word = m.group(1)
        if word is not None and len(word) <= MAX_WORD:
            lowered = word.lower()
            if lowered not in stop and lowered.strip("'") not in stop:
                run.append(m)
                continue
        if run:
            _flush(text, run, out, max_words)
            run = []
    if run:
        _flush(text, run, out, max_words)
    return out


def _flush(text: str, run: list[re.Match[str]], out: list[str], max_words: int) -> None:
    if len(run) == 1:
        word = run[0].group(0)
        if len(word) > 1 and not word.replace(".", "").isdigit():
            out.append(word)
        return
    if all(m.group(0).replace(".", "").isdigit() for m in run):
        return
    if len(run) > max_words:  # its last words, not opening with a number from inside the run
        run = run[-max_words:]  # ("keras TensorFlow 2 models wandb callback" -> "models wandb callback")
        while len(run) > 1 and run[0].group(0).replace(".", "").isdigit():
            run = run[1:]
    out.append(" ".join(text[run[0].start():run[-1].end()].split()))


def join_phrases(items: Sequence[str]) -> str:
    """"a", "a and b", "a, b and c"."""
    items = list(items)
    if len(items) <= 1:
        return "".join(items)
    return f"{', '.join(items[:-1])} and {items[-1]}"


def phrase_key(phrase: str) -> str:
    return " ".join(phrase.lower().split())


def ascii_words(text: str) -> list[str]:
    """Lower-case ASCII words of ``text`` (accents folded), for slugs."""
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()
    return re.findall(r"[a-z0-9]+", folded)


# --- class-based TF-IDF ------------------------------------------------------------------------------------


def terms_of(phrase_list: Iterable[str], max_n: int = 3) -> Counter:
    """Each phrase and its shorter runs of words (up to ``max_n`` words): "travel blog post" also counts
    "travel blog", "blog post", "travel", "blog" and "post", so related phrases share terms."""
    out: Counter[str] = Counter()
    for p in phrase_list:
        words = phrase_key(p).split()
        seen = set()
        for n in range(1, min(max_n, len(words)) + 1):
            for i in range(len(words) - n + 1):
                seen.add(" ".join(words[i:i + n]))
        out.update(seen)
    return out


def class_tfidf(classes: Sequence[Counter], weights: Sequence[Sequence[float]] | None = None) -> list[dict[str, float]]:
    """c-TF-IDF (Grootendorst, BERTopic): a term's frequency in its class, normalised by the class's size,
    times ``log(1 + A / f)`` where ``A`` is the average class size (in terms) and ``f`` the term's frequency
    over all classes. High for terms frequent in this class and rare in the others."""
    total: Counter[str] = Counter()
    for c in classes:
        total.update(c)
    sizes = [sum(c.values()) for c in classes]
    avg = (sum(sizes) / len(sizes)) if sizes else 0.0
    out = []
    for c, size in zip(classes, sizes):
        out.append({t: (n / size) * math.log(1 + avg / total[t]) for t, n in c.items()} if size else {})
    return out


def diverse_top(scores: dict[str, float], k: int, prefer_multiword: float = 0.25,
                positions: dict[str, float] | None = None) -> list[str]:
    """The ``k`` best terms, each sharing no word with a better one (a simple maximal-marginal-relevance
    choice). A term of several words gets ``prefer_multiword`` more weight (a phrase says more than a word),
    and with ``positions`` (a term's mean index among its text's phrases) an earlier term a little more (a
    request names its subject first). Ties go to the longer term, then the alphabetically first (deterministic)."""
    def weight(t: str) -> float:
        w = scores[t] * (1 + (prefer_multiword if " " in t else 0.0))
        return w / (1 + 0.05 * positions.get(t, 0.0)) if positions else w

    ranked = sorted(scores, key=lambda t: (-weight(t), -t.count(" "), t))
    chosen: list[str] = []
    used: set[str] = set()
    for t in ranked:
        words = set(t.split())
        if words & used:
            continue
        chosen.append(t)
        used |= words
        if len(chosen) == k:
            break
    return chosen
