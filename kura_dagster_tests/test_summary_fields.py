"""Selective summary loads (``load_summary_columns(columns=…)``): some fields, no embeddings, the same values as a
model load, the same refusals of damaged files; and the IO managers serving them to ``cluster_facets`` and
``cluster_growth``."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import numpy as np
import pyarrow as pa
import pytest

from kura_dagster.checkpoints.columnar import SummaryColumns, load_summary_columns
from kura_dagster.checkpoints.errors import CheckpointCorruptError
from kura_dagster.checkpoints.hf import HFDatasetCheckpointManager
from kura_dagster.checkpoints.jsonl import JSONLCheckpointManager
from kura_dagster.checkpoints.parquet import ParquetCheckpointManager
from kura_dagster.io_managers.base import SUMMARY_COLUMNS_KEY, summary_columns_type
from kura_dagster.io_managers.multi import io_manager_for_formats
from kura_dagster.types import ConversationSummary

FIELDS = ["summary", "languages", "task", "concerning_score", "user_frustration", "assistant_errors",
          "metadata.user_id", "metadata.created_at"]

# Written by hand: what Kura (or a person) may leave. Non-UTC timestamps, nulls and missing fields, non-ASCII and
# escapes, a score written as 3.0, user ids that are strings in some rows and integers in others.
LINES = [
    {"summary": "Der Nutzer fragt nach Grüßen 👋", "request": None, "topic": None, "languages": ["german", "english"],
     "task": "Übersetzen", "concerning_score": 1, "user_frustration": 2, "assistant_errors": [],
     "chat_id": "ä-1", "metadata": {"user_id": "ü-7", "created_at": "2024-03-01T09:00:00+05:30", "turns": 3},
     "embedding": [0.25, -1.5, 3.0]},
    {"summary": "Line\nbreak and \"quotes\"", "languages": None, "task": None, "concerning_score": None,
     "user_frustration": 3.0, "assistant_errors": None, "chat_id": "b-2",
     "metadata": {"user_id": 42, "created_at": "2024-02-29T23:30:00-08:00"}, "embedding": [1.0, 2.0, 3.0]},
    {"summary": "日本語の要約", "languages": ["japanese"], "task": "説明する", "concerning_score": 5,
     "user_frustration": None, "assistant_errors": ["Wrong date", "Ignored the tone"], "chat_id": "c-3",
     "metadata": {"created_at": None}, "embedding": None},
]
EXPECTED = {  # hand-computed: what each field is, row by row
    "chat_id": ["ä-1", "b-2", "c-3"],
    "summary": ["Der Nutzer fragt nach Grüßen 👋", "Line\nbreak and \"quotes\"", "日本語の要約"],
    "languages": [["german", "english"], None, ["japanese"]],
    "task": ["Übersetzen", None, "説明する"],
    "concerning_score": [1, None, 5],
    "user_frustration": [2, 3, None],
    "assistant_errors": [[], None, ["Wrong date", "Ignored the tone"]],
    "metadata.user_id": ["ü-7", 42, None],
    "metadata.created_at": ["2024-03-01T09:00:00+05:30", "2024-02-29T23:30:00-08:00", None],
}


def _values(table: pa.Table, name: str) -> list:
    """A field's values as Python; ``metadata.<key>`` from a struct column or from JSON text."""
    if not name.startswith("metadata."):
        return table.column(name).to_pylist()
    key = name.split(".", 1)[1]
    out = []
    for m in table.column("metadata").to_pylist():
        m = json.loads(m) if isinstance(m, str) else m
        out.append(None if m is None else m.get(key))
    return out


def _from_models(models: list[ConversationSummary], name: str) -> list:
    if name.startswith("metadata."):
        return [m.metadata.get(name.split(".", 1)[1]) for m in models]
    return [getattr(m, name) for m in models]


def _hand_written(tmp_path: Path) -> JSONLCheckpointManager:
    (tmp_path / "summaries.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in LINES),
                                              encoding="utf-8")
    return JSONLCheckpointManager(tmp_path)


