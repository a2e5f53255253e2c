"""Conversations from wherever they are (``kura_dagster.sources``): every format, detected from the content;
globs, directories and fsspec URLs; column maps and their errors; what is dropped, counted; bad records with
their locations; upstream values. All local and fast."""

from __future__ import annotations

import gzip
import os
import json
import subprocess
import sys
import uuid
from datetime import datetime, timezone
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kura_dagster.sources import (
    DEFAULT_CREATED_AT,
    ConversationInputError,
    conversations_from_value,
    list_source_files,
    public_location,
    quarantine_jsonl,
    read_source,
)
from kura_dagster.types import Conversation, Message

T0 = "2025-03-01T12:00:00+00:00"


def kura_conv(chat_id: str, text: str = "hello", role: str = "user", **extra) -> dict:
    return {"chat_id": chat_id, "created_at": T0,
            "messages": [{"created_at": T0, "role": role, "content": text},
                         {"created_at": T0, "role": "assistant", "content": "hi"}],
            "metadata": {"team": "a"}, **extra}


def jsonl(records: list) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


OPENAI = [
    {"id": "chat-1",
     "messages": [
         {"role": "system", "content": "You are helpful."},
         {"role": "user", "content": [{"type": "text", "text": "What is in"}, {"type": "image_url", "image_url": {"url": "x"}},
                                      {"type": "text", "text": "this picture?"}]},
         {"role": "assistant", "content": None, "tool_calls": [{"id": "t1"}, {"id": "t2"}]},
         {"role": "tool", "tool_call_id": "t1", "content": "a cat"},
         {"role": "tool", "tool_call_id": "t2", "content": "grey"},
         {"role": "assistant", "content": "A grey cat.", "name": "bot"},
     ],
     "metadata": {"lang": "en", "tags": ["x", "y"], "score": 0.5, "nested": {"a": 1}, "gone": None},
     "model": "gpt-4o"},
    {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}], "created": 1700000000},
]
OPENAI_DROPPED = {
    "system_messages": 1, "tool_messages": 2, "non_text_parts": 1, "tool_calls": 2, "messages_without_text": 1,
    "message_field:name": 1, "metadata_encoded": 1, "metadata_nulls": 1, "unmapped_field:model": 1,
    "chat_id_generated": 1, "created_at_defaulted": 1, "message_created_at_defaulted": 4,
}


def check_openai(result) -> None:
    first, second = result.conversations
    assert first.chat_id == "chat-1" and first.created_at == DEFAULT_CREATED_AT
    assert [(m.role, m.content) for m in first.messages] == [("user", "What is in\nthis picture?"),
                                                               ("assistant", "A grey cat.")]
    assert all(m.created_at == DEFAULT_CREATED_AT for m in first.messages)
    assert first.metadata == {"lang": "en", "tags": ["x", "y"], "score": 0.5, "nested": '{"a": 1}'}
    assert second.created_at == datetime.fromtimestamp(1700000000, tz=timezone.utc) == second.messages[0].created_at
    assert len(second.chat_id) == 32 and second.metadata == {}
    assert result.dropped == OPENAI_DROPPED


# --- formats, detected from the content ---------------------------------------------------------------------
def test_kura_jsonl_and_dump_are_read_and_named(tmp_path: Path) -> None:
    records = [kura_conv("a"), kura_conv("b")]
    (tmp_path / "c.jsonl").write_text(jsonl(records))
    (tmp_path / "dump.json").write_text(json.dumps(records))
    (tmp_path / "notes.txt").write_text(jsonl(records))  # the name says nothing; the content does
    expected = [Conversation.model_validate(r) for r in records]
    for name, fmt in (("c.jsonl", "kura_jsonl"), ("dump.json", "kura_json"), ("notes.txt", "kura_jsonl")):
        result = read_source(tmp_path / name)
        assert (result.format, result.conversations, result.dropped) == (fmt, expected, {}), name
        assert result.source == result.files[0] == str(tmp_path / name)
    # Conversation.from_conversation_dump reads both by itself (no sources import), strictly.
    assert Conversation.from_conversation_dump(tmp_path / "dump.json") == expected
    assert Conversation.from_conversation_dump(tmp_path / "c.jsonl") == expected
    (tmp_path / "bad.json").write_text(json.dumps([kura_conv("a"), kura_conv("b", role="system")]))
    with pytest.raises(ConversationInputError, match=r"bad\.json record 2: unknown role 'system'"):
        Conversation.from_conversation_dump(tmp_path / "bad.json")


