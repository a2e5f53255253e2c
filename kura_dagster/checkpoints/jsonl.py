"""JSONL checkpoints: ``<dir>/<name>.jsonl``, one JSON object a line, exactly the file Kura writes and reads.

Integrity lives beside the file, in ``<name>.jsonl.meta.json`` (row count, checksum, model identity), so the
JSONL itself stays byte-for-byte what Kura reads. A file without a sidecar (Kura wrote it) is still checked
line by line; a file whose checksum disagrees with its sidecar is refused, never returned in part.

What a save and a load cost, and why each piece is there (measured in ``benchmarks/checkpoint_formats.py``):

* **One checksum, XXH3-128, computed as the bytes go by.** A save hashes each block of lines as it writes it
  (the file's XXH3-128 plus an XXH3-64 digest per block of :data:`BLOCK_LINES` lines, which only narrows damage
  down to lines); a load hashes each block as it reads it, while the same block is validated, so verifying costs
  no second pass over the file. XXH3 runs at ~10 GB/s; SHA-256 (what sidecars written before recorded, and
  still read) took ~12% of a 10k×1536 load. This is a checksum against damage (truncation, a changed byte), not a
  signature: the sidecar sits beside the file and anyone who can change one can change the other.
* **Validation in batches.** A batch of lines (:data:`BATCH_BYTES`, small enough to stay in the CPU's cache) is
  joined into one JSON array and validated by one pydantic-core call (a long line alone, as it is); only a batch
  that fails is looked at line by line, so errors still name the line. Measured, this is as fast as one call per
  line, not faster: pydantic-core's per-call overhead is small next to building a model. What made loads 2-3×
  faster is the next point.
* **No cyclic garbage collection during a load.** Building 100k models allocates ~10⁶ container objects, and
  CPython's collector re-traverses the growing heap while they pile up: two thirds of a 100k-row load. Models
  parsed from JSON hold no reference cycles, so a load (``load_checkpoint``) pauses the collector until it
  returns (restoring it as it was; nested and concurrent loads share one pause).
* **Serialization** is pydantic-core's own (``__pydantic_serializer__.to_json``, exactly the bytes of Kura's
  ``model_dump_json``, floats formatted by the same shortest-round-trip code), without Kura's decode to ``str``
  and encode back; lines go out ~256 kB at a time, never joined into one buffer for the whole file, written by a
  second thread while the next ones are serialized, and a local file's writeback starts as it goes (the fsync
  that makes it durable then waits for the last MBs, not the whole file).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import gc
import hashlib
import io
import json
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

import xxhash
from pydantic import BaseModel, ValidationError
from upath import UPath

from kura_dagster.checkpoints import storage
from kura_dagster.checkpoints.base import SCHEMA_VERSION, BaseCheckpointManager, SavedCheckpoint, identity_of
from kura_dagster.checkpoints.errors import CheckpointCorruptError
from kura_dagster.checkpoints.models import describe_validation_error, list_adapter

T = TypeVar("T", bound=BaseModel)
R = TypeVar("R")
SIDECAR_SUFFIX = ".meta.json"
CHUNK_BYTES = 256 << 10
"""Bytes read (and hashed) at a time while loading (1 MB blocks left ~3 MB more in the loading process's peak RSS
for 100k summaries, for no speed)."""
BATCH_BYTES = 32 << 10
"""Bytes of lines validated per pydantic-core call: ~40 summaries, or one line of a 1536-d embedding. Batches of
16 kB to 256 kB validate equally fast; 4 MB ones fell out of the CPU cache (~20% slower with embeddings), and
128 kB ones left ~7 MB more in a 10k×1536 load's RSS than one line at a time (pydantic-core parses a whole
batch before it builds the models)."""
READ_ATTEMPTS = 5
BLOCK_LINES = 256
"""Lines per block digest in the sidecar (a 1M-row file gets ~4,000 digests, ~75 kB)."""
WRITE_BYTES = 256 << 10
"""About how many bytes a save joins into one buffer per write: 256 lines of 30 kB (1536-d embeddings) joined
into 8 MB buffers cost ~35% more CPU than the same bytes in 256 kB pieces (fresh memory, out of cache)."""
BLOCK_HASH = "xxh3_64"
"""The block digests' hash (only for narrowing damage down to lines)."""
CHECKSUM = "xxh3_128"
"""The file's checksum, recorded as ``"checksum": "xxh3_128:<hex>"`` (sidecars written before recorded
``"sha256": "<hex>"``; both are read)."""
_HASHERS: dict[str, Callable[[], Any]] = {"xxh3_128": xxhash.xxh3_128, "sha256": hashlib.sha256}


