"""The per-answer journal of the answer cache: every finished answer is saved as it arrives. No Dagster here.

One :class:`Journal` per cache namespace and writer process. ``append`` hands records over; a group-commit
thread (:class:`GroupCommitter`) makes them durable at most once per ``interval`` (~200 ms), whatever the
rate of answers:

* **Local paths**: each ``append`` writes its lines at once to ``journal-<time>-<pid>-<random>.jsonl``
  (``O_APPEND``, one ``write`` call), so a ``kill -9`` of the process loses nothing already appended (the
  bytes are in the kernel); the committer ``fsync``\\ s the file, so a power loss costs at most the last
  interval's answers.
* **Object stores** (``s3://``, ``memory://`` …) cannot append: records are buffered in memory and each
  group commit writes them as one new small segment object (``seg-…jsonl``, a single PUT, which object
  stores make atomic). A crash costs at most the last interval's answers.

:meth:`Journal.compact` folds everything this journal holds into one atomic segment (the cache calls it at
batch boundaries and at the end) and then removes the journal file or the small commit segments. A crash
in between only leaves duplicates. Readers ignore a torn last journal line (:func:`parse_lines`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from upath import UPath

from kura_dagster.checkpoints import storage
from kura_dagster.checkpoints.errors import CheckpointCorruptError

logger = logging.getLogger(__name__)

SEGMENT_PREFIX = "seg-"
JOURNAL_PREFIX = "journal-"
SUFFIX = ".jsonl"
COMMIT_INTERVAL = 0.2
"""Seconds between group commits (at most one fsync or one segment object per interval)."""


def unique_name(prefix: str) -> str:
    """``<prefix><time>-<pid>-<random>.jsonl``: sorts by time, never collides between writers."""
    return f"{prefix}{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}{SUFFIX}"


def writer_pid(name: str) -> int | None:
    """The pid in a journal or segment name made by :func:`unique_name`, or ``None``."""
    parts = name[: -len(SUFFIX)].split("-") if name.endswith(SUFFIX) else []
    try:
        return int(parts[-2]) if len(parts) >= 3 else None
    except ValueError:
        return None


def encode(records: dict[str, Any]) -> bytes:
    return b"".join(json.dumps({"k": k, "v": v}, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
                    for k, v in records.items())


def parse_lines(data: bytes, path: object, *, torn_tail_ok: bool) -> dict[str, Any]:
    """``{key: value}`` of a segment or journal. A bad line is a :class:`CheckpointCorruptError` naming the
    file and line, except the last line of a journal (``torn_tail_ok``): a writer killed mid-line leaves it
    torn, and it is ignored."""
    out: dict[str, Any] = {}
    lines = data.split(b"\n")
    last = len(lines)
    while last > 0 and not lines[last - 1].strip():
        last -= 1
    for n, line in enumerate(lines[:last], start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            out[record["k"]] = record["v"]
        except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as exc:
            if torn_tail_ok and n == last:
                logger.info("%s line %d: torn last journal line ignored (%s)", path, n, exc)
                continue
            raise CheckpointCorruptError(
                path, f"unreadable cache record ({exc!r}); delete this file to recompute its entries", line=n
            ) from None
    return out


def remove_file(path: UPath) -> None:
    """Delete one cache file (missing is fine: a concurrent compaction may have removed it)."""
    with contextlib.suppress(FileNotFoundError):
        if storage.is_local(path):
            os.unlink(storage.local_path(path))
        else:
            path.fs.rm_file(path.path)


def remove_tree(path: UPath) -> None:
    """Delete one cache folder and everything in it."""
    with contextlib.suppress(FileNotFoundError):
        if storage.is_local(path):
            shutil.rmtree(storage.local_path(path))
        else:
            path.fs.rm(path.path, recursive=True)


class Journal:
    """The journal of one namespace directory, written by this process (thread-safe)."""

    def __init__(self, directory: UPath, before_first_write: Callable[[], None] | None = None) -> None:
        self.directory = directory
        self.local = storage.is_local(directory)
        self._before_first_write = before_first_write
        self._lock = threading.Lock()
        self.pending: dict[str, Any] = {}
        """Everything appended since the last compaction (what the next segment will hold)."""
        self._path: UPath | None = None
        self._fd: int | None = None
        self._dirty = False
        self._dir_synced = False
        self._buffer: dict[str, Any] = {}
        self._commit_segments: list[UPath] = []
        self._writing = 0
        self.syncs = 0
        """Group commits done (fsyncs locally, segment objects on object stores)."""

    @property
    def dirty(self) -> bool:
        """Records appended but not yet durable (a group commit in progress counts)."""
        return self._dirty or bool(self._buffer) or self._writing > 0

    def append(self, records: dict[str, Any]) -> None:
        if not records:
            return
        with self._lock:
            if self._before_first_write is not None:
                self._before_first_write()
                self._before_first_write = None
            self.pending.update(records)
            if not self.local:
                self._buffer.update(records)
                return
            if self._fd is None:
                os.makedirs(storage.local_path(self.directory), exist_ok=True)
                self._path = self.directory / unique_name(JOURNAL_PREFIX)
                self._fd = os.open(storage.local_path(self._path), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
                self._dir_synced = False
            data = encode(records)
            while data:  # a regular file takes it in one call; loop in case of a short write
                data = data[os.write(self._fd, data):]
            self._dirty = True

    def sync(self) -> None:
        """One group commit: fsync the journal file, or write the buffered records as one segment object."""
        if self.local:
            with self._lock:
                if not self._dirty or self._fd is None:
                    return
                os.fsync(self._fd)
                if not self._dir_synced:  # the new file's name must survive a power loss too
                    storage._fsync_dir(storage.local_path(self.directory))
                    self._dir_synced = True
                self._dirty = False
                self.syncs += 1
            return
        with self._lock:
            records, self._buffer = self._buffer, {}
            self._writing += bool(records)
        if not records:
            return
        path = self.directory / unique_name(SEGMENT_PREFIX)
        try:
            path.fs.pipe_file(path.path, encode(records))  # one PUT: atomic on object stores
        except BaseException:
            with self._lock:
                self._buffer = {**records, **self._buffer}
                self._writing -= 1
            raise
        with self._lock:
            self._commit_segments.append(path)
            self.syncs += 1
            self._writing -= 1

    def compact(self, write_segment: Callable[[dict[str, Any]], object]) -> int:
        """Write everything appended since the last compaction as one atomic segment (``write_segment``), then
        remove the journal file / the small commit segments. Returns the number of records compacted."""
        with self._lock:
            records = dict(self.pending)
            if not records:
                return 0
            write_segment(records)
            self.pending.clear()
            self._buffer.clear()
            leftovers = list(self._commit_segments)
            self._commit_segments.clear()
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
                self._dirty = False
                if self._path is not None:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(storage.local_path(self._path))
                    self._path = None
        for path in leftovers:
            remove_file(path)
        return len(records)

    def close(self) -> None:
        """Stop writing (the journal file stays; a later load reads it)."""
        with self._lock:
            if self._fd is not None:
                if self._dirty:
                    os.fsync(self._fd)
                    self._dirty = False
                os.close(self._fd)
                self._fd = None


class GroupCommitter:
    """A daemon thread that runs ``sync`` on every dirty journal once per ``interval`` while started."""

    def __init__(self, journals: Callable[[], Iterable[Journal]], interval: float = COMMIT_INTERVAL) -> None:
        self._journals = journals
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._guard = threading.Lock()
        self.error: BaseException | None = None
        """The first failure of a group commit (re-raised by :meth:`stop`)."""

    def ensure_running(self) -> None:
        with self._guard:
            if self._thread is None or not self._thread.is_alive():
                self._stop.clear()
                self._thread = threading.Thread(target=self._run, name="kura-cache-commit", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sync_all()

    def sync_all(self) -> None:
        for journal in list(self._journals()):
            if journal.dirty:
                try:
                    journal.sync()
                except Exception as exc:  # kept, and raised to the writer at the next commit/close
                    logger.warning("group commit of %s failed: %s", journal.directory, exc)
                    if self.error is None:
                        self.error = exc

    def stop(self, final_sync: bool = True) -> None:
        """Stop the thread and raise the first commit failure, if any. ``final_sync=False`` skips the last group
        commit, for a caller about to compact (which writes and fsyncs a segment anyway)."""
        with self._guard:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._stop.set()
            thread.join()
        if final_sync:
            self.sync_all()
        if self.error is not None:
            error, self.error = self.error, None
            raise error
