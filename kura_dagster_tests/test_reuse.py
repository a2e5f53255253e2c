"""Fixed costs (issue 17 item 10): a stage whose inputs, code version and settings are those of its last
materialization, and whose checkpoint is still the one that materialization wrote, reuses it instead of computing
it again and rewriting the same bytes. Anything else computes it as before.

The instance is the project's own ``dagster.yaml`` (its event log holds the last materializations)."""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

import dagster as dg
import pytest

from kura_dagster.io_managers import JSONLIOManager
from kura_dagster.io_managers.stored import StoredOutput
from kura_dagster.orchestration.assets import kura_assets
from kura_dagster.orchestration.resources import ConversationSource, KuraPipelineResource
from kura_dagster.orchestration.reuse import REUSE_ENV, REUSED_FROM_KEY
from kura_dagster.orchestration.versioning import versioned_assets
from kura_dagster.pipeline.demo_data import demo_conversations

ROOT = Path(__file__).resolve().parent.parent
STAGES = ["summaries", "clusters", "meta_clusters", "projected_clusters"]
FILES = {"summaries": "summaries.jsonl", "clusters": "clusters.jsonl", "meta_clusters": "meta_clusters.jsonl",
         "projected_clusters": "dimensionality.jsonl"}


@pytest.fixture
def instance(tmp_path: Path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")  # the project's instance config
    with dg.DagsterInstance.from_config(str(home)) as inst:
        yield inst


def _setup(tmp_path: Path, n: int = 40) -> tuple[Path, dict, list[dg.AssetsDefinition]]:
    source = tmp_path / "conversations.jsonl"
    source.write_text("".join(c.model_dump_json() + "\n" for c in demo_conversations(n)))
    resources = {
        "io_manager": JSONLIOManager(base_dir=str(tmp_path / "checkpoints")),
        "kura": KuraPipelineResource(checkpoint_dir=str(tmp_path / "cache"), clusters_per_group=4, max_clusters=3,
                                     min_conversations=1),  # every k-means group its own cluster (thresholds off)
        "source": ConversationSource(path=str(source)),
    }
    return source, resources, versioned_assets(kura_assets, resources)


def _latest(instance: dg.DagsterInstance, stage: str) -> tuple[dict, str]:
    event = instance.get_latest_materialization_event(dg.AssetKey(stage))
    return dict(event.asset_materialization.metadata), event.asset_materialization.tags["dagster/data_version"]


def _reused_from(instance: dg.DagsterInstance, stage: str):
    value = _latest(instance, stage)[0].get(REUSED_FROM_KEY)
    return None if value is None else value.value


def _files(tmp_path: Path) -> dict[str, tuple[bytes, int]]:
    ck = tmp_path / "checkpoints"
    return {stage: ((ck / name).read_bytes(), (ck / name).stat().st_mtime_ns) for stage, name in FILES.items()}


@pytest.mark.slow
def test_an_unchanged_rerun_reuses_and_a_change_recomputes_what_it_touches(tmp_path: Path, instance) -> None:
    _, resources, assets = _setup(tmp_path)
    first = dg.materialize(assets, resources=resources, instance=instance)
    versions = {s: _latest(instance, s)[1] for s in STAGES}
    written = _files(tmp_path)
    assert all(_reused_from(instance, s) is None for s in STAGES), "a first run computes everything"

    # Unchanged: every stage reuses run 1's output; nothing is rewritten, the data versions stay, and the step
    # values are still the rows (code reading them sees what it saw before).
    second = dg.materialize(assets, resources=resources, instance=instance)
    assert {s: _reused_from(instance, s) for s in STAGES} == {s: first.run_id for s in STAGES}
    assert {s: _latest(instance, s)[1] for s in STAGES} == versions
    assert _files(tmp_path) == written, "no checkpoint was rewritten"
    for stage in STAGES:
        assert second.output_for_node(stage) == first.output_for_node(stage)
        assert len(second.output_for_node(stage)) > 0
    md = _latest(instance, "clusters")[0]
    assert md["naming_requests"].value == 0 and md["clusters"].value == len(first.output_for_node("clusters"))

    # A checkpoint removed behind the pipeline's back: that stage is computed again (and written back as it
    # was); the next stage sees the same data version and the same stored state, so it is reused.
    (tmp_path / "checkpoints" / "clusters.jsonl").unlink()
    repaired = dg.materialize(assets, resources=resources, instance=instance)
    assert _reused_from(instance, "clusters") is None
    assert (tmp_path / "checkpoints" / "clusters.jsonl").read_bytes() == written["clusters"][0]
    assert [_reused_from(instance, s) for s in ("summaries", "meta_clusters", "projected_clusters")] == [first.run_id] * 3

    # A setting changed in the launchpad (run config, which replaces the resource's whole config): the stages it
    # shapes are computed, the others reused.
    config = {"checkpoint_dir": str(tmp_path / "cache"), "clusters_per_group": 4, "max_clusters": 2,
              "min_conversations": 1}
    third = dg.materialize(assets, resources=resources, instance=instance,
                           run_config={"resources": {"kura": {"config": config}}})
    assert [_reused_from(instance, s) for s in STAGES] == [first.run_id, repaired.run_id, None, None]
    now = _files(tmp_path)
    assert [now[s][1] == written[s][1] for s in STAGES] == [True, False, False, False], \
        "meta_clusters and projected_clusters were written again (clusters already was, after its deletion)"
    assert len([c for c in third.output_for_node("meta_clusters") if c.parent_id is None]) <= 2


@pytest.mark.slow
def test_new_conversations_and_reuse_off_compute_again(tmp_path: Path, instance, monkeypatch) -> None:
    source, resources, assets = _setup(tmp_path, n=40)
    dg.materialize(assets, resources=resources, instance=instance)
    summaries = (tmp_path / "checkpoints" / "summaries.jsonl").read_bytes()

    # KURA_REUSE=0: the same inputs, computed all the same (and written with the same bytes).
    monkeypatch.setenv(REUSE_ENV, "0")
    dg.materialize(assets, resources=resources, instance=instance)
    assert [_reused_from(instance, s) for s in STAGES] == [None] * 4
    assert (tmp_path / "checkpoints" / "summaries.jsonl").read_bytes() == summaries
    monkeypatch.setenv(REUSE_ENV, "maybe")
    failed = dg.materialize(assets, resources=resources, instance=instance, selection=["summaries"],
                            raise_on_error=False)
    assert not failed.success
    monkeypatch.delenv(REUSE_ENV)

    # One more conversation: a new conversations data version, so everything downstream is computed.
    source.write_text("".join(c.model_dump_json() + "\n" for c in demo_conversations(41)))
    result = dg.materialize(assets, resources=resources, instance=instance)
    assert [_reused_from(instance, s) for s in STAGES] == [None] * 4
    assert len(result.output_for_node("summaries")) == 41


def test_the_io_manager_refuses_to_keep_a_checkpoint_that_changed(tmp_path: Path) -> None:
    io = JSONLIOManager(base_dir=str(tmp_path))
    io.setup_for_execution(dg.build_init_resource_context())
    key = dg.AssetKey("clusters")
    assert io.stored_state(["clusters"]) is None
    (tmp_path / "clusters.jsonl").write_text("")  # a file Kura could have written: no sidecar, no rows
    state = io.stored_state(["clusters"])
    assert state is not None and len(state) == 24
    context = dg.build_output_context(asset_key=key)
    io.handle_output(context, StoredOutput([], state, "run-1"))  # unchanged: nothing written
    assert (tmp_path / "clusters.jsonl").read_text() == ""
    (tmp_path / "clusters.jsonl").write_text("\n")
    with pytest.raises(dg.DagsterInvariantViolationError, match="changed while the step ran"):
        io.handle_output(dg.build_output_context(asset_key=key), StoredOutput([], state, "run-1"))


@pytest.mark.slow
def test_the_facets_and_growth_tables_are_reused_like_the_stages(tmp_path: Path, instance) -> None:
    from kura_dagster.orchestration.facets import build_facets_asset
    from kura_dagster.orchestration.growth import CHECK_NAME, build_growth_asset
    from kura_dagster.orchestration.names import KuraNames

    _, resources, assets = _setup(tmp_path)
    names = KuraNames(None)
    tables = [build_facets_asset(names), build_growth_asset(names, False)]
    assets = versioned_assets([*kura_assets, *tables], resources)
    cache = tmp_path / "cache"
    table_files = ["cluster_facets.parquet", "cluster_facets.jsonl", "cluster_growth.parquet", "cluster_growth.jsonl"]

    def stamps() -> dict[str, tuple[bytes, int]]:
        return {f: ((cache / f).read_bytes(), (cache / f).stat().st_mtime_ns) for f in table_files}

    first = dg.materialize(assets, resources=resources, instance=instance)
    assert [_reused_from(instance, t) for t in ("cluster_facets", "cluster_growth")] == [None, None]
    written = stamps()
    facets_md = _latest(instance, "cluster_facets")[0]

    # Unchanged: both tables are kept (not rewritten), their metadata is the first run's, and the growth check
    # is judged again on the stored table.
    second = dg.materialize(assets, resources=resources, instance=instance)
    assert [_reused_from(instance, t) for t in ("cluster_facets", "cluster_growth")] == [first.run_id] * 2
    assert stamps() == written
    reused_md = _latest(instance, "cluster_facets")[0]
    assert reused_md["clusters"].value == facets_md["clusters"].value > 0
    checks = [e for e in second.get_asset_check_evaluations() if e.check_name == CHECK_NAME]
    assert len(checks) == 1 and checks[0].passed and checks[0].metadata["growth_alert_factor"].value == 3.0

    # Another alert factor (it shapes no table): the tables are still reused, the check is judged with it.
    config = {"checkpoint_dir": str(cache), "clusters_per_group": 4, "max_clusters": 3, "min_conversations": 1,
              "growth_alert_factor": 5.5}
    third = dg.materialize(assets, resources=resources, instance=instance,
                           run_config={"resources": {"kura": {"config": config}}})
    assert [_reused_from(instance, t) for t in ("cluster_facets", "cluster_growth")] == [first.run_id] * 2
    checks = [e for e in third.get_asset_check_evaluations() if e.check_name == CHECK_NAME]
    assert len(checks) == 1 and checks[0].metadata["growth_alert_factor"].value == 5.5
    assert stamps() == written

    # A table file deleted behind the pipeline's back: that table is computed and written again, same bytes.
    (cache / "cluster_facets.jsonl").unlink()
    dg.materialize(assets, resources=resources, instance=instance)
    assert [_reused_from(instance, t) for t in ("cluster_facets", "cluster_growth")] == [None, first.run_id]
    assert {f: v[0] for f, v in stamps().items()} == {f: v[0] for f, v in written.items()}