def _block_digest(chunk: bytes, algorithm: str) -> str:
    if algorithm == "xxh3_64":
        return xxhash.xxh3_64_hexdigest(chunk)
    return hashlib.sha256(chunk).hexdigest()[:16]  # sidecars written before block_hash was recorded


def _block_digests(lines: list[bytes], block: int = 0, algorithm: str = BLOCK_HASH) -> list[str]:
    """Short digests of each run of ``block`` lines (line endings included), so that a damaged file can be
    narrowed down to the lines that changed."""
    block = block or BLOCK_LINES
    return [_block_digest(b"".join(lines[i : i + block]), algorithm) for i in range(0, len(lines), block)]


def _first_changed_block(data: bytes, saved: dict[str, Any]) -> tuple[int, int] | None:
    """(first, last) line numbers of the first block of ``data`` whose digest differs from ``saved``'s."""
    block, digests = saved.get("block_lines"), saved.get("blocks")
    if not block or not isinstance(digests, list):
        return None
    lines = data.split(b"\n")
    lines = [line + b"\n" for line in lines[:-1]] + ([lines[-1]] if lines[-1] else [])
    current = _block_digests(lines, block, saved.get("block_hash", "sha256"))
    for i, digest in enumerate(digests):
        if i >= len(current) or current[i] != digest:
            return i * block + 1, min((i + 1) * block, len(lines))
    return None


def version_checksum(version: dict[str, Any]) -> tuple[str, str]:
    """(algorithm, hex digest) of one sidecar version: ``"checksum": "xxh3_128:<hex>"``, or an older sidecar's
    ``"sha256": "<hex>"``."""
    if "checksum" in version:
        algorithm, _, digest = str(version["checksum"]).partition(":")
        return algorithm, digest
    return "sha256", version["sha256"]


def checksum_text(version: dict[str, Any]) -> str:
    algorithm, digest = version_checksum(version)
    return f"{algorithm}:{digest}"


class _Hashers:
    """The file's digest in each algorithm some accepted version was recorded with, from one pass over the bytes
    (normally just XXH3-128; SHA-256 too while a sidecar written before lists a version)."""

    def __init__(self, *sidecars: dict[str, Any] | None) -> None:
        algorithms = {CHECKSUM}
        for sidecar in sidecars:
            algorithms.update(version_checksum(v)[0] for v in (sidecar or {}).get("versions", []))
        self._hashers = {name: _HASHERS[name]() for name in sorted(algorithms)}
        self._updates = [h.update for h in self._hashers.values()]

    def update(self, data: bytes) -> None:
        for update in self._updates:
            update(data)

    def digests(self) -> dict[str, str]:
        return {name: h.hexdigest() for name, h in self._hashers.items()}


WRITEBACK_BYTES = 4 << 20
"""A local save asks the kernel to start writing each further ~4 MB to disk while it serializes the rest (the fsync
at the end then has at most a few MB left to wait for)."""
_SYNC_FILE_RANGE_WRITE = 2


