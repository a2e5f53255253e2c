"""The per-conversation summary cache: finished LLM work survives crashes and reruns. No Dagster here.

Layout, under the checkpoint directory::

    .kura-cache/summaries/<sha256(model identity)[:20]>/identity.json      # the identity, for humans
    .kura-cache/summaries/<…>/seg-<time>-<pid>-<random>.jsonl             # {"k": content hash, "s": summary}
    .kura-cache/embeddings/<sha256(embedding identity)[:20]>/seg-….jsonl  # {"k": text hash, "v": base64 float32}

* **Keys.** A summary is keyed by the conversation's content hash (SHA-256 of its messages' roles and
  contents: exactly what the prompt is made of) inside a namespace per model identity, which names the model,
  the prompt version and the temperature. Change any of them and the old entries are simply not found (they
  stay on disk, so switching back is free). Embeddings are keyed by the hash of the embedded text inside a
  namespace per embedding model identity.
* **Crash safety.** Every :meth:`put_summaries`/:meth:`put_embeddings` call writes one new segment file
  atomically (:func:`kura_dagster.checkpoints.storage.atomic_write_bytes`: temporary file, fsync, rename). A
  ``kill -9`` loses at most the batch being written and never damages finished segments. Segments from
  concurrent writers never collide (their names carry the pid and a random part).
* **Compaction.** When a namespace holds more than ``compact_after`` segments, loading it merges them into one
  (written atomically *before* the merged files are removed, so a crash in between only leaves duplicates).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from pydantic import ValidationError
from upath import UPath

from kura_dagster.checkpoints import storage
from kura_dagster.checkpoints.errors import CheckpointCorruptError
from kura_dagster.types import Conversation, GeneratedSummary

CACHE_DIRNAME = ".kura-cache"
SEGMENT_PREFIX = "seg-"
SEGMENT_SUFFIX = ".jsonl"


def conversation_hash(conversation: Conversation) -> str:
    """SHA-256 of the conversation's messages (role and content, in order): what a summary depends on."""
    payload = json.dumps([[m.role, m.content] for m in conversation.messages], ensure_ascii=False,
                         separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def namespace_id(identity: str) -> str:
    return hashlib.sha256(identity.encode("utf-8")).hexdigest()[:20]


@dataclass
class CacheStats:
    summary_hits: int = 0
    summary_misses: int = 0
    summaries_written: int = 0
    embedding_hits: int = 0
    embedding_misses: int = 0
    embeddings_written: int = 0
    segments_written: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class _Namespace:
    """One ``kind/identity`` directory: its entries in memory, new ones appended as segment files."""

    def __init__(self, directory: UPath, identity: str, compact_after: int) -> None:
        self.directory = directory
        self.identity = identity
        self.compact_after = compact_after
        self.entries: dict[str, Any] = {}
        self._loaded = False

    def _segments(self) -> list[UPath]:
        if not self.directory.exists():
            return []
        return sorted((p for p in self.directory.iterdir()
                       if p.name.startswith(SEGMENT_PREFIX) and p.name.endswith(SEGMENT_SUFFIX)),
                      key=lambda p: p.name)

    def _read_segment(self, path: UPath) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for n, line in enumerate(path.read_bytes().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                out[record["k"]] = record["v"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise CheckpointCorruptError(
                    path, f"unreadable cache record ({exc!r}); delete this file to recompute its entries", line=n
                ) from None
        return out

    def load(self) -> dict[str, Any]:
        if self._loaded:
            return self.entries
        segments = self._segments()
        for path in segments:
            self.entries.update(self._read_segment(path))
        self._loaded = True
        if len(segments) > self.compact_after:
            self._compact(segments)
        return self.entries

    def _write_identity(self) -> None:
        marker = self.directory / "identity.json"
        if not marker.exists():
            storage.atomic_write_bytes(marker, json.dumps({"identity": self.identity}).encode())

    def _write_segment(self, records: dict[str, Any]) -> UPath:
        name = f"{SEGMENT_PREFIX}{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}{SEGMENT_SUFFIX}"
        body = b"".join(json.dumps({"k": k, "v": v}, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
                        for k, v in records.items())
        path = self.directory / name
        storage.atomic_write_bytes(path, body)
        return path

    def _compact(self, segments: list[UPath]) -> None:
        self._write_identity()
        self._write_segment(dict(self.entries))
        for path in segments:
            storage.remove_path(path)

    def put(self, records: dict[str, Any]) -> None:
        if not records:
            return
        self.load()
        self._write_identity()
        self._write_segment(records)
        self.entries.update(records)


class SummaryCache:
    """Summaries (and optionally embeddings) already paid for, under ``<checkpoint_dir>/.kura-cache``.

    Implements the ``SummaryCache`` protocol of :mod:`kura_dagster.pipeline.summarise`. Either half can be
    switched off (``summaries=False`` / ``embeddings=False``): lookups then miss and writes are skipped, which
    is what cheap local models want.
    """

    def __init__(
        self,
        checkpoint_dir: str | os.PathLike[str] | UPath,
        *,
        summaries: bool = True,
        embeddings: bool = True,
        compact_after: int = 256,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        self.root = storage.to_upath(checkpoint_dir, storage_options) / CACHE_DIRNAME
        self.summaries_enabled = summaries
        self.embeddings_enabled = embeddings
        self.compact_after = compact_after
        self.stats = CacheStats()
        self._namespaces: dict[tuple[str, str], _Namespace] = {}

    def __repr__(self) -> str:
        return f"SummaryCache({str(self.root)!r}, summaries={self.summaries_enabled}, embeddings={self.embeddings_enabled})"

    def namespace(self, kind: str, identity: str) -> _Namespace:
        key = (kind, identity)
        if key not in self._namespaces:
            self._namespaces[key] = _Namespace(self.root / kind / namespace_id(identity), identity, self.compact_after)
        return self._namespaces[key]

    # --- summaries ---------------------------------------------------------------------------------------
    def get_summaries(self, identity: str, conversations: Sequence[Conversation]) -> list[GeneratedSummary | None]:
        if not self.summaries_enabled:
            self.stats.summary_misses += len(conversations)
            return [None] * len(conversations)
        ns = self.namespace("summaries", identity)
        entries = ns.load()
        out: list[GeneratedSummary | None] = []
        for conversation in conversations:
            raw = entries.get(conversation_hash(conversation))
            if raw is None:
                out.append(None)
                continue
            try:
                out.append(GeneratedSummary.model_validate(raw))
            except ValidationError as exc:
                raise CheckpointCorruptError(ns.directory, f"cached summary for conversation {conversation.chat_id!r} "
                                             f"is invalid ({exc.error_count()} errors); delete the directory to "
                                             "recompute") from None
        hits = sum(s is not None for s in out)
        self.stats.summary_hits += hits
        self.stats.summary_misses += len(out) - hits
        return out

    def put_summaries(self, identity: str, conversations: Sequence[Conversation],
                      summaries: Sequence[GeneratedSummary]) -> None:
        """Persist one batch atomically (one segment file)."""
        if len(conversations) != len(summaries):
            raise ValueError(f"{len(summaries)} summaries for {len(conversations)} conversations")
        if not self.summaries_enabled or not conversations:
            return
        self.namespace("summaries", identity).put(
            {conversation_hash(c): s.model_dump(mode="json") for c, s in zip(conversations, summaries)})
        self.stats.summaries_written += len(conversations)
        self.stats.segments_written += 1

    # --- embeddings --------------------------------------------------------------------------------------
    def get_embeddings(self, identity: str, texts: Sequence[str]) -> list[np.ndarray | None]:
        if not self.embeddings_enabled:
            self.stats.embedding_misses += len(texts)
            return [None] * len(texts)
        entries = self.namespace("embeddings", identity).load()
        out = []
        for text in texts:
            raw = entries.get(text_hash(text))
            out.append(None if raw is None else np.frombuffer(base64.b64decode(raw), dtype="<f4").astype(np.float32))
        hits = sum(v is not None for v in out)
        self.stats.embedding_hits += hits
        self.stats.embedding_misses += len(out) - hits
        return out

    def put_embeddings(self, identity: str, texts: Sequence[str], vectors: np.ndarray) -> None:
        if len(texts) != len(vectors):
            raise ValueError(f"{len(vectors)} vectors for {len(texts)} texts")
        if not self.embeddings_enabled or not len(texts):
            return
        records = {text_hash(t): base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode("ascii")
                   for t, v in zip(texts, vectors)}
        self.namespace("embeddings", identity).put(records)
        self.stats.embeddings_written += len(texts)
        self.stats.segments_written += 1
