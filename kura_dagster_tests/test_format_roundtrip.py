"""Lossless round trips through Parquet (every codec) and HF datasets, on the shared Kura data and on edge cases:
``model_dump()`` is equal after a save and a load; ``None`` and ``[]`` stay distinct; metadata keeps its types;
aware datetimes stay aware (same instant, same zone) and naive ones naive."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pyarrow.parquet as pq
import pytest

from kura_dagster.checkpoints.hf import HFDatasetCheckpointManager
from kura_dagster.checkpoints.jsonl import JSONLCheckpointManager
from kura_dagster.checkpoints.parquet import COMPRESSIONS, ParquetCheckpointManager
from kura_dagster.types import Cluster, Conversation, ConversationSummary, Message, ProjectedCluster

STAGES = [("conversations", Conversation), ("summaries", ConversationSummary), ("clusters", Cluster),
          ("meta_clusters", Cluster), ("dimensionality", ProjectedCluster)]
MANAGERS = [pytest.param(("parquet", c), id=f"parquet-{c}") for c in COMPRESSIONS] + [pytest.param(("hf", None), id="hf")]


def build(kind: tuple[str, str | None], directory: Path, **options):
    fmt, codec = kind
    if fmt == "parquet":
        return ParquetCheckpointManager(directory, compression=codec, **options)
    return HFDatasetCheckpointManager(directory, **options)


def dumps(models) -> list[dict]:
    return [m.model_dump() for m in models]


def exact_types(value):
    """The value with every scalar tagged by its type, so that True == 1 == 1.0 no longer hide a change."""
    if isinstance(value, dict):
        return {k: exact_types(v) for k, v in value.items()}
    if isinstance(value, list):
        return [exact_types(v) for v in value]
    if isinstance(value, dt.datetime):
        return ("datetime", value, value.tzinfo is not None, value.utcoffset())
    return (type(value).__name__, value)


@pytest.fixture(scope="module")
def shared_models(shared_data: Path) -> dict[str, list]:
    src = JSONLCheckpointManager(shared_data)
    return {name: src.load_checkpoint(name, cls) for name, cls in STAGES}


@pytest.mark.parametrize("kind", MANAGERS)
def test_shared_kura_data_round_trips_exactly(kind, shared_models, tmp_path: Path) -> None:
    manager = build(kind, tmp_path)
    for name, cls in STAGES:
        original = shared_models[name]
        saved = manager.save_checkpoint(name, original)
        assert saved.rows == len(original) and saved.bytes > 0
        back = manager.load_checkpoint(name, cls)
        assert [type(m) for m in back] == [cls] * len(original)
        assert [exact_types(d) for d in dumps(back)] == [exact_types(d) for d in dumps(original)], name
        # Without model_class, the identity stored in the file decides.
        assert dumps(manager.load_checkpoint(name)) == dumps(original)
    assert manager.list_checkpoints() == sorted(name for name, _ in STAGES)


def edge_summaries() -> list[ConversationSummary]:
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((5, 6)).astype(np.float32).astype(float).tolist()  # float32 values
    return [
        ConversationSummary(chat_id="a", summary="s", request=None, topic="", languages=[], task=None,
                            concerning_score=None, user_frustration=5, assistant_errors=[],
                            metadata={"flag": True, "n": 3, "x": 1.5, "tags": ["a", "b"], "ids": [1, 2], "empty": [],
                                      "none": None, "text": "1"},
                            embedding=emb[0]),
        ConversationSummary(chat_id="b", summary="ünïcode ✓", languages=None, assistant_errors=None,
                            metadata={"flag": False, "n": -(2**62), "x": float("inf"), "tags": [], "ids": [],
                                      "empty": [], "none": None, "text": "true"},
                            embedding=None),
        ConversationSummary(chat_id="c", summary="", languages=["python"], assistant_errors=["oops"],
                            metadata={"flag": True, "n": 0, "x": -0.0, "tags": ["z"], "ids": [7], "empty": [],
                                      "none": None, "text": ""},
                            embedding=emb[2]),
    ]


def heterogeneous_summaries() -> list[ConversationSummary]:
    """Metadata no single struct can hold: mixed int/float, nested dicts, absent-and-None, lists of mixed types."""
    return [
        ConversationSummary(chat_id="a", summary="s", metadata={"v": 1, "nested": {"k": [1, {"x": None}]}, "gone": None}),
        ConversationSummary(chat_id="b", summary="s", metadata={"v": 2.5, "mixed": [1, "a", True]}),
        ConversationSummary(chat_id="c", summary="s", metadata={}),
    ]


def tz_conversations() -> list[Conversation]:
    def msgs(t: dt.datetime) -> list[Message]:
        return [Message(created_at=t, role="user", content="hi"), Message(created_at=t, role="assistant", content="")]

    paris = ZoneInfo("Europe/Paris")
    return [
        Conversation(chat_id="naive", created_at=dt.datetime(2024, 1, 2, 3, 4, 5, 123456), messages=msgs(dt.datetime(2024, 1, 2)), metadata={"a": 1}),
        Conversation(chat_id="naive2", created_at=dt.datetime(1999, 12, 31, 23, 59, 59), messages=[], metadata={"a": 2, "b": True}),
    ], [
        Conversation(chat_id="paris-winter", created_at=dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=paris), messages=msgs(dt.datetime(2024, 1, 2, tzinfo=paris)), metadata={}),
        Conversation(chat_id="paris-summer", created_at=dt.datetime(2024, 7, 2, 3, 4, 5, tzinfo=paris), messages=[], metadata={"x": [1.5, 2.0]}),
    ], [
        Conversation(chat_id="ist", created_at=dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30))), messages=[], metadata={}),
        Conversation(chat_id="utc", created_at=dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc), messages=[], metadata={}),
    ]


@pytest.mark.parametrize("kind", MANAGERS)
def test_edge_cases_round_trip_exactly(kind, tmp_path: Path) -> None:
    manager = build(kind, tmp_path)
    cases = {"edge": edge_summaries(), "hetero": heterogeneous_summaries(), "empty": []}
    for i, group in enumerate(tz_conversations()):
        cases[f"tz{i}"] = group
    for name, models in cases.items():
        manager.save_checkpoint(name, models, model_class=ConversationSummary if not models else None)
        back = manager.load_checkpoint(name, type(models[0]) if models else ConversationSummary)
        assert [exact_types(d) for d in dumps(back)] == [exact_types(d) for d in dumps(models)], name
    # The datetimes keep their zone, not only their instant.
    back = manager.load_checkpoint("tz1", Conversation)
    assert [c.created_at.tzinfo for c in back] == [ZoneInfo("Europe/Paris")] * 2
    assert manager.load_checkpoint("tz2", Conversation)[0].created_at.utcoffset() == dt.timedelta(hours=5, minutes=30)
    assert manager.load_checkpoint("tz0", Conversation)[0].created_at.tzinfo is None
    assert manager.load_checkpoint("empty", ConversationSummary) == []


def test_metadata_is_a_native_struct_and_falls_back_to_json_only_when_it_must(tmp_path: Path) -> None:
    manager = ParquetCheckpointManager(tmp_path)
    manager.save_checkpoint("edge", edge_summaries())
    manager.save_checkpoint("hetero", heterogeneous_summaries())
    edge = pq.read_schema(tmp_path / "edge.parquet")
    assert str(edge.field("metadata").type) == (
        "struct<flag: bool, n: int64, x: double, tags: list<element: string>, ids: list<element: int64>, "
        "empty: list<element: string>, none: string, text: string>"
    )
    assert str(edge.field("embedding").type) == "fixed_size_list<element: float>[6]"
    assert str(pq.read_schema(tmp_path / "hetero.parquet").field("metadata").type) == "string"  # JSON per row


def test_float32_rounding_is_reported_and_float64_is_exact(tmp_path: Path) -> None:
    vec = [0.1, 1 / 3, 2.0]  # not float32 values
    models = [ConversationSummary(chat_id="a", summary="s", metadata={}, embedding=vec)]
    for fmt in ("parquet", "hf"):
        f32 = build((fmt, "snappy"), tmp_path / f"{fmt}32")
        saved = f32.save_checkpoint("s", models)
        assert saved.extra["embedding_dtype"] == "float32" and saved.extra["embedding_rounded"] == 2
        assert f32.load_checkpoint("s")[0].embedding == np.asarray(vec, dtype=np.float32).astype(float).tolist()
        f64 = build((fmt, "snappy"), tmp_path / f"{fmt}64", embedding_dtype="float64")
        saved = f64.save_checkpoint("s", models)
        assert saved.extra["embedding_dtype"] == "float64" and "embedding_rounded" not in saved.extra
        assert f64.load_checkpoint("s")[0].embedding == vec


def test_ragged_and_empty_embeddings_stay_distinct(tmp_path: Path) -> None:
    models = [ConversationSummary(chat_id=str(i), summary="s", metadata={}, embedding=e)
              for i, e in enumerate([[1.0, 2.0], [], None, [0.5]])]
    for fmt in ("parquet", "hf"):
        manager = build((fmt, "zstd"), tmp_path / fmt)
        manager.save_checkpoint("s", models)
        assert [m.embedding for m in manager.load_checkpoint("s")] == [[1.0, 2.0], [], None, [0.5]]


# --- time zones, written out by hand -------------------------------------------------------------------------
IST, PST = dt.timezone(dt.timedelta(hours=5, minutes=30)), dt.timezone(dt.timedelta(hours=-8))


def _at(created_at: dt.datetime, chat_id: str) -> Conversation:
    return Conversation(chat_id=chat_id, created_at=created_at, metadata={},
                        messages=[Message(created_at=created_at + dt.timedelta(seconds=7), role="user", content="hi")])


# one checkpoint per case (a column of one zone is stored natively); expected: created_at and the message's
# created_at as ISO text, and the Parquet column type
TZ_CASES = {
    "utc": ([_at(dt.datetime(2024, 3, 10, 23, 30, tzinfo=dt.timezone.utc), "u")],
            ["2024-03-10T23:30:00+00:00", "2024-03-10T23:30:07+00:00"], "timestamp[us, tz=UTC]"),
    "ist": ([_at(dt.datetime(2024, 3, 11, 5, 0, 0, 250000, tzinfo=IST), "i")],
            ["2024-03-11T05:00:00.250000+05:30", "2024-03-11T05:00:07.250000+05:30"], "timestamp[us, tz=+05:30]"),
    "pst": ([_at(dt.datetime(2024, 3, 10, 15, 30, tzinfo=PST), "p")],
            ["2024-03-10T15:30:00-08:00", "2024-03-10T15:30:07-08:00"], "timestamp[us, tz=-08:00]"),
    "naive": ([_at(dt.datetime(2024, 3, 10, 23, 30, 0, 123456), "n")],
              ["2024-03-10T23:30:00.123456", "2024-03-10T23:30:07.123456"], "timestamp[us]"),
    # two offsets in one column: each value keeps its own
    "mixed": ([_at(dt.datetime(2024, 3, 11, 5, 0, tzinfo=IST), "i"), _at(dt.datetime(2024, 3, 10, 15, 30, tzinfo=PST), "p")],
              ["2024-03-11T05:00:00+05:30", "2024-03-11T05:00:07+05:30",
               "2024-03-10T15:30:00-08:00", "2024-03-10T15:30:07-08:00"], None),
}


def _iso(conversations: list[Conversation]) -> list[str]:
    return [t.isoformat() for c in conversations for t in (c.created_at, c.messages[0].created_at)]


@pytest.mark.parametrize("fmt", ["parquet", "hf", "jsonl"])
@pytest.mark.parametrize("case", sorted(TZ_CASES))
def test_datetimes_keep_their_wall_time_and_offset(fmt: str, case: str, tmp_path: Path) -> None:
    """UTC stays aware UTC, +05:30 and -08:00 keep their offsets (not converted to UTC), naive stays naive."""
    models, expected, parquet_type = TZ_CASES[case]
    manager = {"parquet": ParquetCheckpointManager, "hf": HFDatasetCheckpointManager,
               "jsonl": JSONLCheckpointManager}[fmt](tmp_path)
    manager.save_checkpoint(case, models)
    back = manager.load_checkpoint(case, Conversation)
    assert _iso(back) == expected
    if fmt == "parquet" and parquet_type is not None:
        schema = pq.read_schema(tmp_path / f"{case}.parquet")
        assert str(schema.field("created_at").type) == parquet_type


def test_jsonl_writes_each_offset_as_kura_does(tmp_path: Path) -> None:
    """Kura's JSON (pydantic v2): UTC as ``Z``, other offsets as ``±HH:MM``, naive without a suffix."""
    manager = JSONLCheckpointManager(tmp_path)
    manager.save_checkpoint("c", [TZ_CASES[k][0][0] for k in ("utc", "ist", "pst", "naive")])
    text = (tmp_path / "c.jsonl").read_text()
    for stamp in ('"created_at":"2024-03-10T23:30:00Z"', '"created_at":"2024-03-11T05:00:00.250000+05:30"',
                  '"created_at":"2024-03-10T15:30:00-08:00"', '"created_at":"2024-03-10T23:30:00.123456"'):
        assert stamp in text
