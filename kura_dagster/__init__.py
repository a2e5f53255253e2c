"""kura-dagster: Kura's conversation-analysis pipeline as Dagster assets, with Kura-compatible checkpoints.

Layers (each works without the ones above it): ``types`` → ``checkpoints`` → ``io_managers`` →
``pipeline`` → ``assets``/``definitions``. Importing this package does not import Dagster; ``defs`` is
loaded on first access.
"""

import sys

from kura_dagster.types import Cluster, Conversation, ConversationSummary, Message, ProjectedCluster

__version__ = "0.1.0"


if "dagster" in sys.modules:
    # Loaded by Dagster (`dagster ... -m kura_dagster`): expose the Definitions eagerly so autodiscovery
    # finds them. Anywhere else (a notebook using the checkpoints layer) Dagster is not imported.
    from kura_dagster.definitions import defs


def __getattr__(name: str):
    if name == "defs":
        from kura_dagster.definitions import defs

        return defs
    raise AttributeError(f"module 'kura_dagster' has no attribute {name!r}")


__all__ = ["Cluster", "Conversation", "ConversationSummary", "Message", "ProjectedCluster", "defs"]
