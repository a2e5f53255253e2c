"""Layer 4: the stages as functions over lists of models, and the model backends. No storage code here."""

from kura_dagster.pipeline.cluster import generate_base_clusters
from kura_dagster.pipeline.demo_data import demo_conversations
from kura_dagster.pipeline.dimensionality import project_clusters
from kura_dagster.pipeline.inputs import ConversationInputError, read_conversations
from kura_dagster.pipeline.meta_cluster import reduce_clusters
from kura_dagster.pipeline.settings import PipelineSettings
from kura_dagster.pipeline.summarise import summarise_conversations

__all__ = [
    "ConversationInputError",
    "PipelineSettings",
    "demo_conversations",
    "generate_base_clusters",
    "project_clusters",
    "read_conversations",
    "reduce_clusters",
    "summarise_conversations",
]
