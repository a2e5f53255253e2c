"""Paths, safe names and atomic writes: what every format shares.

Local paths get the full treatment: write a temporary sibling, fsync it, rename it into place, fsync the
directory, and hold an advisory lock so that two processes saving the same checkpoint leave one complete
version.

Object stores get what their API guarantees, and nothing that relies on a rename they do not have:

* **One object** (a JSONL file, its sidecar, a Parquet file, a cache segment, a quarantine file, a pointer). On
  S3 (``s3://``, ``s3a://``) the object is uploaded straight to its key: bytes already in memory in one PUT, a
  streamed file as a multipart upload that is completed only after the last byte was written
  (``autocommit=False``, then ``commit()``), and aborted (``discard()``) on any error. S3 makes an object visible
  only when its PUT or CompleteMultipartUpload succeeds, so a reader sees the old object or the new one, never a
  part; a writer killed mid-upload leaves an incomplete multipart upload, which is invisible (a bucket lifecycle
  rule ``AbortIncompleteMultipartUpload`` reclaims its parts). Whole-object reads are one GET
  (:func:`read_bytes`); ranged reads are pinned to the ETag they opened (s3fs), so an object replaced mid-read
  raises (and the read is retried, :func:`gone_or_replaced`) instead of mixing versions.
  Other object stores (``memory://``, …) write a temporary object and move it over the final key.
* **A directory** (an HF dataset: several objects). There is no atomic directory swap, so the directory holds
  immutable *versions* and one small pointer object, the commit record::

      summaries/.kura-current.json              {"version": ".kura-v-<time>-<random>"}
      summaries/.kura-v-<time>-<random>/…       a complete save_to_disk directory

  A save builds the new tree in a local temporary directory, uploads it under a fresh version prefix (nothing
  points at it yet), then publishes the pointer with one atomic PUT, and only then deletes the version the
  pointer named before (and versions of crashed writers older than :data:`STALE_VERSION_SECONDS`). Readers
  follow the pointer (:func:`resolve_dir`); a reader whose version was deleted under it sees the pointer change
  and reads again (:func:`version_token`). A failed or killed save never changes the pointer, so the previous
  version stays loadable, and a failed save deletes its own partial version before it raises.
* **Writers of one checkpoint** take turns: ``flock`` locally, a lease object created with a conditional PUT on
  S3 (:func:`s3_lease`).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import functools
import json
import logging
import os
import re
import shutil
import socket
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from upath import UPath

from kura_dagster.checkpoints.errors import CheckpointCorruptError, InvalidCheckpointName

logger = logging.getLogger(__name__)

TMP_MARK = ".kura-tmp-"
OLD_MARK = ".kura-old-"
VERSION_MARK = ".kura-v-"
"""Prefix of a directory version on an object store (``summaries/.kura-v-<time_ns>-<random>/``)."""
POINTER_NAME = ".kura-current.json"
"""The pointer object of a directory on an object store: names the version readers follow."""
STALE_VERSION_SECONDS = 6 * 3600
"""Unpublished versions older than this are a crashed writer's and are deleted by the next save (a younger one
may be another writer's upload in progress)."""
S3_PROTOCOLS = ("s3", "s3a")
"""Object stores whose single-object writes go straight to the key (atomic PUT / CompleteMultipartUpload)."""


def resolve_location(path_or_url: str | os.PathLike[str]) -> str:
    """A checkpoint location as configured: URLs (anything with ``://``: ``s3://bucket/kura``, ``memory://x``)
    unchanged; local paths with ``~`` expanded and made absolute."""
    text = os.fspath(path_or_url)
    if "://" in text:
        return text
    return os.path.abspath(os.path.expanduser(text))


def to_upath(location: str | os.PathLike[str] | UPath, storage_options: dict[str, Any] | None = None) -> UPath:
    """``location`` as a UPath with ``storage_options``. On S3, s3fs's listings cache is off unless the options set
    it: a listing cached in a long-lived process would hide checkpoints that other processes wrote since."""
    if isinstance(location, UPath) and not storage_options:
        return location
    text = str(location) if not isinstance(location, str) else location
    options = dict(storage_options or {})
    if text.split("://", 1)[0].lower() in S3_PROTOCOLS and "://" in text:
        options.setdefault("use_listings_cache", False)
    return UPath(text, **options)


