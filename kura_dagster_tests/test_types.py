"""Layer 1: our models write exactly the JSON Kura writes, and read everything Kura wrote."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

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


KURA_JSONL = Path(__file__).parent / "data" / "kura054" / "jsonl"
"""Files Kura 0.5.4's JSONLCheckpointManager wrote (``data/make_kura_jsonl.py``): in the repository, so a fresh
clone tests byte-identity too (non-UTC and naive timestamps, escapes, non-ASCII, float reprs included)."""


@pytest.mark.parametrize("name", sorted(FILES))
def test_every_line_kura_wrote_in_the_repository_round_trips_to_the_same_bytes(name):
    data = (KURA_JSONL / f"{name}.jsonl").read_bytes()
    assert data.endswith(b"\n")
    lines = data[:-1].split(b"\n")
    assert len(lines) >= 12, name
    for number, line in enumerate(lines, start=1):
        written = FILES[name].model_validate_json(line).model_dump_json().encode("utf-8")
        assert written == line, f"{name}.jsonl line {number}:\n{written!r}\n{line!r}"


def test_kuras_bytes_for_offsets_escapes_and_floats_are_ours():
    """Spot checks written by hand, on the edge rows Kura wrote."""
    conversations = [Conversation.model_validate_json(line)
                     for line in (KURA_JSONL / "conversations.jsonl").read_text(encoding="utf-8").splitlines()]
    edge = {c.chat_id: c for c in conversations if c.chat_id.startswith("edge-")}
    assert edge["edge-ist"].created_at.isoformat() == "2024-03-11T05:00:00.250000+05:30"
    assert edge["edge-pst"].created_at.isoformat() == "2024-03-10T23:59:59-08:00"
    assert edge["edge-naive"].created_at.tzinfo is None
    dumped = edge["edge-ist"].model_dump_json()
    assert '"content":"नमस्ते 🙏\\nLine two\\twith a tab and a bell \\u0007."' in dumped
    assert '"created_at":"2024-03-10T23:59:59-08:00"' in edge["edge-pst"].model_dump_json()
    summary = ConversationSummary.model_validate_json(
        (KURA_JSONL / "summaries.jsonl").read_text(encoding="utf-8").splitlines()[12])
    assert summary.model_dump_json().endswith(
        '"embedding":[0.1,-0.0,1e-7,0.3333333333333333,-123456.789,2.5e-310,1e+22,3.0]}')


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
