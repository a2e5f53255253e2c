"""The columnar fast path (summaries as an embedding matrix + chat_ids) and the Parquet/HF IO managers
through ``dg.materialize``: the whole pipeline, partitions, output metadata, and Hub pushes."""


import json
from pathlib import Path
from typing import Any

import dagster as dg
import datasets
import numpy as np
import pytest

from kura_dagster.orchestration.assets import kura_assets
from kura_dagster.checkpoints import (
    HFDatasetCheckpointManager,
    JSONLCheckpointManager,
    ParquetCheckpointManager,
    SummaryColumns,
    load_summary_columns,
)
from kura_dagster.checkpoints import columnar
from kura_dagster.io_managers import HFDatasetIOManager, JSONLIOManager, ParquetIOManager
from kura_dagster.orchestration.resources import ConversationSource, KuraPipelineResource
from kura_dagster.types import Cluster, ConversationSummary

MANAGERS = {"parquet": ParquetCheckpointManager, "hf": HFDatasetCheckpointManager, "jsonl": JSONLCheckpointManager}


def summaries(n: int, dim: int = 16, seed: int = 0) -> list[ConversationSummary]:
    rng = np.random.default_rng(seed)
    emb = rng.standard_normal((n, dim)).astype(np.float32)
    return [ConversationSummary(chat_id=f"c{i}", summary=f"summary {i}", request=f"request {i}", metadata={"i": i},
                                embedding=emb[i].astype(float).tolist()) for i in range(n)]


@pytest.mark.parametrize("fmt", MANAGERS)
def test_summary_columns_from_every_format(fmt: str, tmp_path: Path) -> None:
    data = summaries(300)
    manager = MANAGERS[fmt](tmp_path)
    manager.save_checkpoint("summaries", data)
    cols = load_summary_columns(manager, "summaries")
    assert isinstance(cols, SummaryColumns) and len(cols) == 300 and cols.dim == 16 and cols.format == fmt
    assert cols.chat_ids == [s.chat_id for s in data]
    assert cols.embeddings.dtype == np.float32 and cols.embeddings.shape == (300, 16)
    assert cols.embeddings.flags.c_contiguous
    np.testing.assert_array_equal(cols.embeddings, np.asarray([s.embedding for s in data], dtype=np.float32))
    assert cols.to_models() == [s.model_copy(update={"embedding": None}) for s in data]
    assert cols.to_models(with_embeddings=True) == data
    if fmt == "jsonl":  # the models held for naming keep no per-row Python floats: the matrix has the vectors
        assert cols._models is not None and all(m.embedding is None for m in cols._models)
    assert load_summary_columns(manager, "absent") is None


def test_hf_matrix_is_a_zero_copy_view_of_the_mapped_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from datasets import config

    defaults = config.DEFAULT_MAX_BATCH_SIZE, config.MAX_ROW_GROUP_SIZE
    data = summaries(2500, dim=64)  # more than save_to_disk's default record batch (1,000 rows): we write one
    manager = HFDatasetCheckpointManager(tmp_path)
    manager.save_checkpoint("summaries", data)
    assert "Saving the dataset" not in capsys.readouterr().err  # no progress bar in the logs
    assert (config.DEFAULT_MAX_BATCH_SIZE, config.MAX_ROW_GROUP_SIZE) == defaults  # restored after the save
    cols = load_summary_columns(manager, "summaries")
    assert cols.zero_copy and not cols.embeddings.flags.owndata and not cols.embeddings.flags.writeable
    np.testing.assert_array_equal(cols.embeddings, np.asarray([s.embedding for s in data], dtype=np.float32))
    assert datasets.load_from_disk(str(tmp_path / "summaries")).num_rows == 2500


def test_hf_matrix_from_many_record_batches_is_read_into_one_buffer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kura_dagster.checkpoints import hf

    monkeypatch.setattr(hf, "WRITER_BATCH_BYTES", 32 << 10)  # several record batches, as Kura's datasets have
    data = summaries(2500, dim=8)
    manager = HFDatasetCheckpointManager(tmp_path)
    manager.save_checkpoint("summaries", data)
    cols = load_summary_columns(manager, "summaries")
    assert not cols.zero_copy and cols.embeddings.flags.owndata and cols.embeddings.shape == (2500, 8)
    np.testing.assert_array_equal(cols.embeddings, np.asarray([s.embedding for s in data], dtype=np.float32))
    assert cols.chat_ids == [s.chat_id for s in data]


