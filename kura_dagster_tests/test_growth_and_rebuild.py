"""Issue 19 items 3 (rebuild on purpose, the Dagster side) and 4 (what is new and growing).

The growth table is checked against counts written by hand for conversations dated near midnight in zones
other than UTC (New York, Tokyo, Paris, naive = UTC), on clusters written by hand into the checkpoint folder,
so the counts do not depend on k-means. The rebuild job runs on the demo data after a normal run."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import dagster as dg
import pytest

from kura_dagster.orchestration.factory import build_kura_defs
from kura_dagster.types import Cluster, Conversation, Message

# chat_id, created_at, cluster, the UTC day worked out by hand
CORPUS = [
    ("a1", "2026-01-09T19:30:00-05:00", "a", "2026-01-10"),  # New York evening: already the 10th in UTC
    ("a2", "2026-01-12T08:30:00+09:00", "a", "2026-01-11"),  # Tokyo morning: still the 11th in UTC
    ("a3", "2026-01-11T23:59:00-05:00", "a", "2026-01-12"),
    ("a4", "2026-01-13T00:05:00+00:00", "a", "2026-01-13"),
    ("a5", "2026-01-12T21:00:00-05:00", "a", "2026-01-13"),
    ("a6", "2026-01-14T08:59:00+09:00", "a", "2026-01-13"),
    ("b1", "2026-01-10T23:30:00+01:00", "b", "2026-01-10"),  # Paris, half an hour before midnight: 22:30 UTC
    ("b2", "2026-01-10T12:00:00", "b", "2026-01-10"),        # naive: taken as UTC, as Kura writes them
    ("b3", "2026-01-13T07:00:00+09:00", "b", "2026-01-12"),
    ("b4", "2026-01-13T18:00:00-05:00", "b", "2026-01-13"),
    ("c1", "2026-01-13T10:00:00Z", "c", "2026-01-13"),
    ("c2", "2026-01-13T10:05:00Z", "c", "2026-01-13"),
    ("c3", "2026-01-13T10:10:00Z", "c", "2026-01-13"),
]
SPIKE = ("a7", "2026-01-13T12:00:00-05:00", "a", "2026-01-13")
"""With it cluster a has 4 conversations on the 13th against 1 a day on the three days before: 4 > 3 × 1."""
NAMES = {"a": "Billing disputes", "b": "Password resets", "c": "Travel refunds"}
# cluster → {UTC day: conversations}, by hand from the days above (without the spike)
EXPECTED = {
    "a": {"2026-01-10": 1, "2026-01-11": 1, "2026-01-12": 1, "2026-01-13": 3},
    "b": {"2026-01-10": 2, "2026-01-12": 1, "2026-01-13": 1},
    "c": {"2026-01-13": 3},
}


def _write_checkpoints(directory: Path, corpus: list[tuple[str, str, str, str]]) -> None:
    """Kura's conversations.jsonl and clusters.jsonl for ``corpus``, as a finished clusters run leaves them."""
    directory.mkdir(parents=True, exist_ok=True)
    convs = [Conversation(chat_id=cid, created_at=datetime.fromisoformat(ts.replace("Z", "+00:00")),
                          messages=[Message(role="user", content=f"question {cid}",
                                            created_at=datetime.fromisoformat(ts.replace("Z", "+00:00")))],
                          metadata={}) for cid, ts, _, _ in corpus]
    (directory / "conversations.jsonl").write_text("".join(c.model_dump_json() + "\n" for c in convs))
    clusters = [Cluster(id=f"cluster-{k}", name=NAMES[k], description=f"{NAMES[k]}.", slug=k,
                        chat_ids=[cid for cid, _, c, _ in corpus if c == k], parent_id=None) for k in NAMES]
    (directory / "clusters.jsonl").write_text("".join(c.model_dump_json() + "\n" for c in clusters))


