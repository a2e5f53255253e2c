"""The offline summary model: the user's request found in their own words, told in the third person.

:class:`LocalSummaryModel` finds the sentence that states each user message's request (template text the
corpus repeats, pasted material, code, markup and greetings set aside: :class:`TemplateStats`,
:func:`message_candidates`, :func:`choose_request`) and writes a two-sentence summary. An English request
with no first- or second-person word is quoted whole ("The user asked: “Compose a travel blog post …”");
any other request is described by its key phrases ("The user asked about anchor chain and strong wind."),
never by a clause rewritten around the user's "I" or "you". Languages come from ``lingua`` and from code
fences (:mod:`kura_dagster.pipeline.models.local_text`); nothing here knows a data set.
"""

from __future__ import annotations

import functools
import math
import re
from collections import Counter
from collections.abc import Container, Mapping, Sequence
from dataclasses import dataclass

from kura_dagster.pipeline.models.base import Progress
from kura_dagster.pipeline.models.local_text import (
    LINE_LABEL,
    NORM_STRIP,
    SENTENCE_END,
    bounded_message,
    code_languages,
    detect_natural_languages,
    has_person_words,
    join_phrases,
    norm_line,
    phrase_key,
    phrases,
    stop_words,
)
from kura_dagster.types import Conversation, GeneratedSummary

_GREETING = re.compile(r"^(?:hi|hello|hey|hiya|greetings|good (?:morning|afternoon|evening)|thanks|thank you|"
                       r"quick question|dear \w+)\b", re.I)
_QUESTION_WORDS = frozenset("how what why where when which who whom whose what's how's".split())
_AUXILIARIES = frozenset("is are am was were do does did should can could would will shall may might must has have".split())
_FIRST_PERSON = frozenset("i i'm i've i'd i'll my we we're we've our me".split())


def _is_statement(sentence: str) -> bool:
    """A sentence about the user ("I'm new to this.") rather than a question or an instruction."""
    first = sentence.split(maxsplit=1)[0].lower() if sentence.strip() else ""
    return first in _FIRST_PERSON and not sentence.rstrip().endswith("?")


# --- finding the request: the corpus pass (template detection) and per-message cleaning ------------------

