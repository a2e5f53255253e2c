"""Fitted model state stored beside the checkpoints: numpy arrays and JSON, never pickle.

A fitted state (the offline embedding's vocabulary, idf weights and LSA reduction) is what makes embeddings
stable: every conversation embedded with the same state gets the same vector, whatever arrives later. So it is
fitted once per taxonomy build and stored here, and every later run (new partitions, reruns, other processes)
loads it instead of fitting again.

Layout under ``<checkpoint_dir>/.kura-artifacts/<name>/`` (a local path or any fsspec URL)::

    current.json                      {"format": 1, "version": "<kind>-<sha256[:16]>", "files": {file: sha256}}
    <version>/params.json             the state's JSON part (settings, vocabulary …)
    <version>/<array>.npy             one file per array (``np.save``, ``allow_pickle=False``)

A version is named by the SHA-256 of its contents, so it is immutable: its files are written (each one
atomically) before ``current.json`` points at it (one atomic write), and a reader sees the old version or the
new one, never a mix. Loading checks every file's SHA-256 against the pointer and loads arrays with
``allow_pickle=False``: a missing, altered or truncated file raises :class:`ArtifactCorruptError` naming it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kura_dagster.checkpoints.errors import CheckpointCorruptError
from kura_dagster.checkpoints.storage import atomic_write_bytes, read_bytes, to_upath, validate_name

ARTIFACTS_DIR = ".kura-artifacts"
"""Folder of the fitted artifacts under a checkpoint directory."""
POINTER = "current.json"
FORMAT = 1


class ArtifactCorruptError(CheckpointCorruptError):
    """A stored artifact that cannot be loaded completely and correctly (missing file, wrong checksum, bad JSON,
    an array that would need pickle)."""


@dataclass(frozen=True)
class FittedState:
    """What a fitted model needs to transform new data: a ``kind`` (model and format version), JSON-able
    ``params`` and named numpy arrays (numeric or fixed-width text; never objects)."""

    kind: str
    params: Mapping[str, Any]
    arrays: Mapping[str, np.ndarray] = field(default_factory=dict)
    version: str = ""
    """``<kind>-<sha256[:16]>`` of the contents, set by :func:`encode_state` (and on load)."""


def _npy(array: np.ndarray) -> bytes:
    if array.dtype.hasobject:
        raise TypeError("artifact arrays must be numeric or fixed-width text, not objects (they are stored without pickle)")
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def encode_state(state: FittedState) -> tuple[str, dict[str, bytes]]:
    """``(version, {file name: bytes})``: the version is derived from every byte, so equal states share it."""
    for name in state.arrays:
        validate_name(name, what="artifact array name")
        if "/" in name:
            raise ValueError(f"artifact array name {name!r} must not contain '/'")
    files = {"params.json": json.dumps({"kind": state.kind, "params": state.params}, sort_keys=True,
                                       ensure_ascii=False).encode("utf-8")}
    files.update({f"{name}.npy": _npy(arr) for name, arr in sorted(state.arrays.items())})
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(name.encode() + b"\x00" + hashlib.sha256(files[name]).digest())
    slug = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in state.kind)
    return f"{slug}-{h.hexdigest()[:16]}", files


def artifact_dir(checkpoint_dir: Any, name: str, storage_options: dict[str, Any] | None = None):
    validate_name(name, what="artifact name")
    return to_upath(checkpoint_dir, storage_options) / ARTIFACTS_DIR / name


def save_state(checkpoint_dir: Any, name: str, state: FittedState,
               storage_options: dict[str, Any] | None = None) -> FittedState:
    """Store ``state`` as the current version of artifact ``name``; returns it with its ``version`` set."""
    version, files = encode_state(state)
    root = artifact_dir(checkpoint_dir, name, storage_options)
    for fname, data in files.items():
        atomic_write_bytes(root / version / fname, data)
    pointer = {"format": FORMAT, "kind": state.kind, "version": version,
               "files": {f: hashlib.sha256(d).hexdigest() for f, d in sorted(files.items())}}
    raw = json.dumps(pointer, indent=1, sort_keys=True).encode("utf-8")
    atomic_write_bytes(root / POINTER, raw)
    saved = FittedState(kind=state.kind, params=state.params, arrays=state.arrays, version=version)
    _remember(root, raw, saved)
    return saved


_LAST: dict[str, tuple[bytes, FittedState]] = {}
"""The state this process last saved or loaded per local artifact directory, with the pointer it was current
under and its files' sizes and modification times: a later load that finds them unchanged (the steps of one run read the taxonomy state its previous step
wrote; a 1M-conversation base state is ~1 s of JSON) returns it without reading the files again. Its arrays
are made read-only, so a caller that would change them in place fails loudly instead of changing the copy
the next load returns."""


def _stamp(root: Any, pointer: bytes) -> tuple | None:
    """Size and modification time of every file of the version ``pointer`` names (local storage only: elsewhere
    nothing is remembered, and every load reads and verifies)."""
    from kura_dagster.checkpoints import storage

    if not storage.is_local(root):
        return None
    try:
        p = json.loads(pointer)
        base = storage.local_path(root / p["version"])
        return tuple((f, (st := os.stat(os.path.join(base, f))).st_size, st.st_mtime_ns) for f in sorted(p["files"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _remember(root: Any, pointer: bytes, state: FittedState) -> None:
    stamp = _stamp(root, pointer)
    if stamp is None:
        _LAST.pop(str(root), None)
        return
    for arr in state.arrays.values():
        if isinstance(arr, np.ndarray):
            arr.flags.writeable = False
    _LAST[str(root)] = (pointer + repr(stamp).encode(), state)


def load_state(checkpoint_dir: Any, name: str, storage_options: dict[str, Any] | None = None) -> FittedState | None:
    """The current version of artifact ``name``, verified; ``None`` when there is none.
    Raises :class:`ArtifactCorruptError` (naming the file) when it exists but is damaged."""
    root = artifact_dir(checkpoint_dir, name, storage_options)
    pointer_path = root / POINTER
    try:
        raw = read_bytes(pointer_path)
    except FileNotFoundError:
        return None
    last = _LAST.get(str(root))
    if last is not None and last[0] == raw + repr(_stamp(root, raw)).encode():  # unchanged since (see _LAST)
        return last[1]
    try:
        pointer = json.loads(raw)
        version, files = pointer["version"], pointer["files"]
        if pointer.get("format") != FORMAT:
            raise ValueError(f"format {pointer.get('format')!r}, this version reads format {FORMAT}")
        validate_name(version, what="artifact version")
        if "params.json" not in files:
            raise ValueError("it lists no params.json")
    except (ValueError, KeyError, TypeError) as exc:
        raise ArtifactCorruptError(pointer_path, f"not a valid artifact pointer ({exc}); delete {root} to fit "
                                   "the artifact again") from exc
    contents: dict[str, bytes] = {}
    for fname, digest in files.items():
        path = root / version / validate_name(fname, what="artifact file name")
        try:
            data = read_bytes(path)
        except FileNotFoundError as exc:
            raise ArtifactCorruptError(path, f"missing (listed by {pointer_path})") from exc
        if hashlib.sha256(data).hexdigest() != digest:
            raise ArtifactCorruptError(path, f"checksum mismatch: {len(data)} bytes whose SHA-256 is not the one "
                                       f"{pointer_path} records; delete {root} to fit the artifact again")
        contents[fname] = data
    try:
        meta = json.loads(contents.pop("params.json"))
        arrays = {f[:-4]: np.load(io.BytesIO(d), allow_pickle=False) for f, d in contents.items() if f.endswith(".npy")}
    except (ValueError, KeyError, TypeError) as exc:  # np.load refuses object arrays with ValueError
        raise ArtifactCorruptError(root / version, f"cannot be decoded: {exc}") from exc
    state = FittedState(kind=meta["kind"], params=meta["params"], arrays=arrays, version=version)
    _remember(root, raw, state)
    return state


def load_or_fit(checkpoint_dir: Any, name: str, fit: Callable[[], FittedState], *,
                matches: Callable[[FittedState], bool] = lambda s: True, refit: bool = False,
                storage_options: dict[str, Any] | None = None) -> tuple[FittedState, str]:
    """The stored state of ``name`` if there is one that ``matches`` (the settings asked for), else
    ``fit()``, stored. ``refit=True`` fits and stores anew whatever is stored (a taxonomy rebuild).

    Returns ``(state, how)``, ``how`` one of ``"loaded"``, ``"fitted"`` (nothing was stored), ``"refitted"``
    (asked for) or ``"replaced"`` (the stored state had other settings). When another process stored a
    matching state while this one was fitting (two first runs at once), that state wins and is returned, so
    both runs embed in the same space."""
    stored = None if refit else load_state(checkpoint_dir, name, storage_options)
    if stored is not None and matches(stored):
        return stored, "loaded"
    how = "refitted" if refit else "replaced" if stored is not None else "fitted"
    state = fit()
    if not refit:
        raced = load_state(checkpoint_dir, name, storage_options)
        if raced is not None and matches(raced) and (stored is None or raced.version != stored.version):
            return raced, "loaded"
    return save_state(checkpoint_dir, name, state, storage_options), how


def state_files(checkpoint_dir: Any, name: str, storage_options: dict[str, Any] | None = None) -> list[str]:
    """Paths of the current version's files (for metadata and docs)."""
    root = artifact_dir(checkpoint_dir, name, storage_options)
    try:
        pointer = json.loads(read_bytes(root / POINTER))
    except FileNotFoundError:
        return []
    return [os.fspath(root / pointer["version"] / f) for f in sorted(pointer["files"])]
