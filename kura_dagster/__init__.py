"""kura-dagster: Kura's conversation-analysis pipeline as Dagster assets, with Kura-compatible checkpoints.

Layers (each works without the ones above it): ``types`` → ``checkpoints`` → ``io_managers`` →
``pipeline`` → ``assets``/``definitions``. Importing this package imports neither Dagster nor anything that
wires Definitions: ``build_kura_defs`` and ``KuraPipelineComponent`` are imported on first use, and the
standalone code location is the module ``kura_dagster.definitions``.
"""

from kura_dagster.types import Cluster, Conversation, ConversationSummary, Message, ProjectedCluster

__version__ = "0.1.0"

_LAZY = {
    "build_kura_defs": "kura_dagster.orchestration.factory",
    "KuraNames": "kura_dagster.orchestration.names",
    "KuraPipelineComponent": "kura_dagster.orchestration.component",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'kura_dagster' has no attribute {name!r}")


def __dir__() -> list[str]:
    # `dg` finds components with dir() + getattr (the "dagster_dg_cli.registry_modules" entry point names this
    # package), so the lazy names are listed without importing anything.
    return sorted({*globals(), *_LAZY})


__all__ = ["Cluster", "Conversation", "ConversationSummary", "Message", "ProjectedCluster", "build_kura_defs",
           "KuraNames", "KuraPipelineComponent"]
