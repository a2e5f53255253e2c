"""Layer 1: pydantic v2 models whose JSON is byte-for-byte the JSON Kura writes.

``MODEL_REGISTRY`` maps the identity stored in a checkpoint file (``module.Class``) to a model class.
Loading resolves identities only through this registry, never by importing a name read from a file.
"""

from __future__ import annotations

from pydantic import BaseModel

from kura_dagster.types.cluster import Cluster, ClusterTreeNode, GeneratedCluster, ProjectedCluster
from kura_dagster.types.conversation import Conversation, Message, MetadataDict, MetadataValue
from kura_dagster.types.summarisation import ConversationSummary, ExtractedProperty, GeneratedSummary

MODEL_REGISTRY: dict[str, type[BaseModel]] = {}


def model_identity(model: type[BaseModel]) -> str:
    return f"{model.__module__}.{model.__qualname__}"


def register_model(model: type[BaseModel], *aliases: str) -> type[BaseModel]:
    """Make ``model`` loadable by the identity stored in checkpoint files (and by any alias)."""
    for key in (model_identity(model), model.__name__, *aliases):
        MODEL_REGISTRY[key] = model
    return model


def resolve_model(identity: str) -> type[BaseModel]:
    try:
        return MODEL_REGISTRY[identity]
    except KeyError:
        raise LookupError(
            f"Unknown model identity {identity!r}. Known: {sorted(k for k in MODEL_REGISTRY if '.' in k)}. "
            "Register your own model with kura_dagster.types.register_model(MyModel)."
        ) from None


for _m, _kura in (
    (Conversation, "kura.types.conversation.Conversation"),
    (Message, "kura.types.conversation.Message"),
    (ConversationSummary, "kura.types.summarisation.ConversationSummary"),
    (Cluster, "kura.types.cluster.Cluster"),
    (ProjectedCluster, "kura.types.dimensionality.ProjectedCluster"),
):
    register_model(_m, _kura)

#: The checkpoint names Kura's pipeline writes, and the model each holds (Kura calls the projected clusters
#: ``dimensionality``).
KURA_CHECKPOINT_MODELS: dict[str, type[BaseModel]] = {
    "conversations": Conversation,
    "summaries": ConversationSummary,
    "clusters": Cluster,
    "meta_clusters": Cluster,
    "dimensionality": ProjectedCluster,
}

__all__ = [
    "KURA_CHECKPOINT_MODELS",
    "Cluster",
    "ClusterTreeNode",
    "Conversation",
    "ConversationSummary",
    "ExtractedProperty",
    "GeneratedCluster",
    "GeneratedSummary",
    "MODEL_REGISTRY",
    "Message",
    "MetadataDict",
    "MetadataValue",
    "ProjectedCluster",
    "model_identity",
    "register_model",
    "resolve_model",
]
