"""Kura's local embedding model, ``embeddings="sentence-transformers:<model name or local path>"``.

Kura's ``SentenceTransformerEmbeddingModel`` (default ``all-MiniLM-L6-v2``) runs a sentence-transformers model on
the machine. Here the same spec runs on one of two runtimes, chosen by what the model is:

* a **static embedding model** (model2vec's format: ``config.json`` with ``"model_type": "model2vec"``, a
  ``tokenizer.json`` and ``model.safetensors``; e.g. ``minishlab/potion-base-8M``, or one distilled from any
  sentence-transformers model with ``model2vec.distill``) runs on ``model2vec``: numpy and the Rust
  ``tokenizers``, about 4 MB of wheels, no torch (extra ``sentence-transformers``);
* any other model (a ``modules.json`` directory, or a Hub name such as ``all-MiniLM-L6-v2``) runs on the
  ``sentence-transformers`` library itself, which needs torch (extra ``sentence-transformers-torch``).

Texts are embedded ``batch_size`` at a time, as L2-normalised float32 rows; the summaries and cluster stages
cache them like the OpenAI embeddings (``CachedEmbeddingModel``), under :attr:`identity`: the spec, plus for a
local directory a digest of its files, so a changed model never serves old vectors.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from kura_dagster.pipeline.models.base import Progress

DEFAULT_MODEL = "all-MiniLM-L6-v2"
"""Kura's default sentence-transformers model."""


STATIC_MODULES = frozenset({"sentence_transformers.models.StaticEmbedding", "sentence_transformers.models.Normalize"})


def _is_static(path: str) -> bool:
    """A static embedding model: a token-vector table (``model.safetensors``) and a ``tokenizer.json``, in
    model2vec's layout (``"model_type": "model2vec"``, or sentence-transformers modules that are only a
    ``StaticEmbedding`` and a ``Normalize``, as model2vec saves them)."""
    def read(name: str) -> Any:
        try:
            with open(os.path.join(path, name), encoding="utf-8") as fh:
                return json.load(fh)
        except (OSError, ValueError):
            return None

    config = read("config.json") or {}
    if isinstance(config, dict) and config.get("model_type") == "model2vec":
        return True
    if not (os.path.exists(os.path.join(path, "model.safetensors")) and os.path.exists(os.path.join(path, "tokenizer.json"))):
        return False
    modules = read("modules.json")
    if modules is None:
        return not os.path.exists(os.path.join(path, "modules.json"))
    return isinstance(modules, list) and all(isinstance(m, dict) and m.get("type") in STATIC_MODULES for m in modules)


def _dir_digest(path: str) -> str:
    """SHA-256 over the directory's file names and contents (the model's weights, tokenizer and config)."""
    h = hashlib.sha256()
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(root, name)
            h.update(os.path.relpath(full, path).encode() + b"\x00")
            with open(full, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()[:16]


class SentenceTransformerEmbeddingModel:
    """``EmbeddingModel`` over a sentence-transformers (or model2vec static) model, loaded on first use."""

    def __init__(self, model: str = DEFAULT_MODEL, batch_size: int = 64, runtime: str | None = None) -> None:
        model = (model or DEFAULT_MODEL).strip()
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.model_name, self.batch_size = model, batch_size
        local = os.path.expanduser(model)
        self.path = local if os.path.isdir(local) else None
        if runtime is None:
            if self.path is not None:
                runtime = "model2vec" if _is_static(self.path) else "sentence-transformers"
            else:  # a Hub name: the sentence-transformers library when installed, else model2vec (static models)
                runtime = ("sentence-transformers" if importlib.util.find_spec("sentence_transformers") is not None
                           or importlib.util.find_spec("model2vec") is None else "model2vec")
        if runtime not in ("model2vec", "sentence-transformers"):
            raise ValueError(f"unknown runtime {runtime!r}: 'model2vec' or 'sentence-transformers'")
        self.runtime = runtime
        where = f"{os.path.basename(os.path.normpath(local))}@{_dir_digest(local)}" if self.path else model
        self.identity = f"sentence-transformers:{where}/{runtime}"
        self._model: Any = None

    def _load(self) -> Any:
        if self._model is not None:
            return self._model
        source = self.path or self.model_name
        if self.runtime == "model2vec":
            try:
                from model2vec import StaticModel
            except ImportError as exc:
                raise ImportError("embeddings='sentence-transformers:…' with a static model needs model2vec: "
                                  "pip install 'kura-dagster[sentence-transformers]'") from exc
            self._model = StaticModel.from_pretrained(source, force_download=False)
        else:
            try:
                from sentence_transformers import SentenceTransformer
            except ImportError as exc:
                raise ImportError(
                    f"embeddings='sentence-transformers:{self.model_name}' needs the sentence-transformers library "
                    "(and torch): pip install 'kura-dagster[sentence-transformers-torch]'. A static model "
                    "(model2vec format) runs without torch.") from exc
            self._model = SentenceTransformer(source)
        return self._model

    def embed(self, texts: Sequence[str], progress: Progress | None = None) -> np.ndarray:
        if not len(texts):
            return np.zeros((0, 0), dtype=np.float32)
        model = self._load()
        parts = []
        for a in range(0, len(texts), self.batch_size):
            batch = list(texts[a:a + self.batch_size])
            if self.runtime == "model2vec":
                out = model.encode(batch, batch_size=self.batch_size, use_multiprocessing=False)
            else:
                out = model.encode(batch, batch_size=self.batch_size, convert_to_numpy=True, show_progress_bar=False)
            out = np.asarray(out, dtype=np.float32)
            if out.shape[0] != len(batch):
                raise ValueError(f"{self.identity} returned {out.shape[0]} vectors for {len(batch)} texts")
            parts.append(out)
            if progress is not None:
                progress(min(a + self.batch_size, len(texts)), len(texts))
        x = np.concatenate(parts, axis=0)
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        return (x / np.where(norms == 0, 1, norms)).astype(np.float32)