_FENCE = re.compile(r"```.*?(?:```|\Z)", re.S)
_SLOW_PATH = re.compile(r"[\n`#*|>\[]|https?://|www\.|:")
"""Messages without any of these are a plain sentence or two: no markup, template label or code to remove."""
_SKIP_LINE = re.compile(
    r"^(?:#{1,6}\s|\||>|[-*_=]{3,}\s*$|<[a-z/!]|!\[|\[\d{1,3}\]|"  # heading, table row, quote, rule, HTML, image,
    # a numbered reference or citation ("[2] (source: …)", "[1]: https://…")
    r"Traceback \(most recent|File \"|\s*at [\w.$]+\(|"  # tracebacks
    r"[\w.]*(?:Error|Exception|Warning)\b:?|"  # error lines
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
_CONTENT = re.compile(r"[^\W\d_][\w&+#.-]{2,}")
"""A content-bearing word in any script (three or more characters; a CJK run counts as one)."""


def _units(text: str) -> set[str]:
    """The lines of a message, and the sentences of lines that have several (what a template repeats)."""
    out = set()
    for line in text.split("\n"):
        n = norm_line(line)
        if n:
            out.add(n)
            if SENTENCE_END.search(n):
                out.update(s for s in (p.strip(NORM_STRIP) for p in SENTENCE_END.split(n)) if s)
    return out


class TemplateStats:
    """What a corpus repeats around its requests, learnt from the corpus itself.

    A line or sentence that occurs in the user messages of at least ``threshold`` *distinct* conversations
    is template: a prompt preamble, a "Context" header, pasted documentation, a stock "Here is
    my code:". A line label ("Question:", "Input:") that starts lines in that many conversations, each
    time followed by different text, is a template label, and what follows it is the request. Conversations
    whose user messages are identical count once, so a question that many users send word for word
    (MT-Bench repeats each of its conversations ~80 times) is never mistaken for template.
    """

    def __init__(self, counts: Mapping[str, int], heads: frozenset[str], threshold: int, messages: int,
                 units: Container[str] | None = None) -> None:
        self.counts = counts
        """Template line or sentence -> in how many distinct user messages it occurs."""
        self.units = frozenset(counts) if units is None else units
        """What ``counts`` holds (given when ``counts`` is keyed by digests: the offline embedding's stored copy)."""
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
                text = bounded_message(text)
                if "\n" in text or SENTENCE_END.search(text):
                    found |= _units(text)
                if ":" in text:
                    for line in text.split("\n"):
                        if (m := LINE_LABEL.match(line)) and len(m.group(1).split()) <= 5:
                            head = norm_line(m.group(1))
                            labels.add(head)
                            if len(rests.setdefault(head, set())) < 1_000:
                                rests[head].add(norm_line(line[m.end():]))
            units.update(found)
            heads.update(labels)
        return cls({u: n for u, n in units.items() if n >= threshold},
                   frozenset(h for h, n in heads.items() if n >= threshold and h
                             and len(rests[h] - {""}) >= max(3, min(n, 1_000) // 2)), threshold, len(distinct))


@dataclass(frozen=True)
class _Candidate:
    text: str
    slot: bool
    """It followed a template label ("Question: <this>"): the strongest sign of the request."""
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
    text = bounded_message(text)
    units = stats.units if stats is not None else frozenset()
    heads = stats.heads if stats is not None else frozenset()
    fast = not _SLOW_PATH.search(text)
    lines = [text] if fast else _FENCE.sub("\n", text).split("\n")
    out: list[_Candidate] = []
    pasted = False  # inside pasted documentation (after a markdown heading or in a list)
    introduced = False  # after "Here is the paragraph:", until a blank line
    repeated: list[str] = []
    stock: list[_Candidate] = []  # sentences skipped as ones the corpus repeats (a line of its own is not one)
    for raw in lines:
        line = raw.strip()
        if not line:
            introduced = False
            continue
        slot = False
        if not fast:
            m = LINE_LABEL.match(line)
            if m and norm_line(m.group(1)) in heads:  # "Question: <the request>"
                line, slot, pasted, introduced = line[m.end():].strip(), True, False, False
                if not line:
                    continue
            elif norm_line(line) in units:
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
        for sentence in SENTENCE_END.split(line) if SENTENCE_END.search(line) else (line,):
            sentence = sentence.strip()
            if sentence and units and not slot and norm_line(sentence) in units:
                if _CONTENT.search(sentence) and len(stock) < 8:
                    stock.append(_Candidate(sentence, False, pasted or introduced))
                continue
            if sentence and _CONTENT.search(sentence):
                out.append(_Candidate(sentence, slot, (pasted or introduced) and not slot))
        introduced = introduced or line.endswith(":")  # "Edit the following paragraph:" -> material follows
    if not out and repeated and stats is not None:
        rarest = min(repeated, key=lambda s: stats.counts.get(norm_line(s), 0))
        if stats.counts.get(norm_line(rarest), 0) <= max(stats.threshold, 0.2 * stats.messages):
            out = [_Candidate(_clean_markup(rarest), False, False)]  # not a preamble most conversations share
    if not out and stock and stats is not None:
        # every sentence is one that many users send (a persona, a rule, an ask), put together: the ones that
        # most conversations do not share (unlike a preamble) are the request
        common = max(stats.threshold, 0.2 * stats.messages)
        out = [c for c in stock if stats.counts.get(norm_line(c.text), 0) <= common]
    return out


def _content_words(sentence: str, enough: int = 2) -> int:
    """How many words of ``sentence`` are not stop words, counting up to ``enough``."""
    stop = stop_words("english")
    n = 0
    for m in _CONTENT.finditer(sentence):
        if m.group(0).lower().strip(".-") not in stop:
            n += 1
            if n >= enough:
                break
    return n


def _is_question(sentence: str) -> bool:
    first = sentence.split(maxsplit=1)[0].lower().strip(",:") if sentence else ""
    return sentence.rstrip().endswith("?") or first in _QUESTION_WORDS or first in _AUXILIARIES


_WANT = re.compile(r"^(?:i|we) (?:really )?(?:need|want|would like|'d like|am trying|'m trying|are trying|have) to\b",
                   re.I)


def _pool(candidates: Sequence[_Candidate]) -> list[str]:
    """The sentences that may state the request, best source first: what follows a template label, else the
    user's own words before pasted material; greetings, acknowledgements and introductions ("Here is my
    code:") set aside."""
    pool = [c for c in candidates if c.slot] or [c for c in candidates if not c.material] \
        or [c for c in candidates if _is_question(c.text)] or list(candidates)
    sentences = [_GREETING_PREFIX.sub("", c.text).strip() for c in pool]
    return [s for s in sentences if s and not (_GREETING.match(s) and len(s.split()) <= 4)
            and not _ACKNOWLEDGEMENT.match(s) and not (s.endswith(":") and not _is_question(s))] \
        or [s for s in sentences if s]


def _request_index(content: Sequence[str]) -> int:
    """Which sentence states the request: the first, unless it only sets the scene (a statement about the
    user, "I have a question", a sentence of fewer than two content words) and a later one asks."""
    first = content[0]
    if (_is_statement(first) and not _WANT.match(first)) or _VAGUE.match(first) or _content_words(first) < 2:
        for i, s in enumerate(content[1:4], start=1):
            if not _is_statement(s) and _content_words(s) >= 2:
                return i
    return 0


def choose_request(candidates: Sequence[_Candidate]) -> str:
    """The sentence of a user message that states its request ("" when it has none)."""
    content = _pool(candidates)
    return content[_request_index(content)] if content else ""


def request_context(candidates: Sequence[_Candidate], limit: int = 3) -> tuple[str, list[str]]:
    """The request sentence and up to ``limit`` sentences after it in the user's own words (a persona
    prompt's rules and ask, the details of a question)."""
    content = _pool(candidates)
    if not content:
        return "", []
    i = _request_index(content)
    return content[i], [s for s in content[i + 1:i + 1 + limit] if not _ACKNOWLEDGEMENT.match(s)]


def _read_request(text: str, stats: TemplateStats | None) -> tuple[str, tuple[str, ...]]:
    request, context = request_context(message_candidates(text, stats))
    return request, tuple(context)


_READ: dict[str, tuple[str, tuple[str, ...]]] = {}
"""Short messages read with :data:`_READ_STATS` (at most :data:`_READ_LIMIT`; cleared when full or when
another template is read with)."""
_READ_STATS: list[TemplateStats | None] = [None]
_READ_LIMIT = 200_000
READ_REMEMBERS = 1_000
"""The longest message :func:`read_request` remembers."""


def read_request(text: str, stats: TemplateStats | None) -> tuple[str, tuple[str, ...]]:
    """:func:`request_context` of a user message read with ``stats``. Short messages (1,000 characters at most)
    are remembered for the latest ``stats`` object: the summary model and then the offline embedding read every
    message of a corpus with the same template (an LRU cache would have dropped the first ones by the time the
    second pass reads them), and follow-ups repeat across conversations."""
    if len(text) > READ_REMEMBERS:
        return _read_request(text, stats)
    if _READ_STATS[0] is not stats or len(_READ) >= _READ_LIMIT:
        _READ.clear()
        _READ_STATS[0] = stats
    found = _READ.get(text)
    if found is None:
        found = _READ[text] = _read_request(text, stats)
    return found


def _substantive(sentence: str) -> bool:
    """Whether a chosen sentence states a request (not "I have a question", "thanks", "ok")."""
    if not sentence or _VAGUE.match(sentence) or _ACKNOWLEDGEMENT.match(sentence):
        return False
    stop = stop_words("english")
    return any(w.lower().strip(".-") not in stop for w in _CONTENT.findall(sentence))


def _times(n: int) -> str:
    return {1: "once", 2: "twice"}.get(n, f"{n} times")


QUOTE_WORDS = 30
"""The longest request quoted whole; a longer one is described by its key phrases."""
KEY_PHRASES = 6
"""The most key phrases a request is described by."""
CONTEXT_WORDS = 60
"""The most words (the request sentence and the ones after it) key phrases are drawn from."""


_CAPITALISED = re.compile(r"[A-Z][a-z]+")


@functools.lru_cache(maxsize=65_536)
def _phrases_of(text: str, language: str) -> tuple[str, ...]:
    """The key phrases of one sentence; a single word that opens the sentence loses the sentence's capital
    ("Write a …", "Tell me …" -> "write", "tell"; "Hawaii trip ideas" keeps it). Follow-ups repeat ("Can it be
    shorter?", "continue"): a sentence's phrases are found once."""
    found = phrases(text, stop_words(language))
    if found and " " not in found[0] and text.lstrip().startswith(found[0]) and _CAPITALISED.fullmatch(found[0]):
        found[0] = found[0][:1].lower() + found[0][1:]
    return tuple(found)


def key_phrases(texts: Sequence[str], language: str = "english", limit: int = KEY_PHRASES) -> list[str]:
    """The distinct key phrases of ``texts`` in order of appearance, at most ``limit``."""
    out: dict[str, str] = {}
    words = 0
    for text in texts:
        if words >= CONTEXT_WORDS or len(out) >= limit:
            break
        words += text.count(" ") + 1
        for p in _phrases_of(text, language):
            out.setdefault(phrase_key(p), p)
    return list(out.values())[:limit]


@dataclass
class _Parts:
    request: str
    context: tuple[str, ...]
    follow_ups: list[str]
    user_text: str


class LocalSummaryModel:
    """Extractive summaries in the third person: the request quoted when it is plain English without "I",
    "you" or "my", else described by its key phrases; follow-ups by theirs; the number of replies.

    Before summarising, :meth:`prepare` reads the whole corpus once (``summarise_conversations`` calls it)
    to learn its template text (see :class:`TemplateStats`); :meth:`summarise` without it learns from the
    conversations it is given. So a summary depends on the corpus around it: this model is not cached
    (only remote models are), and a cache for it would need the corpus in its key.
    """

    identity = "local-summary/v4"

    def __init__(self) -> None:
        self._stats: TemplateStats | None = None
        # long message -> (request, context), under ``_memo_stats`` (:func:`read_request` remembers short ones)
        self._memo: dict[str, tuple[str, tuple[str, ...]]] = {}
        self._memo_stats: TemplateStats | None = None
        self._prepared_on: Sequence[Conversation] | None = None

    def prepare(self, conversations: Sequence[Conversation]) -> None:
        """Learn the corpus's template text (lines and labels many distinct user messages repeat). Asked again
        for the same sequence object it keeps what it learnt (the summaries step prepares before a new offline
        embedding fit, which then reads with this template, and ``summarise_conversations`` prepares again)."""
        if self._stats is not None and self._prepared_on is conversations:
            return
        self._stats, self._prepared_on = TemplateStats.fit(conversations), conversations

    @property
    def template(self) -> TemplateStats | None:
        """The template learnt by :meth:`prepare` (the offline embedding reads the turns with the same one)."""
        return self._stats

    def _request_of(self, text: str, stats: TemplateStats | None) -> tuple[str, tuple[str, ...]]:
        if len(text) <= READ_REMEMBERS:
            return read_request(text, stats)  # remembered there (one cache, no second copy of each entry)
        found = self._memo.get(text) if stats is self._memo_stats else None
        if found is None:
            found = read_request(text, stats)
            if stats is self._memo_stats:
                if len(self._memo) >= 10_000:
                    self._memo.clear()
                self._memo[text] = found
        return found

    def _parts(self, conversation: Conversation, stats: TemplateStats | None) -> _Parts:
        asks: list[tuple[str, tuple[str, ...]]] = []
        seen: set[str] = set()
        user: list[str] = []
        for m in conversation.messages:
            if m.role != "user":
                continue
            user.append(m.content)
            sentence, context = self._request_of(m.content, stats)
            if _substantive(sentence) and sentence.lower() not in seen:
                seen.add(sentence.lower())
                asks.append((sentence, context))
        if not asks:
            return _Parts("", (), [], "\n".join(user)[:2_000])
        return _Parts(asks[0][0], asks[0][1], [s for s, _ in asks[1:3]], "\n".join(user)[:2_000])

    def requests(self, conversation: Conversation, stats: TemplateStats | None = None) -> list[str]:
        """The main request and the follow-ups, as the user wrote them (template and material removed)."""
        parts = self._parts(conversation, stats if stats is not None else self._stats)
        return [parts.request, *parts.follow_ups] if parts.request else []

    def _summary(self, conversation: Conversation, parts: _Parts, language: str) -> GeneratedSummary:
        n_users = sum(m.role == "user" for m in conversation.messages)
        n_replies = sum(m.role == "assistant" for m in conversation.messages)
        key = key_phrases([parts.request, *parts.context], language) if parts.request else []
        request = " ".join(parts.request.split())
        in_language = "" if language in ("english", "unknown") else f" (in {language.capitalize()})"
        if key and language == "english" and len(request.split()) <= QUOTE_WORDS and not has_person_words(request):
            first = f"The user asked: “{request}”"
        elif key:
            first = f"The user asked{in_language} about {join_phrases(key)}."
        elif n_users:
            first = f"The user sent a short message{in_language} with no clear request."
        else:
            first = "The user sent no message."
        follow = [p for s in parts.follow_ups for p in key_phrases([s], language, limit=3)]
        follow = list(dict.fromkeys(follow))[:4]
        replies = f"the assistant replied {_times(n_replies)}" if n_replies else ""
        if follow:
            second = f"They followed up about {join_phrases(follow)}" + (f", and {replies}." if replies else ".")
        elif parts.follow_ups:
            n = len(parts.follow_ups)
            second = f"They followed up {_times(n)}" + (f", and {replies}." if replies else ".")
        else:
            second = f"{replies[:1].upper()}{replies[1:]}." if replies else ""
        what = f"help with {join_phrases(key[:4])}" if key else "respond to a short message"
        topic = max(key[:3], key=lambda p: len(p.split())) if key else "short message"
        code = code_languages(parts.user_text)
        return GeneratedSummary(
            summary=f"{first} {second}".strip(),
            request=f"The user's overall request for the assistant is to {what}.",
            topic=topic,
            languages=[language, *code] if language != "unknown" or not code else code,
            task=f"The task is to {what}.",
        )

    def summarise_one(self, conversation: Conversation, stats: TemplateStats | None = None) -> GeneratedSummary:
        return self.summarise([conversation], stats=stats)[0]

    def summarise(self, conversations: Sequence[Conversation], progress: Progress | None = None,
                  stats: TemplateStats | None = None) -> list[GeneratedSummary]:
        stats = stats if stats is not None else self._stats if self._stats is not None \
            else TemplateStats.fit(conversations)
        if stats is not self._memo_stats:
            self._memo, self._memo_stats = {}, stats
        total = len(conversations)
        out: list[GeneratedSummary] = []
        step = 5_000  # languages are detected a batch at a time (lingua runs a batch in parallel)
        for start in range(0, total, step):
            chunk = conversations[start:start + step]
            parts = [self._parts(c, stats) for c in chunk]
            texts = [p.request or p.user_text for p in parts]
            distinct = list(dict.fromkeys(texts))
            found = dict(zip(distinct, detect_natural_languages(distinct)))
            out += [self._summary(c, p, found[t]) for c, p, t in zip(chunk, parts, texts)]
            if progress is not None:
                progress(len(out), total)
        return out
