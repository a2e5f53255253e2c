"""Asset checks: Kura's own checkpoints pass them, each invariant catches its breakage, and a failing
blocking check keeps the assets downstream of it from being materialized."""

from __future__ import annotations

import math
from pathlib import Path

import dagster as dg
import pytest

from kura_dagster.orchestration.assets import kura_assets, summaries
from kura_dagster.orchestration.checks import (
    base_cluster_problems,
    kura_checks,
    meta_tree_problems,
    projection_problems,
    summary_problems,
)
from kura_dagster.io_managers import JSONLIOManager
from kura_dagster.pipeline.models.local import LocalEmbeddingModel, LocalSummaryModel
from kura_dagster.pipeline.summarise import summarise_conversations
from kura_dagster.orchestration.resources import ConversationSource, KuraPipelineResource
from kura_dagster.types import Cluster, Conversation, ConversationSummary, Message, ProjectedCluster


def _load(model, path: Path) -> list:
    return [model.model_validate_json(line) for line in path.read_text().splitlines() if line.strip()]


def _conv(chat_id: str) -> Conversation:
    return Conversation(chat_id=chat_id, created_at="2026-01-01T00:00:00Z", metadata={},
                        messages=[Message(role="user", content="hi", created_at="2026-01-01T00:00:00Z")])


def _summary(chat_id: str) -> ConversationSummary:
    return ConversationSummary(chat_id=chat_id, summary="s", metadata={})


def _cluster(cid: str, chats: list[str], parent: str | None = None) -> Cluster:
    return Cluster(id=cid, name=cid, description="d", slug="a_b_c", chat_ids=chats, parent_id=parent)


def _tree() -> list[Cluster]:
    """p = a ∪ b; c stays a root."""
    return [_cluster("p", ["1", "2", "3"]), _cluster("a", ["1", "2"], "p"), _cluster("b", ["3"], "p"),
            _cluster("c", ["4", "5"])]


def _projected(clusters: list[Cluster], levels: dict[str, int]) -> list[ProjectedCluster]:
    return [ProjectedCluster(**c.model_dump(exclude={"count"}), x_coord=float(i), y_coord=-float(i), level=levels[c.id])
            for i, c in enumerate(clusters)]


# --- the invariants on Kura's own output ------------------------------------------------------------------


def test_kuras_own_checkpoints_pass_every_check(shared_data: Path) -> None:
    conversations = _load(Conversation, shared_data / "conversations.jsonl")
    summaries_ = _load(ConversationSummary, shared_data / "summaries.jsonl")
    clusters = _load(Cluster, shared_data / "clusters.jsonl")
    meta = _load(Cluster, shared_data / "meta_clusters.jsonl")
    projected = _load(ProjectedCluster, shared_data / "dimensionality.jsonl")
    assert summary_problems(conversations, summaries_) == []
    assert base_cluster_problems([s.chat_id for s in summaries_], clusters) == []
    assert meta_tree_problems(meta, max_clusters=10) == []
    assert projection_problems(projected, meta) == []
    # …and the root budget is really enforced on them: Kura made 6 roots.
    assert meta_tree_problems(meta, max_clusters=5) == ["6 root clusters, more than max_clusters=5"]


# --- each invariant, broken on purpose --------------------------------------------------------------------


def test_summary_problems_name_missing_orphaned_and_duplicated_summaries() -> None:
    convs = [_conv(i) for i in "abc"]
    assert summary_problems(convs, [_summary(i) for i in "abc"]) == []
    problems = summary_problems(convs, [_summary("a"), _summary("a"), _summary("b"), _summary("zz")])
    assert problems == [
        "1 conversation(s) have no summary: 'c'",
        "1 summary(ies) belong to no conversation (orphans): 'zz'",
        "1 conversation(s) have more than one summary: 'a'",
    ]


def test_base_cluster_problems_name_every_kind_of_breakage() -> None:
    ids = ["1", "2", "3", "4"]
    assert base_cluster_problems(ids, [_cluster("x", ["1", "2"]), _cluster("y", ["3", "4"])]) == []
    problems = base_cluster_problems(
        ids, [_cluster("x", ["1", "2"]), _cluster("y", ["2", "9"]), _cluster("e", []), _cluster("z", ["1"], "x")]
    )
    text = "\n".join(problems)
    assert "1 cluster(s) have no conversations: 'e'" in text
    assert "1 base cluster(s) already have a parent_id: 'z'" in text
    assert "2 summary(ies) are in no base cluster: '3', '4'" in text
    assert "2 summary(ies) are in more than one base cluster: '1', '2'" in text
    assert "1 chat_id(s) in clusters have no summary: '9'" in text


def test_meta_tree_problems() -> None:
    assert meta_tree_problems(_tree(), max_clusters=2) == []
    assert meta_tree_problems(_tree(), max_clusters=1) == ["2 root clusters, more than max_clusters=1"]

    missing_parent = _tree()[1:] + [_cluster("q", ["9"], "nowhere")]
    assert any("parent id(s) do not exist: 'nowhere'" in p for p in meta_tree_problems(missing_parent))

    cycle = [_cluster("x", ["1"], "y"), _cluster("y", ["1"], "x"), _cluster("r", ["2"])]
    assert "2 cluster(s) are part of a parent cycle: 'x', 'y'" in meta_tree_problems(cycle)

    not_union = _tree()
    not_union[0] = _cluster("p", ["1", "2", "3", "7"])
    assert any(p.startswith("cluster 'p': chat_ids are not the union of its 2 children's") and "'7'" in p
               for p in meta_tree_problems(not_union))

    shared = _tree()
    shared[2] = _cluster("b", ["2", "3"], "p")
    assert "cluster 'p': 1 chat_id(s) are under more than one child: '2'" in meta_tree_problems(shared)