def test_openai_records_in_a_json_array_and_in_jsonl_under_any_name(tmp_path: Path) -> None:
    (tmp_path / "chats.json").write_text(json.dumps(OPENAI, indent=1))
    (tmp_path / "chats.txt").write_text(jsonl(OPENAI))
    for name in ("chats.json", "chats.txt"):
        result = read_source(tmp_path / name)
        assert result.format == "openai_chat", name
        check_openai(result)
    # Deterministic: the generated chat_id hashes the file's name, the record's place and its content, so a
    # re-read of the same file gives the same ids; another file holding the same records gets other ids.
    again, first = read_source(tmp_path / "chats.txt"), read_source(tmp_path / "chats.json")
    assert again.conversations == read_source(tmp_path / "chats.txt").conversations
    assert [c.model_copy(update={"chat_id": ""}) for c in again.conversations] == \
        [c.model_copy(update={"chat_id": ""}) for c in first.conversations]
    generated = {c.chat_id for c in again.conversations if c.chat_id != "chat-1"}
    assert generated and not generated & {c.chat_id for c in first.conversations}


def test_openai_bad_records_have_line_numbers_and_skip_returns_them(tmp_path: Path) -> None:
    lines = [
        OPENAI[1],                                                                      # 1 good
        {"id": "r", "messages": [{"role": "robot", "content": "beep"}]},                # 2 unknown role
        {"id": "s", "messages": [{"role": "system", "content": "only a prompt"}]},      # 3 nothing left
        {"id": "e", "messages": []},                                                    # 4 empty: skipped, counted
        {"id": "n", "messages": [{"role": "user", "content": 42}]},                     # 5 content not text
    ]
    text = jsonl(lines) + "{not json\n" + json.dumps({**OPENAI[1], "id": "z"}) + "\n"  # 6 bad JSON, 7 good
    path = tmp_path / "chats.jsonl"
    path.write_text(text)
    message = str(pytest.raises(ConversationInputError, read_source, path).value)
    assert message.startswith(f"4 bad record(s) in {path}:")
    assert f"{path} line 2: message 0: unknown role 'robot'" in message
    assert f"{path} line 3: no user or assistant message with text is left (1 system messages)" in message
    assert f"{path} line 5: message 0: content is int" in message and f"{path} line 6: invalid JSON" in message
    result = read_source(path, on_bad_record="skip")
    assert [b.location for b in result.bad_records] == ["line 2", "line 3", "line 5", "line 6"]
    assert result.bad_records[0].chat_id == "r" and json.loads(result.bad_records[0].raw) == lines[1]
    assert len(result.conversations) == 2
    # Drops count only for kept conversations (line 2's and 3's are quarantined whole, not counted).
    assert result.dropped == {"chat_id_generated": 1, "empty_conversations": 1, "message_created_at_defaulted": 4}
    rows = [json.loads(x) for x in quarantine_jsonl(result.bad_records, result.source).splitlines()]
    assert [r["location"] for r in rows] == ["line 2", "line 3", "line 5", "line 6"]
    assert all(r["source"] == str(path) and r["file"] == str(path) for r in rows)


