"""The pipeline settings as part of Dagster's staleness.

Dagster marks an asset stale when its ``code_version`` changed or an input's data version changed; run
config is not part of that. So the settings of the Definitions' resources (the ``kura`` and ``source``
resources: model backends, seed, embedding dimensions, ``clusters_per_group``, ``max_clusters``, the
conversations file …) are folded into each asset's code version, next to the hand-kept version in
``assets.py``: ``"1+3fa9c0e1b2"``. An asset takes the settings that shape its own output *and* those of
its upstream assets, so after a settings change the UI marks stale exactly the assets whose output can
depend on it, all at once, and one ``stale_assets_only`` run brings them back up to date. Data versions
are content hashes (``assets.content_version``), so re-materializing an unchanged input leaves everything
downstream fresh.

Launchpad overrides are one-off runs: Dagster records the Definitions' code version for them, so each
materialization also carries the settings it actually ran with (``kura/settings`` metadata).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

import dagster as dg

from kura_dagster.orchestration.names import STAGES, KuraNames

SHAPES_FROM: dict[str, dict[str, str]] = {
    "kura": {
        "llm": "summaries",
        "embeddings": "summaries",
        "embedding_dims": "summaries",
        "seed": "summaries",
        "temperature": "summaries",
        "clusters_per_group": "clusters",
        "max_clusters": "meta_clusters",
        "min_conversations": "clusters",
        "min_users": "clusters",
        "user_key": "clusters",
        "privacy_audit": "clusters",
        "audit_min_rating": "clusters",
        # the incremental taxonomy (pipeline/taxonomy.py): they decide what joins, is renamed or rebuilt
        "rename_fraction": "clusters",
        "assign_quantile": "clusters",
        "rebuild_new_share": "clusters",
        "rebuild_far_share": "clusters",
    },
    "source": {"path": "conversations", "on_bad_record": "conversations", "demo_size": "conversations",
               "column_map": "conversations", "format": "conversations"},
}
"""resource key → setting → the first asset whose output it shapes (that asset and all downstream take it)."""

NOT_SHAPING: dict[str, frozenset[str]] = {
    "kura": frozenset({"checkpoint_dir", "max_concurrency", "request_timeout", "max_retries",
                       "embedding_batch_size", "summary_batch_size",
                       # How an answer is fetched, not what is asked: the answer cache's keys leave them out too
                       # (model, prompt version and temperature are in both). To start afresh with a server that
                       # serves another model under the same name, give the model another name.
                       "base_url", "structured_output",
                       # A one-off request to rebuild the taxonomy (the rebuild job): what it builds is recorded
                       # in taxonomy/* metadata; the flag must not mark assets stale or change a cache key.
                       "rebuild_taxonomy",
                       # A one-off request to fit the offline embedding again: the fit's version is in the
                       # summaries' embedding_model metadata, and new vectors change the summaries' data version.
                       "refit_embedding",
                       # when cluster_growth's check warns; the growth table itself does not depend on them
                       "growth_alert_factor", "growth_window", "growth_alert_min_conversations"}),
    "source": frozenset({"fs_options",  # where to read, and credentials: never hashed or shown
                         # whether a run may replace checkpoints (the input guard) and how errors name settings
                         "allow_empty", "max_shrink", "configured_by"}),
}
"""Settings that change where or how fast work is done, not its result."""

FIRST_ASSET_FOR_UNLISTED: dict[str, str] = {"kura": "summaries", "source": "conversations"}
"""A setting nobody listed yet counts from this asset on: better a needless rerun than a stale result."""

SECRET_WORDS = ("key", "token", "secret", "password")
"""Fields whose names contain one of these never enter a code version, hashed or not."""


def _plain(value: Any) -> Any:
    """An ``EnvVar``/``IntEnvVar`` resolved from the environment; anything else as it is."""
    get_value = getattr(value, "get_value", None)
    if callable(get_value) and getattr(value, "env_var_name", None) is not None:
        return get_value()
    return value


def resource_settings(resource_key: str, resource: Any) -> dict[str, tuple[str, Any]]:
    """``{field: (first asset it shapes, value)}`` for one resource's output-shaping settings."""
    fields = getattr(type(resource), "model_fields", {})
    listed = SHAPES_FROM.get(resource_key, {})
    skip = NOT_SHAPING.get(resource_key, frozenset())
    out: dict[str, tuple[str, Any]] = {}
    for name in fields:
        if name in skip or any(word in name.lower() for word in SECRET_WORDS):
            continue
        first = listed.get(name) or FIRST_ASSET_FOR_UNLISTED.get(resource_key)
        if first is not None:
            out[name] = (first, _plain(getattr(resource, name)))
    return out


def effective_settings(resource: Any, resource_key: str = "kura") -> dict[str, Any]:
    """The output-shaping settings of one resource as plain values (for ``kura/settings`` metadata)."""
    return {name: value for name, (_, value) in resource_settings(resource_key, resource).items()}


def _ancestors(assets: Sequence[dg.AssetsDefinition]) -> dict[str, set[str]]:
    """Asset name → itself and every upstream asset name (Dagster's own upstream selection). Upstream assets
    of the project that are not among ``assets`` (a pipeline fed by the project's own asset) stand in as specs."""
    produced = {key for a in assets for key in a.keys}
    external = {dep for a in assets for deps in a.asset_deps.values() for dep in deps} - produced
    graph = [*assets, *(dg.AssetsDefinition(specs=[dg.AssetSpec(k)]) for k in sorted(external, key=lambda k: k.path))]
    return {
        key.to_user_string(): {k.to_user_string() for k in dg.AssetSelection.assets(key).upstream().resolve(graph)}
        for key in sorted(produced, key=lambda k: k.path)
    }


def settings_by_asset(
    assets: Sequence[dg.AssetsDefinition], resources: Mapping[str, Any], names: KuraNames = KuraNames()
) -> dict[str, dict[str, Any]]:
    """Asset name → ``{"role.setting": value}`` of every setting that shapes its output. ``resources`` are keyed
    by the pipeline's resource keys (``support_kura`` …); the roles are ``kura`` and ``source``."""
    ancestors = _ancestors(assets)
    shaping = {
        role: resource_settings(role, resources[names.resource(role)])
        for role in SHAPES_FROM
        if names.resource(role) in resources
    }
    first = {stage: names.key(stage).to_user_string() for stage in STAGES}
    return {
        name: {
            f"{role}.{field}": value
            for role, fields in shaping.items()
            for field, (stage, value) in fields.items()
            if first[stage] in ups
        }
        for name, ups in ancestors.items()
    }


def settings_hash(settings: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(dict(settings), sort_keys=True, default=str).encode()).hexdigest()[:10]


def _versioner(by_asset: Mapping[str, Mapping[str, Any]]):
    def version(spec: dg.AssetSpec) -> dg.AssetSpec:
        settings = by_asset.get(spec.key.to_user_string())
        if not settings:
            return spec
        return spec.replace_attributes(code_version=f"{spec.code_version or '0'}+{settings_hash(settings)}")

    return version


def versioned_assets(
    assets: Sequence[dg.AssetsDefinition], resources: Mapping[str, Any], names: KuraNames = KuraNames()
) -> list[dg.AssetsDefinition]:
    """The assets with ``code_version = "<version in assets.py>+<hash of the settings that shape it>"``."""
    version = _versioner(settings_by_asset(assets, resources, names))
    return [a.map_asset_specs(version) for a in assets]
