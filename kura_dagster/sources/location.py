"""Where a source's files are: a path, a glob, a directory or an fsspec URL (``s3://``, ``gs://``,
``memory://`` …) expanded with fsspec, and how to name them without credentials."""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from fsspec.core import url_to_fs

from kura_dagster.types.conversation import ConversationInputError

DATA_SUFFIXES = (".json", ".jsonl", ".ndjson", ".jsonlines", ".parquet", ".pq")
"""Files a directory contributes (by name; their format is still read from their content). A glob or a single
path takes any file it names."""
COMPRESSED_SUFFIXES = (".gz", ".bz2", ".xz", ".zst", ".lz4")
HF_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
"""A directory holding one of these is a Hugging Face ``save_to_disk`` dataset."""


def public_location(location: str) -> str:
    """``location`` without a password, user or query string (a signed URL's signature), for logs and metadata."""
    parts = urlsplit(location)
    if not parts.scheme or len(parts.scheme) == 1:  # a local path (or a Windows drive letter)
        return location
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return f"{parts.scheme}://{netloc}{parts.path}"


def _has_magic(path: str) -> bool:
    return any(ch in path for ch in "*?[")


@dataclass
class Expansion:
    """A location's files: fsspec paths (``paths``), their public names (``names``) and names relative to the
    location (``labels``); or ``hf_dir`` for a ``save_to_disk`` directory."""

    location: str
    description: str
    fs: Any = None
    paths: list[str] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    hf_dir: str | None = None
    ignored: list[str] = field(default_factory=list)
    missing: bool = False


def expand(location: str | os.PathLike, storage_options: dict | None = None, *, must_exist: bool = True) -> Expansion:
    if hasattr(location, "storage_options") and hasattr(location, "protocol") and location.protocol:  # a UPath
        storage_options = {**dict(location.storage_options), **(storage_options or {})}
        text = str(location)
    else:
        text = os.fspath(location)
    if "://" not in text:
        text = os.path.expanduser(text)
    public = public_location(text)
    fs, path = url_to_fs(text, **(storage_options or {}))
    local = "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))

    def name(p: str) -> str:
        return p if local else public_location(fs.unstrip_protocol(p))

    exp = Expansion(location=public, description=public, fs=fs)
    if _has_magic(path):
        found = fs.glob(path, detail=True)
        root = path[: min(path.index(ch) for ch in "*?[" if ch in path)].rsplit("/", 1)[0]
        # As a shell does, a wildcard does not match a name starting with "." (unless the pattern spells the dot).
        hidden_ok = "/." in path[len(root):]
        files = sorted(p for p, info in found.items() if info.get("type") == "file" and (
            hidden_ok or not any(part.startswith(".") for part in posixpath.relpath(p, root or "/").split("/"))))
        if not files and fs.isfile(path):  # a name with a literal "[" or "*" in it
            files = [path]
        if not files and must_exist:
            raise ConversationInputError(f"{public}: no file matches")
    elif fs.isdir(path):
        if any(fs.exists(posixpath.join(path, m)) for m in HF_MARKERS):
            exp.hf_dir = path
            exp.names = [name(path)]
            return exp
        root = path.rstrip("/")
        files, ignored = [], []
        for p in sorted(fs.find(path)):
            rel = posixpath.relpath(p, root)
            if any(part.startswith((".", "_")) for part in rel.split("/")):
                continue  # hidden and bookkeeping files (.DS_Store, _SUCCESS), as Arrow and Spark skip them
            base = rel[: -len(s)] if (s := next((c for c in COMPRESSED_SUFFIXES if rel.endswith(c)), "")) else rel
            (files if base.lower().endswith(DATA_SUFFIXES) else ignored).append(p)
        exp.ignored = [name(p) for p in ignored]
        if not files and must_exist:
            raise ConversationInputError(
                f"{public}: the directory holds no conversation files ({', '.join(DATA_SUFFIXES)})"
                + (f"; it has {len(ignored)} other file(s), e.g. {posixpath.basename(ignored[0])}" if ignored else "")
            )
    elif fs.isfile(path):
        files, root = [path], posixpath.dirname(path)
    else:
        if must_exist:
            raise ConversationInputError(
                f"{public}: no such file or directory (set KURA_CONVERSATIONS to a file, a directory, a glob or a URL "
                "of conversations)" if local else f"{public}: no such file or directory"
            )
        exp.missing = True
        return exp
    exp.paths = files
    exp.names = [name(p) for p in files]
    exp.labels = [posixpath.relpath(p, root) if root else p for p in files]
    if _has_magic(path) or len(files) != 1 or not fs.isfile(path):
        exp.description = f"{public} ({len(files)} file{'s' if len(files) != 1 else ''})"
    else:
        exp.description = exp.names[0] if local else public
    return exp


def list_source_files(location: str | os.PathLike | list[str], storage_options: dict | None = None) -> list[str]:
    """The files a path, glob or directory expands to, sorted, as paths (local) or URLs without credentials; each
    one is itself a location :func:`read_source` reads. A Hugging Face ``save_to_disk`` directory is one entry
    (itself). A location that does not exist (yet) gives ``[]``, so a sensor can wait for it."""
    locations = location if isinstance(location, list) else [location]
    out: list[str] = []
    for loc in locations:
        out.extend(expand(loc, storage_options, must_exist=False).names)
    return sorted(dict.fromkeys(out))
