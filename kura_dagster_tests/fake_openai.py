"""A local OpenAI-compatible server for tests and benchmarks: stdlib ``http.server`` on 127.0.0.1.

It answers ``POST /v1/chat/completions`` and ``POST /v1/embeddings`` deterministically:

* chat completions with ``response_format`` ``json_schema`` (structured output) get a JSON object built from
  that schema; with ``json_object`` the schema is read from the prompt (after the words ``JSON schema``);
  string values are derived from the last user message, so the same prompt always gets the same answer;
* embeddings are seeded by a hash of each text (``encoding_format`` ``float`` or ``base64``).

Faults are injected on request, either with :meth:`FakeOpenAIServer.add_fault` or by ``POST /_fake/faults``
(same fields, as JSON): ``malformed`` (invalid JSON content), ``status`` (e.g. 429 or 500, with a short
``retry-after-ms`` so clients retry quickly), ``delay`` (extra seconds before answering, to trigger client
timeouts). A fault applies ``times`` times (``None``: forever), optionally only to requests whose body
contains ``match``. Every request is counted: :meth:`count`, or ``GET /_fake/stats``.

Run it by hand with ``python -m kura_dagster_tests.fake_openai --port 8765 --delay 0.2``.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import re
import socket
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

import numpy as np

from kura_dagster.types import Conversation, Message

Endpoint = Literal["chat", "embeddings"]
_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9']*")
_IGNORED_WORDS = {"user", "assistant", "message", "messages", "conversation"}


@dataclass
class Fault:
    kind: Literal["malformed", "status", "delay"]
    endpoint: Endpoint = "chat"
    times: int | None = 1
    """How many requests it applies to; ``None`` for every matching request."""
    status: int = 500
    seconds: float = 0.0
    match: str | None = None
    """Only requests whose raw body contains this text."""


@dataclass
class RequestRecord:
    endpoint: str
    status: int
    """The HTTP status sent; 499 when sending showed the client had already hung up (timed out)."""
    fault: str | None
    retry_count: int
    """The client's ``x-stainless-retry-count`` header (0 for a first attempt)."""
    body_sha256: str


@dataclass
class _State:
    delay: float
    structured_output: bool
    embedding_dims: int
    retry_after_ms: int
    faults: list[Fault] = field(default_factory=list)
    records: list[RequestRecord] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    leaky: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)
    gate: threading.Event = field(default_factory=lambda: _open_event())
    """Cleared by :meth:`FakeOpenAIServer.hold`: requests are received (and counted in flight) but not answered."""


def _open_event() -> threading.Event:
    event = threading.Event()
    event.set()
    return event


class _HTTPServer(ThreadingHTTPServer):
    request_queue_size = 128
    """The listen backlog. socketserver's default of 5 made Linux drop the connection attempts beyond it when a
    client opened 8 connections at once (a new client per stage, 8 requests in flight): those were retried by
    TCP after 1 s, so a stage of 10 naming requests took 1.1 s instead of 0.2 s. A real API server does not."""