def is_local(path: UPath) -> bool:
    return path.protocol in ("", "file", "local")


def is_s3(path: UPath) -> bool:
    return path.protocol in S3_PROTOCOLS


def local_path(path: UPath) -> str:
    return path.path if path.protocol else os.fspath(path)


def validate_name(name: str, *, what: str = "checkpoint name") -> str:
    """Return ``name`` if it is a safe relative name, else raise :class:`InvalidCheckpointName`.

    Allowed: one or more ``/``-separated segments, none empty, ``.`` or ``..``, with no NUL, backslash or
    leading ``/``. This is what keeps asset keys, partition keys and checkpoint names inside the base directory.
    """
    if not isinstance(name, str):
        raise InvalidCheckpointName(f"{what} must be a string, got {type(name).__name__}")
    problem = None
    if not name:
        problem = "it is empty"
    elif "\x00" in name:
        problem = "it contains a NUL byte"
    elif "\\" in name:
        problem = "it contains a backslash"
    elif name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        problem = "it is an absolute path"
    else:
        for seg in name.split("/"):
            if seg in ("", ".", ".."):
                problem = f"it has a {seg or 'empty'!r} path segment"
                break
            if seg.startswith((TMP_MARK, OLD_MARK, VERSION_MARK)) or seg == POINTER_NAME:
                problem = "it uses a name reserved for temporary files"
                break
    if problem:
        raise InvalidCheckpointName(
            f"Invalid {what} {name!r}: {problem}. Names must stay inside the checkpoint directory: "
            "use plain names such as 'summaries' or '2026-01-01'."
        )
    return name


