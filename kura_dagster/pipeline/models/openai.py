"""OpenAI-compatible backend: summaries, embeddings and cluster names from any server that speaks the OpenAI API
(OpenAI itself, vLLM, Ollama, a LiteLLM proxy …), through the official ``openai`` client.

* **Structured output.** Answers are validated with pydantic into Kura's fields (``GeneratedSummary``,
  ``GeneratedCluster``). The ``json_schema`` response format is used first; a server that refuses it (a 400/422
  that mentions the response format) is asked again in JSON mode, with the schema in the prompt, and every
  later request of that model goes straight to JSON mode (``structured_output="auto"``).
* **Bounded concurrency.** At most ``max_concurrency`` requests are in flight (asyncio + a semaphore).
* **Retries.** 429s, 5xx, timeouts and dropped connections are retried by the client with exponential backoff
  (and honour ``Retry-After``), up to ``max_retries`` times; each request has a ``request_timeout``.
  Malformed output (invalid JSON, missing fields, cut off by the length limit) is asked for again up to
  ``max_output_retries`` times, then fails with an :class:`LLMError` naming the conversation or cluster.
  An error every request would hit (bad key, unknown model, server unreachable) stops the requests not yet sent.
* **Streaming.** ``OpenAISummaryModel.summarise_streaming`` hands each summary over as soon as it is ready,
  so the summaries stage saves finished work while the rest is still running.
* **Secrets.** The API key is read by the client from ``OPENAI_API_KEY`` and never passed through here, so
  it cannot land in config, logs or metadata; ``OPENAI_BASE_URL`` is honoured the same way.
* **Accounting.** Each model keeps :class:`UsageStats` (requests, retries, failures, tokens) for metadata.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import hashlib
import json
import logging
import random
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import numpy as np
import openai
from openai.types.chat import ChatCompletion
from pydantic import BaseModel, ValidationError

from kura_dagster.pipeline.models.base import NamingRequest, Progress
from kura_dagster.types import Cluster, Conversation, ConversationSummary, GeneratedCluster, GeneratedSummary

logger = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)
R = TypeVar("R")

SUMMARY_PROMPT_VERSION = "summary-v1"
NAMING_PROMPT_VERSION = "naming-v2"
"""v2: examples sampled by statement, not by position (see ``OpenAIClusterNamingModel``)."""
MAX_TRANSCRIPT_CHARS = 48_000
"""Longer conversations keep their first and last parts (part of the prompt version)."""

StructuredOutput = Literal["auto", "json_schema", "json_object"]


class LLMError(RuntimeError):
    """A request that could not be completed: names what it was for and why."""


@dataclass(frozen=True)
class OpenAIConfig:
    """How to reach the server and how to ask it. The API key is never part of this."""

    model: str
    base_url: str | None = None
    """``None``: the client reads ``OPENAI_BASE_URL`` (or uses api.openai.com)."""
    max_concurrency: int = 8
    temperature: float = 0.2
    request_timeout: float = 120.0
    """Seconds per HTTP request, retries not included."""
    max_retries: int = 5
    """Retries of 429s, 5xx, timeouts and connection errors (the client backs off exponentially)."""
    max_output_retries: int = 2
    """Extra attempts after malformed output."""
    structured_output: StructuredOutput = "auto"

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("OpenAIConfig.model is empty: use e.g. 'openai:gpt-4o-mini'")
        if self.max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, got {self.max_concurrency}")
        if self.request_timeout <= 0:
            raise ValueError(f"request_timeout must be positive, got {self.request_timeout}")
        if self.max_retries < 0 or self.max_output_retries < 0:
            raise ValueError("max_retries and max_output_retries must not be negative")


@dataclass
class UsageStats:
    """What a model cost. ``requests`` counts every HTTP request sent (an httpx event hook sees each one, the
    client's own retries included); ``retries`` and ``failures`` follow from what was asked and answered."""

    requests: int = 0
    asked: int = 0
    """Things asked for: conversations, groups to name, embedding batches."""
    answered: int = 0
    """Requests that got a valid answer."""
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def retries(self) -> int:
        """Requests sent again after a failure (429/5xx/timeout, malformed output, JSON-mode fallback)."""
        return max(0, self.requests - self.asked)

    @property
    def failures(self) -> int:
        """Requests that failed: error status, timeout, connection error or malformed output."""
        return max(0, self.requests - self.answered)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def as_dict(self) -> dict[str, int]:
        return {"requests": self.requests, "retries": self.retries, "failures": self.failures,
                "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.total_tokens}


def run_async(make: Callable[[], Awaitable[R]]) -> R:
    """Run a coroutine to completion from synchronous code (in a helper thread if a loop is already running)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())  # type: ignore[arg-type]
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="kura-llm") as pool:
        return pool.submit(lambda: asyncio.run(make())).result()  # type: ignore[arg-type]


@functools.lru_cache(maxsize=1)
def _ssl_context() -> ssl.SSLContext:
    """Loading the CA bundle costs ~80 ms; do it once per process, not once per client."""
    return ssl.create_default_context()


@functools.lru_cache(maxsize=None)
def response_format(response_model: type[BaseModel]) -> dict[str, Any]:
    """The ``json_schema`` response format for ``response_model`` (strict, as the client's ``.parse`` builds it),
    computed once per model class: rebuilding it costs milliseconds per request."""
    try:
        from openai.lib._pydantic import to_strict_json_schema

        schema, strict = to_strict_json_schema(response_model), True
    except (ImportError, TypeError, ValueError):  # a client without the helper, or a schema it cannot make strict
        schema, strict = response_model.model_json_schema(), False
    return {"type": "json_schema", "json_schema": {"name": response_model.__name__, "schema": schema, "strict": strict}}


@functools.lru_cache(maxsize=None)
def _json_mode_hint(response_model: type[BaseModel]) -> str:
    """What JSON mode adds to the instructions: the schema the answer must match."""
    return ("\n\nAnswer with a single JSON object and nothing else. It must match this JSON schema:\n"
            + json.dumps(response_model.model_json_schema()))


def _mentions_response_format(exc: openai.APIStatusError) -> bool:
    text = f"{exc.message} {exc.body}".lower()
    return any(word in text for word in ("response_format", "json_schema", "structured", "schema"))


def _short(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class OpenAIClient:
    """The request machinery the three models share: one client per batch, a semaphore, retries, accounting."""

    def __init__(self, config: OpenAIConfig, usage: UsageStats | None = None) -> None:
        self.config = config
        self.usage = usage if usage is not None else UsageStats()
        self.mode: Literal["json_schema", "json_object"] = (
            "json_object" if config.structured_output == "json_object" else "json_schema"
        )
        self.fatal: LLMError | None = None
        """Set by an error no other request can escape (bad key, unknown model, server unreachable): the
        requests not yet sent are skipped instead of failing one by one."""

    def client(self) -> openai.AsyncOpenAI:
        async def count_request(_request: Any) -> None:
            self.usage.requests += 1

        http_client = openai.DefaultAsyncHttpxClient(verify=_ssl_context(), event_hooks={"request": [count_request]})
        kwargs: dict[str, Any] = {"timeout": self.config.request_timeout, "max_retries": self.config.max_retries,
                                  "http_client": http_client}
        if self.config.base_url:
            kwargs["base_url"] = self.config.base_url
        try:
            return openai.AsyncOpenAI(**kwargs)
        except openai.OpenAIError as exc:
            raise LLMError(
                f"Cannot create the OpenAI client for model {self.config.model!r}: {str(exc).rstrip('.')}. "
                "Set OPENAI_API_KEY in the environment (any non-empty value for a local server without authentication)."
            ) from None

    def semaphore(self) -> asyncio.Semaphore:
        return asyncio.Semaphore(self.config.max_concurrency)

    def _request_error(self, subject: str, exc: openai.OpenAIError) -> LLMError:
        where = self.config.base_url or "OPENAI_BASE_URL"
        if isinstance(exc, openai.APIStatusError):
            what = f"the server answered HTTP {exc.status_code}"
            if exc.status_code == 429 or exc.status_code >= 500:
                what += f" (still, after {self.config.max_retries} retries)"
        elif isinstance(exc, openai.APITimeoutError):
            what = f"no answer within {self.config.request_timeout:g} s, {self.config.max_retries} retries"
        elif isinstance(exc, openai.APIConnectionError):
            what = f"could not connect ({self.config.max_retries} retries)"
        else:
            what = "the request failed"
        error = LLMError(f"{subject}: {what} [model {self.config.model!r} at {where}]: {_short(exc)}")
        if isinstance(exc, (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError,
                            openai.APIConnectionError)) and self.fatal is None:
            self.fatal = error
        return error

    def check_fatal(self, subject: str) -> None:
        if self.fatal is not None:
            raise LLMError(f"{subject}: not sent, after an earlier error that every request would hit: {self.fatal}")

    @staticmethod
    def _json_mode_messages(messages: list[dict[str, str]], response_model: type[BaseModel]) -> list[dict[str, str]]:
        first, *rest = messages
        return [{**first, "content": first["content"] + _json_mode_hint(response_model)}, *rest]

    async def _ask_once(self, client: openai.AsyncOpenAI, messages: list[dict[str, str]],
                        response_model: type[M]) -> M:
        """One call (the client retries transient errors inside it); raises ValidationError/ValueError on bad output.

        The body goes through ``client.post`` as plain JSON (the client's documented way to send any request,
        with the same retries and timeouts): ``chat.completions.create`` would re-walk the messages and the
        schema on every request, milliseconds of CPU that a fast server and high concurrency cannot spare."""
        if self.mode == "json_schema":
            fmt: dict[str, Any] = response_format(response_model)
        else:
            messages, fmt = self._json_mode_messages(messages, response_model), {"type": "json_object"}
        body = {"model": self.config.model, "messages": messages, "temperature": self.config.temperature,
                "response_format": fmt}
        completion = await client.post("/chat/completions", body=body, cast_to=ChatCompletion)
        if completion.usage is not None:
            self.usage.prompt_tokens += completion.usage.prompt_tokens or 0
            self.usage.completion_tokens += completion.usage.completion_tokens or 0
        choice = completion.choices[0] if completion.choices else None
        if choice is None:
            raise ValueError("the answer has no choices")
        if choice.finish_reason == "length":
            raise ValueError("the answer was cut off by the length limit")
        if getattr(choice.message, "refusal", None):
            raise ValueError(f"the model refused: {choice.message.refusal}")
        if not choice.message.content:
            raise ValueError("the answer is empty")
        return response_model.model_validate_json(choice.message.content)

    async def ask(self, client: openai.AsyncOpenAI, sem: asyncio.Semaphore, messages: list[dict[str, str]],
                  response_model: type[M], subject: str) -> M:
        """Ask for one ``response_model``; retries malformed output, falls back to JSON mode when needed."""
        self.usage.asked += 1
        attempts = self.config.max_output_retries + 1
        attempt = 0
        problem = ""
        while attempt < attempts:
            mode = self.mode
            try:
                async with sem:
                    self.check_fatal(subject)
                    result = await self._ask_once(client, messages, response_model)
                self.usage.answered += 1
                return result
            except (openai.BadRequestError, openai.UnprocessableEntityError) as exc:
                if mode == "json_schema" and self.config.structured_output == "auto" and _mentions_response_format(exc):
                    if self.mode == "json_schema":
                        logger.warning("model %r at %s refused structured output (%s); using JSON mode",
                                       self.config.model, self.config.base_url or "OPENAI_BASE_URL", _short(exc, 120))
                        self.mode = "json_object"
                    continue
                raise self._request_error(subject, exc) from exc
            except (ValidationError, ValueError) as exc:
                problem = _short(exc)
            except openai.OpenAIError as exc:
                raise self._request_error(subject, exc) from exc
            attempt += 1
            if attempt < attempts:
                logger.warning("%s: malformed output (attempt %d of %d): %s", subject, attempt, attempts, problem)
                await asyncio.sleep(min(0.25 * 2 ** (attempt - 1), 4.0) * (0.75 + 0.25 * random.random()))
        raise LLMError(
            f"{subject}: model {self.config.model!r} returned malformed output {attempts} times "
            f"(last problem: {problem})"
        )

    async def embed_batch(self, client: openai.AsyncOpenAI, sem: asyncio.Semaphore, texts: list[str],
                          subject: str, dimensions: int | None) -> np.ndarray:
        self.usage.asked += 1
        extra: dict[str, Any] = {"dimensions": dimensions} if dimensions else {}
        try:
            async with sem:
                self.check_fatal(subject)
                response = await client.embeddings.create(
                    model=self.config.model, input=[t if t.strip() else " " for t in texts], **extra)
        except openai.OpenAIError as exc:
            raise self._request_error(subject, exc) from exc
        if response.usage is not None:
            self.usage.prompt_tokens += response.usage.prompt_tokens or 0
        data = sorted(response.data, key=lambda d: d.index)
        if len(data) != len(texts):
            raise LLMError(f"{subject}: the server returned {len(data)} embeddings for {len(texts)} texts")
        self.usage.answered += 1
        return np.asarray([d.embedding for d in data], dtype=np.float32)


# --- prompts ----------------------------------------------------------------------------------------------
SUMMARY_INSTRUCTIONS = """\
You analyse conversations between a user and an AI assistant, in the style of Clio (privacy-preserving \
insights into real-world AI use). Read the conversation the user gives you and extract:

- summary: what happened, in at most two clear sentences (at most 30 words). Do not write "Based on the \
conversation" and do not refer to the assistant as a chatbot.
- request: the user's overall request, starting with "The user's overall request for the assistant is to".
- topic: the main high-level topic, such as "software development", "creative writing" or "scientific research".
- languages: the main human and programming languages, lower-case full names (e.g. "english", "python").
- task: the task the assistant is asked to perform, starting with "The task is to".
- concerning_score: 1 (benign) to 5 (extremely concerning, needs immediate review) for safety.
- user_frustration: 1 (not frustrated) to 5 (extremely frustrated with the assistant).
- assistant_errors: the assistant's mistakes, if any (e.g. "Misunderstood the user's intent or request").

Be descriptive and assume neither good nor bad faith; describe sensitive or harmful topics specifically. \
Never include personally identifiable information: no names, places, phone numbers, e-mail addresses, company \
names or other proper nouns. Do mention specific technical details such as languages, frameworks and libraries."""

CLUSTER_INSTRUCTIONS = """\
You name a group of related statements so that it can be told apart from other groups.

Write a clear, precise, two-sentence summary of the group in the past tense (field "summary"), specific \
enough to distinguish it from the contrastive statements of other groups. Then give the group a short name \
(field "name"): an imperative sentence of at most ten words that captures the users' request and reflects \
most of the statements, for example "Assist with high school math homework" or "Brainstorm ideas for a \
birthday party" rather than a vague "Help with homework". Finally give a three-word snake_case slug \
(field "slug"). Be descriptive, assume neither good nor bad faith, and name sensitive topics specifically."""

META_CLUSTER_INSTRUCTIONS = """\
You name a higher-level category that groups several related clusters of user requests.

Write a clear, precise, two-sentence summary of what the clusters have in common, in the past tense (field \
"summary"). Give the category a short name (field "name"): an imperative sentence of at most ten words that \
is broad enough to cover every cluster listed but still specific, for example "Help with software \
development and debugging". Finally give a three-word snake_case slug (field "slug")."""


def conversation_transcript(conversation: Conversation, limit: int = MAX_TRANSCRIPT_CHARS) -> str:
    lines = [f"<message>{m.role}: {m.content}</message>" for m in conversation.messages]
    text = "\n".join(lines)
    if len(text) > limit:
        half = limit // 2
        text = f"{text[:half]}\n[… {len(text) - limit} characters omitted …]\n{text[-half:]}"
    return f"<messages>\n{text}\n</messages>"


def summary_messages(conversation: Conversation) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": SUMMARY_INSTRUCTIONS},
        {"role": "user", "content": conversation_transcript(conversation)},
    ]


def _statement(s: ConversationSummary) -> str:
    return " ".join((s.request or s.summary).split())


# --- the three models -----------------------------------------------------------------------------------
class _OpenAIModel:
    def __init__(self, config: OpenAIConfig) -> None:
        self.config = config
        self.usage = UsageStats()
        self._client = OpenAIClient(config, self.usage)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.identity!r})"  # type: ignore[attr-defined]

    def _gather(self, jobs: Sequence[Callable[[openai.AsyncOpenAI, asyncio.Semaphore], Awaitable[R]]],
                progress: Progress | None = None, tick: float = 2.0) -> list[R | BaseException]:
        """Run ``jobs`` concurrently; every result or exception comes back in order. ``progress(done, total)``
        is called as jobs finish and at least every ``tick`` seconds."""
        total = len(jobs)

        async def main() -> list[R | BaseException]:
            done = 0

            async def run(job: Callable[[openai.AsyncOpenAI, asyncio.Semaphore], Awaitable[R]]) -> R:
                nonlocal done
                try:
                    return await job(client, sem)
                finally:
                    done += 1
                    if progress is not None:
                        progress(done, total)

            async def ticker() -> None:
                while True:
                    await asyncio.sleep(tick)
                    progress(done, total)  # type: ignore[misc]

            async with self._client.client() as client:
                sem = self._client.semaphore()
                ticking = asyncio.create_task(ticker()) if progress is not None else None
                try:
                    return await asyncio.gather(*(run(j) for j in jobs), return_exceptions=True)
                finally:
                    if ticking is not None:
                        ticking.cancel()

        if not jobs:
            return []
        return run_async(main)


