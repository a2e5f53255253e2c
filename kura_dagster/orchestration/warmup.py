"""Import what the later stages of a run need while an earlier stage waits for the model server.

With an LLM, ``summaries`` spends its time waiting for answers, and then ``clusters`` pays ~1.5 s to import
scikit-learn for k-means and ``projected_clusters`` ~1 s to import Matplotlib for the cluster map: one after
the other, on the critical path. :func:`warm_imports` imports them once per process on a background thread
while the requests are in flight (the event loop waits on the network, so the import costs it little), and
the later stages find them imported. The offline models never wait, so they do not start it.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import threading
from collections.abc import Sequence
from typing import Optional

logger = logging.getLogger(__name__)

LATER_STAGE_MODULES = (
    "sklearn.cluster",  # k-means of clusters and meta_clusters
    "sklearn.decomposition",  # PCA of projected_clusters
    "matplotlib.figure",  # the cluster map in projected_clusters' metadata
    "matplotlib.backends.backend_agg",
)

_lock = threading.Lock()
_started: set[str] = set()


def warm_imports(modules: Sequence[str] = LATER_STAGE_MODULES) -> Optional[threading.Thread]:
    """Start importing ``modules`` (those not started before in this process) on a daemon thread; the thread,
    or ``None`` when there is nothing left to import. A module that fails to import here is logged, and its
    stage imports it again itself and raises the error there, where it belongs."""
    with _lock:
        todo = [m for m in modules if m not in _started]
        _started.update(todo)
    if not todo:
        return None

    def run() -> None:
        for name in todo:
            try:
                if importlib.util.find_spec(name.partition(".")[0]) is not None:
                    importlib.import_module(name)
            except Exception as exc:  # the stage's own import raises it again
                logger.warning("Importing %s ahead of time failed (%s: %s); its stage will import it itself",
                               name, type(exc).__name__, exc)

    thread = threading.Thread(target=run, name="kura-warm-imports", daemon=True)
    thread.start()
    return thread
