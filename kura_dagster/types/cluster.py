"""Clusters and projected clusters, as Kura defines them (``kura.types.cluster``, ``kura.types.dimensionality``)."""

from __future__ import annotations

import uuid
from typing import Union

from pydantic import BaseModel, Field, computed_field


class Cluster(BaseModel):
    id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    name: str
    description: str
    slug: str = Field(..., description="A three-word snake_case summary of what this cluster is about")
    chat_ids: list[str]
    parent_id: Union[str, None]

    @computed_field  # type: ignore[prop-decorator]
    @property
    def count(self) -> int:
        return len(self.chat_ids)

    def __str__(self) -> str:
        return f"Name: {self.name}\nDescription: {self.description}"


class GeneratedCluster(BaseModel):
    """What a cluster-naming model returns."""

    name: str = Field(..., description="A short, imperative sentence (at most ten words) that captures the user's request")
    summary: str = Field(..., description="A clear, precise, two-sentence description in past tense")
    slug: str = Field(..., description="A three-word snake_case summary of what this cluster is about")


class ProjectedCluster(Cluster):
    x_coord: float
    y_coord: float
    level: int


class ClusterTreeNode(BaseModel):
    id: str
    name: str
    description: str
    slug: str
    count: int
    children: list[str]