def _tmp_sibling(path: UPath) -> UPath:
    return path.parent / f"{TMP_MARK}{path.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _fsync_dir(directory: str) -> None:
    with contextlib.suppress(OSError):  # some filesystems refuse to open directories; the rename is still atomic
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_tree(root: str) -> None:
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            fd = os.open(os.path.join(dirpath, f), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(dirpath)


_TMP_NAME = re.compile(r"-(\d+)-[0-9a-f]{8}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(path: UPath) -> list[str]:
    """Delete the temporary siblings of ``path`` (and of its companions, e.g. ``<name>.meta.json``) left by
    writers that died mid-save (kill -9, OOM kill, power loss). A temporary name carries its writer's pid; only
    those whose process no longer exists on this machine are removed. Local filesystems only. Returns the
    names removed."""
    if not is_local(path):
        return []
    parent = os.path.dirname(local_path(path))
    prefix = f"{TMP_MARK}{path.name}"
    try:
        names = os.listdir(parent)
    except FileNotFoundError:
        return []
    removed = []
    for name in names:
        if not name.startswith(prefix):
            continue
        match = _TMP_NAME.search(name)
        if match is None or match.end() != len(name) or _pid_alive(int(match.group(1))):
            continue
        full = os.path.join(parent, name)
        with contextlib.suppress(FileNotFoundError):
            if os.path.isdir(full) and not os.path.islink(full):
                shutil.rmtree(full)
            else:
                os.unlink(full)
            removed.append(name)
    return removed


@contextlib.contextmanager
def checkpoint_lock(path: UPath) -> Iterator[None]:
    """An exclusive advisory lock for writers of ``path``: ``flock`` locally, a lease object on S3
    (:func:`s3_lease`), nothing on other object stores.

    Once the local lock is held, temporary files that crashed writers of ``path`` left behind are removed."""
    if is_s3(path):
        with s3_lease(path):
            yield
        return
    if not is_local(path):
        yield
        return
    import fcntl

    directory = os.path.dirname(local_path(path))
    os.makedirs(directory, exist_ok=True)
    lock_file = os.path.join(directory, f".{path.name}.lock")
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        remove_stale_temps(path)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


LEASE_SECONDS = 120.0
"""How long an S3 lock lasts unless its holder renews it (every third of this, from a background thread)."""
LOCK_WAIT_SECONDS = 3600.0
"""How long a writer waits for another writer's S3 lock before it gives up."""


class LockTimeoutError(TimeoutError):
    """Another writer held a checkpoint's S3 lock for longer than :data:`LOCK_WAIT_SECONDS`."""


def _lease_body(owner: str) -> bytes:
    return json.dumps({"owner": owner, "host": socket.gethostname(), "pid": os.getpid(),
                       "expires": time.time() + LEASE_SECONDS}).encode()


def _stale(holder: dict[str, Any]) -> bool:
    """A lock whose lease ran out, or whose holder was a process of this machine that no longer exists."""
    if float(holder.get("expires", 0)) < time.time():
        return True
    pid = holder.get("pid")
    return holder.get("host") == socket.gethostname() and isinstance(pid, int) and not _pid_alive(pid)


def _read_lease(lock: UPath) -> dict[str, Any] | None:
    try:
        holder = json.loads(read_bytes(lock))
    except FileNotFoundError:
        return None
    except ValueError:  # torn or foreign content: treat as expired
        return {"expires": 0}
    return holder if isinstance(holder, dict) else {"expires": 0}


@contextlib.contextmanager
def s3_lease(path: UPath) -> Iterator[None]:
    """Serialise the writers of ``path`` on S3: ``.<name>.lock`` beside it, created with a conditional PUT
    (``If-None-Match: *``: of two writers exactly one creates it), renewed while held and deleted after.

    A writer that finds the lock taken waits. A lock whose lease (:data:`LEASE_SECONDS`) ran out, or whose
    holder was a process of this machine that no longer exists (``kill -9``), is broken. Stores that ignore
    conditional PUTs let both writers in, as without the lock."""
    lock = path.parent / f".{path.name}.lock"
    owner = uuid.uuid4().hex
    deadline = time.monotonic() + LOCK_WAIT_SECONDS
    pause = 0.05
    while True:
        try:
            lock.fs.pipe_file(lock.path, _lease_body(owner), mode="create")
            break
        except FileExistsError:
            pass
        except FileNotFoundError as exc:
            _raise_missing_bucket(path, exc)
            raise
        except OSError as exc:  # e.g. a store that refuses conditional PUTs instead of ignoring them
            logger.warning("Could not create the lock %s (%s: %s): saving %s without it; two processes saving it "
                           "at once are not serialised", lock, type(exc).__name__, exc, path)
            yield
            return
        holder = _read_lease(lock)
        if holder is not None and _stale(holder):
            again = _read_lease(lock)  # only if it is still the same stale lock
            if again is not None and again.get("owner") == holder.get("owner"):
                logger.warning("Breaking the stale lock %s of %s (pid %s on %s)", lock, path, holder.get("pid"),
                               holder.get("host"))
                with contextlib.suppress(FileNotFoundError):
                    lock.fs.rm_file(lock.path)
            continue
        if time.monotonic() > deadline:
            raise LockTimeoutError(f"{lock} is held by pid {(holder or {}).get('pid')} on "
                                   f"{(holder or {}).get('host')}: another process is saving {path}. Waited "
                                   f"{LOCK_WAIT_SECONDS:.0f} s; delete the lock object if no writer is running")
        time.sleep(pause)
        pause = min(pause * 2, 1.0)
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(LEASE_SECONDS / 3):
            try:
                if (_read_lease(lock) or {}).get("owner") == owner:
                    lock.fs.pipe_file(lock.path, _lease_body(owner))
            except Exception as exc:  # noqa: BLE001 - a missed renewal only shortens the lease; it is logged
                logger.warning("Could not renew the lock %s (%s: %s)", lock, type(exc).__name__, exc)

    renewer = threading.Thread(target=renew, name=f"kura-lease-{path.name}", daemon=True)
    renewer.start()
    try:
        yield
    finally:
        stop.set()
        renewer.join()
        try:
            if (_read_lease(lock) or {}).get("owner") == owner:
                lock.fs.rm_file(lock.path)
        except Exception as exc:  # noqa: BLE001 - the save's own outcome stands; a left lock expires with its lease
            logger.warning("Could not release the lock %s (%s: %s); it expires in %.0f s", lock,
                           type(exc).__name__, exc, LEASE_SECONDS)


def atomic_write_file(path: UPath, write: Callable[[Any], None]) -> int:
    """Create or replace the file ``path`` atomically; ``write`` receives a binary file object.

    Returns the number of bytes written. On any error the temporary file is removed and the old file stays.
    """
    tmp = _tmp_sibling(path)
    if is_local(path):
        target, tmp_local = local_path(path), local_path(tmp)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        try:
            with open(tmp_local, "wb") as fh:
                write(fh)
                fh.flush()
                os.fsync(fh.fileno())
                size = fh.tell()
            os.replace(tmp_local, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_local)
            raise
        _fsync_dir(os.path.dirname(target))
        return size
    if is_s3(path):
        return _put_object(path, write)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with tmp.open("wb") as fh:
            write(fh)
        size = tmp.stat().st_size
        tmp.fs.mv(tmp.path, path.path)
    except BaseException:
        with contextlib.suppress(Exception):
            tmp.fs.rm(tmp.path)
        raise
    return size


def _put_object(path: UPath, write: Callable[[Any], None]) -> int:
    """Upload one S3 object that becomes visible complete or not at all: a multipart upload that is completed
    only after ``write`` returned and the last part was sent, and aborted on any error. (No directory is created:
    a missing bucket is an error, not something a save creates.)"""
    try:
        fh = path.fs.open(path.path, "wb", autocommit=False)
        return _upload(path, fh, write)
    except FileNotFoundError as exc:
        _raise_missing_bucket(path, exc)
        raise


class BucketNotFoundError(FileNotFoundError):
    """A save to an object store whose bucket does not exist (a save never creates one)."""


def _raise_missing_bucket(path: UPath, exc: FileNotFoundError) -> None:
    """s3fs says "The specified bucket does not exist" without naming it: raise an error that does."""
    if isinstance(exc, BucketNotFoundError) or "bucket" not in str(exc).lower():
        return
    raise BucketNotFoundError(errno.ENOENT, f"Cannot write {path}: {exc}. A save never creates a bucket: check the "
                              "URL and the endpoint (AWS_ENDPOINT_URL), or create the bucket first") from exc


def _upload(path: UPath, fh: Any, write: Callable[[Any], None]) -> int:
    try:
        write(fh)
        size = fh.tell()
        fh.close()  # sends the last part; the upload is not completed yet
        fh.commit()  # CompleteMultipartUpload (or one PUT): the object appears, whole
    except BaseException:
        try:
            fh.discard()  # AbortMultipartUpload: the parts sent so far are dropped
            fh.closed = True  # (else the file's __del__ would try to flush the discarded buffer)
        except Exception as exc:  # noqa: BLE001 - the write's own error is the one to raise; this one is logged
            logger.warning("Could not abort the unfinished upload of %s (%s: %s); its parts are invisible and a "
                           "bucket lifecycle rule (AbortIncompleteMultipartUpload) reclaims them",
                           path, type(exc).__name__, exc)
        raise
    return size


def read_bytes(path: UPath) -> bytes:
    """The whole file. On an object store one GET of the whole object: a consistent copy of one version, even if
    a writer replaces the object meanwhile (``UPath.read_bytes`` opens the object pinned to the ETag it saw first,
    and then fails instead when the object is replaced between its HEAD and GET)."""
    if is_local(path):
        with open(local_path(path), "rb") as fh:
            return fh.read()
    return path.fs.cat_file(path.path)


def gone_or_replaced(exc: BaseException) -> bool:
    """Did a read fail because the file was deleted, or (S3) replaced by a newer version while it was read?
    Such a read is retried; any other error is not."""
    if isinstance(exc, FileNotFoundError):
        return True
    s3_utils = sys.modules.get("s3fs.utils")  # (only s3fs raises FileExpired, so only look once it is imported)
    return s3_utils is not None and isinstance(exc, getattr(s3_utils, "FileExpired", ()))


def atomic_write_bytes(path: UPath, data: bytes) -> int:
    """:func:`atomic_write_file` of bytes already in memory. On S3 one PUT (a multipart upload, aborted on error,
    beyond 100 MB): a sidecar, pointer, cache segment or quarantine file costs one request, not three."""
    if is_s3(path):
        try:
            path.fs.pipe_file(path.path, data)
        except FileNotFoundError as exc:
            _raise_missing_bucket(path, exc)
            raise
        return len(data)
    return atomic_write_file(path, lambda fh: fh.write(data))


_RENAME_EXCHANGE = 2


@functools.lru_cache(maxsize=1)
def _renameat2() -> Any:
    """libc's ``renameat2``, or ``None`` where there is none. Looked up once: ``find_library`` runs ``ldconfig``."""
    libc_name = ctypes.util.find_library("c")
    if not libc_name:
        return None
    return getattr(ctypes.CDLL(libc_name, use_errno=True), "renameat2", None)


def _renameat2_exchange(a: str, b: str) -> bool:
    """Atomically swap two paths (Linux ``renameat2(RENAME_EXCHANGE)``). False if unsupported here."""
    fn = _renameat2()
    if fn is None:
        return False
    at_fdcwd = -100
    res = fn(at_fdcwd, a.encode(), at_fdcwd, b.encode(), _RENAME_EXCHANGE)
    if res == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), a)


