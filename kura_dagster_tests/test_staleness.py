"""Staleness: code versions carry the settings, data versions are content hashes, so after a change the right
assets (and only those) go stale, an unchanged input leaves everything fresh, and launchpad overrides of the
pipeline settings change the result."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest
from dagster._core.definitions.data_version import StaleCauseCategory, StaleStatus
from dagster._utils.test.data_versions import get_stale_status_resolver

from kura_dagster.orchestration.assets import kura_assets
from kura_dagster.io_managers import JSONLIOManager
from kura_dagster.pipeline.demo_data import demo_conversations
from kura_dagster.orchestration.resources import ConversationSource, KuraPipelineResource
from kura_dagster.orchestration.versioning import FIRST_ASSET_FOR_UNLISTED, NOT_SHAPING, SHAPES_FROM, settings_by_asset, versioned_assets

ORDER = ["conversations", "summaries", "clusters", "meta_clusters", "projected_clusters"]
SETTINGS = dict(clusters_per_group=4, max_clusters=3, min_conversations=1)  # groups of ~4, all named (no folding)


def _resources(tmp: Path, conversations: Path, **kura) -> dict:
    return {
        "io_manager": JSONLIOManager(base_dir=str(tmp / "checkpoints")),
        "kura": KuraPipelineResource(checkpoint_dir=str(tmp / "cache"), **{**SETTINGS, **kura}),
        "source": ConversationSource(path=str(conversations)),
    }


def _write(path: Path, n: int) -> Path:
    path.write_text("".join(c.model_dump_json() + "\n" for c in demo_conversations(40)[:n]))
    return path


def _status(instance: dg.DagsterInstance, assets: list[dg.AssetsDefinition]) -> dict[str, StaleStatus]:
    resolver = get_stale_status_resolver(instance, assets)
    return {name: resolver.get_status(dg.AssetKey(name)) for name in ORDER}


def _causes(instance: dg.DagsterInstance, assets: list[dg.AssetsDefinition], name: str) -> set[StaleCauseCategory]:
    return {c.category for c in get_stale_status_resolver(instance, assets).get_stale_causes(dg.AssetKey(name))}


def _stale(statuses: dict[str, StaleStatus]) -> list[str]:
    return [k for k in ORDER if statuses[k] != StaleStatus.FRESH]


def _data_version(instance: dg.DagsterInstance, name: str) -> str:
    event = instance.get_latest_materialization_event(dg.AssetKey(name))
    return event.asset_materialization.tags["dagster/data_version"]


def test_every_resource_setting_is_classified_for_staleness() -> None:
    """A new setting must say which asset it shapes first, or that it shapes none (else it counts from the
    first asset that uses its resource, which is safe but may rerun too much)."""
    for key, cls in (("kura", KuraPipelineResource), ("source", ConversationSource)):
        unclassified = set(cls.model_fields) - set(SHAPES_FROM[key]) - NOT_SHAPING.get(key, frozenset())
        assert key in FIRST_ASSET_FOR_UNLISTED
        assert all(name not in SHAPES_FROM[key] for name in NOT_SHAPING.get(key, ())), key
        assert not unclassified, (f"classify {sorted(unclassified)} of {cls.__name__} in kura_dagster/versioning.py "
                                  "(SHAPES_FROM, or NOT_SHAPING if it changes only where or how fast work is done)")


def test_settings_reach_exactly_the_assets_they_shape(tmp_path: Path) -> None:
    by_asset = settings_by_asset(kura_assets, _resources(tmp_path, tmp_path / "c.jsonl"))
    assert "kura.clusters_per_group" not in by_asset["summaries"]
    assert "kura.clusters_per_group" in by_asset["clusters"]
    assert "kura.max_clusters" not in by_asset["clusters"]
    assert "kura.max_clusters" in by_asset["meta_clusters"] and "kura.max_clusters" in by_asset["projected_clusters"]
    assert not any(k.startswith("kura.") for k in by_asset["conversations"])
    assert "source.path" in by_asset["conversations"] and "source.path" in by_asset["projected_clusters"]
    assert not any("checkpoint_dir" in k or "max_concurrency" in k for v in by_asset.values() for k in v)


def test_a_secret_never_enters_a_code_version(tmp_path: Path) -> None:
    class WithKey(KuraPipelineResource):
        api_key: str = "sk-secret"

    plain = versioned_assets(kura_assets, {"kura": KuraPipelineResource(**SETTINGS)})
    keyed = versioned_assets(kura_assets, {"kura": WithKey(**SETTINGS, api_key="sk-other")})
    assert [a.code_versions_by_key for a in plain] == [a.code_versions_by_key for a in keyed]


@pytest.mark.slow
def test_the_right_assets_go_stale(tmp_path: Path) -> None:
    conversations = _write(tmp_path / "conversations.jsonl", 40)
    base = _resources(tmp_path, conversations)
    assets = versioned_assets(kura_assets, base)
    with dg.instance_for_test() as instance:
        assert set(_stale(_status(instance, assets))) == set(ORDER), "all missing at first"
        dg.materialize(assets, resources=base, instance=instance)
        assert _stale(_status(instance, assets)) == []
        versions = {name: _data_version(instance, name) for name in ORDER}

        # Re-materializing an unchanged input: same data version, so nothing downstream goes stale and a
        # stale-only run has nothing to do.
        dg.materialize(assets, resources=base, instance=instance, selection=["conversations"])
        assert _data_version(instance, "conversations") == versions["conversations"]
        assert _stale(_status(instance, assets)) == []

        # A settings change marks stale the assets whose output it can change, and only those.
        for change, expected in (
            ({"max_clusters": 2}, ["meta_clusters", "projected_clusters"]),
            ({"clusters_per_group": 5}, ["clusters", "meta_clusters", "projected_clusters"]),
            ({"seed": 1}, ["summaries", "clusters", "meta_clusters", "projected_clusters"]),
            ({"embedding_dims": 64}, ["summaries", "clusters", "meta_clusters", "projected_clusters"]),
            ({"checkpoint_dir": str(tmp_path / "elsewhere")}, []),
        ):
            changed = versioned_assets(kura_assets, {**base, "kura": KuraPipelineResource(
                **{"checkpoint_dir": str(tmp_path / "cache"), **SETTINGS, **change})})
            assert _stale(_status(instance, changed)) == expected, change
            if expected:
                assert _causes(instance, changed, expected[0]) == {StaleCauseCategory.CODE}

        # A changed input: the new conversations get a new data version and what reads them goes stale.
        _write(conversations, 30)
        dg.materialize(assets, resources=base, instance=instance, selection=["conversations"])
        assert _data_version(instance, "conversations") != versions["conversations"]
        assert _stale(_status(instance, assets)) == ["summaries"]
        assert _causes(instance, assets, "summaries") == {StaleCauseCategory.DATA}

        # Bringing it up to date: each stage re-run with a new output makes its consumer stale, until the end.
        dg.materialize(assets, resources=base, instance=instance, selection=ORDER[1:])
        assert _stale(_status(instance, assets)) == []
        assert all(_data_version(instance, name) != versions[name] for name in ORDER)


@pytest.mark.slow
def test_launchpad_overrides_change_the_result(tmp_path: Path) -> None:
    """The settings are resource config: run config (what the launchpad edits) overrides them."""
    conversations = _write(tmp_path / "conversations.jsonl", 40)
    resources = _resources(tmp_path, conversations)
    selection = ["conversations", "summaries", "clusters", "meta_clusters"]

    def roots(run_config: dict | None) -> tuple[int, dict]:
        result = dg.materialize(kura_assets, resources=resources, instance=instance, selection=selection,
                                run_config=run_config)
        meta = result.output_for_node("meta_clusters")
        event = next(e for e in result.get_asset_materialization_events() if e.asset_key.path == ["meta_clusters"])
        return sum(1 for c in meta if c.parent_id is None), event.materialization.metadata["kura/settings"].value

    with dg.instance_for_test() as instance:
        default_roots, default_settings = roots(None)
        override_roots, override_settings = roots({"resources": {"kura": {"config": {"max_clusters": 1}}}})
    assert default_settings["max_clusters"] == 3 and default_roots == 3
    assert override_settings["max_clusters"] == 1 and override_roots == 1
