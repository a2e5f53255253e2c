"""Layer 1: our models write exactly the JSON Kura writes, and read everything Kura wrote."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from kura_dagster.types import (
    Cluster,
    Conversation,
    ConversationSummary,
    Message,
    ProjectedCluster,
    model_identity,
    resolve_model,
)

FILES = {
    "conversations": Conversation,
    "summaries": ConversationSummary,
    "clusters": Cluster,
    "meta_clusters": Cluster,
    "dimensionality": ProjectedCluster,
}


@pytest.mark.parametrize("name", sorted(FILES))
def test_every_kura_line_round_trips_to_the_same_json(shared_data, name):
    model = FILES[name]
    lines = (shared_data / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()
    assert lines, name
    for number, line in enumerate(lines, start=1):
        written = model.model_validate_json(line).model_dump_json()
        assert json.loads(written) == json.loads(line), f"{name}.jsonl line {number}"
        assert written == line, f"{name}.jsonl line {number} is the same JSON but not the same bytes"


def test_cluster_count_is_computed_and_written():
    c = Cluster(id="a" * 32, name="n", description="d", slug="a_b_c", chat_ids=["1", "2", "3"], parent_id=None)
    assert c.count == 3
    assert json.loads(c.model_dump_json()) == {
        "id": "a" * 32, "name": "n", "description": "d", "slug": "a_b_c", "chat_ids": ["1", "2", "3"],
        "parent_id": None, "count": 3,
    }
    # Kura files carry `count`; reading them back ignores it and recomputes it.
    again = Cluster.model_validate_json(c.model_dump_json())
    assert again == c
    p = ProjectedCluster(**c.model_dump(exclude={"count"}), x_coord=1.5, y_coord=-2.0, level=1)
    assert list(json.loads(p.model_dump_json())) == [
        "id", "name", "description", "slug", "chat_ids", "parent_id", "x_coord", "y_coord", "level", "count"]


def test_summary_nulls_and_field_order_match_kura():
    s = ConversationSummary(summary="s", chat_id="c", metadata={})
    assert list(json.loads(s.model_dump_json())) == [
        "summary", "request", "topic", "languages", "task", "concerning_score", "user_frustration",
        "assistant_errors", "chat_id", "metadata", "embedding"]
    assert json.loads(s.model_dump_json())["embedding"] is None


def test_conversation_metadata_keeps_value_types_and_refuses_nested_values():
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    c = Conversation(chat_id="x", created_at=now, messages=[Message(created_at=now, role="user", content="hi")],
                     metadata={"flag": True, "n": 3, "score": 0.5, "tags": ["a", "b"], "ids": [1, 2]})
    back = Conversation.model_validate_json(c.model_dump_json())
    assert back.metadata == {"flag": True, "n": 3, "score": 0.5, "tags": ["a", "b"], "ids": [1, 2]}
    assert type(back.metadata["flag"]) is bool and type(back.metadata["n"]) is int
    assert back.created_at.tzinfo is not None
    with pytest.raises(ValueError):
        Conversation(chat_id="x", created_at=now, messages=[], metadata={"nested": {"a": 1}})


def test_conversation_dump_and_jsonl_both_load(tmp_path, shared_data):
    convs = [Conversation.model_validate_json(line)
             for line in (shared_data / "conversations.jsonl").read_text().splitlines()[:25]]
    dump = tmp_path / "dump.json"
    Conversation.generate_conversation_dump(convs, dump)
    assert isinstance(json.loads(dump.read_text()), list)
    assert Conversation.from_conversation_dump(dump) == convs
    jsonl = tmp_path / "convs.jsonl"
    jsonl.write_text("".join(c.model_dump_json() + "\n" for c in convs))
    assert Conversation.from_conversation_dump(jsonl) == convs


def test_model_identity_resolves_only_through_the_registry():
    assert resolve_model(model_identity(ConversationSummary)) is ConversationSummary
    assert resolve_model("kura.types.dimensionality.ProjectedCluster") is ProjectedCluster
    with pytest.raises(LookupError, match="register_model"):
        resolve_model("os.system")