class FakeOpenAIServer:
    """``with FakeOpenAIServer(delay=0.05) as server: ... server.url ... server.count("chat")``."""

    def __init__(
        self,
        *,
        delay: float = 0.0,
        structured_output: bool = True,
        embedding_dims: int = 16,
        retry_after_ms: int = 10,
        port: int = 0,
    ) -> None:
        self.state = _State(delay=delay, structured_output=structured_output, embedding_dims=embedding_dims,
                            retry_after_ms=retry_after_ms)
        handler = type("Handler", (_Handler,), {"state": self.state})
        self._httpd = _HTTPServer(("127.0.0.1", port), handler)
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    # --- lifecycle ---------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """The base URL a client needs (``OPENAI_BASE_URL``)."""
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def start(self) -> FakeOpenAIServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="fake-openai", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- control -----------------------------------------------------------------------------------------
    def add_fault(self, kind: str, **kwargs: Any) -> Fault:
        fault = Fault(kind=kind, **kwargs)  # type: ignore[arg-type]
        with self.state.lock:
            self.state.faults.append(fault)
        return fault

    def hold(self) -> None:
        """Answer nothing until :meth:`release` (requests wait in flight): lets a test order events without timing."""
        self.state.gate.clear()

    def release(self) -> None:
        self.state.gate.set()

    def set_leaky(self, leaky: bool = True) -> None:
        """Text fields copy the user's message whole (personal data included): for testing the scrubbing."""
        self.state.leaky = leaky

    def set_delay(self, seconds: float) -> None:
        with self.state.lock:
            self.state.delay = seconds

    def count(self, endpoint: str | None = "chat", *, status: int | None = None) -> int:
        """Requests received (all endpoints if ``endpoint`` is None), optionally only those answered ``status``."""
        with self.state.lock:
            return sum(1 for r in self.state.records
                       if (endpoint is None or r.endpoint == endpoint) and (status is None or r.status == status))

    @property
    def records(self) -> list[RequestRecord]:
        with self.state.lock:
            return list(self.state.records)

    @property
    def max_in_flight(self) -> int:
        return self.state.max_in_flight

    def reset(self) -> None:
        """Forget counts and faults."""
        with self.state.lock:
            self.state.records.clear()
            self.state.faults.clear()
            self.state.max_in_flight = 0


# --- deterministic content ------------------------------------------------------------------------------
def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()


def fake_embedding(text: str, dims: int) -> np.ndarray:
    """The vector the server returns for ``text`` (unit length, float32)."""
    rng = np.random.default_rng(int.from_bytes(_digest(text)[:8], "little"))
    v = rng.standard_normal(dims).astype(np.float32)
    return v / np.linalg.norm(v)


def _schema_from_prompt(messages: list[dict[str, Any]]) -> dict[str, Any] | None:
    for m in messages:
        content = m.get("content") if isinstance(m.get("content"), str) else ""
        at = content.find("JSON schema")
        if at >= 0 and "{" in content[at:]:
            start = content.index("{", at)
            obj, _ = json.JSONDecoder().raw_decode(content[start:])
            return obj
    return None