def test_max_message_chars_applies_to_converted_formats_too(tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    path.write_text(jsonl([{"id": "big", "messages": [{"role": "user", "content": "x" * 50}]}]))
    with pytest.raises(ConversationInputError, match="message 0 has 50 characters, more than the limit of 10"):
        read_source(path, max_message_chars=10)


CLAUDE = [
    {"uuid": "c-1", "name": "Cats", "created_at": "2024-05-01T10:00:00.000000Z", "updated_at": "2024-05-01T11:00:00Z",
     "chat_messages": [
         # out of order, and a tie at 10:00:05 where Kura puts the human first
         {"uuid": "m3", "sender": "assistant", "created_at": "2024-05-01T10:00:05Z", "text": "Cats purr.",
          "content": [{"type": "text", "text": "Cats"}, {"type": "tool_use", "name": "search"}, {"type": "text", "text": "purr."}]},
         {"uuid": "m1", "sender": "human", "created_at": "2024-05-01T10:00:00Z",
          "content": [{"type": "text", "text": "Tell me about cats"}], "attachments": [{"file_name": "a.txt"}], "files": []},
         {"uuid": "m2", "sender": "human", "created_at": "2024-05-01T10:00:05Z", "content": [{"type": "text", "text": "please"}]},
     ]},
    {"uuid": "c-2", "name": "", "created_at": "2024-05-02T10:00:00Z", "updated_at": "2024-05-02T10:00:00Z", "chat_messages": []},
]


def test_claude_export_maps_as_kura_does(tmp_path: Path) -> None:
    path = tmp_path / "conversations.json"
    path.write_text(json.dumps(CLAUDE))
    result = read_source(path, column_map={"metadata.title": "name"})
    assert result.format == "claude_export"
    [conv] = result.conversations
    t = lambda s: datetime.fromisoformat(s.replace("Z", "+00:00"))  # noqa: E731
    assert conv == Conversation(
        chat_id="c-1", created_at=t("2024-05-01T10:00:00Z"), metadata={"title": "Cats"},
        messages=[Message(created_at=t("2024-05-01T10:00:00Z"), role="user", content="Tell me about cats"),
                  Message(created_at=t("2024-05-01T10:00:05Z"), role="user", content="please"),
                  Message(created_at=t("2024-05-01T10:00:05Z"), role="assistant", content="Cats\npurr.")],
    )
    assert result.dropped == {"attachments": 1, "empty_conversations": 1, "non_text_parts": 1,
                              "unmapped_field:updated_at": 1}
    # Without a column_map, metadata is {} (Kura's default metadata_fn) and the title is counted as not kept.
    plain = read_source(path)
    assert plain.conversations[0].metadata == {} and plain.dropped["unmapped_field:name"] == 1
    with pytest.raises(ValueError, match="column_map can only add metadata"):
        read_source(path, column_map={"chat_id": "name"})


def test_parquet_with_a_column_map_detected_by_content(tmp_path: Path) -> None:
    table = pa.table({
        "conv": ["p1", "p2"],
        "ts": [datetime(2024, 1, 1, tzinfo=timezone.utc), datetime(2024, 1, 2, tzinfo=timezone.utc)],
        "turns": [[{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}],
                  [{"from": "human", "value": "bye"}]],
        "lang": ["en", "fr"],
        "embedding": [[0.1, 0.2], [0.3, 0.4]],
    })
    pq.write_table(table, tmp_path / "chats.data")  # no .parquet suffix: PAR1 says it
    cmap = {"chat_id": "conv", "created_at": "ts", "messages": "turns", "messages.role": "from",
            "messages.content": "value", "metadata.language": "lang"}
    result = read_source(tmp_path / "chats.data", column_map=cmap)
    assert result.format == "parquet"
    assert [(c.chat_id, c.metadata, [(m.role, m.content) for m in c.messages]) for c in result.conversations] == [
        ("p1", {"language": "en"}, [("user", "hi"), ("assistant", "hello")]),
        ("p2", {"language": "fr"}, [("user", "bye")]),
    ]
    assert result.conversations[1].messages[0].created_at == datetime(2024, 1, 2, tzinfo=timezone.utc)
    assert result.dropped == {"roles_renamed": 3, "message_created_at_defaulted": 3, "unmapped_field:embedding": 2}
    with pytest.raises(ConversationInputError) as info:
        read_source(tmp_path / "chats.data", column_map={**cmap, "chat_id": "conversation_id"})
    assert str(info.value) == (f"{tmp_path / 'chats.data'}: column_map maps chat_id to 'conversation_id', but there is "
                               "no column 'conversation_id'; the columns are: conv, ts, turns, lang, embedding")
    with pytest.raises(ConversationInputError, match="no 'messages' column.*the columns are: conv, ts, turns"):
        read_source(tmp_path / "chats.data")


def test_parquet_rows_are_numbered_and_json_string_columns_decoded(tmp_path: Path) -> None:
    # Kura's own Parquet stores messages and metadata as JSON strings.
    good, dup = kura_conv("k1"), kura_conv("k1")
    rows = [{**r, "messages": json.dumps(r["messages"]), "metadata": json.dumps(r["metadata"])} for r in (good, dup)]
    rows.append({**rows[0], "chat_id": "k2", "messages": "[oops"})
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "kura.parquet")
    result = read_source(tmp_path / "kura.parquet", on_bad_record="skip")
    assert result.conversations == [Conversation.model_validate(good)]
    assert [(b.location, b.reason.split(" (")[0]) for b in result.bad_records] == [
        ("row 2", "duplicate chat_id 'k1'"), ("row 3", "field 'messages' is a string that is not JSON")]


