"""Paths, safe names and atomic writes: what every format shares.

Local paths get the full treatment: write a temporary sibling, fsync it, rename it into place, fsync the
directory, and hold an advisory lock so that two processes saving the same checkpoint leave one complete
version. Object stores (``s3://``, ``gs://``, ``memory://``…) get the best they allow: write a temporary
object, then move it over the final key.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import functools
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from upath import UPath

from kura_dagster.checkpoints.errors import InvalidCheckpointName

TMP_MARK = ".kura-tmp-"
OLD_MARK = ".kura-old-"


def to_upath(location: str | os.PathLike[str] | UPath, storage_options: dict[str, Any] | None = None) -> UPath:
    if isinstance(location, UPath) and not storage_options:
        return location
    return UPath(str(location) if not isinstance(location, str) else location, **(storage_options or {}))


def is_local(path: UPath) -> bool:
    return path.protocol in ("", "file", "local")


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
            if seg.startswith(TMP_MARK) or seg.startswith(OLD_MARK):
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
    """An exclusive advisory lock for writers of ``path`` (local filesystems only; elsewhere a no-op).

    Once the lock is held, temporary files that crashed writers of ``path`` left behind are removed."""
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


def atomic_write_bytes(path: UPath, data: bytes) -> int:
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
    written under a temporary prefix and then moved over the old one. Returns the bytes in the new tree.
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
    # Object store: no atomic directory swap exists. Move the old tree aside (not delete it), move the new
    # one in, and only then delete the old; if moving the new tree in fails, move the old one back.
    old_tree = path.parent / f"{OLD_MARK}{path.name}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir(parents=True, exist_ok=True)
        build(tmp)
        size = dir_size(tmp)
        displaced = path.exists()
        if displaced:
            path.fs.mv(path.path, old_tree.path, recursive=True)
        try:
            tmp.fs.mv(tmp.path, path.path, recursive=True)
        except BaseException:
            if displaced:
                with contextlib.suppress(FileNotFoundError):
                    path.fs.rm(path.path, recursive=True)
                path.fs.mv(old_tree.path, path.path, recursive=True)
            raise
        if displaced:
            path.fs.rm(old_tree.path, recursive=True)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.fs.rm(tmp.path, recursive=True)
        raise
    return size


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
        path.fs.rm(path.path, recursive=path.is_dir())
    return True
