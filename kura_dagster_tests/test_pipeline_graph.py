"""The whole asset graph: in-process on the demo and the shared data, and through the CLI."""

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from kura_dagster.orchestration.assets import kura_assets
from kura_dagster.checkpoints import JSONLCheckpointManager
from kura_dagster.io_managers import JSONLIOManager
from kura_dagster.orchestration.resources import ConversationSource, KuraPipelineResource
from kura_dagster.types import Cluster, Conversation, ConversationSummary, ProjectedCluster

KURA_FILES = {
    "conversations": Conversation,
    "summaries": ConversationSummary,
    "clusters": Cluster,
    "meta_clusters": Cluster,
    "dimensionality": ProjectedCluster,
}


def _resources(tmp_path: Path, source: ConversationSource) -> dict:
    return {
        "io_manager": JSONLIOManager(base_dir=str(tmp_path / "checkpoints")),
        "kura": KuraPipelineResource(checkpoint_dir=str(tmp_path / "checkpoints")),
        "source": source,
    }


def _check_kura_files(directory: Path) -> dict[str, list]:
    loaded = {}
    for name, model in KURA_FILES.items():
        path = directory / f"{name}.jsonl"
        assert path.exists(), path
        # Read the way Kura reads: one model_validate_json per line.
        loaded[name] = [model.model_validate_json(line) for line in path.read_text().splitlines()]
        assert loaded[name], name
    convs, summaries = loaded["conversations"], loaded["summaries"]
    assert [s.chat_id for s in summaries] == [c.chat_id for c in convs]
    base_ids = sorted(cid for c in loaded["clusters"] for cid in c.chat_ids)
    assert base_ids == sorted(c.chat_id for c in convs)
    meta_ids = {c.id for c in loaded["meta_clusters"]}
    assert {c.id for c in loaded["clusters"]} <= meta_ids
    assert {c.id for c in loaded["dimensionality"]} == meta_ids
    roots = [c for c in loaded["meta_clusters"] if c.parent_id is None]
    assert 1 <= len(roots) <= 10
    return loaded


def test_materialize_all_on_demo_data(tmp_path):
    result = dg.materialize(kura_assets, resources=_resources(tmp_path, ConversationSource()))
    assert result.success
    loaded = _check_kura_files(tmp_path / "checkpoints")
    assert len(loaded["conversations"]) == ConversationSource().demo_size
    keys = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert keys == {"conversations", "summaries", "clusters", "meta_clusters", "projected_clusters"}


def test_materialize_all_on_shared_kura_data(tmp_path, shared_data):
    source = ConversationSource(path=str(shared_data / "conversations.jsonl"))
    assert dg.materialize(kura_assets, resources=_resources(tmp_path, source)).success
    loaded = _check_kura_files(tmp_path / "checkpoints")
    assert len(loaded["summaries"]) == 1000
    assert loaded["conversations"] == JSONLCheckpointManager(shared_data).load_checkpoint("conversations", Conversation)


def test_lineage_is_in_order():
    from kura_dagster.definitions import defs

    graph = defs.resolve_asset_graph()
    order = ["conversations", "summaries", "clusters", "meta_clusters", "projected_clusters"]
    also = {"meta_clusters": {"summaries"}}  # meta clusters are formed in the summaries' embedding space
    for up, down in zip(order, order[1:]):
        assert graph.get(dg.AssetKey(down)).parent_keys == {dg.AssetKey(k) for k in {up, *also.get(down, ())}}
    assert {graph.get(dg.AssetKey(k)).group_name for k in order} == {"kura"}


@pytest.mark.slow
def test_cli_materializes_every_asset(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("KURA_")}
    env["DAGSTER_HOME"] = str(tmp_path / "home")
    (tmp_path / "home").mkdir()
    cli = Path(sys.executable).parent / "dagster"
    proc = subprocess.run(
        [str(cli), "asset", "materialize", "-m", "kura_dagster.definitions", "--select", "*"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "RUN_SUCCESS" in proc.stderr + proc.stdout
    _check_kura_files(tmp_path / "checkpoints")
