"""Layer 3, JSONL: paths, partitions, model resolution and metadata through real Dagster runs."""


import dagster as dg
import pytest

from kura_dagster.checkpoints import JSONLCheckpointManager
from kura_dagster.io_managers import JSONLIOManager
from kura_dagster.types import ConversationSummary


def _summary(i: int) -> ConversationSummary:
    return ConversationSummary(summary=f"s{i}", chat_id=f"c{i}", metadata={"i": i}, embedding=[0.1 * i, 1.0])


def test_outputs_are_kura_checkpoints_with_metadata(tmp_path):
    @dg.asset(metadata={"kura/checkpoint_name": "dimensionality"})
    def projected() -> list[ConversationSummary]:
        return [_summary(i) for i in range(3)]

    @dg.asset
    def downstream(projected: list[ConversationSummary]) -> list[ConversationSummary]:
        return projected[:1]

    result = dg.materialize([projected, downstream], resources={"io_manager": JSONLIOManager(base_dir=str(tmp_path))})
    assert result.success
    assert JSONLCheckpointManager(tmp_path).load_checkpoint("dimensionality", ConversationSummary) == [
        _summary(i) for i in range(3)]
    md = result.asset_materializations_for_node("projected")[0].metadata
    assert md["dagster/row_count"].value == 3
    assert md["kura/bytes"].value == (tmp_path / "dimensionality.jsonl").stat().st_size
    assert md["path"].value.endswith("dimensionality.jsonl")
    assert [c.name for c in md["dagster/column_schema"].schema.columns][:2] == ["summary", "request"]
    assert len(md["preview"].records) == 3
    assert md["kura/checksum"].value.startswith("xxh3_128:")  # the JSONL sidecar's checksum (SHA-256 before)


def test_downstream_run_loads_from_disk_without_annotations(tmp_path):
    """A later run loads the upstream from its file: the model comes from kura/model metadata or the sidecar."""

    @dg.asset(metadata={"kura/model": "kura_dagster.types.summarisation.ConversationSummary"})
    def up() -> list[ConversationSummary]:
        return [_summary(i) for i in range(4)]

    seen = {}

    @dg.asset
    def down(up):  # no annotation at all
        seen["types"] = {type(x) for x in up}
        return None

    io = JSONLIOManager(base_dir=str(tmp_path))
    assert dg.materialize([up], resources={"io_manager": io}).success
    assert dg.materialize([up, down], selection=[down], resources={"io_manager": io}).success
    assert seen["types"] == {ConversationSummary}


def test_partitions_get_one_file_each_and_load_as_a_dict(tmp_path):
    parts = dg.StaticPartitionsDefinition(["2026-01-01", "2026-01-02"])

    @dg.asset(partitions_def=parts)
    def daily(context: dg.AssetExecutionContext) -> list[ConversationSummary]:
        return [_summary(int(context.partition_key[-1]))]

    @dg.asset
    def combined(daily: dict[str, list[ConversationSummary]]) -> list[ConversationSummary]:
        return [s for k in sorted(daily) for s in daily[k]]

    io = JSONLIOManager(base_dir=str(tmp_path))
    for key in parts.get_partition_keys():
        assert dg.materialize([daily], partition_key=key, resources={"io_manager": io}).success
    assert sorted(p.name for p in (tmp_path / "daily").glob("*.jsonl")) == ["2026-01-01.jsonl", "2026-01-02.jsonl"]
    result = dg.materialize([daily, combined], selection=[combined], resources={"io_manager": io})
    assert [s.chat_id for s in result.output_for_node("combined")] == ["c1", "c2"]


def test_partition_keys_that_escape_are_refused(tmp_path):
    parts = dg.StaticPartitionsDefinition(["..", "ok"])

    @dg.asset(partitions_def=parts)
    def part() -> list[ConversationSummary]:
        return [_summary(1)]

    io = JSONLIOManager(base_dir=str(tmp_path / "base"))
    with pytest.raises(Exception, match="Invalid partition key"):
        dg.materialize([part], partition_key="..", resources={"io_manager": io})
    assert not list(tmp_path.rglob("*.jsonl"))


def test_missing_upstream_gives_an_actionable_error(tmp_path):
    @dg.asset
    def never_run() -> list[ConversationSummary]:
        return []

    @dg.asset
    def needs(never_run: list[ConversationSummary]) -> None:
        return None

    io = JSONLIOManager(base_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="materialize it first"):
        dg.materialize([never_run, needs], selection=[needs], resources={"io_manager": io})


def test_disabled_io_manager_warns_and_refuses_to_load(tmp_path):
    @dg.asset
    def out() -> list[ConversationSummary]:
        return [_summary(1)]

    result = dg.materialize([out], resources={"io_manager": JSONLIOManager(base_dir=str(tmp_path), enabled=False)})
    assert result.success
    assert result.asset_materializations_for_node("out")[0].metadata["kura/persisted"].value is False
    assert not list(tmp_path.iterdir())


def test_memory_base_dir(tmp_path):
    @dg.asset
    def mem() -> list[ConversationSummary]:
        return [_summary(1), _summary(2)]

    @dg.asset
    def mem_down(mem: list[ConversationSummary]) -> list[ConversationSummary]:
        return mem

    result = dg.materialize([mem, mem_down], resources={"io_manager": JSONLIOManager(base_dir="memory://kd-io/base")})
    assert result.output_for_node("mem_down") == [_summary(1), _summary(2)]
    assert JSONLCheckpointManager("memory://kd-io/base").list_checkpoints() == ["mem", "mem_down"]