def _raise_first(results: Sequence[object]) -> None:
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise LLMError(f"{errors[0]}{more}") from errors[0]


class OpenAISummaryModel(_OpenAIModel):
    """``SummaryModel``: one chat completion per conversation, validated into ``GeneratedSummary``."""

    def __init__(self, config: OpenAIConfig) -> None:
        super().__init__(config)
        self.identity = f"openai:{config.model}/{SUMMARY_PROMPT_VERSION}/temperature={config.temperature:g}"

    def summarise(self, conversations: Sequence[Conversation], progress: Progress | None = None) -> list[GeneratedSummary]:
        return self.summarise_streaming(conversations, None, progress)

    def summarise_streaming(
        self,
        conversations: Sequence[Conversation],
        on_result: Callable[[int, GeneratedSummary], None] | None,
        progress: Progress | None = None,
    ) -> list[GeneratedSummary]:
        """Like :meth:`summarise`, and ``on_result(i, summary)`` is called as soon as conversation ``i`` is done
        (in completion order), so the caller can save finished work while the rest is still running.

        If some conversations fail, the others still finish (and reach ``on_result``); then an :class:`LLMError`
        names the ones that failed."""
        sink_errors: list[BaseException] = []

        def job(i: int, conversation: Conversation):
            subject = f"Summarising conversation {conversation.chat_id!r}"

            async def run(client: openai.AsyncOpenAI, sem: asyncio.Semaphore) -> GeneratedSummary:
                result = await self._client.ask(client, sem, summary_messages(conversation), GeneratedSummary, subject)
                if on_result is not None:
                    try:
                        on_result(i, result)
                    except BaseException as exc:  # not the conversation's fault: re-raised as itself below
                        sink_errors.append(exc)
                        raise
                return result

            return run

        results = self._gather([job(i, c) for i, c in enumerate(conversations)], progress)
        if sink_errors:
            raise sink_errors[0]
        failed = [(c, r) for c, r in zip(conversations, results) if isinstance(r, BaseException)]
        if failed:
            names = ", ".join(repr(c.chat_id) for c, _ in failed[:5]) + (" …" if len(failed) > 5 else "")
            raise LLMError(
                f"{len(failed)} of {len(conversations)} conversations could not be summarised ({names}); "
                f"the other {len(conversations) - len(failed)} were. First error: {failed[0][1]}"
            ) from failed[0][1]
        return results  # type: ignore[return-value]


