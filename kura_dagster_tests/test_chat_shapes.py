"""Real chat logs as they are: ShareGPT records and the Hub's chat-dataset rows (LMSYS style), detected from the
content; and ids generated for records without one, unique per record and stable across re-reads."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kura_dagster.pipeline.models.cached import RequestCounts
from kura_dagster.pipeline.summarise import SummaryCounts, summarise_conversations
from kura_dagster.sources import ConversationInputError, conversations_from_value, read_source
from kura_dagster_tests.fake_openai import FakeOpenAIServer

API_KEY = "sk-test-chat-shapes"
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _jsonl(records: list) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


# --- item 3: records without ids ------------------------------------------------------------------------------
HI = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
                   {"role": "assistant", "content": "hello"}]}


def test_identical_records_without_ids_are_two_conversations_with_stable_ids(tmp_path: Path) -> None:
    path = tmp_path / "logs.jsonl"
    path.write_text(_jsonl([HI, HI, {"messages": HI["messages"][1:]}]))  # two users said "hi"; a third, no system
    result = read_source(path)  # on_bad_record="fail": before, "duplicate chat_id" failed the read
    assert result.format == "openai_chat" and result.bad_records == []
    ids = [c.chat_id for c in result.conversations]
    assert len(ids) == 3 and len(set(ids)) == 3 and all(len(i) == 32 for i in ids)
    assert [[(m.role, m.content) for m in c.messages] for c in result.conversations] == [[("user", "hi"), ("assistant", "hello")]] * 3
    assert result.dropped == {"chat_id_generated": 3, "created_at_defaulted": 3, "message_created_at_defaulted": 6,
                              "system_messages": 2}
    assert [c.chat_id for c in read_source(path).conversations] == ids  # the same file: the same ids
    # a line added at the end leaves the ids before it as they were
    path.write_text(_jsonl([HI, HI, {"messages": HI["messages"][1:]}, HI]))
    assert [c.chat_id for c in read_source(path).conversations][:3] == ids
    # the same records as an upstream value: unique ids too
    value = conversations_from_value([HI, HI], source="raw_chats")
    assert len({c.chat_id for c in value.conversations}) == 2


def test_content_identical_conversations_are_asked_once(fake_openai: FakeOpenAIServer, tmp_path: Path) -> None:
    from kura_dagster.pipeline.models.openai import OpenAIConfig, OpenAIEmbeddingModel, OpenAISummaryModel

    path = tmp_path / "logs.jsonl"
    path.write_text(_jsonl([HI, HI, HI, {"messages": [{"role": "user", "content": "bye"}]}]))
    convs = read_source(path).conversations
    model = OpenAISummaryModel(OpenAIConfig(model="fake-model", base_url=fake_openai.url, max_concurrency=2))
    embedder = OpenAIEmbeddingModel(OpenAIConfig(model="fake-emb", base_url=fake_openai.url), batch_size=8)
    counts = SummaryCounts()
    out = summarise_conversations(convs, model, embedder, cache=None, counts=counts)
    assert fake_openai.count("chat") == 2  # "hi"/"hello" once, "bye" once
    assert counts.summaries == RequestCounts(items=4, cache_hits=0, deduplicated=2, requested=2)
    assert [s.chat_id for s in out] == [c.chat_id for c in convs]
    assert out[0].summary == out[1].summary == out[2].summary != out[3].summary


def test_a_bad_record_with_a_generated_id_says_so(tmp_path: Path) -> None:
    path = tmp_path / "logs.jsonl"
    path.write_text(_jsonl([{"messages": [{"role": "user", "content": "x" * 50}]}]))
    with pytest.raises(ConversationInputError) as err:
        read_source(path, max_message_chars=10)
    text = str(err.value)
    assert "was generated: the record has no id" in text and "line 1" in text


# --- item 8: ShareGPT ---------------------------------------------------------------------------------------
SHAREGPT = [
    {"id": "sg-1", "lang": "de", "conversations": [
        {"from": "system", "value": "You are helpful."}, {"from": "human", "value": "Hallo"},
        {"from": "gpt", "value": "Guten Tag"}, {"from": "human", "value": "Wie geht's?"},
        {"from": "chatgpt", "value": "Gut."}]},
    {"id": "sg-2", "conversations": [{"from": "user", "value": "2+2?"}, {"from": "bard", "value": "4"},
                                     {"from": "observation", "value": "{\"ok\": true}"},
                                     {"from": "model", "value": "Four."}]},
    {"id": "sg-3", "conversations": [{"from": "gpt", "value": "Hello, how can I help?"}]},          # no human turn
    {"id": "sg-4", "conversations": [{"from": "human", "value": "hi"}, {"from": "narrator", "value": "..."}]},
    {"conversations": [{"from": "human", "value": "no id"}, {"from": "assistant", "value": "ok"}]},
]


def _check_sharegpt(result, name: str) -> None:
    assert result.format == "sharegpt", name
    assert [c.chat_id for c in result.conversations][:2] == ["sg-1", "sg-2"]
    first, second, fifth = result.conversations
    assert [(m.role, m.content) for m in first.messages] == [
        ("user", "Hallo"), ("assistant", "Guten Tag"), ("user", "Wie geht's?"), ("assistant", "Gut.")]
    assert [(m.role, m.content) for m in second.messages] == [("user", "2+2?"), ("assistant", "4"),
                                                              ("assistant", "Four.")]
    assert first.metadata == {"id": "sg-1", "lang": "de"} and second.metadata == {"id": "sg-2"}
    assert first.created_at == EPOCH and len(fifth.chat_id) == 32 and fifth.metadata == {}
    assert result.dropped == {"chat_id_generated": 1, "created_at_defaulted": 3, "message_created_at_defaulted": 9,
                              "roles_renamed": 7, "system_messages": 1, "tool_messages": 1}
    bad = {b.location.split()[-1]: b.reason for b in result.bad_records}
    assert list(bad) == ["3", "4"]
    assert "no human (user) turn" in bad["3"]
    assert "unknown role 'narrator' (its 'from')" in bad["4"]


def test_sharegpt_json_array_and_jsonl(tmp_path: Path) -> None:
    (tmp_path / "sg.json").write_text(json.dumps(SHAREGPT, indent=2))
    (tmp_path / "sg.data").write_text(_jsonl(SHAREGPT))  # the name says nothing; the content does
    for name in ("sg.json", "sg.data"):
        _check_sharegpt(read_source(tmp_path / name, on_bad_record="skip"), name)
    with pytest.raises(ConversationInputError) as err:
        read_source(tmp_path / "sg.data")
    text = str(err.value)
    assert "line 3: no human (user) turn" in text and "line 4: message 1: unknown role 'narrator'" in text


def test_a_cut_off_sharegpt_file(tmp_path: Path) -> None:
    whole = _jsonl(SHAREGPT[:2])
    (tmp_path / "cut.jsonl").write_text(whole + json.dumps(SHAREGPT[4])[:40])  # the writer died mid-line
    result = read_source(tmp_path / "cut.jsonl", on_bad_record="skip")
    assert result.format == "sharegpt" and [c.chat_id for c in result.conversations] == ["sg-1", "sg-2"]
    assert [(b.location, b.reason[:12]) for b in result.bad_records] == [("line 3", "invalid JSON")]
    with pytest.raises(ConversationInputError, match=r"cut\.jsonl line 3: invalid JSON"):
        read_source(tmp_path / "cut.jsonl")
    # a JSON array cut off cannot be split into records: the error names the file and where it ends
    (tmp_path / "cut.json").write_text(json.dumps(SHAREGPT[:2], indent=1)[:-30])
    with pytest.raises(ConversationInputError, match=r"cut\.json line \d+ column \d+: invalid JSON"):
        read_source(tmp_path / "cut.json")


# --- item 8: the Hub's chat-dataset rows (LMSYS style) --------------------------------------------------------
LMSYS = [
    {"conversation_id": "c0ffee01", "model": "vicuna-13b", "language": "English", "turn": 1, "redacted": False,
     "conversation": [{"role": "user", "content": "What is Dagster?"},
                      {"role": "assistant", "content": "An orchestrator."}],
     "openai_moderation": [{"flagged": False}]},
    {"conversation_id": "c0ffee02", "model": "koala-13b", "language": "Portuguese", "turn": 1, "redacted": True,
     "conversation": [{"role": "assistant", "content": "Olá!"}],                                     # no user turn
     "openai_moderation": [{"flagged": False}]},
    {"conversation_id": "c0ffee03", "model": "llama-2-13b-chat", "language": "German", "turn": 2, "redacted": False,
     "conversation": [{"role": "user", "content": "Hallo"}, {"role": "assistant", "content": "Hi"},
                      {"role": "user", "content": "Danke"}, {"role": "assistant", "content": "Bitte"}],
     "openai_moderation": [{"flagged": False}, {"flagged": True}]},
]


def test_lmsys_rows_from_parquet_carry_their_columns_into_metadata(tmp_path: Path) -> None:
    pq.write_table(pa.Table.from_pylist(LMSYS), tmp_path / "train-00000-of-00001.parquet")
    result = read_source(tmp_path / "train-00000-of-00001.parquet", on_bad_record="skip")
    assert result.format == "parquet"
    assert [c.chat_id for c in result.conversations] == ["c0ffee01", "c0ffee03"]
    third = result.conversations[1]
    assert [(m.role, m.content) for m in third.messages] == [("user", "Hallo"), ("assistant", "Hi"),
                                                            ("user", "Danke"), ("assistant", "Bitte")]
    assert third.metadata == {"conversation_id": "c0ffee03", "model": "llama-2-13b-chat", "language": "German",
                              "turn": 2, "redacted": False,
                              "openai_moderation": '[{"flagged": false}, {"flagged": true}]'}
    assert [(b.location, b.reason[:20]) for b in result.bad_records] == [("row 2", "no human (user) turn")]
    assert result.dropped == {"created_at_defaulted": 2, "message_created_at_defaulted": 6, "metadata_encoded": 2}


def test_lmsys_rows_as_jsonl_and_as_an_upstream_table(tmp_path: Path) -> None:
    (tmp_path / "lmsys.jsonl").write_text(_jsonl(LMSYS))
    from_json = read_source(tmp_path / "lmsys.jsonl", on_bad_record="skip")
    assert from_json.format == "hf_chat" and [c.chat_id for c in from_json.conversations] == ["c0ffee01", "c0ffee03"]
    from_table = conversations_from_value(pa.Table.from_pylist(LMSYS), on_bad_record="skip", source="lmsys")
    assert from_table.conversations == from_json.conversations
    assert from_json.conversations[0].metadata["language"] == "English"


def test_lmsys_rows_from_a_saved_hf_dataset(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_list(LMSYS).save_to_disk(str(tmp_path / "lmsys"))
    result = read_source(tmp_path / "lmsys", on_bad_record="skip")
    assert result.format == "hf_dataset" and [c.chat_id for c in result.conversations] == ["c0ffee01", "c0ffee03"]
    assert result.conversations[0].metadata == {"conversation_id": "c0ffee01", "model": "vicuna-13b",
                                                "language": "English", "turn": 1, "redacted": False,
                                                "openai_moderation": '[{"flagged": false}]'}
    assert [b.location for b in result.bad_records] == ["row 2"]


def test_sharegpt_rows_from_parquet(tmp_path: Path) -> None:
    rows = [{**r, "lang": r.get("lang")} for r in SHAREGPT[:2]]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "sg.parquet")
    result = read_source(tmp_path / "sg.parquet")
    assert result.format == "parquet" and [c.chat_id for c in result.conversations] == ["sg-1", "sg-2"]
    assert [(m.role, m.content) for m in result.conversations[1].messages] == [
        ("user", "2+2?"), ("assistant", "4"), ("assistant", "Four.")]
    assert result.conversations[0].metadata == {"id": "sg-1", "lang": "de"}
    assert result.dropped["metadata_nulls"] == 1 and result.dropped["tool_messages"] == 1