def _resolve(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        node: Any = root
        for part in ref[2:].split("/"):
            node = node[part]
        return node
    return schema


def _value(name: str, schema: dict[str, Any], root: dict[str, Any], words: list[str], seed: bytes) -> Any:
    schema = _resolve(schema, root)
    if "anyOf" in schema:
        options = [s for s in schema["anyOf"] if _resolve(s, root).get("type") != "null"]
        return _value(name, options[0], root, words, seed) if options else None
    kind = schema.get("type")
    h = int.from_bytes(hashlib.sha256(seed + name.encode()).digest()[:4], "little")
    if kind == "object":
        return {k: _value(k, s, root, words, seed) for k, s in schema.get("properties", {}).items()}
    if kind == "array":
        item = _value(name, schema.get("items", {"type": "string"}), root, words, seed)
        return [item, "english"] if item != "english" else [item]
    if kind in ("integer", "number"):
        lo, hi = int(schema.get("minimum", 0)), int(schema.get("maximum", 100))
        return lo + h % (hi - lo + 1)
    if kind == "boolean":
        return bool(h % 2)
    snippet = " ".join(words[:8]) or "say hello"
    if name == "slug":
        return "_".join((words + ["general", "user", "topic"])[:3]).lower()
    if name == "languages":
        return "english"
    return f"{name}: {snippet} [{h % 10_000:04d}]"


def fake_privacy_rating(text: str) -> int:
    """The privacy auditor's rating (``pipeline.audit``, Clio's 1-5) this server gives a cluster text: 1 + the
    first byte of its SHA-256 modulo 5, so about two in five clusters rate below 3."""
    return 1 + _digest(text)[0] % 5


def fake_content(messages: list[dict[str, Any]], schema: dict[str, Any] | None, leaky: bool = False) -> str:
    """What the server answers: a JSON object for ``schema``, derived from the last user message. A privacy-audit
    request (a schema with ``rating`` and ``reason``) gets :func:`fake_privacy_rating` of that message. ``leaky``
    (:meth:`FakeOpenAIServer.set_leaky`): text fields copy the whole message, as a model that ignores the
    prompt's "no personal data" instruction would."""
    user = [m.get("content") for m in messages if m.get("role") == "user" and isinstance(m.get("content"), str)]
    text = user[-1] if user else ""
    if schema is not None and {"rating", "reason"} <= set(schema.get("properties", {})):
        rating = fake_privacy_rating(text)
        return json.dumps({"rating": rating, "reason": f"rated {rating} by the fake server"})
    words = [w.lower() for w in _WORD.findall(text) if w.lower() not in _IGNORED_WORDS]
    if leaky:
        words = [text]
    seed = _digest(json.dumps(messages, sort_keys=True))
    if schema is None:
        return f"You said: {' '.join(words[:12])}"
    return json.dumps(_value("root", {**schema, "type": "object"}, schema, words, seed))


# --- HTTP -----------------------------------------------------------------------------------------------
class _Handler(BaseHTTPRequestHandler):
    state: _State
    client_gone = False
    _fault_delay = 0.0
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        # answer at once: without this, Nagle's algorithm and delayed ACKs add ~40 ms to small responses
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # keep test output clean

    def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            self.client_gone = True  # the client timed out and hung up; the request is still counted

    def _error(self, status: int, message: str) -> None:
        self._send(status, _error_body(status, message))

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        if self.path.rstrip("/") == "/_fake/stats":
            with self.state.lock:
                stats = {"requests": [asdict(r) for r in self.state.records], "max_in_flight": self.state.max_in_flight}
            self._send(200, stats)
        else:
            self._error(404, f"no route {self.path}")

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        raw = self.rfile.read(int(self.headers.get("content-length") or 0))
        received = time.monotonic()
        path = self.path.split("?", 1)[0].rstrip("/")
        if path == "/_fake/faults":
            fault = Fault(**json.loads(raw))
            with self.state.lock:
                self.state.faults.append(fault)
            return self._send(200, asdict(fault))
        endpoint: Endpoint | None = {"/v1/chat/completions": "chat", "/v1/embeddings": "embeddings"}.get(path)  # type: ignore[assignment]
        if endpoint is None:
            return self._error(404, f"no route {self.path}")
        with self.state.lock:
            self.state.in_flight += 1
            self.state.max_in_flight = max(self.state.max_in_flight, self.state.in_flight)
        self.client_gone = False
        try:
            if not self.state.gate.wait(timeout=600):
                return self._error(503, "held for 600 s: the test never released the fake server")
            status, payload, headers, kind = self._build(endpoint, raw)
            time.sleep(max(0.0, received + self.state.delay + self._fault_delay - time.monotonic()))
            record = RequestRecord(endpoint, status, kind, int(self.headers.get("x-stainless-retry-count") or 0),
                                   hashlib.sha256(raw).hexdigest())
            with self.state.lock:  # counted before the client can see the answer: no race in tests
                self.state.records.append(record)
            self._send(status, payload, headers)
        finally:
            with self.state.lock:
                self.state.in_flight -= 1
        if self.client_gone:
            record.status, self.close_connection = 499, True

    def _take_fault(self, endpoint: str, raw: bytes) -> Fault | None:
        text = raw.decode("utf-8", "replace")
        with self.state.lock:
            for fault in self.state.faults:
                if fault.endpoint == endpoint and (fault.match is None or fault.match in text) and fault.times != 0:
                    if fault.times is not None:
                        fault.times -= 1
                    return fault
        return None

    def _build(self, endpoint: str, raw: bytes) -> tuple[int, Any, dict[str, str] | None, str | None]:
        """The answer (status, JSON payload, extra headers, fault applied); it is sent ``delay`` seconds after
        the request arrived, building included."""
        self._fault_delay = 0.0
        auth = self.headers.get("authorization", "")
        if not auth.startswith("Bearer ") or auth == "Bearer ":
            return 401, _error_body(401, "missing API key"), None, None
        try:
            body = json.loads(raw)
        except json.JSONDecodeError as exc:
            return 400, _error_body(400, f"request body is not JSON: {exc}"), None, None
        fault = self._take_fault(endpoint, raw)
        kind = fault.kind if fault else None
        if fault and fault.kind == "delay":
            self._fault_delay = fault.seconds
        if fault and fault.kind == "status":
            return (fault.status, _error_body(fault.status, f"injected {fault.status}"),
                    {"retry-after-ms": str(self.state.retry_after_ms)}, "status")
        if endpoint == "embeddings":
            return 200, self._embeddings(body), None, kind
        rf = body.get("response_format") or {}
        if rf.get("type") == "json_schema":
            if not self.state.structured_output:
                message = "response_format of type json_schema is not supported by this server"
                return 400, _error_body(400, message), None, "no_structured_output"
            schema = rf["json_schema"]["schema"]
        elif rf.get("type") == "json_object":
            schema = _schema_from_prompt(body["messages"]) or {"type": "object", "properties": {}}
        else:
            schema = None
        content = fake_content(body["messages"], schema, leaky=self.state.leaky)
        if kind == "malformed":
            content = content[: len(content) // 2] + ' "oops'
        prompt_tokens = len(raw) // 4
        completion_tokens = max(1, len(content) // 4)
        return 200, {
            "id": f"chatcmpl-{hashlib.sha256(raw).hexdigest()[:12]}",
            "object": "chat.completion",
            "created": 0,
            "model": body.get("model", "fake-model"),
            "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                         "message": {"role": "assistant", "content": content, "refusal": None}}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }, None, kind

    def _embeddings(self, body: dict[str, Any]) -> dict[str, Any]:
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        dims = int(body.get("dimensions") or self.state.embedding_dims)
        data = []
        for i, text in enumerate(texts):
            v = fake_embedding(str(text), dims)
            emb: Any = base64.b64encode(v.astype("<f4").tobytes()).decode() if body.get("encoding_format") == "base64" else v.tolist()
            data.append({"object": "embedding", "index": i, "embedding": emb})
        tokens = sum(len(str(t)) // 4 + 1 for t in texts)
        return {"object": "list", "data": data, "model": body.get("model", "fake-embedding"),
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def _error_body(status: int, message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "fake_error", "code": status}}


_SUBJECTS = ("sort a list in python", "write a haiku about rain", "plan a trip to the mountains",
             "fix a failing SQL query", "explain photosynthesis", "draft an email to a landlord",
             "bake sourdough bread", "prepare for a job interview")


def fake_conversations(n: int, start: int = 0) -> list[Conversation]:
    """``n`` conversations with distinct contents, numbered from ``start`` (ids ``conv-00000`` …)."""
    base = datetime(2026, 1, 1, tzinfo=timezone.utc)
    out = []
    for i in range(start, start + n):
        subject = _SUBJECTS[i % len(_SUBJECTS)]
        out.append(Conversation(
            chat_id=f"conv-{i:05d}", created_at=base, metadata={"n": i},
            messages=[Message(created_at=base, role="user", content=f"Request {i}: please help me {subject}."),
                      Message(created_at=base, role="assistant", content=f"Sure, here is how to {subject} (#{i}).")],
        ))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each answer")
    parser.add_argument("--no-structured-output", action="store_true", help="refuse json_schema (JSON mode only)")
    args = parser.parse_args()
    server = FakeOpenAIServer(port=args.port, delay=args.delay, structured_output=not args.no_structured_output)
    print(f"OPENAI_BASE_URL={server.url}", flush=True)
    try:
        server._httpd.serve_forever()
    except KeyboardInterrupt:
        server._httpd.server_close()


if __name__ == "__main__":
    main()
