"""ParquetCheckpointManager: the seed's API, native columns other tools query, streaming, integrity, Kura's files."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from kura_dagster.checkpoints import CheckpointCorruptError, ParquetCheckpointManager
from kura_dagster.checkpoints.parquet import INTEGRITY_KEY
from kura_dagster.types import Cluster, Conversation, ConversationSummary, ProjectedCluster

KURA_FILES = Path(__file__).parent / "data" / "kura054"
STAGES = [("conversations", Conversation), ("summaries", ConversationSummary), ("clusters", Cluster),
          ("meta_clusters", Cluster), ("dimensionality", ProjectedCluster)]


def summaries(n: int, dim: int = 4) -> list[ConversationSummary]:
    return [
        ConversationSummary(chat_id=f"c{i}", summary=f"summary number {i}", concerning_score=1 + i % 5,
                            metadata={"turns": i % 7, "model": f"m{i % 3}", "winner": i % 2 == 0},
                            embedding=[float(i + j) for j in range(dim)])
        for i in range(n)
    ]


def test_seed_api(tmp_path: Path) -> None:
    m = ParquetCheckpointManager(tmp_path / "ck", compression="zstd")
    assert m.load_checkpoint("summaries", ConversationSummary) is None
    assert m.list_checkpoints() == [] and m.get_checkpoint_info("summaries") is None
    data = summaries(20)
    saved = m.save_checkpoint("summaries", data)
    assert (tmp_path / "ck" / "summaries.parquet").is_file()
    assert saved.format == "parquet" and saved.rows == 20 and saved.extra["codec"] == "zstd"
    assert saved.bytes == (tmp_path / "ck" / "summaries.parquet").stat().st_size
    assert m.load_checkpoint("summaries.parquet", ConversationSummary) == data
    info = m.get_checkpoint_info("summaries")
    assert info["num_rows"] == 20 and info["size_bytes"] == saved.bytes and info["compression"] == "zstd"
    assert info["model"] == "kura_dagster.types.summarisation.ConversationSummary" and info["schema_version"] == 1
    assert info["features"]["embedding"] == "fixed_size_list<element: float>[4]"
    kept = m.filter_checkpoint("summaries", lambda r: r["metadata"]["winner"] and r["concerning_score"] > 3,
                               ConversationSummary)
    assert [s.chat_id for s in kept] == [s.chat_id for s in data if s.metadata["winner"] and s.concerning_score > 3]
    assert m.list_checkpoints() == ["summaries"]
    assert m.delete_checkpoint("summaries") and not m.delete_checkpoint("summaries")
    assert m.load_checkpoint("summaries", ConversationSummary) is None
    disabled = ParquetCheckpointManager(tmp_path / "off", enabled=False)
    assert disabled.save_checkpoint("s", data) is None and not (tmp_path / "off").exists()


def test_bad_options_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="compression"):
        ParquetCheckpointManager(tmp_path, compression="rar")
    with pytest.raises(ValueError, match="embedding_dtype"):
        ParquetCheckpointManager(tmp_path, embedding_dtype="float16")


def test_identity_schema_version_and_integrity_are_in_the_key_value_metadata(tmp_path: Path) -> None:
    m = ParquetCheckpointManager(tmp_path)
    m.save_checkpoint("summaries", summaries(5))
    kv = pq.read_metadata(tmp_path / "summaries.parquet").metadata
    meta, integrity = json.loads(kv[b"kura_dagster"]), json.loads(kv[INTEGRITY_KEY])
    assert meta["model"] == "kura_dagster.types.summarisation.ConversationSummary" and meta["schema_version"] == 1
    assert integrity["rows"] == 5 and integrity["checksum"].startswith("xxh3_128:")


def test_duckdb_queries_native_columns(tmp_path: Path) -> None:
    duckdb = pytest.importorskip("duckdb")
    m = ParquetCheckpointManager(tmp_path)
    m.save_checkpoint("summaries", summaries(30))
    path = str(tmp_path / "summaries.parquet")
    rows = duckdb.sql(
        f"SELECT metadata.model AS model, count(*) AS n, sum(CASE WHEN metadata.winner THEN 1 ELSE 0 END) AS wins, "
        f"max(len(embedding)) AS dim FROM read_parquet('{path}') GROUP BY 1 ORDER BY 1"
    ).fetchall()
    assert rows == [("m0", 10, 5, 4), ("m1", 10, 5, 4), ("m2", 10, 5, 4)]


def test_row_groups_let_a_load_stream(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kura_dagster.checkpoints import parquet

    monkeypatch.setattr(parquet, "TARGET_ROW_GROUP_BYTES", 1 << 20)
    m = ParquetCheckpointManager(tmp_path)
    data = summaries(3000, dim=256)  # ~3 MB of float32: several 1 MB row groups (the default target is 8 MB)
    m.save_checkpoint("big", data)
    assert pq.ParquetFile(tmp_path / "big.parquet").metadata.num_row_groups >= 3
    it = m.iter_checkpoint("big", batch_size=500)
    first = next(it)
    assert first == data[0]
    assert [s.chat_id for s in [first, *it]] == [s.chat_id for s in data]


def _damage(path: Path, how: str) -> None:
    raw = bytearray(path.read_bytes())
    if how == "truncate":
        path.write_bytes(bytes(raw[: len(raw) // 2]))
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "flip-data":
        raw[len(raw) // 3] ^= 0x01
        path.write_bytes(bytes(raw))
    elif how == "flip-footer":
        raw[-12] ^= 0x40
        path.write_bytes(bytes(raw))


@pytest.mark.parametrize("how", ["truncate", "empty", "flip-data", "flip-footer"])
def test_damaged_files_raise_naming_the_file(tmp_path: Path, how: str) -> None:
    m = ParquetCheckpointManager(tmp_path)
    m.save_checkpoint("summaries", summaries(200))
    path = tmp_path / "summaries.parquet"
    _damage(path, how)
    for load in (lambda: m.load_checkpoint("summaries", ConversationSummary),
                 lambda: list(m.iter_checkpoint("summaries", ConversationSummary)),
                 lambda: m.filter_checkpoint("summaries", lambda r: True, ConversationSummary)):
        with pytest.raises(CheckpointCorruptError) as err:
            load()
        assert str(path) in str(err.value)


@pytest.mark.parametrize("name,cls", STAGES)
def test_reads_what_kura_wrote(name: str, cls: type) -> None:
    """Kura 0.5.4's Parquet (JSON-string columns; see data/make_kura_fixtures.py): we load exactly what Kura loads."""
    m = ParquetCheckpointManager(KURA_FILES / "parquet")
    assert b"kura_dagster" not in (pq.read_schema(KURA_FILES / "parquet" / f"{name}.parquet").metadata or {})
    expected = [cls.model_validate_json(line) for line in
                (KURA_FILES / f"{name}.kura_loaded.parquet.jsonl").read_text().splitlines()]
    got = m.load_checkpoint(name, cls)
    assert [g.model_dump() for g in got] == [e.model_dump() for e in expected]
    assert m.get_checkpoint_info(name)["writer"] == "kura"
    with pytest.raises(LookupError, match="model_class"):
        m.load_checkpoint(name)  # Kura's files do not say which model they hold


def test_kura_summaries_keep_what_kura_keeps() -> None:
    """Kura's Parquet turns ``assistant_errors: []`` into ``None`` — reading its file we agree with Kura, while
    our own files keep ``[]`` (tested in test_format_roundtrip)."""
    src = [ConversationSummary.model_validate_json(line) for line in
           (KURA_FILES / "summaries.source.jsonl").read_text().splitlines()]
    got = ParquetCheckpointManager(KURA_FILES / "parquet").load_checkpoint("summaries", ConversationSummary)
    assert any(s.assistant_errors == [] for s in src)
    assert all(g.assistant_errors is None for g, s in zip(got, src) if s.assistant_errors == [])
    assert [g.embedding for g in got[:4]] == [s.embedding for s in src[:4]]
