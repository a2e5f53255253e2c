"""The privacy auditor (Clio), LLM mode: the model rates each cluster's name and description for how identifying
they are, on Clio's 1-5 scale, and clusters rated below a threshold are withheld like small clusters
(:mod:`kura_dagster.pipeline.thresholds`).

Audit requests are :class:`~kura_dagster.pipeline.models.base.NamingRequest` s answered by
:class:`OpenAIPrivacyAuditor` (the naming backend asking for a :class:`PrivacyRating`), so a
:class:`~kura_dagster.pipeline.models.cached.CachedNamingModel` around it caches and deduplicates them like every
other request: the same name and description is rated once, in a run and across runs. The cache keeps each
rating as a ``GeneratedCluster`` (``name="rating:N"``, ``summary=reason``, ``slug="privacy_audit"``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, Field

from kura_dagster.pipeline.models.base import NamingRequest
from kura_dagster.types import GeneratedCluster

AUDIT_PROMPT_VERSION = "privacy-audit-v1"

AUDIT_INSTRUCTIONS = """\
You are a privacy auditor, in the style of Clio (privacy-preserving insights into real-world AI use). You are \
shown the name and description of a cluster of conversations that will be shown to analysts. Rate how much \
they could reveal about a specific person or organisation, on this scale:

1 - Identifies a specific individual or organisation (a name, contact detail, address, account, unique event).
2 - Identifies a small, specific group, or contains details that could single someone out in context.
3 - Not identifying, but contains specific details (places, dates, rare circumstances) worth caution.
4 - Not identifying; only general details of a topic or task.
5 - Not identifying at all: a general description of a kind of request.

Answer with the rating (field "rating", an integer from 1 to 5) and one short sentence explaining it (field \
"reason") that does not repeat any identifying detail."""


class PrivacyRating(BaseModel):
    rating: int = Field(..., ge=1, le=5, description="1 (identifies someone) to 5 (identifies nobody)")
    reason: str = Field(..., description="One short sentence, without repeating any identifying detail")


def audit_requests(names: Sequence[GeneratedCluster]) -> list[NamingRequest]:
    """One request per cluster name + description (identical ones share a key, so they are asked once)."""
    return [
        NamingRequest(f"Privacy audit of cluster {i} ({gen.name[:60]!r})",
                      (("system", AUDIT_INSTRUCTIONS),
                       ("user", f"<cluster>\n<name>{gen.name}</name>\n<description>{gen.summary}</description>\n"
                                "</cluster>")))
        for i, gen in enumerate(names)
    ]


_RATING = re.compile(r"^rating:([1-5])$")


def rating_of(answer: GeneratedCluster) -> int:
    m = _RATING.match(answer.name.strip())
    if not m:
        raise ValueError(f"a privacy-audit answer must be named 'rating:1' … 'rating:5', got {answer.name!r}")
    return int(m.group(1))


def openai_auditor(config: Any, seed: int = 0) -> Any:
    """The naming backend of ``config`` asking for :class:`PrivacyRating` (imports ``openai`` only when used)."""
    from kura_dagster.pipeline.models.openai import NAMING_PROMPT_VERSION, OpenAIClusterNamingModel

    class OpenAIPrivacyAuditor(OpenAIClusterNamingModel):
        answer_model = PrivacyRating

        def _as_cluster(self, answer: PrivacyRating) -> GeneratedCluster:
            return GeneratedCluster(name=f"rating:{answer.rating}", summary=answer.reason, slug="privacy_audit")

    auditor = OpenAIPrivacyAuditor(config, seed=seed)
    auditor.identity = auditor.identity.replace(NAMING_PROMPT_VERSION, AUDIT_PROMPT_VERSION)
    return auditor


class Auditor:
    """``auditor(names) -> ratings`` over a cached auditor model (``CachedNamingModel(openai_auditor(…), cache)``);
    ``ratings`` collects every rating given, for metadata."""

    def __init__(self, cached: Any) -> None:
        self.cached = cached
        self.ratings: list[int] = []

    def __call__(self, names: Sequence[GeneratedCluster]) -> list[int]:
        if not names:
            return []
        out = [rating_of(a) for a in self.cached.answer(audit_requests(names))]
        self.ratings.extend(out)
        return out
