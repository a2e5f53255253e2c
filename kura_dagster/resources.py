"""Dagster resources: the pipeline settings and model backends, and where conversations come from.

Both are editable in the launchpad; the default Definitions fill them from the environment
(see README: KURA_CONVERSATIONS, KURA_ON_BAD_RECORD, KURA_CHECKPOINT_DIR …).
"""


import os
from typing import Literal, Optional

import dagster as dg
from pydantic import Field

from kura_dagster.pipeline.inputs import ReadResult, read_conversations
from kura_dagster.pipeline.demo_data import demo_conversations
from kura_dagster.pipeline.models.base import ClusterNamingModel, EmbeddingModel, SummaryModel
from kura_dagster.pipeline.models.local import LocalClusterNamingModel, LocalEmbeddingModel, LocalSummaryModel
from kura_dagster.pipeline.settings import PipelineSettings


class KuraPipelineResource(dg.ConfigurableResource):
    """Settings that shape every stage's output, and the model backends that do the work."""

    clusters_per_group: int = Field(10, description="Base clusters: k = ceil(n / clusters_per_group).")
    max_clusters: int = Field(10, description="Meta-clustering stops at this many root clusters.")
    seed: int = Field(0, description="Every stage is deterministic for a given seed.")
    embedding_dims: int = Field(256, description="Dimensions of the local embedding model.")
    llm: str = Field("local", description="'local' (offline) or 'openai:<model>' for an OpenAI-compatible server.")
    embeddings: str = Field("local", description="'local' (offline) or 'openai:<model>'.")
    checkpoint_dir: str = Field("checkpoints", description="Where caches and quarantined records are kept.")

    def settings(self) -> PipelineSettings:
        return PipelineSettings(
            clusters_per_group=self.clusters_per_group,
            max_clusters=self.max_clusters,
            seed=self.seed,
            embedding_dims=self.embedding_dims,
        )

    def summary_model(self) -> SummaryModel:
        if self.llm == "local":
            return LocalSummaryModel()
        raise ValueError(f"Unknown llm backend {self.llm!r}: use 'local'")

    def embedding_model(self) -> EmbeddingModel:
        if self.embeddings == "local":
            return LocalEmbeddingModel(dims=self.embedding_dims, seed=self.seed)
        raise ValueError(f"Unknown embeddings backend {self.embeddings!r}: use 'local'")

    def naming_model(self) -> ClusterNamingModel:
        if self.llm == "local":
            return LocalClusterNamingModel(seed=self.seed)
        raise ValueError(f"Unknown llm backend {self.llm!r}: use 'local'")

    def identity(self) -> str:
        """Everything that shapes the outputs, for code versions and caches."""
        return (f"cpg={self.clusters_per_group}/max={self.max_clusters}/seed={self.seed}/dims={self.embedding_dims}"
                f"/llm={self.llm}/emb={self.embeddings}")


class ConversationSource(dg.ConfigurableResource):
    """Where the conversations come from: a Kura dump (.json), a .jsonl file, or the built-in demo set."""

    path: Optional[str] = Field(None, description="A .json Kura conversation dump or a .jsonl file; empty for the demo data.")
    on_bad_record: Literal["fail", "skip"] = Field(
        "fail", description="'fail' stops with the first problems listed; 'skip' quarantines bad records."
    )
    demo_size: int = Field(320, description="How many demo conversations to generate when no path is set.")

    def read(self) -> ReadResult:
        if not self.path:
            return ReadResult(source="built-in demo data", conversations=demo_conversations(self.demo_size))
        return read_conversations(os.path.expanduser(self.path), on_bad_record=self.on_bad_record)