def _growth_run(tmp_path: Path, corpus: list) -> tuple[dg.ExecuteInProcessResult, dict]:
    ck = tmp_path / "ck"
    _write_checkpoints(ck, corpus)
    defs = build_kura_defs("support", checkpoint_dir=str(ck), sensor=False, growth_window=3,
                           growth_alert_factor=3.0, growth_alert_min_conversations=3)
    assets = [a for a in defs.assets if isinstance(a, dg.AssetsDefinition)]
    with dg.instance_for_test() as instance:
        result = dg.materialize(assets, selection=dg.AssetSelection.assets(["support", "cluster_growth"]),
                                resources=defs.resources, instance=instance)
        event = instance.get_latest_materialization_event(dg.AssetKey(["support", "cluster_growth"]))
        metadata = {k: getattr(v, "value", v) for k, v in event.asset_materialization.metadata.items()}
    return result, metadata


def test_growth_table_counts_utc_days_and_reads_in_duckdb_and_pandas(tmp_path):
    duckdb = pytest.importorskip("duckdb")
    pd = pytest.importorskip("pandas")
    result, md = _growth_run(tmp_path, CORPUS)
    assert result.success
    parquet, jsonl = tmp_path / "ck" / "cluster_growth.parquet", tmp_path / "ck" / "cluster_growth.jsonl"
    rows = duckdb.sql(f"SELECT cluster_id, cluster_name, period, conversations FROM '{parquet}' "
                      "ORDER BY cluster_id, period").fetchall()
    assert rows == [(f"cluster-{k}", NAMES[k], day, n) for k in sorted(EXPECTED) for day, n in EXPECTED[k].items()]
    per_day = dict(duckdb.sql(f"SELECT period, sum(conversations)::INT FROM '{parquet}' GROUP BY 1").fetchall())
    assert per_day == {"2026-01-10": 3, "2026-01-11": 1, "2026-01-12": 2, "2026-01-13": 7}
    frame = pd.read_json(jsonl, lines=True, dtype={"period": str})
    assert frame.to_dict("records") == pd.read_parquet(parquet).to_dict("records")
    assert md["dagster/row_count"] == 8 and md["latest_period"] == "2026-01-13"
    # new: no clusters run recorded taxonomy metadata here, so the cluster first seen on the latest day
    assert md["new_clusters"] == 1 and "Travel refunds" in md["new_clusters_table"]
    # fastest growing: a (3 on the 13th, mean 1 over the three days before) is listed, b (1 against 1) is not
    assert "Billing disputes" in md["fastest_growing"] and "| 3.00 |" in md["fastest_growing"]
    assert "Password resets" not in md["fastest_growing"]
    (check,) = result.get_asset_check_evaluations()
    assert check.passed and check.severity == dg.AssetCheckSeverity.WARN  # 3 is not past 3 × 1


def test_a_planted_spike_warns_and_does_not_block(tmp_path):
    result, md = _growth_run(tmp_path, [*CORPUS, SPIKE])
    assert result.success, "a WARN check blocks nothing"
    (check,) = result.get_asset_check_evaluations()
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    assert check.metadata["spiking_clusters"].value == ["cluster-a"]
    assert "| Billing disputes | cluster-a | 4 | 1.00 | 4.00 | 7 |" in check.metadata["spikes"].value