class OpenAIEmbeddingModel(_OpenAIModel):
    """``EmbeddingModel``: batched ``/embeddings`` requests, L2-normalised float32 rows."""

    waits_on_server = True
    """``embed`` mostly waits for the server: the summaries stage embeds the summaries ``batch_size`` texts at a
    time on a worker thread as they arrive, beside the summary requests (``pipeline.summarise``)."""

    def __init__(self, config: OpenAIConfig, batch_size: int = 64, dimensions: int | None = None) -> None:
        super().__init__(config)
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.batch_size = batch_size
        self.dimensions = dimensions
        self.identity = f"openai-embedding:{config.model}" + (f"/dims={dimensions}" if dimensions else "")

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not len(texts):
            return np.zeros((0, self.dimensions or 0), dtype=np.float32)
        batches = [list(texts[i: i + self.batch_size]) for i in range(0, len(texts), self.batch_size)]

        def job(n: int, batch: list[str]):
            first = n * self.batch_size
            subject = f"Embedding texts {first}–{first + len(batch) - 1} of {len(texts)}"
            return lambda client, sem: self._client.embed_batch(client, sem, batch, subject, self.dimensions)

        results = self._gather([job(n, b) for n, b in enumerate(batches)])
        _raise_first(results)
        out = np.concatenate(results, axis=0)  # type: ignore[arg-type]
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        norms[norms == 0] = 1.0
        return (out / norms).astype(np.float32)