def recover_directory(path: UPath) -> None:
    """Finish an interrupted non-atomic directory swap: if ``path`` is missing but a displaced old copy
    exists beside it, put the old copy back. (Only needed where ``renameat2`` is unavailable.)"""
    if not is_local(path):
        return
    target = local_path(path)
    if os.path.exists(target):
        return
    parent = os.path.dirname(target)
    if not os.path.isdir(parent):
        return
    olds = sorted(n for n in os.listdir(parent) if n.startswith(f"{OLD_MARK}{path.name}-"))
    if olds:
        os.rename(os.path.join(parent, olds[-1]), target)


def atomic_write_dir(path: UPath, build: Callable[[UPath], None]) -> int:
    """Create or replace the directory ``path`` atomically; ``build`` fills a fresh temporary directory.

    Locally the new directory is swapped in with one ``renameat2(RENAME_EXCHANGE)`` (or, where that is missing,
    two renames that :func:`recover_directory` can finish after a crash). On object stores the new tree is
    uploaded as a new version and published by its pointer (module docstring); read it through
    :func:`resolve_dir`. Returns the bytes in the new tree.
    """
    tmp = _tmp_sibling(path)
    if is_local(path):
        target, tmp_local = local_path(path), local_path(tmp)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        recover_directory(path)
        try:
            os.makedirs(tmp_local)
            build(tmp)
            _fsync_tree(tmp_local)
            size = dir_size(tmp)
            if os.path.isdir(target):
                if _renameat2_exchange(tmp_local, target):
                    shutil.rmtree(tmp_local)  # tmp now holds the old version
                else:
                    old = os.path.join(os.path.dirname(target), f"{OLD_MARK}{path.name}-{uuid.uuid4().hex[:8]}")
                    os.rename(target, old)
                    os.rename(tmp_local, target)
                    shutil.rmtree(old)
            else:
                if os.path.exists(target):
                    os.unlink(target)
                os.rename(tmp_local, target)
        except BaseException:
            shutil.rmtree(tmp_local, ignore_errors=True)
            raise
        _fsync_dir(os.path.dirname(target))
        return size
    return _publish_version(path, build)


