"""The taxonomy's own state, stored beside Kura's checkpoints (pickle-free, written atomically).

``clusters``, ``meta_clusters`` and ``dimensionality`` stay Kura's files. What an incremental run needs on top of
them lives in three artifacts of :mod:`kura_dagster.checkpoints.artifacts` (``params.json`` + ``*.npy`` loaded with
``allow_pickle=False``, each version immutable and named by its SHA-256, one atomic pointer write)::

    <checkpoint_dir>/.kura-artifacts/taxonomy-base/        clusters (id, name, description, slug, size when named,
                                                            when born), membership (chat_ids + labels.npy),
                                                            centroids.npy, radius.npy (assignment thresholds)
    <checkpoint_dir>/.kura-artifacts/taxonomy-meta/        the meta clusters' tree, centroids.npy, radius.npy
    <checkpoint_dir>/.kura-artifacts/taxonomy-projection/  the fitted 2D projection (mean.npy, components.npy,
                                                            sign.npy) and every placed cluster's xy.npy

Only the current version and the one before it are kept (:data:`KEEP_VERSIONS`): a taxonomy changes every day and
its membership is as long as the corpus, so older versions are pruned after the pointer moves.
"""

from __future__ import annotations

import json
from typing import Any

from kura_dagster.checkpoints.artifacts import POINTER, FittedState, artifact_dir, load_state, save_state
from kura_dagster.checkpoints.storage import read_bytes, remove_path

BASE = "taxonomy-base"
META = "taxonomy-meta"
PROJECTION = "taxonomy-projection"
NAMES = (BASE, META, PROJECTION)
KEEP_VERSIONS = 2
HISTORY = "history.json"
"""The versions of one artifact, newest last (beside ``current.json``), so older ones can be pruned."""


def load_taxonomy(checkpoint_dir: Any, name: str, storage_options: dict[str, Any] | None = None
                  ) -> FittedState | None:
    """The current state ``name`` (one of :data:`NAMES`), verified; ``None`` when there is none. A damaged one
    raises :class:`~kura_dagster.checkpoints.artifacts.ArtifactCorruptError` naming the file."""
    if name not in NAMES:
        raise ValueError(f"unknown taxonomy state {name!r}; one of {', '.join(NAMES)}")
    return load_state(checkpoint_dir, name, storage_options)


def save_taxonomy(checkpoint_dir: Any, name: str, state: FittedState,
                  storage_options: dict[str, Any] | None = None) -> FittedState:
    """Store ``state`` as the current version of ``name`` and prune versions older than the previous one.
    Saving a state equal to the current one writes the same version again (nothing changes)."""
    from kura_dagster.checkpoints.storage import atomic_write_bytes

    if name not in NAMES:
        raise ValueError(f"unknown taxonomy state {name!r}; one of {', '.join(NAMES)}")
    saved = save_state(checkpoint_dir, name, state, storage_options)
    root = artifact_dir(checkpoint_dir, name, storage_options)
    try:
        history = [str(v) for v in json.loads(read_bytes(root / HISTORY))]
    except FileNotFoundError:
        history = []
    except (ValueError, TypeError):  # a damaged history only stops pruning; the state itself is verified on load
        history = []
    history = [v for v in history if v != saved.version] + [saved.version]
    keep, drop = history[-KEEP_VERSIONS:], history[:-KEEP_VERSIONS]
    atomic_write_bytes(root / HISTORY, json.dumps(keep).encode("utf-8"))
    for version in drop:
        if version and version != POINTER:
            remove_path(root / version)
    return saved
