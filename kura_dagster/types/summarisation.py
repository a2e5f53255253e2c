"""Conversation summaries, as Kura defines them (``kura.types.summarisation``).

The field order is the order Kura 0.5 writes, so our JSONL lines read the same as Kura's.
"""

from __future__ import annotations

from typing import Optional, Union

from pydantic import BaseModel, Field


class GeneratedSummary(BaseModel):
    """The fields a summary model fills in."""

    summary: str = Field(
        ...,
        description="A clear and concise summary of the conversation in at most two sentences, "
        "avoiding phrases like 'Based on the conversation' and excluding proper nouns or PII",
    )
    request: Optional[str] = Field(None, description="The user's overall request for the assistant")
    topic: Optional[str] = Field(
        None,
        description="The main high-level topic of the conversation "
        "(e.g., 'software development', 'creative writing', 'scientific research').",
    )
    languages: Optional[list[str]] = Field(
        None,
        description="Main languages present in the conversation including human and programming "
        "languages (e.g., ['english', 'arabic', 'python', 'javascript'])",
    )
    task: Optional[str] = Field(None, description="The task the model is being asked to perform")
    concerning_score: Optional[int] = Field(None, ge=1, le=5, description="Safety concern rating from 1-5 scale")
    user_frustration: Optional[int] = Field(None, ge=1, le=5, description="User frustration rating from 1-5 scale")
    assistant_errors: Optional[list[str]] = Field(None, description="List of errors the assistant made")


class ConversationSummary(GeneratedSummary):
    chat_id: str
    metadata: dict
    embedding: Optional[list[float]] = None


class ExtractedProperty(BaseModel):
    name: str
    value: Union[str, int, float, bool, list[str], list[int], list[float]]
