"""The offline embedding: TF-IDF over what a conversation is about, reduced with LSA (scikit-learn).

* **What is embedded** (:func:`conversation_text`): the user's own words first. The corpus's template is
  learnt once, when the state is fitted (:class:`~kura_dagster.pipeline.models.local_summary.TemplateStats`, the
  summary model's corpus pass: lines and sentences that the user turns of many distinct conversations repeat,
  such as a RAG prompt's preamble, retrieved passages that recur, "Answer:"; and labels followed by varied text,
  such as "User Query:"), and every user turn is read without it. Of what is left, the requests (each user
  message's request sentence and the sentences after it, as the summary model finds them; at most
  :data:`REQUEST_CHARS`) are embedded :data:`REQUEST_WEIGHT` times before the rest of the user turns (pasted
  code cut to ``max(CODE_CHARS, CODE_SHARE x its prose)``, the whole rest bounded to ``max(CONTEXT_MIN,
  CONTEXT_SHARE x the requests)`` characters), so context counts but cannot outweigh the ask; a conversation
  that is all request (no context beyond it) is embedded as written. When the user wrote fewer than
  :data:`MIN_TEXT` characters, the start of the replies (:data:`REPLY_CHARS` each) fills up to that: a terse
  request gets its context from the replies' first lines, while conversations that ask the same at length
  get the same vector whatever was answered (measured: longer reply shares split MT-Bench's questions by the
  answering model and gained nothing on the generated corpora). Before this (state v1) a templated RAG
  message was embedded whole: its template and pasted passages outweighed the short request, and a question
  at the end of a long prompt was cut off (``benchmarks/results/quality.md``).
* **How** (:class:`LocalEmbeddingModel`): TF-IDF with sublinear tf over words (English stop
  words out, a term must occur in at least ``min_df=2`` conversations, so one user's rare tokens never enter
  the vocabulary), then LSA: scikit-learn's ``TruncatedSVD`` to ``dims`` dimensions, L2-normalised float32.
* **Stable**: the template, vocabulary, idf weights and SVD components are fitted once
  (:meth:`LocalEmbeddingModel.fit_conversations`, the TF-IDF and LSA on a seeded sample of at most
  :data:`FIT_SAMPLE` texts) and kept as a :class:`FittedState` (arrays + JSON; the template's lines as 64-bit
  digests with their counts, so no line a user wrote is stored as text;
  stored beside the checkpoints by ``kura_dagster.checkpoints.artifacts``). A text's vector depends only on the
  conversation and that state, so embeddings of existing conversations do not change when others arrive. The
  state's version is part of :attr:`LocalEmbeddingModel.identity`, so no cache serves vectors of another fit.
* An unfitted model fits itself on the conversations the summaries stage gives it (:meth:`prepare`), or on the
  first texts it embeds (then without a template; convenient in notebooks and tests). The pipeline fits
  explicitly and stores the state.

The texts the state is fitted on are scrubbed of personal data first (``kura_dagster.pipeline.privacy.scrub``,
when that module exists), and with ``min_df=2`` a term enters the vocabulary only if two conversations use it.
Embedding reads the vocabulary only, so a token outside it (an e-mail address, a key) adds nothing to a vector.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import re
from collections.abc import Callable, Sequence

import numpy as np

from kura_dagster.checkpoints.artifacts import FittedState
from kura_dagster.pipeline.models.base import Progress
from kura_dagster.pipeline.models.local_summary import TemplateStats, read_request
from kura_dagster.pipeline.models.local_text import (
    LINE_LABEL,
    READ_CHARS,
    SENTENCE_END,
    bounded_message,
    norm_line,
)
from kura_dagster.types import Conversation

KIND = "local-tfidf-lsa/v2"
"""Model and state format version (part of the identity and of the artifact's version)."""
ARTIFACT_NAME = "local-embedding"
"""Name of the stored state under the checkpoint directory's artifacts."""
USER_CHARS = 4_000
"""Characters of user text per conversation."""
REPLY_CHARS = 300
"""Characters from the start of each assistant reply."""
MIN_TEXT = 160
"""Replies' starts fill a conversation's text up to this many characters (a short request gets their context;
a request this long or longer stands on its own, so conversations that ask the same get the same vector)."""
CODE_CHARS = 200
CODE_SHARE = 0.25
"""Fenced code in a user message: at most ``max(CODE_CHARS, CODE_SHARE x the message's prose)`` characters."""
REQUEST_CHARS = 1_000
"""Characters of the requests (each user message's request sentence and the sentences after it)."""
REQUEST_WEIGHT = 2
"""How many times the requests are embedded when the user turns hold more than them (sublinear tf: a request
term then counts ``1 + ln 3`` against a context term's 1, as the rest repeats the request once more)."""
CONTEXT_SHARE = 2.0
CONTEXT_MIN = 400
"""The de-templated rest of the user turns: at most ``max(CONTEXT_MIN, CONTEXT_SHARE x the requests)``
characters, so pasted material cannot outweigh what the user asked."""
CONTEXT_SLACK = 1.2
"""The requests are weighted only when the rest is longer than this many times the requests (there is
context to outweigh); a conversation that is all request is embedded as written."""
TEMPLATE_UNITS = 50_000
"""The most template lines and sentences the fitted state keeps (the most repeated first)."""
FIT_SAMPLE = 20_000
"""The most texts the vocabulary and reduction are fitted on (a seeded sample of a larger corpus)."""
MAX_FEATURES = 32_768
"""Vocabulary size (the most frequent terms that pass ``min_df``): bounds the stored components (dims x this)."""
MIN_DF = 2
NGRAM_RANGE = (1, 1)
TOKEN_PATTERN = r"(?u)\b\w\w+\b"


@functools.lru_cache(maxsize=1)
def _scrubber() -> Callable[[str], str] | None:
    if importlib.util.find_spec("kura_dagster.pipeline.privacy") is None:
        return None
    from kura_dagster.pipeline import privacy

    scrub = getattr(privacy, "scrub", None)
    if scrub is None:
        return None

    def text_only(text: str) -> str:
        out = scrub(text)
        return out[0] if isinstance(out, tuple) else out  # (privacy.scrub returns the text and its counts)

    return text_only


def _bounded(parts: Sequence[str], budget: int) -> str:
    """``parts`` joined within ``budget`` characters: each part gets an equal share, and what short parts
    leave unused goes to the longer ones (so one long paste cannot crowd out the other turns)."""
    parts = [p.strip() for p in parts if p and p.strip()]
    if sum(map(len, parts)) + len(parts) <= budget:
        return "\n".join(parts)
    lengths = sorted(len(p) for p in parts)
    left, share = budget, budget
    for i, n in enumerate(lengths):
        share = left // (len(lengths) - i)
        if n > share:
            break
        left -= n
    return "\n".join(p[:share] for p in parts)


_FENCED = re.compile(r"```.*?(?:```|\Z)", re.S)


def _prose_first(text: str) -> str:
    """``text`` with its fenced code blocks cut to a bounded share: the prose around pasted code says what is
    asked, the code's identifiers mostly say whose code it is. Each message keeps at most
    ``max(CODE_CHARS, CODE_SHARE x its prose)`` characters of code, taken from the start of each block."""
    if "```" not in text:
        return text
    blocks = _FENCED.findall(text)
    prose = _FENCED.sub("\n", text)
    budget = max(CODE_CHARS, int(CODE_SHARE * len(prose.strip())))
    code = _bounded([b.strip("`") for b in blocks], budget)
    return f"{prose.strip()}\n{code}" if code else prose.strip()


def _digest(unit: str) -> int:
    return int.from_bytes(hashlib.blake2b(unit.encode("utf-8"), digest_size=8).digest(), "little", signed=True)


class _DigestCounts:
    """Template lines and sentences by their 64-bit digest: what the fitted state stores instead of the text
    (so no line a user wrote is kept verbatim), looked up by text (``in``, ``get``) as :class:`TemplateStats`
    does with its ``counts``."""

    MEMO = 100_000
    """Lines looked up recently (each line of a message is looked up by the request finder and again when the
    template is removed, and template lines recur across conversations): at most this many, then cleared."""

    def __init__(self, digests: np.ndarray, counts: np.ndarray) -> None:
        self._counts = dict(zip(digests.tolist(), counts.tolist()))
        self._memo: dict[str, bool] = {}

    def __contains__(self, unit: object) -> bool:
        if not isinstance(unit, str):
            return False
        found = self._memo.get(unit)
        if found is None:
            if len(self._memo) >= self.MEMO:
                self._memo.clear()
            found = self._memo[unit] = _digest(unit) in self._counts
        return found

    def get(self, unit: str, default: int = 0) -> int:
        return self._counts.get(_digest(unit), default)

    def __len__(self) -> int:
        return len(self._counts)


def template_arrays(stats: TemplateStats) -> tuple[dict, dict[str, np.ndarray]]:
    """``(params, arrays)`` that store ``stats`` in a fitted state: labels and thresholds as JSON, the template
    lines and sentences as digests with their counts (at most :data:`TEMPLATE_UNITS`, the most repeated)."""
    units = sorted(stats.counts.items(), key=lambda kv: (-kv[1], kv[0]))[:TEMPLATE_UNITS]
    digests = np.array([_digest(u) for u, _ in units], dtype=np.int64)
    order = np.argsort(digests, kind="stable")
    counts = np.array([n for _, n in units], dtype=np.int32)
    return ({"heads": sorted(stats.heads), "threshold": stats.threshold, "messages": stats.messages},
            {"template_digests": digests[order], "template_counts": counts[order]})


def template_of(state: FittedState) -> TemplateStats | None:
    """The corpus's template as the state stores it (``None`` for a state fitted on texts alone)."""
    meta = state.params.get("template")
    return None if meta is None else _template_from(meta, state.arrays)


def _template_from(meta: dict, arrays: dict[str, np.ndarray]) -> TemplateStats:
    counts = _DigestCounts(arrays["template_digests"], arrays["template_counts"])
    return TemplateStats(counts, frozenset(meta["heads"]), int(meta["threshold"]), int(meta["messages"]),
                         units=counts)  # type: ignore[arg-type]


def _without_template(text: str, stats: TemplateStats) -> str:
    """``text`` without the lines and sentences the corpus's template repeats; a template label's text kept
    ("User Query: how do I …" -> "how do I …")."""
    text = bounded_message(text)  # a long paste: read at its start and its end, as the request finder does
    kept = []
    for line in text.split("\n"):
        n = norm_line(line)
        if not n or n in stats.units:
            continue
        if stats.heads and (m := LINE_LABEL.match(line.strip())) and norm_line(m.group(1)) in stats.heads:
            line = line.strip()[m.end():]
        if SENTENCE_END.search(line):
            line = " ".join(p for p in SENTENCE_END.split(line) if norm_line(p) not in stats.units)
        kept.append(line)
    return "\n".join(kept)


def _message_parts(text: str, template: TemplateStats | None) -> tuple[str, str]:
    """``(request and the sentences after it, the message without template)`` of one user message (the request
    as the summary model reads it, shared with it when both read with the same template)."""
    request, context = read_request(text, template)
    return (" ".join([request, *context]) if request else "",
            _prose_first(_without_template(text, template) if template is not None else text))


def conversation_text(conversation: Conversation, template: TemplateStats | None = None) -> str:
    """What the offline embedding reads of a conversation (see the module's docstring): the user's requests
    (:data:`REQUEST_WEIGHT` times), then the rest of the user turns without the corpus's ``template`` and
    with pasted code cut to a bounded share, within ``max(CONTEXT_MIN, CONTEXT_SHARE x the requests)``
    characters; a short text is filled with the replies' starts."""
    asks, rest = [], []
    for m in conversation.messages:
        if m.role == "user":
            ask, other = _message_parts(m.content, template)
            if ask:
                asks.append(ask)
            rest.append(other)
    requests = _bounded(asks, REQUEST_CHARS)
    others = _bounded(rest, min(USER_CHARS - REQUEST_WEIGHT * (len(requests) + 1),
                                max(CONTEXT_MIN, int(CONTEXT_SHARE * len(requests)))))
    if requests and len(others) > CONTEXT_SLACK * len(requests):
        user = "\n".join([requests] * REQUEST_WEIGHT + [others])
    else:  # all request (or the request is all that the template leaves): as written
        user = others if len(others) >= len(requests) else requests
    rest_budget = max(0, MIN_TEXT - len(user))
    replies = [m.content[:REPLY_CHARS] for m in conversation.messages if m.role != "user"]
    filler = _bounded(replies, rest_budget)
    return f"{user}\n{filler}" if filler else user


def _vectorizer_params() -> dict:
    return {"ngram_range": list(NGRAM_RANGE), "min_df": MIN_DF, "max_features": MAX_FEATURES,
            "token_pattern": TOKEN_PATTERN, "stop_words": "english", "sublinear_tf": True, "lowercase": True,
            "strip_accents": "unicode"}


def _sample(n: int, size: int, seed: int, keys: Sequence[str]) -> np.ndarray:
    """``size`` row numbers chosen by a seeded hash of each text, so the sample does not depend on order."""
    if n <= size:
        return np.arange(n)
    scores = np.array([hashlib.blake2b(f"{seed}\x00{k}".encode(), digest_size=8).digest() for k in keys], dtype="S8")
    return np.sort(np.argsort(scores, kind="stable")[:size])


class LocalEmbeddingModel:
    """TF-IDF (sublinear tf, words, ``min_df=2``) reduced by LSA to ``dims`` dimensions,
    L2-normalised float32. ``state``: a fitted :class:`FittedState` (from :meth:`fit` or loaded from the
    artifact store); without one the first :meth:`embed` fits on its texts."""

    def __init__(self, dims: int = 256, seed: int = 0, state: FittedState | None = None,
                 fit_sample: int = FIT_SAMPLE) -> None:
        self.dims, self.seed, self.fit_sample = dims, seed, fit_sample
        self._vectorizer = None
        self._template: TemplateStats | None = None
        self._prepared: dict[int, tuple[Conversation, str]] = {}
        self.state: FittedState | None = None
        if state is not None:
            self.load(state)

    # --- identity and state ---------------------------------------------------------------------------------

    @property
    def identity(self) -> str:
        if self.state is None:
            return f"{KIND}/unfitted/dims={self.dims}/seed={self.seed}"
        return f"{KIND}/{self.state.version}"

    def matches(self, state: FittedState) -> bool:
        """Was ``state`` fitted by this kind of model with these settings?"""
        p = state.params
        return (state.kind == KIND and p.get("dims_requested") == self.dims and p.get("seed") == self.seed
                and p.get("vectorizer") == _vectorizer_params()
                and {"idf", "components"} <= set(state.arrays))

    def load(self, state: FittedState) -> LocalEmbeddingModel:
        from sklearn.feature_extraction.text import CountVectorizer

        if state.kind != KIND:
            raise ValueError(f"the stored embedding state is {state.kind!r}; this model reads {KIND!r}")
        if self.state is not None and state.version and state.version == self.state.version:
            return self  # already loaded (texts read by fit_conversations stay handed out)
        vocabulary = list(state.params["vocabulary"])
        idf, components = state.arrays["idf"], state.arrays["components"]
        if idf.shape != (len(vocabulary),) or components.ndim != 2 or components.shape[1] != len(vocabulary):
            raise ValueError(f"the stored embedding state {state.version!r} is inconsistent: {len(vocabulary)} "
                             f"terms, idf {idf.shape}, components {components.shape}")
        params = state.params["vectorizer"]
        self._vectorizer = CountVectorizer(
            vocabulary={t: i for i, t in enumerate(vocabulary)}, ngram_range=tuple(params["ngram_range"]),
            token_pattern=params["token_pattern"], stop_words=params["stop_words"], lowercase=params["lowercase"],
            strip_accents=params["strip_accents"], dtype=np.float32)
        self._idf = idf.astype(np.float32, copy=False)
        self._components_t = np.ascontiguousarray(components.T, dtype=np.float32)
        self._template = template_of(state)
        self._prepared = {}
        self.state = state
        return self

    # --- text -------------------------------------------------------------------------------------------------

    def conversation_text(self, conversation: Conversation) -> str:
        """The text the summaries stage embeds for ``conversation`` (instead of its summary), with the template
        the state was fitted with (none before a fit: :meth:`prepare` or :meth:`fit_conversations` first)."""
        prepared = self._prepared.pop(id(conversation), None)
        if prepared is not None and prepared[0] is conversation:
            return prepared[1]
        return conversation_text(conversation, self._template)

    def prepare(self, conversations: Sequence[Conversation], template: TemplateStats | None = None) -> None:
        """Fit on ``conversations`` unless fitted already (the summaries stage calls this before it asks for
        texts, so an unfitted model learns the corpus's template before it reads a conversation; ``template``:
        the summary model's, learnt from the same conversations, saves learning it again)."""
        if self.state is None:
            self.fit_conversations(conversations, template)

    def fit_conversations(self, conversations: Sequence[Conversation],
                          template: TemplateStats | None = None) -> FittedState:
        """Learn the corpus's template (:class:`TemplateStats`: lines and sentences the user turns of many
        distinct conversations repeat, labels followed by varied text; ``template`` when it was learnt from
        ``conversations`` already), then fit on the texts it leaves."""
        template = template if template is not None else TemplateStats.fit(conversations)
        params, arrays = template_arrays(template)
        # read the texts as later runs will, with the stored template: the same as ``template`` unless that was
        # cut to TEMPLATE_UNITS (then the stored form itself); reading with ``template`` shares the summary
        # model's reading of each message
        reader = template if len(template.counts) <= TEMPLATE_UNITS else _template_from(params, arrays)
        texts = [conversation_text(c, reader) for c in conversations]
        state = self.fit(texts, template=template)
        self._template = reader  # (equivalent to the state's)
        # the summaries stage asks for these texts next: each is handed out once instead of being read again
        self._prepared = {id(c): (c, t) for c, t in zip(conversations, texts)}
        return state

    # --- fit and embed ----------------------------------------------------------------------------------------

    def fit(self, texts: Sequence[str], template: TemplateStats | None = None) -> FittedState:
        """Fit the vocabulary, idf and LSA reduction on (a seeded sample of) ``texts`` and use them from now
        on; ``template`` (what ``texts`` were made with) is stored with them, so later conversations are read
        the same way. The state's version is derived from its contents."""
        from sklearn.decomposition import TruncatedSVD
        from sklearn.feature_extraction.text import TfidfVectorizer

        from kura_dagster.checkpoints.artifacts import encode_state

        distinct = list(dict.fromkeys(t for t in texts if t))
        picked = [distinct[i] for i in _sample(len(distinct), self.fit_sample, self.seed, distinct)]
        if (scrub := _scrubber()) is not None:  # personal data never enters the stored vocabulary
            picked = [scrub(t) for t in picked]
        params = _vectorizer_params()
        vec = TfidfVectorizer(
            ngram_range=tuple(params["ngram_range"]), min_df=min(MIN_DF, max(len(picked), 1)),
            max_features=params["max_features"], token_pattern=params["token_pattern"],
            stop_words=params["stop_words"], sublinear_tf=True, lowercase=params["lowercase"],
            strip_accents=params["strip_accents"], dtype=np.float32)
        try:
            x = vec.fit_transform(picked)
        except ValueError:  # no term occurs in two texts (a tiny or empty corpus): fall back to every term
            vec.set_params(min_df=1)
            try:
                x = vec.fit_transform(picked or [""])
            except ValueError:
                x = None
        if x is None:  # nothing to learn at all: an empty vocabulary, every text embeds to zeros
            vocabulary, idf, components = [], np.zeros(0, np.float32), np.zeros((self.dims, 0), np.float32)
        else:
            vocabulary = vec.get_feature_names_out().tolist()
            idf = vec.idf_.astype(np.float32)
            k = max(1, min(self.dims, x.shape[0] - 1, x.shape[1] - 1))
            if k >= 2:
                from threadpoolctl import threadpool_limits

                svd = TruncatedSVD(n_components=k, algorithm="randomized", n_iter=4, random_state=self.seed)
                # one BLAS thread: on two busy cores, threads made this fit 5x costlier in CPU (measured: 3.9 s
                # against 0.8 s of CPU for 20k texts) and 6x slower
                with threadpool_limits(1):
                    svd.fit(x)
                components = svd.components_.astype(np.float32)
                # SVD's signs are arbitrary: fix them (largest entry positive) so a refit of the same data agrees
                signs = np.sign(components[np.arange(k), np.abs(components).argmax(axis=1)])
                components *= np.where(signs == 0, 1, signs)[:, None]
            else:  # fewer than three texts or terms: the tf-idf space itself (no reduction to fit)
                components = np.eye(min(self.dims, len(vocabulary)), len(vocabulary), dtype=np.float32)
            if len(components) < self.dims:  # a small corpus has fewer dimensions: the rest stay zero, so every
                # fit gives vectors of ``dims`` values (the checkpoints' fixed width)
                components = np.vstack([components, np.zeros((self.dims - len(components), len(vocabulary)),
                                                              dtype=np.float32)])
        template_params, template_arrays_ = template_arrays(template) if template is not None else (None, {})
        state = FittedState(kind=KIND, params={
            "vectorizer": params, "vocabulary": vocabulary, "dims_requested": self.dims, "seed": self.seed,
            "fitted_on": len(picked), "distinct_texts": len(distinct), "text": {
                "user_chars": USER_CHARS, "reply_chars": REPLY_CHARS, "min_text": MIN_TEXT,
                "code_chars": CODE_CHARS, "code_share": CODE_SHARE, "request_chars": REQUEST_CHARS,
                "request_weight": REQUEST_WEIGHT, "context_share": CONTEXT_SHARE, "context_min": CONTEXT_MIN,
                "read_chars": READ_CHARS},
            **({"template": template_params} if template_params is not None else {})},
            arrays={"idf": idf, "components": components, **template_arrays_})
        version, _ = encode_state(state)
        state = FittedState(kind=state.kind, params=state.params, arrays=state.arrays, version=version)
        self.load(state)
        return state

    @property
    def output_dims(self) -> int:
        return self._components_t.shape[1] if self.state is not None else self.dims

    def embed(self, texts: Sequence[str], progress: Progress | None = None) -> np.ndarray:
        if self.state is None:
            self.fit(texts)
        n = len(texts)
        if not n:
            return np.zeros((0, self.output_dims), dtype=np.float32)
        if not len(self._idf):
            return np.zeros((n, self.output_dims), dtype=np.float32)
        from threadpoolctl import threadpool_limits

        out = np.empty((n, self._components_t.shape[1]), dtype=np.float32)
        step = 20_000
        for a in range(0, n, step):
            counts = self._vectorizer.transform(texts[a:a + step])
            counts.data = (1.0 + np.log(counts.data)) * self._idf[counts.indices]  # sublinear tf x idf
            # (the tf-idf rows' own L2 normalisation is a factor per row, which the final one makes moot)
            with threadpool_limits(1):
                y = np.asarray(counts @ self._components_t, dtype=np.float32)
            lengths = np.linalg.norm(y, axis=1, keepdims=True)
            out[a:a + step] = y / np.where(lengths == 0, 1, lengths)
            if progress is not None:
                progress(min(a + step, n), n)
        return out
