"""Pipeline settings shared by every stage (plain dataclass: no Dagster here)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PipelineSettings:
    clusters_per_group: int = 10
    """Kura's rule: base clusters ``k = ceil(n / clusters_per_group)``."""
    max_clusters: int = 10
    """Meta-clustering stops once at most this many root clusters remain."""
    seed: int = 0
    """Every stage is deterministic for a given seed."""
    embedding_dims: int = 256
    """Dimensions of the local embedding model."""

    def __post_init__(self) -> None:
        if self.clusters_per_group < 2:
            raise ValueError(f"clusters_per_group must be at least 2, got {self.clusters_per_group}")
        if self.max_clusters < 1:
            raise ValueError(f"max_clusters must be at least 1, got {self.max_clusters}")
        if self.embedding_dims < 2:
            raise ValueError(f"embedding_dims must be at least 2, got {self.embedding_dims}")