def _version_name() -> str:
    return f"{VERSION_MARK}{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"


def _version_age_seconds(name: str) -> float | None:
    match = re.fullmatch(re.escape(VERSION_MARK) + r"(\d{20})-[0-9a-f]{8}", name)
    return None if match is None else (time.time_ns() - int(match.group(1))) / 1e9


def read_pointer(path: UPath) -> str | None:
    """The version the pointer of directory ``path`` names (object stores), ``None`` without a pointer.
    A damaged pointer raises :class:`CheckpointCorruptError` naming it."""
    if is_local(path):
        return None
    pointer = path / POINTER_NAME
    try:
        raw = read_bytes(pointer)
    except FileNotFoundError:
        return None
    try:
        version = json.loads(raw)["version"]
        if not isinstance(version, str) or _version_age_seconds(version) is None:
            raise ValueError(f"not a version name: {version!r}")
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointCorruptError(pointer, f"the version pointer is damaged ({exc})") from None
    return version


def resolve_dir(path: UPath) -> UPath:
    """Where the files of directory ``path`` are: the version its pointer names on an object store, else ``path``
    itself (local directories, and directories written without a pointer, e.g. by Kura or ``save_to_disk``)."""
    version = read_pointer(path)
    return path if version is None else path / version


def version_token(path: UPath) -> Any:
    """Something that changes whenever the checkpoint at ``path`` is replaced (``None`` if it is absent): the
    inode and mtime locally; on an object store the pointer of a directory, or the ETag and size of an object.
    A read that failed on a checkpoint whose token changed meanwhile is retried."""
    try:
        if is_local(path):
            st = os.stat(local_path(path))
            return st.st_ino, st.st_mtime_ns
        path.fs.invalidate_cache(path.path)
        info = path.fs.info(path.path)
        if info.get("type") == "directory":
            return read_pointer(path) or "directory"
    except (FileNotFoundError, CheckpointCorruptError):
        return None
    return tuple(str(info.get(k)) for k in ("size", "ETag", "LastModified", "created", "mtime"))