@functools.lru_cache(maxsize=1)
def _sync_file_range() -> Any:
    """libc's ``sync_file_range`` (Linux), or ``None``. ``CDLL(None)`` is the running program's own symbols: no
    library search."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (AttributeError, OSError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    return fn


class _EarlyWriteback:
    """Starts writeback of what a local save has written so far, every :data:`WRITEBACK_BYTES`, without waiting for
    it (``sync_file_range(SYNC_FILE_RANGE_WRITE)``): the disk writes while the save serializes the next lines, and
    the fsync that makes the file durable then waits for the last few MB instead of the whole file. Durability
    still comes from that fsync alone. Without the call (not Linux) or a file descriptor (object stores), nothing."""

    def __init__(self, fh: Any) -> None:
        self._fh, self._fd, self._started = fh, None, 0
        fn = _sync_file_range()
        if fn is not None:
            with contextlib.suppress(AttributeError, OSError, io.UnsupportedOperation):
                self._fd = fh.fileno()
        self._fn = fn

    def written(self, total: int) -> None:
        if self._fd is None or total - self._started < WRITEBACK_BYTES:
            return
        self._fh.flush()
        if self._fn(self._fd, self._started, total - self._started, _SYNC_FILE_RANGE_WRITE) != 0:
            self._fd = None  # refused (e.g. a filesystem without it): the final fsync does all the work, as before
            return
        self._started = total


class _BackgroundWriter:
    """Writes the buffers a save hands it on a second thread, so that copying them into the OS (or uploading them, on
    an object store) overlaps serializing the next lines: pydantic-core holds the GIL while it serializes, a write
    releases it while in the kernel. At most ``depth`` buffers wait (a few MB). :meth:`close` waits for the last
    write and raises the first error a write met; :meth:`put` raises it too, so a failed write stops the save."""

    def __init__(self, fh: Any, depth: int = 8) -> None:
        self._fh = fh
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._writeback = _EarlyWriteback(fh)
        self._thread = threading.Thread(target=self._run, name="kura-jsonl-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        written = 0
        while (chunk := self._queue.get()) is not None:
            if self._error is not None:
                continue  # drain, so that put() never blocks on a dead writer
            try:
                self._fh.write(chunk)
                written += len(chunk)
                self._writeback.written(written)
            except BaseException as exc:  # noqa: BLE001 - handed to the saving thread, which raises it
                self._error = exc

    def put(self, chunk: bytes) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(chunk)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error


_gc_lock = threading.Lock()
_gc_pauses = 0
_gc_was_enabled = False


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """CPython's cyclic garbage collector off for the duration (see the module docstring), then as it was.
    Nested and concurrent pauses share one: the collector comes back when the last one ends."""
    global _gc_pauses, _gc_was_enabled
    with _gc_lock:
        if _gc_pauses == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_pauses += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pauses -= 1
            if _gc_pauses == 0 and _gc_was_enabled:
                gc.enable()


class JSONLCheckpointManager(BaseCheckpointManager):
    format_name = "jsonl"
    suffix = ".jsonl"

    # --- sidecar ------------------------------------------------------------------------------------------
    @staticmethod
    def sidecar_path(path: UPath) -> UPath:
        return path.parent / f"{path.name}{SIDECAR_SUFFIX}"

    def _companions(self, path: UPath) -> list[UPath]:
        return [self.sidecar_path(path)]

    def _read_sidecar(self, path: UPath) -> dict[str, Any] | None:
        meta_path = self.sidecar_path(path)
        try:
            raw = storage.read_bytes(meta_path)  # one GET on S3: never a half-replaced sidecar
        except FileNotFoundError:
            return None
        try:
            meta = json.loads(raw)
            versions = meta["versions"]
            assert isinstance(versions, list) and all("rows" in v for v in versions)
            unknown = {version_checksum(v)[0] for v in versions} - set(_HASHERS)
            assert not unknown, f"unknown checksum algorithm {sorted(unknown)}"
        except Exception as exc:  # noqa: BLE001 - any damage to the sidecar is reported, not ignored
            raise CheckpointCorruptError(meta_path, f"unreadable integrity sidecar ({exc!r}); delete it to "
                                         f"accept {path.name} without a checksum") from None
        return meta

    def _write_sidecar(self, path: UPath, versions: list[dict[str, Any]]) -> None:
        meta = {"format": "kura-dagster/jsonl", "schema_version": SCHEMA_VERSION, "versions": versions}
        storage.atomic_write_bytes(self.sidecar_path(path), json.dumps(meta, indent=1).encode())

    def _current_versions(self, path: UPath) -> list[dict[str, Any]]:
        """What the sidecar accepts now, or, for a file without one (Kura wrote it), that file's checksum."""
        old = self._read_sidecar(path)
        if old is not None:
            return list(old["versions"])
        if not path.exists():
            return []
        hasher, size = _HASHERS[CHECKSUM](), 0
        with path.open("rb") as fh:
            while block := fh.read(CHUNK_BYTES):
                hasher.update(block)
                size += len(block)
        return [{"checksum": f"{CHECKSUM}:{hasher.hexdigest()}", "rows": None, "bytes": size, "model": None}]

    # --- format -------------------------------------------------------------------------------------------
    def _write(self, path: UPath, models: list[BaseModel], model: type[BaseModel] | None, **_: Any) -> SavedCheckpoint:
        previous = self._current_versions(path)
        entry: dict[str, Any] = {}

        def write(fh: Any) -> None:
            whole, blocks, size = _HASHERS[CHECKSUM](), [], 0
            # Lines go out in groups of a power of two that divides BLOCK_LINES, about WRITE_BYTES each, so that
            # each group feeds the file's checksum and its block's digest as it is written.
            group = BLOCK_LINES
            if models:
                first = len(models[0].__pydantic_serializer__.to_json(models[0])) + 1
                while group > 1 and group * first > WRITE_BYTES:
                    group //= 2
            block = xxhash.xxh3_64()
            writer = _BackgroundWriter(fh)
            try:
                for i in range(0, len(models), group):
                    # One group: its lines, each ended by "\n" (the trailing b"" adds the last one), in one buffer.
                    chunk = b"\n".join([m.__pydantic_serializer__.to_json(m) for m in models[i : i + group]] + [b""])
                    writer.put(chunk)
                    whole.update(chunk)
                    block.update(chunk)
                    size += len(chunk)
                    if (i + group) % BLOCK_LINES == 0 or i + group >= len(models):
                        blocks.append(block.hexdigest())
                        block.reset()
            finally:
                writer.close()  # the last write done (its error raised) before the file is fsynced and renamed
            entry.update(checksum=f"{CHECKSUM}:{whole.hexdigest()}", rows=len(models), bytes=size,
                         model=identity_of(model), block_lines=BLOCK_LINES, block_hash=BLOCK_HASH, blocks=blocks)
            # Two-phase sidecar: before the new file replaces the old one (after this function returns), the
            # sidecar accepts both; once it has, only the new one. A crash at any moment leaves a data file that
            # the sidecar accepts, old or new.
            self._write_sidecar(path, [entry] + [v for v in previous if checksum_text(v) != entry["checksum"]])

        size = storage.atomic_write_file(path, write)
        self._write_sidecar(path, [entry])
        return SavedCheckpoint(name=path.name, path=str(path), format=self.format_name, rows=len(models),
                               bytes=size, model=entry["model"], checksum=entry["checksum"])

    def _verified_bytes(self, path: UPath) -> tuple[bytes, dict[str, Any] | None]:
        # The sidecar is read before and after the data: a writer replacing the checkpoint meanwhile changes
        # it, and then the read is retried instead of reporting a healthy checkpoint as corrupt.
        for _attempt in range(READ_ATTEMPTS):
            before = self._read_sidecar(path)
            data = storage.read_bytes(path)
            meta = self._read_sidecar(path)
            if meta is None:
                if before is not None:
                    continue
                if not data.strip():
                    raise CheckpointCorruptError(path, "the file is empty: no checkpoint writer leaves an empty "
                                                 "file without an integrity sidecar, so it was truncated")
                return data, None
            hashers = _Hashers(meta, before)
            hashers.update(data)
            digests = hashers.digests()
            version = self._accepted(digests, meta, before)
            if version is not None:
                return data, version
            if before == meta:
                break
        if meta is None:
            raise CheckpointCorruptError(path, f"{self.sidecar_path(path).name} kept disappearing while the file was "
                                         "read: is another process deleting this checkpoint?")
        expected = meta["versions"][0]
        damage = f"the file does not match {self.sidecar_path(path).name} ({len(data)} bytes, saved with " \
                 f"{expected['bytes']}): it was truncated or damaged after it was saved"
        bad_line = self._first_unreadable_line(data)
        if bad_line is not None:
            number, problem = bad_line
            raise CheckpointCorruptError(path, f"{problem}; {damage}", line=number)
        rows, numbers = self._lines(data)
        if not data and expected.get("rows"):
            raise CheckpointCorruptError(path, f"the file is empty (0 bytes) but was saved with {expected['rows']} "
                                         f"rows; {damage}", line=1)
        if expected.get("rows") is not None and len(rows) < expected["rows"]:
            last = numbers[-1] if numbers else 0
            raise CheckpointCorruptError(
                path, f"the file ends after line {last}: {expected['rows'] - len(rows)} of the {expected['rows']} "
                f"saved rows are missing; {damage}", line=last + 1)
        changed = _first_changed_block(data, expected)
        if changed is not None:
            first, last = changed
            raise CheckpointCorruptError(
                path, f"checksum mismatch in lines {first}–{last}: they differ from what was saved (a changed byte "
                f"that leaves them valid JSON); {damage}", line=first)
        algorithm, recorded = version_checksum(expected)
        raise CheckpointCorruptError(
            path,
            f"checksum mismatch: the file has {len(data)} bytes and {algorithm} {digests[algorithm][:16]}…, but "
            f"{self.sidecar_path(path).name} records {expected['bytes']} bytes and {recorded[:16]}…. "
            "It was truncated or changed after it was saved. If you edited it on purpose, delete the sidecar "
            "to accept the file as it is.",
        )

    @staticmethod
    def _first_unreadable_line(data: bytes) -> tuple[int, str] | None:
        """(line number, problem) of the first line that is not one complete JSON object, if any."""
        lines = data.split(b"\n")
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except ValueError as exc:
                return number, f"not valid JSON ({exc})"
            if not isinstance(value, dict):
                return number, "not a JSON object"
        if data and not data.endswith(b"\n"):
            return len(lines), "the last line has no line ending: the file was cut short"
        return None

    @staticmethod
    def _chunks(data: bytes, chunk_bytes: int | None = None, first_number: int = 1
                ) -> Iterator[tuple[Sequence[bytes], Sequence[int]]]:
        """Non-blank lines with their 1-based line numbers (counting from ``first_number``), in batches of about
        ``chunk_bytes`` (:data:`BATCH_BYTES`)."""
        lines = data.split(b"\n")
        if not lines[-1]:
            lines.pop()  # the data ends with a line ending
        return JSONLCheckpointManager._batches(lines, first_number, len(data), chunk_bytes)

    @staticmethod
    def _batches(lines: list[bytes], first_number: int, size: int, chunk_bytes: int | None = None
                 ) -> Iterator[tuple[Sequence[bytes], Sequence[int]]]:
        """``lines`` (``size`` bytes in all, the first numbered ``first_number``) without the blank ones, in batches
        of about ``chunk_bytes``, with their line numbers."""
        chunk_bytes = chunk_bytes or BATCH_BYTES
        if not lines:
            return
        if min(lines)[:1] == b"{":
            # No line is blank or starts with whitespace (every line of a file we or Kura wrote starts with "{";
            # min() finds any that sorts before it in one C-level pass): the line numbers are a range.
            step = max(1, chunk_bytes * len(lines) // max(1, size))
            for i in range(0, len(lines), step):
                yield lines[i : i + step], range(first_number + i, first_number + min(i + step, len(lines)))
            return
        kept: list[bytes] = []
        numbers: list[int] = []
        size = 0
        for number, line in enumerate(lines, start=first_number):
            if line.strip():
                kept.append(line)
                numbers.append(number)
                size += len(line)
                if size >= chunk_bytes:
                    yield kept, numbers
                    kept, numbers, size = [], [], 0
        if kept:
            yield kept, numbers

    @classmethod
    def _stream_chunks(cls, fh: Any, hasher: Any = None, block: int | None = None
                       ) -> Iterator[tuple[Sequence[bytes], Sequence[int]]]:
        """:meth:`_chunks` over an open file, read ``block`` (:data:`CHUNK_BYTES`) bytes at a time (fed to
        ``hasher`` as they are read), so a load holds a block of the file, never all of it."""
        block = block or CHUNK_BYTES
        rest = b""  # the start of a line whose end is in the next block
        number = 1  # the number of the next whole line
        while True:
            buf = fh.read(block)
            if not buf:
                if rest:
                    yield from cls._batches([rest], number, len(rest))
                return
            if hasher is not None:
                hasher.update(buf)
            size = len(rest) + len(buf)
            lines = buf.split(b"\n")
            if rest:
                lines[0] = rest + lines[0]  # one line copied, not the block
            rest = lines.pop()  # after the last line ending (b"" if the block ends with one)
            if lines:
                yield from cls._batches(lines, number, size - len(rest))
                number += len(lines)

    @classmethod
    def _lines(cls, data: bytes) -> tuple[list[bytes], list[int]]:
        """All non-blank lines and their numbers at once (only for diagnosing a damaged file)."""
        lines: list[bytes] = []
        numbers: list[int] = []
        for chunk_lines, chunk_numbers in cls._chunks(data):
            lines += chunk_lines
            numbers += chunk_numbers
        return lines, numbers

    def _parse_chunks(self, path: UPath, chunks: Iterable[tuple[Sequence[bytes], Sequence[int]]], model: type[T]
                      ) -> Iterator[list[T]]:
        """One pydantic-core call per batch of lines (joined into one JSON array); a batch that fails is looked at
        line by line, so the error names the line."""
        validate = list_adapter(model).validate_json
        validate_one = model.__pydantic_validator__.validate_json
        for lines, numbers in chunks:
            try:
                # One long line (an embedding's worth) is validated as it is, without copying it into an array.
                yield [validate_one(lines[0])] if len(lines) == 1 else validate(b"[" + b",".join(lines) + b"]")
                continue
            except ValidationError as err:
                idx, text = describe_validation_error(err)
                if idx is not None and err.errors()[0].get("type") != "json_invalid":
                    raise CheckpointCorruptError(path, f"not a valid {model.__name__}: {text}",
                                                 line=numbers[idx]) from None
            # Invalid JSON somewhere in this batch: find the first bad line.
            for line, number in zip(lines, numbers):
                try:
                    model.model_validate_json(line)
                except ValidationError as err:
                    _, text = describe_validation_error(err)
                    raise CheckpointCorruptError(path, f"not a valid {model.__name__}: {text}", line=number) from None
            raise CheckpointCorruptError(path, "the file is not valid JSON Lines")  # pragma: no cover

    @staticmethod
    def _accepted(digests: dict[str, str], *sidecars: dict[str, Any] | None) -> dict[str, Any] | None:
        """The sidecar version whose checksum is the file's (``digests``: algorithm → hex digest), if any."""
        for sidecar in sidecars:
            for version in (sidecar or {}).get("versions", []):
                algorithm, digest = version_checksum(version)
                if digests.get(algorithm) == digest:
                    return version
        return None

    def _verified_stream(self, path: UPath, parse: Callable[[Iterator[tuple[Sequence[bytes], Sequence[int]]]], R]
                         ) -> tuple[R, dict[str, Any] | None]:
        """``parse`` over the file's lines, read once, in blocks, from one open file while hashing them; the result
        counts only if the bytes match the sidecar (read before and after, as in :meth:`_verified_bytes`), so a load
        holds its models plus a block of the file, not the whole file too. Anything off (a parse error, a checksum
        mismatch) is diagnosed by :meth:`_verified_bytes`, whose errors name the damaged lines."""
        for _attempt in range(READ_ATTEMPTS):
            before = self._read_sidecar(path)
            hashers = _Hashers(before)
            try:
                with path.open("rb") as fh:
                    result = parse(self._stream_chunks(fh, hashers))
                    empty = fh.tell() == 0
            except OSError as exc:
                if not storage.gone_or_replaced(exc):  # (S3: replaced while read)
                    raise
                continue  # replaced or deleted meanwhile: look again
            except CheckpointCorruptError:
                self._verified_bytes(path)  # a file that differs from its sidecar is reported as such
                raise
            meta = self._read_sidecar(path)
            if meta is None:
                if before is not None:
                    continue
                if empty or result == []:
                    break  # an empty (or blank) file without a sidecar: _verified_bytes explains
                return result, None
            version = self._accepted(hashers.digests(), meta, before)
            if version is not None:
                return result, version
            if before == meta:
                break
        data, version = self._verified_bytes(path)  # raises, naming the damage, unless the file is intact now
        return parse(self._chunks(data)), version

    def _read(self, path: UPath, model: type[T], **_: Any) -> list[T]:
        def parse(chunks: Iterator[tuple[Sequence[bytes], Sequence[int]]]) -> list[T]:
            models: list[T] = []
            for chunk in self._parse_chunks(path, chunks, model):
                models += chunk
            return models

        with gc_paused():  # see the module docstring: two thirds of a 100k-row load was the collector
            models, version = self._verified_stream(path, parse)
        if version is not None and version.get("rows") is not None and version["rows"] != len(models):
            raise CheckpointCorruptError(path, f"holds {len(models)} rows but was saved with {version['rows']}")
        return models

    def _verified_chunks(self, path: UPath) -> Iterator[tuple[Sequence[bytes], Sequence[int]]]:
        """The file's lines after its checksum was verified: one hashing pass, then a parsing pass over the same
        open file (the same version, even if a writer replaces the checkpoint meanwhile)."""
        for _attempt in range(READ_ATTEMPTS):
            before = self._read_sidecar(path)
            try:
                fh = path.open("rb")
            except FileNotFoundError:
                continue
            with fh:
                hashers = _Hashers(before)
                newlines, tail = 0, b""
                while block := fh.read(CHUNK_BYTES):
                    hashers.update(block)
                    count = block.count(b"\n")
                    tail = block[block.rfind(b"\n") + 1:] if count else tail + block
                    newlines += count
                empty = fh.tell() == 0
                meta = self._read_sidecar(path)
                if meta is None and before is None and tail.strip():
                    self._check_last_line(path, tail, newlines + 1)
                if (meta is None and before is None and not empty) or (
                        meta is not None and self._accepted(hashers.digests(), meta, before) is not None):
                    fh.seek(0)
                    yield from self._stream_chunks(fh)
                    return
            if meta is not None and before == meta or meta is None and before is None:
                break
        data, _ = self._verified_bytes(path)  # raises, naming the damage, unless the file is intact now
        yield from self._chunks(data)

    @staticmethod
    def _check_last_line(path: UPath, line: bytes, number: int) -> None:
        """A file without a sidecar (Kura wrote it) has no checksum; a last line without a line ending must at least
        be a whole JSON object, or the file was cut short, and a streaming read refuses it before the first row."""
        try:
            whole = isinstance(json.loads(line), dict)
        except ValueError:
            whole = False
        if not whole:
            raise CheckpointCorruptError(path, "the last line is not a complete JSON object and has no line ending: "
                                         "the file was cut short", line=number)

    def _iter_rows(self, path: UPath) -> Iterator[dict[str, Any]]:
        for lines, numbers in self._verified_chunks(path):
            for line, number in zip(lines, numbers):
                try:
                    yield json.loads(line)
                except ValueError as exc:
                    raise CheckpointCorruptError(path, f"invalid JSON ({exc})", line=number) from None

    def _iter(self, path: UPath, model: type[T], *, batch_size: int) -> Iterator[T]:
        """Streams models batch by batch; the whole file's checksum is verified before the first one."""
        for chunk in self._parse_chunks(path, self._verified_chunks(path), model):
            yield from chunk

    def _describe(self, path: UPath) -> dict[str, Any]:
        meta = self._read_sidecar(path)
        if meta is not None:
            v = meta["versions"][0]
            rows, model, checksum = v["rows"], v.get("model"), checksum_text(v)
        else:
            rows = sum(1 for line in path.read_bytes().split(b"\n") if line.strip())
            model, checksum = None, None
        features = {}
        if model:
            from kura_dagster.types import resolve_model

            features = {name: str(f.annotation) for name, f in resolve_model(model).model_fields.items()}
        return {"num_rows": rows, "model": model, "checksum": checksum, "features": features}

    def _is_checkpoint(self, path: UPath) -> bool:
        return path.name.endswith(self.suffix) and path.is_file()


# Kura exports its JSONL manager under both names.
CheckpointManager = JSONLCheckpointManager