def test_projection_problems() -> None:
    tree = _tree()
    good = _projected(tree, {"p": 0, "a": 1, "b": 1, "c": 0})
    assert projection_problems(good, tree) == []

    bad = [p.model_copy() for p in good]
    bad[0] = bad[0].model_copy(update={"x_coord": math.nan})
    bad[1] = bad[1].model_copy(update={"y_coord": math.inf})
    bad[2] = bad[2].model_copy(update={"level": 0})
    problems = projection_problems(bad[:3], tree)
    assert "2 cluster(s) have non-finite coordinates: 'p', 'a'" in problems
    assert "1 cluster(s) have an inconsistent level: b (level 0, expected 1)" in problems
    assert "1 meta cluster(s) are not projected: 'c'" in problems
    orphan = _projected([_cluster("o", ["1"], "gone")], {"o": 1})
    assert "cluster 'o': parent 'gone' is not in the projection" in projection_problems(orphan)


# --- in Dagster: real runs --------------------------------------------------------------------------------


def _resources(tmp_path: Path) -> dict:
    return {
        "io_manager": JSONLIOManager(base_dir=str(tmp_path / "checkpoints")),
        "kura": KuraPipelineResource(checkpoint_dir=str(tmp_path / "cache"), clusters_per_group=4, max_clusters=3,
                                     min_conversations=4),  # groups of ~4: most are shown, so the tree has depth
        "source": ConversationSource(demo_size=40),
    }


def test_a_real_run_passes_every_check_and_records_numeric_metadata(tmp_path: Path) -> None:
    with dg.instance_for_test() as instance:
        result = dg.materialize([*kura_assets, *kura_checks], resources=_resources(tmp_path), instance=instance)
    assert result.success
    metadata = {e.asset_key.to_user_string(): e.materialization.metadata for e in result.get_asset_materialization_events()}
    numbers = {"clusters": ["clusters", "min_cluster_size", "median_cluster_size", "max_cluster_size"],
               "meta_clusters": ["clusters", "root_clusters", "tree_depth"],
               "projected_clusters": ["clusters", "max_level", "cluster_map_bytes"]}
    for asset, keys in numbers.items():  # numbers, so that the UI plots them across materializations
        for key in keys:
            assert isinstance(metadata[asset][key], (dg.IntMetadataValue, dg.FloatMetadataValue)), (asset, key)
    assert metadata["meta_clusters"]["root_clusters"].value <= 3 < metadata["meta_clusters"]["clusters"].value
    assert metadata["projected_clusters"]["cluster_map"].value.startswith("![Cluster map](data:image/png;base64,")
    assert metadata["clusters"]["kura/settings"].value["clusters_per_group"] == 4
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert set(evaluations) == {"summaries_cover_conversations", "every_summary_in_one_cluster",
                                "meta_tree_well_formed", "projections_consistent",
                                "clusters_meet_privacy_thresholds", "meta_clusters_meet_privacy_thresholds"}
    for e in evaluations.values():
        assert e.passed, (e.check_name, e.metadata)
        assert e.metadata["problems"].value == 0
    assert evaluations["summaries_cover_conversations"].metadata["conversations"].value == 40
    assert evaluations["meta_tree_well_formed"].metadata["roots"].value <= 3


def test_a_failing_blocking_check_stops_everything_downstream(tmp_path: Path) -> None:
    """A summaries stage that loses a conversation: its blocking check fails, and no cluster is built on it."""

    @dg.asset(name="summaries", group_name="kura", metadata=dict(summaries.specs_by_key[summaries.key].metadata))
    def lossy_summaries(kura: KuraPipelineResource, conversations: list[Conversation]) -> list[ConversationSummary]:
        return summarise_conversations(conversations[1:], LocalSummaryModel(), LocalEmbeddingModel(dims=kura.embedding_dims))

    assets = [lossy_summaries if a.key == summaries.key else a for a in kura_assets]
    with dg.instance_for_test() as instance:
        result = dg.materialize([*assets, *kura_checks], resources=_resources(tmp_path), instance=instance,
                                raise_on_error=False)
    assert not result.success
    materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert materialized == {"conversations", "summaries"}, "nothing downstream of the failed check ran"
    [evaluation] = result.get_asset_check_evaluations()
    assert evaluation.check_name == "summaries_cover_conversations" and not evaluation.passed
    assert evaluation.metadata["problems"].value == 1
    assert "1 conversation(s) have no summary: 'demo-00000'" in evaluation.metadata["details"].value
    assert not (tmp_path / "checkpoints" / "clusters.jsonl").exists()


@pytest.mark.parametrize("check", kura_checks, ids=lambda c: next(iter(c.check_keys)).name)
def test_checks_that_guard_downstream_assets_are_blocking(check: dg.AssetChecksDefinition) -> None:
    [spec] = check.check_specs
    assert spec.blocking == (spec.asset_key.to_user_string() != "projected_clusters")