def _publish_version(path: UPath, build: Callable[[UPath], None]) -> int:
    """The object-store directory commit (module docstring): build locally, upload under a new version prefix,
    publish the pointer, then delete the replaced version."""
    local = tempfile.mkdtemp(prefix=f"{TMP_MARK}{path.name}-")
    version = _version_name()
    target = path / version
    uploaded = False
    try:
        build(UPath(local))
        size = dir_size(UPath(local))
        sources, targets = [], []
        for dirpath, _dirs, files in os.walk(local):
            for f in sorted(files):
                full = os.path.join(dirpath, f)
                sources.append(full)
                targets.append((target / os.path.relpath(full, local).replace(os.sep, "/")).path)
        uploaded = True  # from here on, objects of this version may exist and are removed on failure
        if sources:
            try:
                path.fs.put(sources, targets)
            except FileNotFoundError as exc:
                _raise_missing_bucket(path, exc)
                raise
        else:  # an empty tree still needs its version to exist
            atomic_write_bytes(target / ".kura-empty", b"")
        previous = read_pointer(path)  # (re-read: another writer may have published meanwhile)
        atomic_write_bytes(path / POINTER_NAME, json.dumps({"version": version}).encode())
    except BaseException:
        if uploaded:
            _remove_tree(target, why="the unfinished upload of a failed save")
        raise
    finally:
        shutil.rmtree(local, ignore_errors=True)
    _collect_versions(path, keep=version, previous=previous)
    return size


def _remove_tree(path: UPath, *, why: str) -> None:
    try:
        path.fs.rm(path.path, recursive=True)
    except FileNotFoundError:
        pass
    except Exception as exc:  # noqa: BLE001 - the caller's error (or success) stands; a leftover is only logged
        logger.warning("Could not delete %s, %s (%s: %s); nothing points at it, so readers never see it, and a "
                       "later save of this checkpoint deletes it", path, why, type(exc).__name__, exc)


def _collect_versions(path: UPath, *, keep: str, previous: str | None) -> None:
    """After publishing ``keep``: delete the version the pointer named before, versions of crashed writers older
    than :data:`STALE_VERSION_SECONDS`, and files of an earlier layout without a pointer (e.g. a flat
    ``save_to_disk`` directory). Younger unpublished versions may be other writers' uploads and are kept."""
    try:
        entries = path.fs.ls(path.path, detail=False)
    except FileNotFoundError:
        return
    for entry in entries:
        name = entry.rstrip("/").rsplit("/", 1)[-1]
        if name in (keep, POINTER_NAME):
            continue
        age = _version_age_seconds(name)
        if age is None or name == previous or age > STALE_VERSION_SECONDS:
            _remove_tree(path / name, why="a replaced version")


def dir_size(path: UPath) -> int:
    if is_local(path):
        total = 0
        for dirpath, _d, files in os.walk(local_path(path)):
            total += sum(os.path.getsize(os.path.join(dirpath, f)) for f in files)
        return total
    return sum(info.get("size", 0) or 0 for info in path.fs.find(path.path, detail=True).values())


def path_size(path: UPath) -> int:
    if not path.exists():
        return 0
    return dir_size(path) if path.is_dir() else path.stat().st_size


def remove_path(path: UPath) -> bool:
    if not path.exists():
        return False
    if is_local(path):
        p = local_path(path)
        if os.path.isdir(p):
            shutil.rmtree(p)
        else:
            os.unlink(p)
    else:
        directory = path.is_dir()
        if directory and (path / POINTER_NAME).exists():  # unpublish first: readers then find no checkpoint
            path.fs.rm((path / POINTER_NAME).path)
        path.fs.rm(path.path, recursive=directory)
    return True