def test_with_daily_partitions_a_period_is_the_summaries_partition(tmp_path):
    """Partitioned: the period is the partition each summary was stored in (written here by hand, some on other
    days than their created_at: a3 and b3 are stored on the 11th and the 13th), not created_at."""
    from kura_dagster.types import ConversationSummary

    ck = tmp_path / "ck"
    _write_checkpoints(ck, CORPUS)  # clusters.jsonl (conversations.jsonl is not read with partitions)
    days = {"2026-01-10": ["a1", "b1", "b2"], "2026-01-11": ["a2", "a3"], "2026-01-13": ["a4", "a5", "a6", "b3",
                                                                                       "b4", "c1", "c2", "c3"]}
    (ck / "summaries").mkdir()
    for day, ids in days.items():
        (ck / "summaries" / f"{day}.jsonl").write_text("".join(ConversationSummary(
            chat_id=i, summary=f"The user asks {i}.", metadata={}, embedding=[1.0, 0.0]).model_dump_json() + "\n"
            for i in ids))
    defs = build_kura_defs("support", checkpoint_dir=str(ck), sensor=False, partitions="daily",
                           partition_start="2026-01-01")
    assert defs.resolve_job_def("support_rebuild_taxonomy").partitions_def is None  # runs without a partition
    assets = [a for a in defs.assets if isinstance(a, dg.AssetsDefinition)]
    with dg.instance_for_test() as instance:
        result = dg.materialize(assets, selection=dg.AssetSelection.assets(["support", "cluster_growth"]),
                                resources=defs.resources, instance=instance)
    assert result.success
    import pyarrow.parquet as pq

    rows = pq.read_table(ck / "cluster_growth.parquet").to_pylist()
    assert [(r["cluster_id"], r["period"], r["conversations"]) for r in rows] == [
        ("cluster-a", "2026-01-10", 1), ("cluster-a", "2026-01-11", 2), ("cluster-a", "2026-01-13", 3),
        ("cluster-b", "2026-01-10", 2), ("cluster-b", "2026-01-13", 2), ("cluster-c", "2026-01-13", 3)]


def test_new_clusters_follow_the_clusters_run_record():
    """New = what the clusters run made (taxonomy/new_cluster_ids); a reused clusters run made nothing; after a
    rebuild every cluster is new."""
    from kura_dagster.orchestration.growth import Growth, new_clusters

    growth = [Growth("k1", "Old", 5, 4.0, 40, "2026-01-01"), Growth("k2", "Born today", 3, 0.0, 3, "2026-01-13"),
              Growth("k3", "Born earlier", 2, 1.0, 9, "2026-01-09")]
    made = {"taxonomy/rebuild": False, "taxonomy/new_cluster_ids": ["k3"]}
    assert [g.cluster_id for g in new_clusters(growth, "2026-01-13", made)[0]] == ["k3"]
    assert new_clusters(growth, "2026-01-13", {**made, "kura/reused_from_run": "r1"})[0] == []
    rebuilt, note = new_clusters(growth, "2026-01-13", {"taxonomy/rebuild": True, "taxonomy/rebuild_reason": "drift"})
    assert len(rebuilt) == 3 and "built anew (drift)" in note
    assert [g.cluster_id for g in new_clusters(growth, "2026-01-13", {})[0]] == ["k2"]  # no record: first seen today


def test_a_clustered_conversation_without_a_day_is_an_error_naming_it(tmp_path):
    from kura_dagster.orchestration.growth import growth_table

    cluster = Cluster(id="x", name="X", description="X.", slug="x", chat_ids=["known", "lost"], parent_id=None)
    with pytest.raises(ValueError, match="'lost'"):
        growth_table([cluster], {"known": "2026-01-10"})


def _keys(defs: dg.Definitions, job: str) -> set[str]:
    return {k.to_user_string() for k in defs.resolve_job_def(job).asset_layer.executable_asset_keys}