def test_our_own_parquet_and_hf_checkpoints_read_back_as_sources(tmp_path: Path) -> None:
    from kura_dagster.checkpoints.hf import HFDatasetCheckpointManager
    from kura_dagster.checkpoints.parquet import ParquetCheckpointManager

    convs = [Conversation.model_validate(kura_conv(f"c{i}")) for i in range(3)]
    ParquetCheckpointManager(str(tmp_path / "pq")).save_checkpoint("conversations", convs)
    HFDatasetCheckpointManager(str(tmp_path / "hf")).save_checkpoint("conversations", convs)
    pq_result = read_source(tmp_path / "pq" / "conversations.parquet")
    hf_result = read_source(tmp_path / "hf" / "conversations")
    assert (pq_result.format, pq_result.conversations) == ("parquet", convs)
    assert (hf_result.format, hf_result.conversations) == ("hf_dataset", convs)


def test_hf_dataset_saved_to_disk_and_data_files(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    rows = [{"conversation_id": "h1", "tstamp": "2024-01-01T00:00:00Z", "model": "m1", "turn": 1,
             "conversation": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hey"}]},
            {"conversation_id": "h2", "tstamp": "2024-01-02T00:00:00Z", "model": "m2", "turn": 1,
             "conversation": [{"role": "system", "content": "s"}, {"role": "user", "content": "yo"}]}]
    cmap = {"chat_id": "conversation_id", "created_at": "tstamp", "messages": "conversation", "metadata.model": "model"}
    ds = datasets.Dataset.from_list(rows)
    ds.save_to_disk(str(tmp_path / "saved"))
    datasets.DatasetDict({"train": ds, "test": ds.select([1])}).save_to_disk(str(tmp_path / "dict"))
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "part-0.jsonl").write_text(jsonl(rows))

    saved = read_source(tmp_path / "saved", column_map=cmap)
    assert saved.format == "hf_dataset" and saved.files == [str(tmp_path / "saved")]
    assert [(c.chat_id, c.metadata, len(c.messages)) for c in saved.conversations] == [
        ("h1", {"model": "m1"}, 2), ("h2", {"model": "m2"}, 1)]
    assert saved.dropped == {"message_created_at_defaulted": 3, "system_messages": 1, "unmapped_field:turn": 2}
    via_files = read_source(tmp_path / "files", column_map=cmap, format="hf_dataset")
    assert via_files.format == "hf_dataset" and via_files.files == [str(tmp_path / "files" / "part-0.jsonl")]
    # datasets' JSON loader parses the times itself, into naive UTC timestamps (Arrow's JSON inference).
    naive = lambda cs: [c.model_copy(update={"created_at": c.created_at.replace(tzinfo=None)}).model_dump(  # noqa: E731
        exclude={"messages": {"__all__": {"created_at"}}}) for c in cs]
    assert naive(via_files.conversations) == naive(saved.conversations)
    test_split = read_source(tmp_path / "dict", column_map=cmap, split="test")
    assert [c.chat_id for c in test_split.conversations] == ["h2"]
    with pytest.raises(ConversationInputError, match="no split 'dev'; the splits are: train, test"):
        read_source(tmp_path / "dict", column_map=cmap, split="dev")
    with pytest.raises(ConversationInputError, match="column_map maps chat_id to 'id'.*conversation_id, tstamp"):
        read_source(tmp_path / "saved", column_map={**cmap, "chat_id": "id"})


# --- locations ------------------------------------------------------------------------------------------------
def test_directory_and_glob_read_every_file_and_name_it_in_bad_records(tmp_path: Path) -> None:
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    (root / "a.jsonl").write_text(jsonl([kura_conv("a1"), kura_conv("a2")]))
    (root / "sub" / "b.json").write_text(json.dumps(OPENAI))
    with gzip.open(root / "c.jsonl.gz", "wt") as fh:
        fh.write(jsonl([kura_conv("c1"), kura_conv("a1")]))  # a1 again: a duplicate across files
    (root / "README.md").write_text("# notes")
    (root / "_SUCCESS").write_text("")
    (root / ".hidden.jsonl").write_text("garbage")

    result = read_source(root, on_bad_record="skip")
    assert result.files == [str(root / "a.jsonl"), str(root / "c.jsonl.gz"), str(root / "sub" / "b.json")]
    assert result.source == f"{root} (3 files)" and result.format == "kura_jsonl+openai_chat"
    assert [c.chat_id for c in result.conversations] == ["a1", "a2", "c1", "chat-1", result.conversations[-1].chat_id]
    [bad] = result.bad_records
    assert (bad.location, bad.file, bad.reason) == ("c.jsonl.gz line 2", str(root / "c.jsonl.gz"), "duplicate chat_id 'a1'")
    assert result.dropped["ignored_files"] == 1  # README.md; _SUCCESS and dot files are not data
    with pytest.raises(ConversationInputError, match=rf"1 bad record\(s\) in {root} \(3 files\):\n  {root}/c.jsonl.gz line 2"):
        read_source(root)

    glob = read_source(str(root / "*.jsonl*"), on_bad_record="skip")  # not .hidden.jsonl, as a shell's glob
    assert glob.source == f"{root / '*.jsonl*'} (2 files)" and len(glob.conversations) == 3
    assert [b.location for b in glob.bad_records] == ["c.jsonl.gz line 2"]
    assert list_source_files(str(root / "**" / "*.json")) == [str(root / "sub" / "b.json")]
    assert list_source_files(root) == glob.files + [str(root / "sub" / "b.json")]
    assert list_source_files(str(tmp_path / "not-yet")) == []


def test_memory_urls() -> None:
    fs = fsspec.filesystem("memory")
    base = f"/kura-test-{uuid.uuid4().hex}"
    try:
        fs.pipe(f"{base}/day=1/chats.jsonl", jsonl(OPENAI).encode())
        fs.pipe(f"{base}/day=2/chats.jsonl", jsonl([kura_conv("k")]).encode())
        files = list_source_files(f"memory://{base}/*/chats.jsonl")
        assert files == [f"memory://{base}/day=1/chats.jsonl", f"memory://{base}/day=2/chats.jsonl"]
        one = read_source(files[0])  # each listed file is itself a location
        check_openai(one)
        assert one.source == files[0]
        both = read_source(f"memory://{base}")
        assert both.format == "openai_chat+kura_jsonl" and len(both.conversations) == 3
        # A UPath (with its storage options) and a list of locations work too.
        from upath import UPath

        assert read_source(UPath(f"memory://{base}")).conversations == both.conversations
        listed = read_source(files[::-1])
        assert listed.files == files[::-1] and listed.source == f"{files[1]}, {files[0]} (2 files)"
    finally:
        fs.rm(base, recursive=True)


def test_missing_locations_and_bad_options_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ConversationInputError, match=rf"{tmp_path / 'nope.jsonl'}: no such file or directory"):
        read_source(tmp_path / "nope.jsonl")
    with pytest.raises(ConversationInputError, match="no file matches"):
        read_source(str(tmp_path / "*.jsonl"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.md").write_text("x")
    with pytest.raises(ConversationInputError, match="holds no conversation files .* 1 other file"):
        read_source(tmp_path / "empty")
    (tmp_path / "x.jsonl").write_text(jsonl([kura_conv("a")]))
    with pytest.raises(ValueError, match="unknown key 'chatid'"):
        read_source(tmp_path / "x.jsonl", column_map={"chatid": "id"})
    with pytest.raises(ValueError, match="unknown format 'csv'"):
        read_source(tmp_path / "x.jsonl", format="csv")
    with pytest.raises(ValueError, match="on_bad_record must be"):
        read_source(tmp_path / "x.jsonl", on_bad_record="ignore")


def test_unknown_records_need_a_column_map_and_then_read(tmp_path: Path) -> None:
    path = tmp_path / "turns.json"
    path.write_text(json.dumps([{"key": "s1", "turns": [{"from": "human", "value": "hi"}]}]))
    with pytest.raises(ConversationInputError, match="cannot tell the format: the first record has the fields key, turns"):
        read_source(path)
    with pytest.raises(ConversationInputError, match="column_map maps chat_id to 'id'.*the columns are: key, turns"):
        read_source(path, column_map={"chat_id": "id", "messages": "turns"})
    result = read_source(path, column_map={"chat_id": "key", "messages": "turns", "messages.role": "from",
                                           "messages.content": "value"})
    assert result.format == "json_records"
    assert [(m.role, m.content) for m in result.conversations[0].messages] == [("user", "hi")]
    # format= forces a reader: Kura's strictness on OpenAI records names what is missing.
    (tmp_path / "o.jsonl").write_text(jsonl(OPENAI[1:]))
    with pytest.raises(ConversationInputError, match="line 1: missing field 'chat_id'"):
        read_source(tmp_path / "o.jsonl", format="kura")


def test_public_location_drops_credentials_and_signatures() -> None:
    assert public_location("s3://AKIAXXX:s3cr3t@bucket/sales/*.jsonl") == "s3://bucket/sales/*.jsonl"
    assert public_location("https://host/c.json?X-Amz-Signature=abc") == "https://host/c.json"
    assert public_location("memory://x/a.jsonl") == "memory://x/a.jsonl"
    assert public_location("/data/a b.jsonl") == "/data/a b.jsonl"


# --- upstream values ------------------------------------------------------------------------------------------
def test_values_lists_of_conversations_and_dicts() -> None:
    convs = [Conversation.model_validate(kura_conv(c)) for c in ("a", "b")]
    result = conversations_from_value(convs + [convs[0]], on_bad_record="skip", source="raw_chats")
    assert result.format == "conversations" and result.conversations == convs
    assert [(b.location, b.reason) for b in result.bad_records] == [("record 3", "duplicate chat_id 'a'")]
    as_dicts = conversations_from_value([kura_conv("a"), kura_conv("b")])
    assert as_dicts.format == "records" and as_dicts.conversations == convs
    with pytest.raises(ConversationInputError, match=r"in raw_chats:\n  raw_chats record 2: unknown role 'system'"):
        conversations_from_value([kura_conv("a"), kura_conv("b", role="system")], source="raw_chats")
    check_openai(conversations_from_value(OPENAI))
    with pytest.raises(ConversationInputError, match="cannot read conversations from a builtins.str"):
        conversations_from_value("not a table")


ROWS = [{"id": 7, "ts": "2024-01-01T00:00:00Z", "turns": [{"role": "user", "content": "hi"}], "tag": "x"},
        {"id": 8, "ts": "2024-01-02T00:00:00Z", "turns": [{"role": "assistant", "content": "only me"}], "tag": None}]
CMAP = {"chat_id": "id", "created_at": "ts", "messages": "turns", "metadata.tag": "tag"}


def check_rows(result, fmt: str) -> None:
    assert result.format == fmt
    assert [(c.chat_id, c.metadata, c.messages[0].content) for c in result.conversations] == [
        ("7", {"tag": "x"}, "hi"), ("8", {}, "only me")]
    assert result.dropped == {"message_created_at_defaulted": 2, "metadata_nulls": 1}


def test_values_arrow_and_dataframes() -> None:
    table = pa.Table.from_pylist(ROWS)
    check_rows(conversations_from_value(table, column_map=CMAP), "arrow_table")
    check_rows(conversations_from_value(table.to_batches()[0], column_map=CMAP), "arrow_table")
    with pytest.raises(ConversationInputError, match=r"upstream asset: column_map maps messages to 'msgs'.*id, ts, turns, tag"):
        conversations_from_value(table, column_map={**CMAP, "messages": "msgs"})
    bad = pa.Table.from_pylist([ROWS[0], {**ROWS[1], "ts": None}])
    with pytest.raises(ConversationInputError, match=r"upstream asset row 2: no value in column 'ts'"):
        conversations_from_value(bad, column_map=CMAP)
    pandas = pytest.importorskip("pandas")
    check_rows(conversations_from_value(pandas.DataFrame(ROWS), column_map=CMAP), "pandas")
    import polars  # in the dev extra: this path is always tested

    check_rows(conversations_from_value(polars.DataFrame(ROWS), column_map=CMAP), "polars")


def test_a_polars_frame_keeps_its_column_time_zone() -> None:
    import datetime as dt

    import polars

    frame = polars.DataFrame({"id": [1, 2], "ts": [dt.datetime(2024, 5, 2, 1, 15), dt.datetime(2024, 5, 1, 23, 30)],
                              "turns": [[{"role": "user", "content": "a"}], [{"role": "user", "content": "b"}]]})
    frame = frame.with_columns(polars.col("ts").dt.replace_time_zone("Asia/Kolkata"))
    result = conversations_from_value(frame, column_map={"chat_id": "id", "created_at": "ts", "messages": "turns"})
    assert result.format == "polars"
    assert [(c.chat_id, c.created_at.isoformat()) for c in result.conversations] == [
        ("1", "2024-05-02T01:15:00+05:30"), ("2", "2024-05-01T23:30:00+05:30")]


# --- layers ---------------------------------------------------------------------------------------------------
LAYER_CHECK = """
import sys
import {module}
bad = sorted(m for m in sys.modules if m == "dagster" or m.startswith({forbidden}))
print(",".join(bad))
"""


@pytest.mark.parametrize("module, forbidden", [
    ("kura_dagster.types", ("kura_dagster.sources", "kura_dagster.pipeline", "kura_dagster.checkpoints")),
    ("kura_dagster.checkpoints.columnar", ("kura_dagster.sources", "kura_dagster.pipeline", "kura_dagster.io_managers")),
    ("kura_dagster.sources", ("kura_dagster.pipeline", "kura_dagster.io_managers", "kura_dagster.orchestration.assets",
                              "kura_dagster.definitions", "pandas", "polars")),
])
def test_each_layer_imports_nothing_above_it(module: str, forbidden: tuple[str, ...]) -> None:
    out = subprocess.run([sys.executable, "-c", LAYER_CHECK.format(module=module, forbidden=forbidden)],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"{module} imports {out}"


def test_a_hub_name_goes_to_load_dataset_only_when_asked(tmp_path: Path) -> None:
    """Offline (no network in tests): a Hub name is tried with datasets.load_dataset only under
    format="hf_dataset", and its failure is one clear error; without it, a missing path is just missing."""
    script = """
from kura_dagster.sources import read_source, ConversationInputError
for fmt in ("hf_dataset", None):
    try:
        read_source("kura-test-org/no-such-dataset", format=fmt)
    except ConversationInputError as exc:
        print(str(exc).splitlines()[0])
"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, env=env,
                         cwd=tmp_path).stdout.splitlines()
    assert out[0].startswith("kura-test-org/no-such-dataset: no such file or directory, and loading it as a "
                             "Hugging Face Hub dataset failed") and "Hub" in out[0]
    assert out[1].startswith("kura-test-org/no-such-dataset: no such file or directory (set KURA_CONVERSATIONS")