def test_parquet_matrix_is_filled_row_group_by_row_group(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kura_dagster.checkpoints import parquet

    monkeypatch.setattr(parquet, "TARGET_ROW_GROUP_BYTES", 32 << 10)
    data = summaries(2000, dim=32)
    manager = ParquetCheckpointManager(tmp_path)
    manager.save_checkpoint("summaries", data)
    cols = load_summary_columns(manager, "summaries")
    assert cols.embeddings.flags.owndata  # one preallocated matrix
    np.testing.assert_array_equal(cols.embeddings, np.asarray([s.embedding for s in data], dtype=np.float32))


@pytest.mark.parametrize("fmt", ["parquet", "hf"])
def test_missing_embeddings_are_refused_naming_the_file(fmt: str, tmp_path: Path) -> None:
    data = summaries(5)
    data[3] = data[3].model_copy(update={"embedding": None})
    manager = MANAGERS[fmt](tmp_path)
    manager.save_checkpoint("summaries", data)
    with pytest.raises(ValueError, match="1 summaries have no embedding") as err:
        load_summary_columns(manager, "summaries")
    assert str(tmp_path) in str(err.value)


# --- IO managers -------------------------------------------------------------------------------------------
def _source(shared_data: Path, tmp_path: Path, n: int = 120) -> ConversationSource:
    lines = (shared_data / "conversations.jsonl").read_text().splitlines()[:n]
    path = tmp_path / "conversations.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return ConversationSource(path=str(path))


def _run(io_manager: dg.ConfigurableIOManager, source: ConversationSource, tmp_path: Path) -> dg.ExecuteInProcessResult:
    return dg.materialize(kura_assets, resources={
        "io_manager": io_manager, "source": source,
        "kura": KuraPipelineResource(checkpoint_dir=str(tmp_path / "cache"), embedding_dims=64),
    })


def test_pipeline_through_parquet_and_hf_uses_the_columnar_path(
    shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = _source(shared_data, tmp_path)
    calls: list[str] = []
    real = columnar.load_summary_columns
    monkeypatch.setattr(columnar, "load_summary_columns",
                        lambda m, n, **kw: (calls.append((m.format_name, kw.get("columns"))), real(m, n, **kw))[1])
    results = {}
    for fmt, io in (("jsonl", JSONLIOManager(base_dir=str(tmp_path / "jsonl"))),
                    ("parquet", ParquetIOManager(base_dir=str(tmp_path / "parquet"), compression="zstd")),
                    ("hf", HFDatasetIOManager(base_dir=str(tmp_path / "hf")))):
        result = _run(io, source, tmp_path / fmt)
        assert result.success
        results[fmt] = result
    # clusters took the summaries as columns (embeddings included); meta_clusters (which groups on the base
    # clusters' mean member embeddings, stored by the clusters step) their chat ids only
    assert calls == [(f, c) for f in ("jsonl", "parquet", "hf") for c in (None, [])]
    clusters = {fmt: r.output_for_node("clusters") for fmt, r in results.items()}
    assert [c.model_dump() for c in clusters["parquet"]] == [c.model_dump() for c in clusters["jsonl"]]
    assert [c.model_dump() for c in clusters["hf"]] == [c.model_dump() for c in clusters["jsonl"]]
    assert (tmp_path / "parquet" / "summaries.parquet").is_file() and (tmp_path / "hf" / "summaries" / "state.json").is_file()
    assert (tmp_path / "parquet" / "dimensionality.parquet").is_file()

    md = results["parquet"].asset_materializations_for_node("summaries")[0].metadata
    assert md["dagster/row_count"].value == 120 and md["kura/format"].value == "parquet"
    assert md["kura/codec"].value == "zstd" and md["kura/bytes"].value == (tmp_path / "parquet" / "summaries.parquet").stat().st_size
    assert md["path"].value == str(tmp_path / "parquet" / "summaries.parquet")
    assert "embedding" in [c.name for c in md["dagster/column_schema"].schema.columns]
    assert len(md["preview"].records) == 5
    hf_md = results["hf"].asset_materializations_for_node("summaries")[0].metadata
    assert hf_md["kura/format"].value == "hf" and hf_md["kura/embedding_dtype"].value == "float32"


PARTS = dg.StaticPartitionsDefinition(["2024-01-01", "2024-01-02"])


@dg.asset(partitions_def=PARTS, metadata={"kura/model": "ConversationSummary"})
def daily_summaries(context: dg.AssetExecutionContext) -> list[ConversationSummary]:
    day = context.partition_key
    return [ConversationSummary(chat_id=f"{day}-{i}", summary=day, metadata={"day": day, "flag": i % 2 == 0},
                                embedding=[float(i), 0.5]) for i in range(3)]


@dg.asset(partitions_def=PARTS)
def daily_clusters(daily_summaries: list[ConversationSummary]) -> list[Cluster]:
    return [Cluster(name="n", description="d", slug="s", chat_ids=[s.chat_id for s in daily_summaries], parent_id=None)]


@dg.asset
def all_days(daily_summaries: dict[str, list[ConversationSummary]]) -> None:
    assert sorted(daily_summaries) == ["2024-01-01", "2024-01-02"]
    assert all(s.metadata["flag"] is (s.chat_id[-1] in "02") for v in daily_summaries.values() for s in v)


@pytest.mark.parametrize("fmt", ["parquet", "hf"])
def test_partitions(fmt: str, tmp_path: Path) -> None:
    io = (ParquetIOManager(base_dir=str(tmp_path)) if fmt == "parquet" else HFDatasetIOManager(base_dir=str(tmp_path)))
    for day in PARTS.get_partition_keys():
        assert dg.materialize([daily_summaries, daily_clusters], partition_key=day, resources={"io_manager": io}).success
    assert dg.materialize([daily_summaries, all_days], selection=[all_days], resources={"io_manager": io}).success
    ext = ".parquet" if fmt == "parquet" else ""
    manager = MANAGERS[fmt](tmp_path / "daily_clusters")
    assert manager.list_checkpoints() == ["2024-01-01", "2024-01-02"]
    assert manager.load_checkpoint("2024-01-02")[0].chat_ids == ["2024-01-02-0", "2024-01-02-1", "2024-01-02-2"]
    assert (tmp_path / "daily_summaries" / f"2024-01-01{ext}").exists()


def test_hf_io_manager_pushes_with_an_env_var_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    token = "hf_io_manager_SECRET"
    monkeypatch.setenv("HF_TOKEN", token)
    pushes: list[dict[str, Any]] = []

    def push_to_hub(dataset: datasets.Dataset, repo_id: str, **kwargs: Any) -> None:
        pushes.append({"repo_id": repo_id, **kwargs})
        if len(pushes) > 1:
            raise RuntimeError(f"hub is down (token {token})")

    monkeypatch.setattr(datasets.Dataset, "push_to_hub", push_to_hub)
    io = HFDatasetIOManager(base_dir=str(tmp_path), hub_repo="org/kura", hub_token=dg.EnvVar("HF_TOKEN"))
    result = dg.materialize([daily_summaries, daily_clusters], partition_key="2024-01-01", resources={"io_manager": io})
    assert result.success  # the second push failed, and the run did not
    assert [p["token"] for p in pushes] == [token, token]
    md = {e.materialization.asset_key.to_user_string(): e.materialization.metadata
          for e in result.get_asset_materialization_events()}
    assert md["daily_summaries"]["kura/hub_push"].value == "ok"
    assert md["daily_clusters"]["kura/hub_push"].value.startswith("failed: RuntimeError: hub is down")
    everything = json.dumps({k: {kk: str(vv.value) for kk, vv in v.items()} for k, v in md.items()})
    assert token not in everything
    assert HFDatasetCheckpointManager(tmp_path / "daily_clusters").load_checkpoint("2024-01-01")[0].count == 3


@pytest.mark.parametrize("fmt", ["parquet", "hf"])
def test_damaged_embeddings_are_caught_on_the_columnar_path(fmt: str, tmp_path: Path) -> None:
    from kura_dagster.checkpoints import CheckpointCorruptError

    manager = MANAGERS[fmt](tmp_path)
    manager.save_checkpoint("summaries", summaries(2500, dim=8))
    target = tmp_path / "summaries.parquet" if fmt == "parquet" else tmp_path / "summaries" / "data-00000-of-00001.arrow"
    raw = bytearray(target.read_bytes())
    middle = len(raw) // 2  # HF: the whole data file is hashed while it is streamed
    if fmt == "parquet":  # Parquet: the page CRCs of the embedding column, which is what this path decodes
        import pyarrow.parquet as pq

        group = pq.ParquetFile(target).metadata.row_group(0)
        chunk = next(group.column(i) for i in range(group.num_columns)
                     if group.column(i).path_in_schema.startswith("embedding"))
        middle = chunk.data_page_offset + chunk.total_compressed_size // 2
    raw[middle] ^= 0x10
    target.write_bytes(bytes(raw))
    with pytest.raises(CheckpointCorruptError) as err:
        load_summary_columns(manager, "summaries")
    assert str(target) in str(err.value)
