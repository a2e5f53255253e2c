"""build_kura_defs and KuraPipelineComponent: Kura inside someone else's Dagster project, several times over."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import dagster as dg
import pytest

from kura_dagster import build_kura_defs
from kura_dagster.orchestration.factory import upstream_key
from kura_dagster.pipeline.demo_data import demo_conversations
from kura_dagster.types import Cluster, Conversation, ConversationSummary, ProjectedCluster

SAMPLE_PROJECT = Path(__file__).parent / "sample_project"
STAGES = ["conversations", "summaries", "clusters", "meta_clusters", "projected_clusters"]
KURA_FILES = {"conversations": Conversation, "summaries": ConversationSummary, "clusters": Cluster,
              "meta_clusters": Cluster, "dimensionality": ProjectedCluster}


def _rows(n: int) -> list[dict]:
    """The project's own rows, in its own column names (id, ts, turns), from the demo conversations."""
    return [
        {"id": c.chat_id, "ts": c.created_at.isoformat(), "plan": "pro" if i % 2 else "free",
         "turns": [m.model_dump(mode="json") for m in c.messages]}
        for i, c in enumerate(demo_conversations(n))
    ]


@dg.asset(io_manager_key="warehouse_io_manager")
def raw_chats() -> list[dict]:
    return _rows(30)


def _write_jsonl(path: Path, conversations: list[Conversation]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(c.model_dump_json() + "\n" for c in conversations))


def _user_defs() -> dg.Definitions:
    return dg.Definitions(
        assets=[raw_chats],
        resources={"io_manager": dg.InMemoryIOManager(), "warehouse_io_manager": dg.InMemoryIOManager()},
    )


def _two_pipelines(tmp_path: Path) -> dg.Definitions:
    convs = demo_conversations(60)
    _write_jsonl(tmp_path / "sales" / "a.jsonl", convs[:30])
    _write_jsonl(tmp_path / "sales" / "b.jsonl", convs[30:])
    return dg.Definitions.merge(
        _user_defs(),
        build_kura_defs("support", conversations=dg.AssetKey("raw_chats"),
                        column_map={"chat_id": "id", "created_at": "ts", "messages": "turns"},
                        checkpoint_dir=str(tmp_path / "ck" / "support"), clusters_per_group=5),
        build_kura_defs("sales", conversations=str(tmp_path / "sales" / "*.jsonl"), formats=["jsonl", "parquet"],
                        checkpoint_dir=str(tmp_path / "ck" / "sales"), max_clusters=4, schedule_cron="0 4 * * *"),
    )