def test_jsonl_columns_equal_a_model_load_and_no_model_is_built(tmp_path, monkeypatch):
    manager = _hand_written(tmp_path)
    models = manager.load_checkpoint("summaries", ConversationSummary)
    # the fast path builds no model: the model parser is only for lines pyarrow cannot read as they are
    calls = []
    real = JSONLCheckpointManager._parse_chunks
    monkeypatch.setattr(JSONLCheckpointManager, "_parse_chunks",
                        lambda self, *a, **k: (calls.append(1), real(self, *a, **k))[1])
    columns = load_summary_columns(manager, "summaries", columns=FIELDS)
    assert columns.chat_ids == EXPECTED["chat_id"] == [m.chat_id for m in models]
    assert columns.embeddings.shape == (3, 0) and columns.selected == tuple(FIELDS)
    table = columns.read_columns(FIELDS)
    for name in FIELDS:
        assert _values(table, name) == EXPECTED[name] == _from_models(models, name), name
    # row 2's user_frustration 3.0 (pyarrow refuses it as an integer) and the user ids of two types in one batch
    # are read by the model parser, for their batch only
    assert calls
    # a file that pyarrow reads as it is (no 3.0, one type per metadata key) never goes through the models
    calls.clear()
    clean = [dict(r, user_frustration=r["user_frustration"] and int(r["user_frustration"])) for r in LINES]
    clean[1]["metadata"] = dict(clean[1]["metadata"], user_id="42")
    (tmp_path / "clean.jsonl").write_text("".join(json.dumps(r) + "\n" for r in clean))
    clean_columns = load_summary_columns(manager, "clean", columns=FIELDS)
    assert not calls
    assert _values(clean_columns.read_columns(["metadata.user_id"]), "metadata.user_id") == ["ü-7", "42", None]
    assert clean_columns.read_columns(["user_frustration"]).column("user_frustration").to_pylist() == [2, 3, None]
    # integer user ids throughout are read as integers, as a model load gives them
    for r, uid in zip(clean, (7, 42, None)):
        r["metadata"] = dict(r["metadata"], user_id=uid)
    (tmp_path / "ints.jsonl").write_text("".join(json.dumps(r) + "\n" for r in clean))
    ints = load_summary_columns(manager, "ints", columns=["metadata.user_id"])
    assert not calls and _values(ints.read_columns(["metadata.user_id"]), "metadata.user_id") == [7, 42, None]
    # a field not read at load time is read when asked for, from the file
    assert clean_columns.read_columns(["topic"]).column("topic").to_pylist() == [None, None, None]


@pytest.mark.parametrize("manager_class", [ParquetCheckpointManager, HFDatasetCheckpointManager])
def test_parquet_and_hf_columns_equal_a_model_load(tmp_path, manager_class):
    models = _hand_written(tmp_path).load_checkpoint("summaries", ConversationSummary)
    models = [m.model_copy(update={"embedding": [0.5, 1.5, 2.5]}) for m in models]
    manager = manager_class(tmp_path / "out")
    manager.save_checkpoint("summaries", models)
    columns = load_summary_columns(manager, "summaries", columns=FIELDS)
    assert columns.chat_ids == EXPECTED["chat_id"] and columns.embeddings.shape == (3, 0)
    table = columns.read_columns(FIELDS)
    assert "embedding" not in table.column_names
    reloaded = manager.load_checkpoint("summaries", ConversationSummary)
    for name in FIELDS:
        assert _values(table, name) == EXPECTED[name] == _from_models(reloaded, name), name


