"""HFDatasetCheckpointManager: save_to_disk layout, memory-mapped and streaming loads, filtering, info,
Hub pushes (against a test double: no network), integrity, and the datasets Kura wrote."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
import pytest

from kura_dagster.checkpoints import CheckpointCorruptError, HFDatasetCheckpointManager
from kura_dagster.types import Cluster, Conversation, ConversationSummary, ProjectedCluster

KURA_FILES = Path(__file__).parent / "data" / "kura054"
STAGES = [("conversations", Conversation), ("summaries", ConversationSummary), ("clusters", Cluster),
          ("meta_clusters", Cluster), ("dimensionality", ProjectedCluster)]
TOKEN = "hf_test_SECRET_token_value"


def summaries(n: int, dim: int = 8) -> list[ConversationSummary]:
    return [
        ConversationSummary(chat_id=f"c{i}", summary=f"summary {i}", concerning_score=1 + i % 5,
                            metadata={"turns": i % 7, "winner": i % 2 == 0}, embedding=[i / 4 + j for j in range(dim)])
        for i in range(n)
    ]


def test_seed_api_and_layout(tmp_path: Path) -> None:
    m = HFDatasetCheckpointManager(tmp_path)
    assert m.load_checkpoint("summaries", ConversationSummary) is None
    data = summaries(50)
    saved = m.save_checkpoint("summaries", data, "summaries")
    directory = tmp_path / "summaries"
    names = sorted(p.name for p in directory.iterdir())
    assert names == ["data-00000-of-00001.arrow", "dataset_info.json", "kura_dagster.json", "state.json"]
    assert saved.format == "hf" and saved.rows == 50 and saved.bytes == sum(p.stat().st_size for p in directory.iterdir())
    assert m.load_checkpoint("summaries", ConversationSummary, checkpoint_type="summaries") == data
    info = m.get_checkpoint_info("summaries")
    assert info["num_rows"] == 50 and info["size_bytes"] == saved.bytes
    assert info["features"]["embedding"] == "fixed_size_list<item: float>[8]"
    assert info["hf_features"]["metadata"] == {"turns": {"dtype": "int64", "_type": "Value"},
                                               "winner": {"dtype": "bool", "_type": "Value"}}
    assert m.list_checkpoints() == ["summaries"]
    # HF itself opens our directory, with native features.
    ds = datasets.load_from_disk(str(directory))
    assert ds.num_rows == 50 and ds[3]["metadata"] == {"turns": 3, "winner": False}
    assert m.delete_checkpoint("summaries") and m.list_checkpoints() == [] and not directory.exists()


def test_loads_are_memory_mapped(tmp_path: Path) -> None:
    m = HFDatasetCheckpointManager(tmp_path)
    m.save_checkpoint("summaries", summaries(2000, dim=256))  # 2 MB of float32
    before = pa.total_allocated_bytes()
    table = m.read_table("summaries")
    assert table.num_rows == 2000
    assert pa.total_allocated_bytes() - before < 100_000  # the buffers live in the mapped file, not the heap


def test_streaming_yields_without_building_everything(tmp_path: Path) -> None:
    data = summaries(120)
    HFDatasetCheckpointManager(tmp_path).save_checkpoint("summaries", data)
    streaming = HFDatasetCheckpointManager(tmp_path, streaming=True)
    it = streaming.load_checkpoint("summaries", ConversationSummary)
    assert not isinstance(it, list)
    assert next(it) == data[0] and [*it] == data[1:]
    per_load = HFDatasetCheckpointManager(tmp_path).load_checkpoint("summaries", ConversationSummary, streaming=True)
    assert list(per_load) == data
    assert list(streaming.iter_checkpoint("summaries", batch_size=7)) == data


def test_filter_checkpoint_builds_only_matching_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = summaries(100)
    m = HFDatasetCheckpointManager(tmp_path)
    m.save_checkpoint("summaries", data)
    built: list[int] = []
    from kura_dagster.checkpoints import base

    real = base.rows_to_models
    monkeypatch.setattr(base, "rows_to_models", lambda rows, *a, **k: (built.append(len(rows)), real(rows, *a, **k))[1])
    kept = m.filter_checkpoint("summaries", lambda x: x["concerning_score"] > 3, ConversationSummary, "summaries")
    assert kept == [s for s in data if s.concerning_score > 3] and built == [len(kept)]


class FakeHub:
    """A test double for the Hub: records push_to_hub calls, or fails them."""

    def __init__(self, fail: Exception | None = None) -> None:
        self.calls: list[dict[str, Any]] = []
        self.fail = fail

    @property
    def method(self):
        def push_to_hub(dataset: datasets.Dataset, repo_id: str, **kwargs: Any) -> None:
            self.calls.append({"repo_id": repo_id, "rows": dataset.num_rows, "columns": dataset.column_names, **kwargs})
            if self.fail:
                raise self.fail

        return push_to_hub


def test_each_save_pushes_one_config_with_the_row_count(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hub = FakeHub()
    monkeypatch.setattr(datasets.Dataset, "push_to_hub", hub.method)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    m = HFDatasetCheckpointManager(tmp_path, hub_repo="org/kura-checkpoints")
    saved = m.save_checkpoint("summaries", summaries(12))
    m.save_checkpoint("clusters", [Cluster(name="n", description="d", slug="s", chat_ids=["a"], parent_id=None)])
    assert saved.extra["hub_push"] == "ok"
    assert [(c["repo_id"], c["config_name"], c["rows"], c["token"]) for c in hub.calls] == [
        ("org/kura-checkpoints", "summaries", 12, TOKEN), ("org/kura-checkpoints", "clusters", 1, TOKEN)]
    assert hub.calls[0]["commit_message"] == "Update summaries checkpoint with 12 rows"
    assert TOKEN not in repr(m)


def test_a_failed_push_is_reported_and_never_costs_the_local_save(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    hub = FakeHub(fail=ConnectionError(f"401 Unauthorized for token {TOKEN}"))
    monkeypatch.setattr(datasets.Dataset, "push_to_hub", hub.method)
    m = HFDatasetCheckpointManager(tmp_path, hub_repo="org/repo", hub_token=TOKEN)
    data = summaries(5)
    with caplog.at_level(logging.INFO):
        saved = m.save_checkpoint("summaries", data)
    assert saved.extra["hub_push"].startswith("failed: ConnectionError: 401 Unauthorized")
    assert TOKEN not in json.dumps(saved.as_dict()) and TOKEN not in caplog.text
    assert "failed" in caplog.text and hub.calls[0]["token"] == TOKEN
    assert m.load_checkpoint("summaries", ConversationSummary) == data


@pytest.mark.parametrize("how", ["missing-data", "flip", "truncate", "empty", "missing-state", "manifest"])
def test_damaged_datasets_raise_naming_the_file(tmp_path: Path, how: str) -> None:
    m = HFDatasetCheckpointManager(tmp_path)
    m.save_checkpoint("summaries", summaries(300))
    directory = tmp_path / "summaries"
    data = directory / "data-00000-of-00001.arrow"
    raw = bytearray(data.read_bytes())
    target = data
    if how == "missing-data":
        data.unlink()
    elif how == "flip":
        raw[len(raw) // 2] ^= 0x08
        data.write_bytes(bytes(raw))
    elif how == "truncate":
        data.write_bytes(bytes(raw[: len(raw) - 100]))
    elif how == "empty":
        data.write_bytes(b"")
    elif how == "missing-state":
        target = directory / "state.json"
        target.unlink()
    elif how == "manifest":
        target = directory / "kura_dagster.json"
        target.write_text("{not json")
    for load in (lambda: m.load_checkpoint("summaries", ConversationSummary),
                 lambda: list(m.iter_checkpoint("summaries", ConversationSummary)),
                 lambda: m.filter_checkpoint("summaries", lambda r: True, ConversationSummary)):
        with pytest.raises(CheckpointCorruptError) as err:
            load()
        assert str(target) in str(err.value)


@pytest.mark.parametrize("name,cls", STAGES)
def test_reads_what_kura_wrote(name: str, cls: type) -> None:
    """Kura 0.5.4's datasets (metadata as keys/values, roles as class labels, '' for None; see
    data/make_kura_fixtures.py): we load exactly what Kura itself loads."""
    m = HFDatasetCheckpointManager(KURA_FILES / "hf")
    expected = [cls.model_validate_json(line) for line in
                (KURA_FILES / f"{name}.kura_loaded.hf.jsonl").read_text().splitlines()]
    assert [g.model_dump() for g in m.load_checkpoint(name, cls)] == [e.model_dump() for e in expected]
    assert [g.model_dump() for g in m.iter_checkpoint(name, cls, batch_size=5)] == [e.model_dump() for e in expected]
    assert m.get_checkpoint_info(name)["writer"] == "kura"


def test_kura_hf_quirks_are_decoded() -> None:
    m = HFDatasetCheckpointManager(KURA_FILES / "hf")
    convs = m.load_checkpoint("conversations", Conversation)
    assert {msg.role for c in convs for msg in c.messages} == {"user", "assistant"}  # class labels → names
    clusters = m.load_checkpoint("clusters", Cluster)
    assert all(c.parent_id is None for c in clusters)  # '' → None
    src = [Conversation.model_validate_json(line) for line in (KURA_FILES / "conversations.source.jsonl").read_text().splitlines()]
    # Kura stored int(timestamp() * 1e9) and reads it back as a naive local time (the zone is lost; float rounding
    # shifts some by a microsecond). We read what it stored: the same instants.
    assert max(abs(a.created_at.timestamp() - b.created_at.timestamp()) for a, b in zip(convs, src)) <= 2e-6