def naming_score(seed: int, text: str) -> int:
    """A seeded pseudo-random rank for a statement: sampling by it does not depend on the other groups."""
    return int.from_bytes(hashlib.blake2b(f"{seed}\x00{text}".encode("utf-8"), digest_size=8).digest(), "little")


class OpenAIClusterNamingModel(_OpenAIModel):
    """``ClusterNamingModel``: one request per group, with a seeded sample of members and contrastive examples.

    Every request depends on as little as possible, so that a cache keyed by the request re-asks only what a
    change touches: a group's examples are its ``max_examples`` members of lowest :func:`naming_score` (not
    positions, which shift when other groups change), and its contrastive examples are representatives of
    ``max_contrastive`` other groups (each group's lowest-scoring member), picked by a per-group ranking from a
    pool of the ``4 × max_contrastive`` lowest-scoring representatives. A change to one group changes another
    group's request only if it changes a representative in that pool."""

    def __init__(self, config: OpenAIConfig, seed: int = 0, max_examples: int = 25, max_contrastive: int = 10) -> None:
        super().__init__(config)
        self.seed, self.max_examples, self.max_contrastive = seed, max_examples, max_contrastive
        # The seed is not here: it shapes the requests, which are the cache keys.
        self.identity = f"openai:{config.model}/{NAMING_PROMPT_VERSION}/temperature={config.temperature:g}"

    answer_model: type[BaseModel] = GeneratedCluster
    """What a request is answered with; a subclass asking for something else (``pipeline.audit``'s privacy
    rating) turns its answer into a ``GeneratedCluster`` in :meth:`_as_cluster`, so the cache keeps it."""

    def _as_cluster(self, answer: Any) -> GeneratedCluster:
        return answer

    def answer_requests(self, requests: Sequence[NamingRequest],
                        on_result: Callable[[int, GeneratedCluster], None] | None = None) -> list[GeneratedCluster]:
        """One name per request, in order; ``on_result(i, name)`` as each arrives. Raises the first failure
        after the others finished."""
        sink_errors: list[BaseException] = []

        def job(i: int, request: NamingRequest):
            async def run(client: openai.AsyncOpenAI, sem: asyncio.Semaphore) -> GeneratedCluster:
                result = self._as_cluster(
                    await self._client.ask(client, sem, request.as_openai(), self.answer_model, request.subject))
                if on_result is not None:
                    try:
                        on_result(i, result)
                    except BaseException as exc:
                        sink_errors.append(exc)
                        raise
                return result

            return run

        results = self._gather([job(i, r) for i, r in enumerate(requests)])
        if sink_errors:
            raise sink_errors[0]
        _raise_first(results)
        return results  # type: ignore[return-value]

    def _examples(self, statements: Sequence[str]) -> list[str]:
        ranked = sorted(statements, key=lambda t: (naming_score(self.seed, t), t))
        return ranked[: self.max_examples]

    def cluster_requests(self, groups: Sequence[Sequence[ConversationSummary]]) -> list[NamingRequest]:
        statements = [[_statement(s) for s in g] for g in groups]
        reps = [min(g, key=lambda t: (naming_score(self.seed, t), t)) if g else "" for g in statements]
        pool = sorted((i for i, g in enumerate(statements) if g),
                      key=lambda i: (naming_score(self.seed, reps[i]), reps[i]))[: 4 * self.max_contrastive]
        out = []
        for i, group in enumerate(groups):
            others = sorted((j for j in pool if j != i),
                            key=lambda j: (naming_score(self.seed, f"{reps[i]}\x00{reps[j]}"), j))
            contrast = [reps[j] for j in others[: self.max_contrastive]]
            body = ("<positive_examples>\n" + "\n".join(self._examples(statements[i])) + "\n</positive_examples>\n\n"
                    "Statements from other groups, NOT part of this one:\n<contrastive_examples>\n"
                    + "\n".join(contrast) + "\n</contrastive_examples>")
            first = group[0].chat_id if group else "-"
            out.append(NamingRequest(f"Naming base cluster {i} ({len(group)} conversations, first chat_id {first!r})",
                                     (("system", CLUSTER_INSTRUCTIONS), ("user", body))))
        return out

    def meta_cluster_requests(self, groups: Sequence[Sequence[Cluster]]) -> list[NamingRequest]:
        out = []
        for i, group in enumerate(groups):
            body = "<clusters>\n" + "\n".join(
                f"<cluster>{c.name}: {' '.join(c.description.split())}</cluster>" for c in group) + "\n</clusters>"
            out.append(NamingRequest(f"Naming meta cluster {i} (children {[c.id for c in group][:3]}…)",
                                     (("system", META_CLUSTER_INSTRUCTIONS), ("user", body))))
        return out

    def name_clusters(self, groups: Sequence[Sequence[ConversationSummary]]) -> list[GeneratedCluster]:
        return self.answer_requests(self.cluster_requests(groups))

    def name_meta_clusters(self, groups: Sequence[Sequence[Cluster]]) -> list[GeneratedCluster]:
        return self.answer_requests(self.meta_cluster_requests(groups))


def parse_backend(spec: str, what: str) -> str | None:
    """``'local'`` → None; ``'openai:<model>'`` → the model name; anything else is a clear error."""
    spec = (spec or "local").strip()
    if spec == "local":
        return None
    kind, _, model = spec.partition(":")
    if kind == "openai" and model.strip():
        return model.strip()
    raise ValueError(f"Unknown {what} backend {spec!r}: use 'local' or 'openai:<model>' (e.g. 'openai:gpt-4o-mini')")