def test_damaged_jsonl_is_refused_naming_the_file_and_line(tmp_path):
    manager = JSONLCheckpointManager(tmp_path)
    models = _hand_written(tmp_path).load_checkpoint("summaries", ConversationSummary)
    manager.save_checkpoint("saved", models)  # with its integrity sidecar
    path = tmp_path / "saved.jsonl"
    data = path.read_bytes()
    path.write_bytes(data.replace(b'"task":null', b'"task":"x!"'))  # still valid JSON, other bytes
    with pytest.raises(CheckpointCorruptError, match="checksum mismatch") as err:
        load_summary_columns(manager, "saved", columns=["task"])
    assert err.value.path == str(path)
    path.write_bytes(data[: len(data) // 2])  # cut short
    with pytest.raises(CheckpointCorruptError) as err:
        load_summary_columns(manager, "saved", columns=[])
    assert err.value.path == str(path)
    # without a sidecar (Kura wrote it): a broken line, and a score no model accepts, each named by its line
    lines = [json.dumps(r) for r in LINES]
    (tmp_path / "broken.jsonl").write_text("\n".join([lines[0], lines[1][:40], lines[2]]) + "\n")
    with pytest.raises(CheckpointCorruptError) as err:
        load_summary_columns(manager, "broken", columns=["task"])
    assert err.value.path == str(tmp_path / "broken.jsonl") and err.value.line == 2
    (tmp_path / "score.jsonl").write_text("\n".join([lines[0], lines[1], json.dumps(dict(LINES[2], concerning_score=9))])
                                          + "\n")
    with pytest.raises(CheckpointCorruptError, match="concerning_score") as err:
        load_summary_columns(manager, "score", columns=["concerning_score"])
    assert err.value.line == 3


def test_io_managers_serve_the_selection_without_embeddings(tmp_path):
    @dg.asset(metadata={"kura/model": "ConversationSummary"})
    def summaries() -> list[ConversationSummary]:
        return [ConversationSummary(chat_id=f"c{i}", summary="s", task=f"t{i}", metadata={"user_id": i % 2},
                                    embedding=[float(i), 1.0]) for i in range(4)]

    seen: dict[str, SummaryColumns] = {}

    @dg.asset(ins={"summaries": dg.AssetIn(dagster_type=summary_columns_type(),
                                           metadata={SUMMARY_COLUMNS_KEY: ["task", "metadata.user_id"]})})
    def reader(summaries: SummaryColumns) -> None:
        seen["columns"] = summaries

    for formats in (["jsonl"], ["parquet", "jsonl"]):
        io = io_manager_for_formats(formats, str(tmp_path / "+".join(formats)))
        assert dg.materialize([summaries, reader], resources={"io_manager": io}).success
        columns = seen.pop("columns")
        assert columns.embeddings.shape == (4, 0) and columns.format == formats[0]
        table = columns.read_columns(["task", "metadata.user_id"])
        assert table.column("task").to_pylist() == ["t0", "t1", "t2", "t3"]
        assert _values(table, "metadata.user_id") == [0, 1, 0, 1]
        assert np.array_equal(columns.chat_ids, ["c0", "c1", "c2", "c3"])


@pytest.mark.parametrize("line, expected", [
    (b'{"a":1,"embedding":[1,2]}', b'{"a":1}'),
    (b'{"embedding":null}', b'{}'),
    (b'{"a":1, "embedding" : [1.5e-3, -2] }  ', b'{"a":1}'),
    (b'{"a":1,"embedding":["}"]}', b'{"a":1}'),
    (b'{"a":[{"embedding":[1]}]}', None), (b'{"m":{"x":1,"embedding":[1]}}', None),
    (b'{"x":["a\\"embedding\\":[b"]}', None),
    # anything else is left whole for the parser (and its errors)
    (b'{"a":"embedding"}', None), (b'{"a":["x","embedding"]}', None), (b'{"m":{"embedding":[1]}}', None),
    (b'{"s":"x \\"embedding\\": [1]}"}', None), (b'{"embedding":[1,2],"a":1}', None),
    (b'{"a":1,"embedding":[1,2}', None), (b'{"a":1,"embedding":[1,2]', None), (b'{"a":1,"embedding":[[1],2]}', None),
])
def test_the_embedding_is_cut_off_only_when_it_is_provably_the_last_field(line, expected):
    from kura_dagster.checkpoints.columnar import _without_embedding

    assert _without_embedding(line) == (line if expected is None else expected)