def test_rebuild_job_selection_config_and_versions(tmp_path):
    support = build_kura_defs("support", checkpoint_dir=str(tmp_path / "s"), sensor=False, clusters_per_group=5)
    assert _keys(support, "support_rebuild_taxonomy") == {
        "support/clusters", "support/meta_clusters", "support/projected_clusters", "support/cluster_facets",
        "support/cluster_growth"}
    kura_config = support.resolve_job_def("support_rebuild_taxonomy").run_config["resources"]["support_kura"]["config"]
    # the pipeline's own settings are kept (run config replaces a resource's whole config)
    assert kura_config == {"rebuild_taxonomy": True, "clusters_per_group": 5, "checkpoint_dir": str(tmp_path / "s"),
                           "llm": "local", "embeddings": "local"}
    from kura_dagster.orchestration.rebuild import rebuild_config
    from kura_dagster.orchestration.resources import KuraPipelineResource

    from_env = KuraPipelineResource(checkpoint_dir=dg.EnvVar("CK"), max_concurrency=dg.EnvVar.int("CONCURRENCY"))
    assert rebuild_config(from_env) == {"checkpoint_dir": {"env": "CK"}, "max_concurrency": {"env": "CONCURRENCY"},
                                        "rebuild_taxonomy": True}  # still read from the environment at run time
    standalone = build_kura_defs(None, checkpoint_dir=str(tmp_path / "k"), sensor=False)
    assert _keys(standalone, "kura_rebuild_taxonomy") == {
        "clusters", "meta_clusters", "projected_clusters", "cluster_facets", "cluster_growth"}
    # the flag is not a setting that shapes outputs: the same code versions, so nothing turns stale
    always = build_kura_defs("support", checkpoint_dir=str(tmp_path / "s"), sensor=False, clusters_per_group=5,
                             rebuild_taxonomy=True)
    graphs = [d.resolve_asset_graph() for d in (support, always)]
    versions = [{k.to_user_string(): g.get(k).code_version for k in g.get_all_asset_keys()} for g in graphs]
    assert versions[0] == versions[1]


@pytest.mark.slow
def test_the_rebuild_job_rebuilds_what_a_normal_rerun_keeps(tmp_path):
    defs = build_kura_defs("support", checkpoint_dir=str(tmp_path / "ck"), sensor=False, demo_size=40,
                           clusters_per_group=5, max_clusters=3, min_conversations=2)

    def taxonomy(instance: dg.DagsterInstance, stage: str) -> dict:
        md = instance.get_latest_materialization_event(dg.AssetKey(["support", stage])).asset_materialization.metadata
        return {k: getattr(v, "value", v) for k, v in md.items()
                if k in ("taxonomy/rebuild", "taxonomy/rebuild_reason", "kura/reused_from_run")}

    stages = ("clusters", "meta_clusters", "projected_clusters")
    with dg.instance_for_test() as instance:
        assert defs.resolve_job_def("support_job").execute_in_process(instance=instance).success
        assert all(taxonomy(instance, s)["taxonomy/rebuild_reason"].startswith("first build") for s in stages)
        # Same inputs and settings (the flag is in neither): without the rebuild request the stages would reuse
        # the first run's outputs; with it they compute and build anew.
        result = defs.resolve_job_def("support_rebuild_taxonomy").execute_in_process(instance=instance)
        assert result.success
        assert result.dagster_run.tags.get("kura/rebuild_taxonomy") == "true"
        for stage in stages:
            assert taxonomy(instance, stage) == {"taxonomy/rebuild": True,
                                                 "taxonomy/rebuild_reason": "requested (rebuild_taxonomy)"}
        growth = instance.get_latest_materialization_event(dg.AssetKey(["support", "cluster_growth"]))
        assert "built anew (requested" in growth.asset_materialization.metadata["new_clusters_table"].value
    assert json.loads((tmp_path / "ck" / "cluster_growth.jsonl").read_text().splitlines()[0])["conversations"] > 0


def test_component_settings_carry_rebuild_and_growth(tmp_path, monkeypatch):
    from kura_dagster_tests.test_component_schema import GOOD, _load, _project

    monkeypatch.setenv("KURA_CHECKPOINT_DIR", str(tmp_path / "ck"))
    text = GOOD.replace("    max_clusters: 3", "    max_clusters: 3\n    rebuild_taxonomy: true\n"
                        "    growth_alert_factor: 2.5\n    growth_window: 14")
    try:
        kura = _load(_project(tmp_path, text), monkeypatch).resources["sales_kura"]
    finally:  # the temporary project's package must not stand in for the sample project's in later tests
        import sys

        for name in [m for m in sys.modules if m == "chat_analytics" or m.startswith("chat_analytics.")]:
            del sys.modules[name]
    assert (kura.rebuild_taxonomy, kura.growth_alert_factor, kura.growth_window) == (True, 2.5, 14)
