"""The answer cache: every LLM and embedding answer survives crashes and reruns. No Dagster here.

Layout, under the checkpoint directory::

    .kura-cache/<kind>/<sha256(identity)[:20]>/identity.json       # the identity and when it was last used
    .kura-cache/<kind>/<…>/seg-<time>-<pid>-<random>.jsonl          # {"k": key, "v": answer}, written atomically
    .kura-cache/<kind>/<…>/journal-<time>-<pid>-<random>.jsonl      # answers of a run still going (or killed)

``kind`` is ``summaries`` (key: the conversation's content hash), ``embeddings`` (key: the text's hash;
value: base64 float32) or ``names`` (key: the hash of the exact naming request; value: the generated name).

* **Keys.** A summary is keyed by the conversation's content hash (SHA-256 of its messages' roles and
  contents: exactly what the prompt is made of) inside a namespace per model identity, which names the model,
  the prompt version and the temperature. Change any of them and the old entries are simply not found (they
  stay on disk, so switching back is free; ``kura-dagster cache prune`` removes the ones no longer used).
  Embeddings are keyed by the text inside a namespace per embedding model identity; cluster names by the
  request itself (members, contrastive examples, prompt), so a changed cluster is asked again and an
  unchanged one never is. How to reach the server (``base_url``, ``structured_output``, concurrency,
  timeouts) is not part of any key: it changes how an answer is fetched, not what is asked.
* **Crash safety.** Each answer goes to the namespace's journal as it arrives
  (:mod:`kura_dagster.checkpoints.journal`: written at once, fsynced by a group commit at most every
  ~200 ms), and :meth:`AnswerCache.commit` folds the journals into one atomic segment (temporary file, fsync,
  rename) at batch boundaries and at the end. A ``kill -9`` loses at most the answers in flight; a torn last
  journal line is ignored. Segments and journals of concurrent writers never collide (their names carry the
  pid and a random part). Journals of dead writers are folded into a segment by the next load.
* **Compaction.** When a namespace holds more than ``compact_after`` segments, loading it merges them into one
  (written atomically *before* the merged files are removed, so a crash in between only leaves duplicates).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ValidationError
from upath import UPath

from kura_dagster.checkpoints import storage
from kura_dagster.checkpoints.errors import CheckpointCorruptError
from kura_dagster.checkpoints.journal import (
    COMMIT_INTERVAL,
    JOURNAL_PREFIX,
    SEGMENT_PREFIX,
    SUFFIX,
    GroupCommitter,
    Journal,
    encode,
    parse_lines,
    remove_file,
    remove_tree,
    unique_name,
    writer_pid,
)
from kura_dagster.types import Conversation, GeneratedCluster, GeneratedSummary

logger = logging.getLogger(__name__)

CACHE_DIRNAME = ".kura-cache"
IDENTITY_FILE = "identity.json"


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
    name_hits: int = 0
    name_misses: int = 0
    names_written: int = 0
    segments_written: int = 0
    journal_commits: int = 0
    """Group commits (fsyncs of a local journal, or small segment objects on an object store)."""

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class _Namespace:
    """One ``kind/identity`` directory: its entries in memory, new ones journaled, then compacted into segments."""

    def __init__(self, directory: UPath, kind: str, identity: str, compact_after: int) -> None:
        self.directory = directory
        self.kind = kind
        self.identity = identity
        self.compact_after = compact_after
        self.entries: dict[str, Any] = {}
        self._loaded = False
        self._touched = False
        self.journal = Journal(directory, before_first_write=self.touch)

    def _files(self, prefix: str) -> list[UPath]:
        if not self.directory.exists():
            return []
        return sorted((p for p in self.directory.iterdir() if p.name.startswith(prefix) and p.name.endswith(SUFFIX)),
                      key=lambda p: p.name)

    def load(self) -> dict[str, Any]:
        if self._loaded:
            return self.entries
        segments = self._files(SEGMENT_PREFIX)
        for path in segments:
            self.entries.update(parse_lines(path.read_bytes(), path, torn_tail_ok=False))
        dead: dict[UPath, dict[str, Any]] = {}
        vanished = False
        for path in self._files(JOURNAL_PREFIX):
            try:
                data = path.read_bytes()
            except FileNotFoundError:  # its writer compacted it meanwhile: its answers are in a new segment
                vanished = True
                continue
            records = parse_lines(data, path, torn_tail_ok=True)
            self.entries.update(records)
            pid = writer_pid(path.name)
            if storage.is_local(path) and pid is not None and pid != os.getpid() and not storage._pid_alive(pid):
                dead[path] = records
        if vanished:
            seen = {p.name for p in segments}
            for path in self._files(SEGMENT_PREFIX):
                if path.name not in seen:
                    self.entries.update(parse_lines(path.read_bytes(), path, torn_tail_ok=False))
        self._loaded = True
        if self.entries:
            self.touch()
        try:
            self._tidy(segments, dead)
        except OSError as exc:  # tidying is an optimisation: a read-only cache still serves its answers
            logger.warning("could not compact cache folder %s (%s); its answers are still used", self.directory, exc)
        return self.entries

    def _tidy(self, segments: list[UPath], dead: dict[UPath, dict[str, Any]]) -> None:
        """Merge many segments into one, and the journals of killed runs into a segment (written before the
        merged files are removed, so a crash in between only leaves duplicates)."""
        if len(segments) > self.compact_after:
            self.write_segment(dict(self.entries))
            for path in segments:
                remove_file(path)
        elif dead:
            merged: dict[str, Any] = {}
            for records in dead.values():
                merged.update(records)
            self.write_segment(merged)
        for path in dead:
            remove_file(path)

    def touch(self) -> None:
        """Record the identity and that it is in use now (once per process), for ``kura-dagster cache prune``."""
        if self._touched:
            return
        self._touched = True
        body = {"kind": self.kind, "identity": self.identity, "last_used": time.time()}
        try:
            storage.atomic_write_bytes(self.directory / IDENTITY_FILE, json.dumps(body).encode())
        except OSError as exc:  # a read-only cache still serves its answers; only pruning loses this hint
            logger.warning("cannot record the last use of cache folder %s (%s); `kura-dagster cache prune` "
                           "will judge it by its files' times", self.directory, exc)

    def write_segment(self, records: dict[str, Any]) -> UPath:
        path = self.directory / unique_name(SEGMENT_PREFIX)
        storage.atomic_write_bytes(path, encode(records))
        return path

    def put(self, records: dict[str, Any]) -> None:
        if not records:
            return
        self.load()
        self.journal.append(records)
        self.entries.update(records)


class SummaryCache:
    """Answers already paid for, under ``<checkpoint_dir>/.kura-cache``: summaries, embeddings, cluster names.

    Implements the ``AnswerCache`` protocol of :mod:`kura_dagster.pipeline.models.cached`. ``put_*`` journals
    the answers at once (durable within ``commit_interval`` seconds); :meth:`commit` compacts them into
    segments. Summaries and embeddings can be switched off (``summaries=False`` / ``embeddings=False``; names
    follow ``summaries``, as the same LLM answers them): lookups then miss and writes are skipped, which is
    what cheap local models want.
    """

    def __init__(
        self,
        checkpoint_dir: str | os.PathLike[str] | UPath,
        *,
        summaries: bool = True,
        embeddings: bool = True,
        names: bool | None = None,
        compact_after: int = 256,
        commit_interval: float = COMMIT_INTERVAL,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        self.root = storage.to_upath(checkpoint_dir, storage_options) / CACHE_DIRNAME
        self.summaries_enabled = summaries
        self.embeddings_enabled = embeddings
        self.names_enabled = summaries if names is None else names
        self.compact_after = compact_after
        self.stats = CacheStats()
        self._namespaces: dict[tuple[str, str], _Namespace] = {}
        self._lock = threading.RLock()
        self._committer = GroupCommitter(lambda: [ns.journal for ns in list(self._namespaces.values())],
                                         commit_interval)

    def __repr__(self) -> str:
        return (f"SummaryCache({str(self.root)!r}, summaries={self.summaries_enabled}, "
                f"embeddings={self.embeddings_enabled}, names={self.names_enabled})")

    def namespace(self, kind: str, identity: str) -> _Namespace:
        key = (kind, identity)
        with self._lock:
            if key not in self._namespaces:
                self._namespaces[key] = _Namespace(self.root / kind / namespace_id(identity), kind, identity,
                                                   self.compact_after)
            return self._namespaces[key]

    def _put(self, kind: str, identity: str, records: dict[str, Any]) -> None:
        with self._lock:
            self.namespace(kind, identity).put(records)
        self._committer.ensure_running()

    def commit(self) -> None:
        """Compact every journal into one atomic segment per namespace (at batch boundaries and at the end).

        Raises the first failure of a background group commit, if one happened."""
        with self._lock:
            try:
                self._committer.stop(final_sync=False)  # compaction makes everything durable
            finally:
                for ns in list(self._namespaces.values()):
                    self.stats.journal_commits += ns.journal.syncs
                    ns.journal.syncs = 0
                    if ns.journal.compact(ns.write_segment):
                        self.stats.segments_written += 1

    close = commit

    def __enter__(self) -> SummaryCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.commit()

    # --- summaries ---------------------------------------------------------------------------------------
    def get_summaries(self, identity: str, conversations: Sequence[Conversation]) -> list[GeneratedSummary | None]:
        if not self.summaries_enabled:
            self.stats.summary_misses += len(conversations)
            return [None] * len(conversations)
        out = self._get_models("summaries", identity, [conversation_hash(c) for c in conversations],
                               GeneratedSummary, [f"conversation {c.chat_id!r}" for c in conversations])
        hits = sum(s is not None for s in out)
        self.stats.summary_hits += hits
        self.stats.summary_misses += len(out) - hits
        return out

    def put_summaries(self, identity: str, conversations: Sequence[Conversation],
                      summaries: Sequence[GeneratedSummary]) -> None:
        """Journal answers now (each call may be one answer); :meth:`commit` makes them a segment."""
        if len(conversations) != len(summaries):
            raise ValueError(f"{len(summaries)} summaries for {len(conversations)} conversations")
        if not self.summaries_enabled or not conversations:
            return
        self._put("summaries", identity,
                  {conversation_hash(c): s.model_dump(mode="json") for c, s in zip(conversations, summaries)})
        self.stats.summaries_written += len(conversations)

    # --- cluster names -----------------------------------------------------------------------------------
    def get_names(self, identity: str, keys: Sequence[str]) -> list[GeneratedCluster | None]:
        """Names by request key (the hash of the exact naming request)."""
        if not self.names_enabled:
            self.stats.name_misses += len(keys)
            return [None] * len(keys)
        out = self._get_models("names", identity, list(keys), GeneratedCluster, [f"request {k[:12]}" for k in keys])
        hits = sum(n is not None for n in out)
        self.stats.name_hits += hits
        self.stats.name_misses += len(out) - hits
        return out

    def put_names(self, identity: str, keys: Sequence[str], names: Sequence[GeneratedCluster]) -> None:
        if len(keys) != len(names):
            raise ValueError(f"{len(names)} names for {len(keys)} requests")
        if not self.names_enabled or not keys:
            return
        self._put("names", identity, {k: n.model_dump(mode="json") for k, n in zip(keys, names)})
        self.stats.names_written += len(keys)

    def _get_models(self, kind: str, identity: str, keys: list[str], model: type[BaseModel],
                    what: list[str]) -> list[Any]:
        with self._lock:
            ns = self.namespace(kind, identity)
            entries = ns.load()
        out: list[Any] = []
        for key, label in zip(keys, what):
            raw = entries.get(key)
            if raw is None:
                out.append(None)
                continue
            try:
                out.append(model.model_validate(raw))
            except ValidationError as exc:
                raise CheckpointCorruptError(ns.directory, f"cached answer for {label} is invalid "
                                             f"({exc.error_count()} errors); delete the directory to recompute"
                                             ) from None
        return out

    # --- embeddings --------------------------------------------------------------------------------------
    def get_embeddings(self, identity: str, texts: Sequence[str]) -> list[np.ndarray | None]:
        if not self.embeddings_enabled:
            self.stats.embedding_misses += len(texts)
            return [None] * len(texts)
        with self._lock:
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
        self._put("embeddings", identity, records)
        self.stats.embeddings_written += len(texts)


# --- administration: sizes, last use, pruning (``kura-dagster cache``) -------------------------------------
@dataclass
class CacheFolder:
    """One setting folder of the cache: ``<kind>/<namespace id>``."""

    kind: str
    folder: str
    identity: str | None
    bytes: int
    files: int
    last_used: float | None
    """Seconds since the epoch (``identity.json``, else the newest file's modification time), or None."""
    live_writers: int
    """Journals whose writing process is still running on this machine (such a folder is never pruned)."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _mtime(path: UPath) -> float | None:
    try:
        info = path.fs.info(path.path)
    except FileNotFoundError:
        return None
    for key in ("mtime", "LastModified", "last_modified", "updated", "created"):
        value = info.get(key)
        if isinstance(value, (int, float)):
            return float(value)
        if hasattr(value, "timestamp"):
            return float(value.timestamp())
    return None


def cache_folders(checkpoint_dir: str | os.PathLike[str] | UPath,
                  storage_options: dict[str, Any] | None = None) -> list[CacheFolder]:
    """Every setting folder under ``<checkpoint_dir>/.kura-cache``, with its size and last use."""
    root = storage.to_upath(checkpoint_dir, storage_options) / CACHE_DIRNAME
    out: list[CacheFolder] = []
    for kind_dir in sorted(root.iterdir(), key=lambda p: p.name) if root.exists() else []:
        if not kind_dir.is_dir():
            continue
        for folder in sorted(kind_dir.iterdir(), key=lambda p: p.name):
            if not folder.is_dir():
                continue
            files = [p for p in folder.iterdir() if p.is_file()]
            identity, last_used = None, None
            marker = folder / IDENTITY_FILE
            if marker.exists():
                with contextlib.suppress(ValueError, OSError):
                    body = json.loads(marker.read_bytes())
                    identity = body.get("identity")
                    last_used = body.get("last_used")
            if last_used is None:
                times = [t for t in (_mtime(p) for p in files) if t is not None]
                last_used = max(times) if times else None
            live = sum(1 for p in files if p.name.startswith(JOURNAL_PREFIX) and storage.is_local(p)
                       and (pid := writer_pid(p.name)) is not None and storage._pid_alive(pid))
            out.append(CacheFolder(kind=kind_dir.name, folder=folder.name, identity=identity,
                                   bytes=sum(p.stat().st_size for p in files), files=len(files),
                                   last_used=last_used, live_writers=live))
    return out


def cache_size(checkpoint_dir: str | os.PathLike[str] | UPath, storage_options: dict[str, Any] | None = None
               ) -> tuple[int, int]:
    """``(bytes, setting folders)`` of the cache under ``checkpoint_dir``."""
    folders = cache_folders(checkpoint_dir, storage_options)
    return sum(f.bytes for f in folders), len(folders)


def prune_cache(
    checkpoint_dir: str | os.PathLike[str] | UPath,
    *,
    older_than: float,
    keep: Sequence[str] = (),
    dry_run: bool = False,
    now: float | None = None,
    storage_options: dict[str, Any] | None = None,
) -> Iterator[tuple[CacheFolder, str]]:
    """Remove setting folders not used for ``older_than`` seconds; yields ``(folder, decision)`` for every
    folder, the decision being ``"removed"`` (``"would remove"`` with ``dry_run``) or why it was kept.

    Kept: identities in ``keep``, folders whose last use is unknown, and folders a running process writes."""
    if older_than < 0:
        raise ValueError(f"older_than must not be negative, got {older_than}")
    now = time.time() if now is None else now
    root = storage.to_upath(checkpoint_dir, storage_options) / CACHE_DIRNAME
    for folder in cache_folders(checkpoint_dir, storage_options):
        if folder.identity is not None and folder.identity in keep:
            yield folder, "kept (--keep)"
        elif folder.live_writers:
            yield folder, "kept (a running process writes it)"
        elif folder.last_used is None:
            yield folder, "kept (last use unknown)"
        elif now - folder.last_used < older_than:
            yield folder, "kept (in use)"
        elif dry_run:
            yield folder, "would remove"
        else:
            remove_tree(root / folder.kind / folder.folder)
            yield folder, "removed"