def _materialize(defs: dg.Definitions, prefix: str, instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    """Materialize one pipeline's group (and the project's raw_chats, which the support pipeline reads)."""
    assets = [a for a in defs.assets if isinstance(a, dg.AssetsDefinition)] + list(defs.asset_checks or [])
    selection = dg.AssetSelection.groups(prefix)
    if prefix == "support":
        selection = selection | dg.AssetSelection.assets("raw_chats")
    return dg.materialize(assets, selection=selection, resources=defs.resources, instance=instance)


def _kura_dir_ok(directory: Path, expected_conversations: int) -> None:
    """The directory reads as Kura reads any checkpoint directory: its file names, one model per line."""
    loaded = {}
    for name, model in KURA_FILES.items():
        lines = (directory / f"{name}.jsonl").read_text().splitlines()
        loaded[name] = [model.model_validate_json(line) for line in lines]
    assert len(loaded["conversations"]) == expected_conversations
    assert sorted(s.chat_id for s in loaded["summaries"]) == sorted(c.chat_id for c in loaded["conversations"])
    assert sorted(cid for c in loaded["clusters"] for cid in c.chat_ids) == sorted(
        c.chat_id for c in loaded["conversations"])


def test_names_are_namespaced_and_merge_without_collision(tmp_path):
    defs = _two_pipelines(tmp_path)
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert keys == {"raw_chats", *(f"{p}/{s}" for p in ("support", "sales") for s in (*STAGES, "cluster_facets", "cluster_growth"))}
    for prefix in ("support", "sales"):
        for stage in STAGES:
            node = graph.get(dg.AssetKey([prefix, stage]))
            assert node.group_name == prefix
    # The project's own io_manager is left alone; each pipeline has its own resources.
    assert isinstance(defs.resources["io_manager"], dg.InMemoryIOManager)
    assert {"support_kura", "support_source", "support_io_manager", "sales_kura", "sales_source",
            "sales_io_manager"} <= set(defs.resources)
    job_names = {j.name for j in defs.jobs}
    assert {"support_job", "sales_job", "support_migrate_checkpoints_job", "sales_checkpoint_storage_job",
            "support_rebuild_taxonomy", "sales_rebuild_taxonomy"} <= job_names
    assert [s.name for s in defs.schedules] == ["sales_stale_refresh"]
    assert {s.name for s in defs.sensors} == {"sales_conversations_changed"}  # an asset source has no file to watch
    # Lineage: the project's asset is upstream of support/conversations.
    assert graph.get(dg.AssetKey(["support", "conversations"])).parent_keys == {dg.AssetKey("raw_chats")}
    checks = {(k.asset_key.to_user_string(), k.name) for k in defs.resolve_asset_graph().asset_check_keys}
    assert ("support/summaries", "summaries_cover_conversations") in checks
    assert ("sales/meta_clusters", "meta_tree_well_formed") in checks
    defs.resolve_all_job_defs()  # the whole location validates


def test_both_pipelines_materialize_into_kura_directories(tmp_path):
    defs = _two_pipelines(tmp_path)
    with dg.instance_for_test() as instance:
        for prefix in ("support", "sales"):
            result = _materialize(defs, prefix, instance)
            assert result.success
            evaluations = result.get_asset_check_evaluations()
            # 4 + 2 privacy thresholds + cluster_growth's no_growth_spike
            assert len(evaluations) == 7 and all(e.passed for e in evaluations)
    _kura_dir_ok(tmp_path / "ck" / "support", 30)
    _kura_dir_ok(tmp_path / "ck" / "sales", 60)
    assert (tmp_path / "ck" / "sales" / "summaries.parquet").exists()  # formats=["jsonl", "parquet"]
    assert not (tmp_path / "ck" / "support" / "summaries.parquet").exists()
    # column_map carried the project's columns into Kura's fields; other columns become metadata.
    convs = [Conversation.model_validate_json(line)
             for line in (tmp_path / "ck" / "support" / "conversations.jsonl").read_text().splitlines()]
    assert {c.chat_id for c in convs} == {r["id"] for r in _rows(30)}


def test_upstream_change_marks_kura_stale(tmp_path):
    from dagster._core.definitions.data_version import StaleStatus
    from dagster._utils.test.data_versions import get_stale_status_resolver

    defs = _two_pipelines(tmp_path)
    support = [a for a in defs.assets if isinstance(a, dg.AssetsDefinition) and a.key.path[0] == "support"]
    with dg.instance_for_test() as instance:
        assert dg.materialize([raw_chats, *support], resources=defs.resources, instance=instance).success
        status = get_stale_status_resolver(instance, [raw_chats, *support])
        assert status.get_status(dg.AssetKey(["support", "conversations"])) == StaleStatus.FRESH
        # A new materialization of the project's asset (new data version) makes Kura's conversations stale.
        dg.materialize([raw_chats], resources=defs.resources, instance=instance)
        status = get_stale_status_resolver(instance, [raw_chats, *support])
        assert status.get_status(dg.AssetKey(["support", "conversations"])) == StaleStatus.STALE


def test_settings_are_validated_and_reach_the_resources(tmp_path):
    defs = build_kura_defs("team_a", checkpoint_dir=str(tmp_path), seed=3, embedding_dims=64, demo_size=12)
    assert defs.resources["team_a_kura"].seed == 3 and defs.resources["team_a_kura"].embedding_dims == 64
    assert defs.resources["team_a_source"].demo_size == 12
    with pytest.raises(TypeError, match="unknown setting 'clusters_per_grop'.*clusters_per_group"):
        build_kura_defs("team_a", clusters_per_grop=3)
    with pytest.raises(ValueError, match="key_prefix 'bad prefix'"):
        build_kura_defs("bad prefix")
    with pytest.raises(ValueError, match="Unknown checkpoint format"):
        build_kura_defs("team_a", formats=["csv"])
    with pytest.raises(ValueError, match="2 assets"):
        @dg.multi_asset(specs=[dg.AssetSpec("x"), dg.AssetSpec("y")])
        def two():
            ...

        upstream_key(two)


def test_default_checkpoint_dir_is_under_kura_checkpoint_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("KURA_CHECKPOINT_DIR", str(tmp_path / "root"))
    defs = build_kura_defs("support")
    assert defs.resources["support_kura"].checkpoint_dir == str(tmp_path / "root" / "support")
    assert defs.resources["support_io_manager"].base_dir == str(tmp_path / "root" / "support")
    monkeypatch.setenv("KURA_CHECKPOINT_DIR", "s3://bucket/kura")  # a URL stays a URL
    assert build_kura_defs("support").resources["support_kura"].checkpoint_dir == "s3://bucket/kura/support"


def test_settings_shape_code_versions_per_pipeline(tmp_path):
    a = build_kura_defs("a", checkpoint_dir=str(tmp_path / "a"), clusters_per_group=5)
    b = build_kura_defs("b", checkpoint_dir=str(tmp_path / "b"), clusters_per_group=6)

    def versions(defs, prefix):
        graph = defs.resolve_asset_graph()
        return {s: graph.get(dg.AssetKey([prefix, s])).code_version for s in STAGES}

    va, vb = versions(a, "a"), versions(b, "b")
    # clusters_per_group shapes clusters and everything after it, not conversations or summaries.
    assert va["conversations"] == vb["conversations"] and va["summaries"] == vb["summaries"]
    assert all(va[s] != vb[s] for s in ("clusters", "meta_clusters", "projected_clusters"))


def test_component_project_loads_and_materializes(tmp_path, monkeypatch):
    monkeypatch.setenv("KURA_CHECKPOINT_DIR", str(tmp_path / "ck"))
    monkeypatch.syspath_prepend(str(SAMPLE_PROJECT))
    for name in [m for m in sys.modules if m == "chat_analytics" or m.startswith("chat_analytics.")]:
        monkeypatch.delitem(sys.modules, name)  # an earlier test's temporary project of the same package name
    defs = dg.load_from_defs_folder(path_within_project=SAMPLE_PROJECT)
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert keys == {"raw_chats", *(f"{p}/{s}" for p in ("support", "sales") for s in (*STAGES, "cluster_facets", "cluster_growth"))}
    assert graph.get(dg.AssetKey(["support", "conversations"])).parent_keys == {dg.AssetKey("raw_chats")}
    with dg.instance_for_test() as instance:
        for prefix in ("support", "sales"):
            assert _materialize(defs, prefix, instance).success
    _kura_dir_ok(tmp_path / "ck" / "support", 24)
    _kura_dir_ok(tmp_path / "ck" / "sales", 40)
    assert (tmp_path / "ck" / "support" / "summaries.parquet").exists()  # formats: [jsonl, parquet]
    # settings in defs.yaml reach the pipeline: sales has max_clusters: 3, support clusters_per_group: 4
    meta = [json.loads(line) for line in (tmp_path / "ck" / "sales" / "meta_clusters.jsonl").read_text().splitlines()]
    assert 1 <= sum(m["parent_id"] is None for m in meta) <= 3
    assert defs.resources["support_kura"].clusters_per_group == 4 and defs.resources["sales_kura"].max_clusters == 3
